"""Data-parallel training: the train stage starts one process per GPU through torchrun.

``train.gpus`` picks the number of processes, so the dvc.yaml command stays ``python stages/train.py``
and ``dvc exp run -S train.gpus=2`` trains on two GPUs without editing anything. With ``gpus > 1`` the
stage replaces itself (``os.execv``) by ``python -m torch.distributed.run --standalone
--nproc_per_node N stages/train.py <same arguments>`` (torchrun, part of torch); each of the N
processes then runs the stage as usual and the Trainer (through accelerate) does DDP: one model copy
per GPU, gradients averaged after every backward. Launched by hand (``torchrun ...`` or ``accelerate
launch ...``), the stage finds ``WORLD_SIZE`` set and does not launch again; the launcher's process
count wins over ``train.gpus``.

Why exec rather than a child process: a signal for the stage (Ctrl-C, ``kill``, a job scheduler) then
reaches torchrun itself, which stops its workers; a parent left waiting would leave them orphaned.

The effective batch stays ``train.batch_size`` whatever the count: gradient accumulation becomes
batch / (micro-batch x processes) (``training.gradient_accumulation``). Without CUDA the processes
talk through gloo on the CPU: slow, only for tests.
"""
from __future__ import annotations

import os
import sys


def launched() -> bool:
    """True inside a process started by torchrun or accelerate launch (they set WORLD_SIZE)."""
    return "WORLD_SIZE" in os.environ


def is_main_process() -> bool:
    """Rank 0, or a plain run: the one process that writes reports, manifests and adapters."""
    return int(os.environ.get("RANK", "0")) == 0


def check_gpus(gpus: int) -> None:
    """ValueError when more GPUs are asked for than this machine has (CPU-only machines: gloo, any count)."""
    import torch  # torch alone patches nothing, so unsloth may still be imported after it

    if torch.cuda.is_available() and gpus > torch.cuda.device_count():
        raise ValueError(f"train.gpus is {gpus} but this machine has {torch.cuda.device_count()} CUDA GPU(s) visible")


def torchrun_command(gpus: int, script: str, argv: list[str]) -> list[str]:
    """`python -m torch.distributed.run` on this machine alone (a free port: two jobs never clash)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
            script, *argv]


def relaunch(gpus: int, script: str, argv: list[str]) -> None:
    """Replace this process by torchrun running `script argv` in `gpus` processes; does not return."""
    cmd = torchrun_command(gpus, script, argv)
    print(f"train: {gpus} data-parallel processes: {' '.join(cmd[1:])}", flush=True)
    sys.stderr.flush()
    os.execv(cmd[0], cmd)
