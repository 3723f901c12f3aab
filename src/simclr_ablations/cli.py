"""Command line: `simclr-ablations fingerprint | prepare | pretrain | evaluate | diagnose | curves | params | table |
figure | findings`.

Every command that needs params takes the same three sources: `--preset NAME`, `--params FILE`
(repeatable; a file may name its preset with a top-level `preset:` key) and `--set key=value`
(repeatable). They are resolved and validated before anything else happens.
"""

from __future__ import annotations

import argparse
import errno
import json
import sys
from pathlib import Path

import yaml

from . import params


def _params_args(sp: argparse.ArgumentParser, threads: bool = False) -> None:
    sp.add_argument("--preset", help=f"one of: {', '.join(params.presets())}")
    sp.add_argument("--params", action="append", default=[], metavar="FILE", help="params file (repeatable)")
    sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key (repeatable)")
    if threads:
        sp.add_argument("--threads", type=int, default=0,
                        help="CPU threads: the same as --set runtime.threads=N (part of the run's identity)")


def _resolve(args) -> dict:
    settings = list(args.set)
    if getattr(args, "threads", 0):
        settings.append(f"runtime.threads={args.threads}")
    return params.load(args.preset, args.params, settings)


def _version() -> str:
    from . import provenance

    return f"simclr-ablations {provenance.code_version()}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="simclr-ablations", description=__doc__)
    ap.add_argument("--version", action="version", version=_version())
    ap.add_argument("--debug", action="store_true", help="show the traceback of a user error too")
    sub = ap.add_subparsers(dest="cmd", required=True)

    sp = sub.add_parser("params", help="print the resolved, validated params (YAML), or one key of them")
    _params_args(sp)
    sp.add_argument("--key", help="dotted key to print, e.g. data or pretrain.batch_size")
    sp.add_argument("--digest", action="store_true", help="print the pretraining id these params give")
    sp.add_argument("--eval-digest", action="store_true", help="print the evaluation id these params give")
    sp.add_argument("--out", type=Path, help="write the resolved params to this YAML file instead of printing them")

    sp = sub.add_parser("fingerprint", help="print (or write) the content digest of the data the params read")
    _params_args(sp)
    sp.add_argument("--out", type=Path, help="write it as JSON to this file (rewritten only when it changes)")

    sp = sub.add_parser("prepare", help="prepare a dataset into a directory of uint8 tensors")
    _params_args(sp)
    sp.add_argument("--out", required=True, type=Path)

    sp = sub.add_parser("pretrain", help="pretrain (resumes from out/checkpoint.pt if present)")
    _params_args(sp, threads=True)
    sp.add_argument("--data", required=True, type=Path, help="prepared dataset directory")
    sp.add_argument("--out", required=True, type=Path, help="run directory")

    sp = sub.add_parser("evaluate", help="linear eval + kNN of a finished run: OUT/metrics.json and OUT/params.yaml",
                        description="Evaluate a pretraining under the evaluation settings of the given params "
                                    "(none given: those it was pretrained with); only eval.* may differ.")
    _params_args(sp, threads=True)
    sp.add_argument("--run", required=True, type=Path, help="pretraining directory (holds model.pt)")
    sp.add_argument("--data", required=True, type=Path)
    sp.add_argument("--out", required=True, type=Path, help="output directory")

    sp = sub.add_parser("curves", help="plot a run's training curves")
    sp.add_argument("--run", required=True, type=Path)
    sp.add_argument("--out", required=True, type=Path)
    sp.add_argument("--title", default="")

    sp = sub.add_parser("diagnose", help="collapse diagnostics of a finished run: feature rank, spread, loss curve, "
                                         "how far training moved the encoder")
    sp.add_argument("--run", required=True, type=Path, action="append", help="run directory (repeatable)")
    sp.add_argument("--data", required=True, type=Path, help="prepared dataset directory")

    sp = sub.add_parser("table", help="aggregate a study's runs into results tables (CSV + Markdown)")
    sp.add_argument("--preset", required=True)
    sp.add_argument("--study", required=True)
    sp.add_argument("--runs", required=True, type=Path, help="directory holding one folder per run id")
    sp.add_argument("--out-dir", required=True, type=Path)
    sp.add_argument("--extra", action="append", default=[], metavar="KEY=VALUE", help="setting applied to every run")
    sp.add_argument("--caption", default="")
    sp.add_argument("--seeds", type=int, default=0, help="number of replicates (0: the preset's)")
    sp.add_argument("--baseline", metavar="STUDY",
                    help="study whose runs are the table's floor (untrained): shown and cells below it marked")

    sp = sub.add_parser("figure", help="draw a study's figure from its tables")
    sp.add_argument("--study", required=True)
    sp.add_argument("--tables", required=True, type=Path)
    sp.add_argument("--out", required=True, type=Path)
    sp.add_argument("--caption", default="")
    sp.add_argument("--baseline", type=Path, metavar="RUNS_CSV",
                    help="runs table of the untrained encoder (untrained_runs.csv): drawn as the floor")

    sp = sub.add_parser("findings", help="check the paper's findings against the tables")
    sp.add_argument("--tables", required=True, type=Path)
    sp.add_argument("--out", required=True, type=Path)
    sp.add_argument("--preset", required=True)
    sp.add_argument("--dataset", default="synthetic")

    args = ap.parse_args(argv)
    try:
        return _dispatch(args)
    except Exception as e:
        message = user_error(e)
        if message is None or args.debug:
            raise
        print(f"simclr-ablations {args.cmd}: {message}", file=sys.stderr)
        return 2


