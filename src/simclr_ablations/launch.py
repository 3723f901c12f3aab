"""How the workflow starts a pretraining of runtime.gpus x runtime.nodes processes, and what its Slurm
job asks for. Engines only: torchrun (one per node) and srun; no launcher of our own.

- 1 process: `simclr-ablations pretrain ...`, one Slurm task on 1 GPU (the executor plugin's `srun -n1`).
- 1 node, G > 1 GPUs: `torchrun --standalone --nproc_per_node=G -m simclr_ablations.cli pretrain ...`
  inside that one task, which holds the G GPUs (--gpus=G) and G x threads CPUs (--cpus-per-gpu).
- N > 1 nodes: the job gets N nodes with G GPUs each; the plugin's MPI route (resource `mpi`) runs
  the rule's command once in the batch script, and the command starts one torchrun per node with
  `srun --ntasks-per-node=1`, which meet at a c10d rendezvous on the job's first node.
"""

from __future__ import annotations

RDZV_PORT = 29500
MODULE = "-m simclr_ablations.cli"


def launcher(p: dict) -> str:
    """The command that runs `simclr-ablations` with the params' world size (append `pretrain ...`)."""
    gpus, nodes = p["runtime"]["gpus"], p["runtime"]["nodes"]
    if nodes > 1:
        return ("srun --nodes=$SLURM_NNODES --ntasks-per-node=1 --kill-on-bad-exit=1 "
                f"torchrun --nnodes=$SLURM_NNODES --nproc_per_node={gpus} --rdzv_id=$SLURM_JOB_ID "
                "--rdzv_backend=c10d --rdzv_endpoint=$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n1)"
                f":{RDZV_PORT} {MODULE}")
    if gpus > 1:
        return f"torchrun --standalone --nproc_per_node={gpus} {MODULE}"
    return "simclr-ablations"


def slurm_resources(p: dict) -> dict:
    """Snakemake resources of the pretraining job beyond the preset's memory and time: its GPUs, and for
    several nodes the node count and the plugin's MPI route (no `srun -n1` around the command)."""
    gpus, nodes = p["runtime"]["gpus"], p["runtime"]["nodes"]
    if nodes == 1:
        return {"gpu": gpus}
    return {"nodes": nodes, "tasks": nodes, "mpi": "srun",
            "slurm_extra": f"'--ntasks-per-node=1 --gpus-per-node={gpus}'"}
