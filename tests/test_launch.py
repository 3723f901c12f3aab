"""Several GPUs and nodes: the command lines the workflow generates (launch.py), and a 2-"node"
c10d rendezvous of two local torchrun processes (1 process each, gloo on the CPU) training 2 steps."""

from __future__ import annotations

import json
import socket
import subprocess

from simclr_ablations import data, launch, params

from conftest import need

TINY = ["data.synthetic.train_size=64", "data.synthetic.test_size=32", "pretrain.batch_size=32",
        "pretrain.epochs=1", "pretrain.warmup_epochs=0"]


def test_one_gpu_runs_the_cli_alone():
    p = params.load("smoke")
    assert launch.launcher(p) == "simclr-ablations" and launch.slurm_resources(p) == {"gpu": 1}


def test_one_node_runs_one_standalone_torchrun_on_its_gpus():
    p = params.load("smoke", settings=["runtime.gpus=4"])
    assert launch.launcher(p) == "torchrun --standalone --nproc_per_node=4 -m simclr_ablations.cli"
    assert launch.slurm_resources(p) == {"gpu": 4}


def test_nodes_run_one_torchrun_each_with_a_c10d_rendezvous():
    p = params.load("smoke", settings=["runtime.gpus=2", "runtime.nodes=4"])
    line = launch.launcher(p)
    assert line.startswith("srun --nodes=$SLURM_NNODES --ntasks-per-node=1 ")
    for part in ("torchrun --nnodes=$SLURM_NNODES --nproc_per_node=2", "--rdzv_backend=c10d", "--rdzv_id=$SLURM_JOB_ID",
                 "--rdzv_endpoint=$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n1):29500"):
        assert part in line
    res = launch.slurm_resources(p)
    assert res["nodes"] == 4 and res["tasks"] == 4 and res["mpi"] == "srun" and "gpu" not in res
    assert "--ntasks-per-node=1" in res["slurm_extra"] and "--gpus-per-node=2" in res["slurm_extra"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_node_rendezvous_trains(tmp_path):
    torchrun = need("torchrun")
    d = data.prepare(params.load("smoke", settings=TINY), tmp_path / "data")
    port = _port()
    sets = [a for s in TINY + ["runtime.nodes=2"] for a in ("--set", s)]
    procs = [subprocess.Popen([torchrun, "--nnodes=2", f"--node_rank={i}", "--nproc_per_node=1",
                               "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=test",
                               "-m", "simclr_ablations.cli", "pretrain", "--preset", "smoke", *sets,
                               "--data", str(d), "--out", str(tmp_path / "run")],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
             for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outs)
    summary = json.loads((tmp_path / "run" / "train.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 2
    assert (tmp_path / "run" / "model.pt").exists()
