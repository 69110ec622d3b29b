"""Which trainer runs: transformers + peft ("hf") or Unsloth, and the one rule about importing them.

On a machine without a GPU ``import unsloth`` patches transformers and trl into a CPU mode whose
vision classes raise, so the CPU path must never import it; on the GPU path it must be imported
*before* transformers, or its patches miss the classes already imported. So the train stage calls
``resolve_backend`` first thing, before it imports anything else that imports transformers, and
``resolve_backend`` does the ``import unsloth`` itself when it picks unsloth. This module imports
nothing heavy at import time.
"""
from __future__ import annotations

import os
import sys

from maskgate.config import ParamsError, Train


def world_size() -> int:
    """Processes training together (torchrun sets WORLD_SIZE); 1 for a plain run."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def cuda_available() -> bool:
    import torch  # torch alone does not patch anything; unsloth may still be imported after it

    return torch.cuda.is_available()


def import_unsloth() -> bool:
    try:
        import unsloth  # noqa: F401  (imported for its patches, before transformers)
    except ImportError:
        return False
    return True


UNSLOTH_DATA_PARALLEL = (
    "train.backend=unsloth does not run data-parallel: Unsloth 2026.10.9 failed on Qwen3-VL under torchrun "
    "('too many values to unpack', docs/benchmarks.md); use train.backend: hf (auto picks it) with train.gpus > 1"
)


def resolve_backend(cfg: Train, preset: str) -> str:
    """"hf" or "unsloth" for `train.backend`; imports unsloth when (and only when) it picks it.

    Call it at the top of the entry point, before importing transformers or any project module that
    does: unsloth must patch transformers before its classes are imported.
    auto: unsloth if CUDA is available, the preset is not the tiny one (a CPU/CI model: hf serves it
    on any machine), training is not data-parallel, transformers is not imported yet, and
    ``import unsloth`` works; else hf. Data-parallel training (train.gpus > 1, or a launcher's
    WORLD_SIZE > 1) runs on hf only: see UNSLOTH_DATA_PARALLEL.
    """
    want = cfg.backend
    if want == "hf":
        return "hf"
    if cfg.gpus > 1 or world_size() > 1:
        if want == "unsloth":
            raise ParamsError(UNSLOTH_DATA_PARALLEL)
        return "hf"  # auto: the data-parallel path that ran (docs/benchmarks.md)
    if want == "unsloth":
        if not cuda_available():
            raise ParamsError("train.backend=unsloth needs a CUDA GPU (on CPU `import unsloth` breaks transformers)")
        if "unsloth" not in sys.modules and "transformers" in sys.modules:
            raise RuntimeError("train.backend=unsloth: resolve_backend must run before transformers is imported")
        if not import_unsloth():
            raise ParamsError("train.backend=unsloth but unsloth is not installed (requirements-gpu.txt)")
        return "unsloth"
    if preset == "tiny" or not cuda_available():
        return "hf"
    if "unsloth" not in sys.modules and "transformers" in sys.modules:
        print("train: transformers was imported before resolve_backend; using backend hf", file=sys.stderr)
        return "hf"
    return "unsloth" if import_unsloth() else "hf"
