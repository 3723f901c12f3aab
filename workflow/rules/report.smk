# Tables, figures, the findings summary, and the DVC record of what the grid made.
# When the grid makes the untrained encoder (study `untrained`), it is the floor of every other
# study's table and figure: those rules then read its runs too; without it they have no floor.

FLOOR = "untrained" if "untrained" in STUDIES else ""
FLOOR_RUNS = RUNS[FLOOR] if FLOOR else []


rule table:
    input:
        lambda wc: [
            r.metrics_path("runs/grid")
            for r in RUNS[wc.study] + (FLOOR_RUNS if wc.study != FLOOR else [])
        ],
    output:
        csv=f"{RESULTS}/tables/{{study}}.csv",
        runs=f"{RESULTS}/tables/{{study}}_runs.csv",
        md=f"{RESULTS}/tables/{{study}}.md",
    log:
        f"logs/{TAG}/table_{{study}}.log",
    localrule: True
    conda:
        ENV
    params:
        preset=PRESET,
        extra=EXTRA_ARGS,
        seeds=config["seeds"],
        out=lambda wc, output: os.path.dirname(output.csv),
        caption=f", dataset {DATASET}",
        baseline=lambda wc: f"--baseline {FLOOR}" if FLOOR and wc.study != FLOOR else "",
        code=CODE["table"],
    shell:
        "simclr-ablations table --preset {params.preset} --study {wildcards.study} --runs runs/grid"
        " --out-dir {params.out} {params.extra} --seeds {params.seeds} --caption '{params.caption}'"
        " {params.baseline} > {log} 2>&1"


rule figure:
    input:
        f"{RESULTS}/tables/{{study}}.csv",
        f"{RESULTS}/tables/{{study}}_runs.csv",
        floor=lambda wc: (
            [f"{RESULTS}/tables/{FLOOR}_runs.csv"]
            if FLOOR and wc.study != FLOOR
            else []
        ),
    output:
        png=report(
            f"{RESULTS}/figures/{{study}}.png",
            caption="../report/figure.rst",
            category="SimCLR ablations",
            subcategory="{study}",
        ),
        pdf=f"{RESULTS}/figures/{{study}}.pdf",
    log:
        f"logs/{TAG}/figure_{{study}}.log",
    localrule: True
    conda:
        ENV
    params:
        tables=lambda wc, input: os.path.dirname(input[0]),
        caption=CAPTION,
        baseline=lambda wc: (
            f"--baseline {RESULTS}/tables/{FLOOR}_runs.csv"
            if FLOOR and wc.study != FLOOR
            else ""
        ),
        code=CODE["figure"],
    shell:
        "simclr-ablations figure --study {wildcards.study} --tables {params.tables} --out {output.png}"
        " --caption '{params.caption}' {params.baseline} > {log} 2>&1"


rule findings:
    input:
        expand(f"{RESULTS}/tables/{{study}}_runs.csv", study=STUDIES),
    output:
        md=report(
            f"{RESULTS}/README.md",
            caption="../report/findings.rst",
            category="Findings",
        ),
        csv=f"{RESULTS}/findings.csv",
    log:
        f"logs/{TAG}/findings.log",
    localrule: True
    conda:
        ENV
    params:
        tables=lambda wc, input: os.path.dirname(input[0]),
        preset=PRESET,
        dataset=DATASET,
        code=CODE["findings"],
    shell:
        "simclr-ablations findings --tables {params.tables} --out {output.md} --preset {params.preset}"
        " --dataset {params.dataset} > {log} 2>&1"


rule record:
    """Version what the grid made in DVC and push it to the default remote: one step, after the grid,
    because DVC takes a repository lock. `snakemake -c1 record --config preset=...`; on a fresh clone,
    `dvc pull data/grid.dvc runs/grid.dvc results/<preset>.dvc` then `snakemake --touch` restores it.
    """
    input:
        ALL_OUTPUTS,
    log:
        f"logs/{TAG}/record.log",
    localrule: True
    conda:
        ENV
    params:
        results=lambda wc, input: os.path.dirname(os.path.dirname(input[0])),
    shell:
        "(dvc add data/grid runs/grid {params.results}"
        " && dvc push data/grid.dvc runs/grid.dvc {params.results}.dvc) > {log} 2>&1"
