# Tables, figures, the findings summary, and the DVC record of what the grid made.


rule table:
    input:
        lambda wc: [f"runs/grid/{r.id}/metrics.json" for r in RUNS[wc.study]],
    output:
        csv=f"{RESULTS}/tables/{{study}}.csv",
        runs=f"{RESULTS}/tables/{{study}}_runs.csv",
        md=f"{RESULTS}/tables/{{study}}.md",
    params:
        extra=EXTRA_ARGS,
        seeds=config["seeds"],
    log:
        f"logs/{TAG}/table_{{study}}.log",
    localrule: True
    shell:
        "simclr-ablations table --preset {PRESET} --study {wildcards.study} --runs runs/grid"
        " --out-dir {RESULTS}/tables {params.extra} --seeds {params.seeds} --caption ', dataset {DATASET}'"
        " > {log} 2>&1"


rule figure:
    input:
        f"{RESULTS}/tables/{{study}}.csv",
        f"{RESULTS}/tables/{{study}}_runs.csv",
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
    shell:
        "simclr-ablations figure --study {wildcards.study} --tables {RESULTS}/tables --out {output.png}"
        " --caption '{CAPTION}' > {log} 2>&1"


rule findings:
    input:
        expand(f"{RESULTS}/tables/{{study}}_runs.csv", study=STUDIES),
    output:
        report(f"{RESULTS}/README.md", caption="../report/findings.rst", category="Findings"),
        f"{RESULTS}/findings.csv",
    log:
        f"logs/{TAG}/findings.log",
    localrule: True
    shell:
        "simclr-ablations findings --tables {RESULTS}/tables --out {RESULTS}/README.md --preset {PRESET}"
        " --dataset {DATASET} > {log} 2>&1"


rule record:
    """Version what the grid made in DVC and push it to the default remote: one step, after the grid,
    because DVC takes a repository lock. `snakemake -c1 record --config preset=...`; on a fresh clone,
    `dvc pull data/grid.dvc runs/grid.dvc results/<preset>.dvc` then `snakemake --touch` restores it."""
    input:
        ALL_OUTPUTS,
    localrule: True
    shell:
        "dvc add data/grid runs/grid {RESULTS} && dvc push data/grid.dvc runs/grid.dvc {RESULTS}.dvc"