def user_error(e: BaseException) -> str | None:
    """The one- or two-line message of a user error (bad params, data, files, disk), None for a bug."""
    from . import checkpoint

    if isinstance(e, params.ParamsError):
        return f"invalid params: {e}"
    if isinstance(e, checkpoint.UserError):
        return str(e)
    if type(e).__name__ in ("TrainingDiverged", "DatasetMissing", "BadImage"):
        return str(e)
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return f"no space left on the device ({e.filename or 'writing outputs'}); free some space and rerun"
    if isinstance(e, OSError) and e.filename is not None:
        return f"{e.strerror}: {e.filename}"
    return None


def _dispatch(args) -> int:
    if args.cmd == "params":
        p = _resolve(args)
        if args.digest or args.eval_digest:
            print(params.pretrain_id(p) if args.digest else params.eval_id(p))
            return 0
        if args.out:
            params.dump(p, args.out)
            return 0
        node = p
        for part in (args.key.split(".") if args.key else []):
            node = node[part]
        print(yaml.safe_dump(node, sort_keys=False) if isinstance(node, dict) else json.dumps(node))
        return 0
    if args.cmd == "fingerprint":
        from . import fingerprint

        p = _resolve(args)
        d = p["data"]
        text = json.dumps({"dataset": d["dataset"], "root": d["root"], "fingerprint": fingerprint.of_data(d)},
                          indent=2) + "\n"
        if not args.out:
            print(text, end="")
        elif not args.out.is_file() or args.out.read_text() != text:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            with params.atomic_path(args.out) as tmp:
                tmp.write_text(text)
        return 0
    if args.cmd == "prepare":
        from . import data

        p = _resolve(args)
        out = data.prepare(p, args.out)
        print(json.dumps(data.load_meta(out)["sizes"]))
        return 0
    if args.cmd == "pretrain":
        from . import pretrain

        p = _resolve(args)
        summary = pretrain.train(p, args.data, args.out)
        print(json.dumps({k: summary[k] for k in ("run_id", "train_seconds", "device")}))
        return 0
    if args.cmd == "evaluate":
        from . import evaluate

        if not (args.preset or args.params):
            args.params = [args.run / "params.yaml"]  # the params it was pretrained with (+ any --set)
        p = _resolve(args)
        metrics = evaluate.evaluate(args.run, args.data, p)
        evaluate.write(metrics, p, args.out)
        print(json.dumps({k: metrics[k] for k in ("run_id", "linear_top1", "knn_top1")}))
        return 0
    if args.cmd == "curves":
        from . import plots

        plots.curves(args.run / "history.csv", args.out, args.title)
        return 0
    if args.cmd == "diagnose":
        from . import diagnose

        for run in args.run:
            print(json.dumps(diagnose.diagnose(run, args.data)))
        return 0
    if args.cmd == "table":
        from . import tables

        tables.write(args.preset, args.study, args.runs, args.out_dir, tuple(args.extra), args.caption, args.seeds,
                     args.baseline)
        return 0
    if args.cmd == "figure":
        from . import figures

        figures.draw(args.study, args.tables, args.out, args.caption, args.baseline)
        return 0
    if args.cmd == "findings":
        from . import findings

        findings.write(args.tables, args.out, args.preset, args.dataset, findings.cost_table(args.tables))
        return 0
    raise AssertionError(args.cmd)


if __name__ == "__main__":
    sys.exit(main())
