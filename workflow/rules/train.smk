# Data preparation, pretraining and evaluation. Pretraining resumes from
# runs/grid/<run>/checkpoint.pt (not a declared output, so Snakemake never deletes it) after a
# kill, a failure or a Slurm requeue; outputs appear only when complete. An evaluation lives
# under its pretraining: runs/grid/<run>/eval/<ev>/. A pretraining of runtime.gpus > 1 runs under
# torchrun in one Slurm task holding its GPUs; runtime.nodes > 1 runs one torchrun per node (launch.py).


rule prepare:
    output:
        directory("data/grid/{data_id}"),
    log:
        "logs/prepare/{data_id}.log",
    localrule: True
    conda:
        ENV
    params:
        preset=PRESET,
        args=lambda wc: DATA_ARGS[wc.data_id],
        code=CODE["prepare"],
        data=data_fingerprint,
    shell:
        "simclr-ablations prepare --preset {params.preset} {params.args} --out {output} > {log} 2>&1"


rule pretrain:
    input:
        data=lambda wc: f"data/grid/{DATA_OF[wc.run]}",
    output:
        model="runs/grid/{run}/model.pt",
        params="runs/grid/{run}/params.yaml",
        train="runs/grid/{run}/train.json",
        history="runs/grid/{run}/history.csv",
        provenance="runs/grid/{run}/provenance.json",
    log:
        "runs/grid/{run}/pretrain.log",
    benchmark:
        "runs/grid/{run}/pretrain.bench.tsv"
    conda:
        ENV
    threads: THREADS
    resources:
        **PRETRAIN_RES,
        mem_mb=RES["mem_mb"],
        runtime=RES["runtime"],
    params:
        launch=lambda wc: LAUNCH[wc.run],
        args=lambda wc: UNIQUE[wc.run].cli_args(PRESET),
        code=CODE["pretrain"],
    shell:
        "{params.launch} pretrain {params.args} --data {input.data} --out runs/grid/{wildcards.run}"
        " >> {log} 2>&1"


rule evaluate:
    input:
        model="runs/grid/{run}/model.pt",
        data=lambda wc: f"data/grid/{DATA_OF[wc.run]}",
    output:
        metrics="runs/grid/{run}/eval/{ev}/metrics.json",
        params="runs/grid/{run}/eval/{ev}/params.yaml",
        provenance="runs/grid/{run}/eval/{ev}/provenance.json",
    log:
        "runs/grid/{run}/eval/{ev}/evaluate.log",
    benchmark:
        "runs/grid/{run}/eval/{ev}/evaluate.bench.tsv"
    conda:
        ENV
    threads: THREADS
    resources:
        gpu=RES["gpu"],
        mem_mb=RES["mem_mb"],
        runtime=max(10, RES["runtime"] // 4),
    params:
        args=lambda wc: EVALS[(wc.run, wc.ev)].cli_args(PRESET),
        code=CODE["evaluate"],
    shell:
        "simclr-ablations evaluate {params.args} --run runs/grid/{wildcards.run} --data {input.data}"
        " --out runs/grid/{wildcards.run}/eval/{wildcards.ev} > {log} 2>&1"
