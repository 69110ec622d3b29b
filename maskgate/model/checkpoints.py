"""Resume: which checkpoint a re-run starts from, and the curves it must not log twice.

The Trainer writes checkpoints (adapter as safetensors + optimizer, scheduler and RNG states) into
``checkpoints/`` every ``save_steps`` optimizer steps and at the last step. A re-run resumes from the
newest complete one and ends at the same step count as an uninterrupted run. A checkpoint folder
written with other settings (params or data) is never resumed from: ``checkpoints/fingerprint.json``
records what the checkpoints belong to, and a mismatch clears the folder (DVC keeps it with
``persist: true`` across param changes).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

from maskgate.utils import tables


# Settings that do not change the weights a run ends with: changing them keeps the checkpoints.
# `gpus` too: the effective batch and the examples of each optimizer step are the same on any GPU count
# (accelerate deals batch i to rank i mod N), so a run may resume on another count; only the dropout
# masks differ (each rank has its own RNG state, restored when the count is the same).
NOT_IN_FINGERPRINT = {"save_steps", "keep_checkpoints", "eval_steps", "eval_examples", "logging_steps",
                      "dataloader_workers", "cpu_threads", "gpus", "batched_vision"}  # batched_vision: bitwise the same


def fingerprint(job, rendered: Path, backend: str) -> dict:
    """What a checkpoint folder belongs to: every setting of `job` (train.TrainJob) that changes the
    training, and the data files."""
    files = sorted(Path(rendered).glob("*.parquet"))
    data = hashlib.sha256("".join(f"{p.name}:{p.stat().st_size};" for p in files).encode()).hexdigest()
    keys = dataclasses.asdict(job)
    keys["train"] = {k: v for k, v in keys["train"].items() if k not in NOT_IN_FINGERPRINT}
    return {"backend": backend, "params": json.loads(json.dumps(keys, sort_keys=True, default=str)), "data": data}


def prepare_checkpoints(checkpoints: Path, print_fn=print, **fingerprint_) -> str | None:
    """The checkpoint to resume from, or None; clears a folder whose fingerprint does not match."""
    checkpoints = Path(checkpoints)
    stamp = checkpoints / "fingerprint.json"
    if checkpoints.is_dir() and any(checkpoints.iterdir()):
        old = json.loads(stamp.read_text()) if stamp.exists() else None
        if old != fingerprint_:
            print_fn(f"train: {checkpoints} holds checkpoints of other settings or data; starting afresh")
            shutil.rmtree(checkpoints)
    checkpoints.mkdir(parents=True, exist_ok=True)
    # A new file renamed over the old, never a write into it: with DVC's hardlink or symlink cache
    # (.dvc/config) this persist output's files are the cache's own, and root ignores their read-only mode.
    with tables.atomic_file(stamp) as tmp:
        tmp.write_text(json.dumps(fingerprint_, indent=1, sort_keys=True) + "\n")
    return last_complete_checkpoint(checkpoints, print_fn)


def last_complete_checkpoint(checkpoints: Path, print_fn=print) -> str | None:
    """The newest `checkpoint-N` that was saved to the end, or None.

    The Trainer writes a checkpoint's files one after another and `trainer_state.json` last, so a
    run killed while saving leaves a folder without it (or with it cut short). Such a folder is
    removed, and the run resumes from the one before. So is one without safetensors weights: the
    Trainer would load a `.bin` pickle in their place, and weights load only from safetensors.
    """
    found = []
    for path in Path(checkpoints).iterdir():
        name = path.name.split("-")
        if path.is_dir() and len(name) == 2 and name[0] == "checkpoint" and name[1].isdigit():
            found.append((int(name[1]), path))
    for _, path in sorted(found, reverse=True):
        try:
            int(json.loads((path / "trainer_state.json").read_text())["global_step"])
            if any(path.glob("*.safetensors")):
                return str(path)
            print_fn(f"train: {path} has no safetensors weights; removing it")
        except (OSError, ValueError, KeyError, TypeError):
            print_fn(f"train: {path} was not saved to the end (interrupted while saving?); removing it")
        shutil.rmtree(path)
    return None


def checkpoint_step(path: str | None) -> int:
    if path is None:
        return 0
    state = json.loads((Path(path) / "trainer_state.json").read_text())
    return int(state["global_step"])


def truncate_live(live_dir: Path, step: int) -> None:
    """Drop metric rows logged after `step` (an interrupted run's steps that are about to be redone)."""
    for tsv in (Path(live_dir) / "plots" / "metrics").rglob("*.tsv"):
        lines = tsv.read_text().splitlines()
        if not lines:
            continue
        header = lines[0].split("\t")
        col = header.index("step")
        kept = [lines[0]] + [ln for ln in lines[1:] if int(ln.split("\t")[col]) <= step]
        tsv.write_text("\n".join(kept) + "\n")
