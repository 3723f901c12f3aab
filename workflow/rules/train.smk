# Data preparation, pretraining and evaluation of one run. Pretraining resumes from
# runs/grid/<run>/checkpoint.pt (not a declared output, so Snakemake never deletes it) after a
# kill, a failure or a Slurm requeue; model.pt and metrics.json appear only when complete.


rule prepare:
    output:
        directory("data/grid/{data_id}"),
    params:
        args=lambda wc: DATA_ARGS[wc.data_id],
    log:
        "logs/prepare/{data_id}.log",
    localrule: True
    shell:
        "simclr-ablations prepare --preset {PRESET} {params.args} --out {output} > {log} 2>&1"


rule pretrain:
    input:
        data=lambda wc: f"data/grid/{DATA_OF[wc.run]}",
    output:
        "runs/grid/{run}/model.pt",
    params:
        args=lambda wc: UNIQUE[wc.run].cli_args(PRESET),
    log:
        "runs/grid/{run}/pretrain.log",
    benchmark:
        "runs/grid/{run}/pretrain.bench.tsv"
    threads: RES["threads"]
    resources:
        gpu=RES["gpu"],
        mem_mb=RES["mem_mb"],
        runtime=RES["runtime"],
    shell:
        "simclr-ablations pretrain {params.args} --data {input.data} --out runs/grid/{wildcards.run}"
        " --threads {threads} >> {log} 2>&1"


rule evaluate:
    input:
        model="runs/grid/{run}/model.pt",
        data=lambda wc: f"data/grid/{DATA_OF[wc.run]}",
    output:
        "runs/grid/{run}/metrics.json",
    log:
        "runs/grid/{run}/evaluate.log",
    benchmark:
        "runs/grid/{run}/evaluate.bench.tsv"
    threads: RES["threads"]
    resources:
        gpu=RES["gpu"],
        mem_mb=RES["mem_mb"],
        runtime=max(10, RES["runtime"] // 4),
    shell:
        "simclr-ablations evaluate --run runs/grid/{wildcards.run} --data {input.data} --out {output}"
        " --threads {threads} > {log} 2>&1"
