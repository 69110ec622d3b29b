"""Speed settings for scoring (evaluate and the gate): the model made faster once it is loaded.

Each one keeps P(ACCEPT) equal within rounding, and each is off until bench/throughput.py has
measured it (BENCHMARKS.md):

* `merge_adapter`: fold the LoRA adapter into the base weights (peft `merge_and_unload`), so a
  forward pass is the base model's alone, with no LoRA branch beside each projection. Exact up to
  bf16 rounding of the merged weight. Never on a 4-bit (QLoRA) base: merging dequantises, adds and
  re-quantises, so the adapter would be scored on other weights than it was trained on.
* `fp8`: the language model's decoder linears in FP8 (maskgate.model.fp8; CUDA with compute capability
  8.9 or newer, else a no-op that prints why). Within FP8 rounding.
* `compile`: `torch.compile` each decoder layer of the language model (dynamic shapes, so batches of
  other lengths do not recompile); the vision tower splits its attention per image with
  data-dependent shapes and stays eager. CUDA only, else a no-op that prints why: on CPU compiling
  costs far more than it saves on the tiny model. Not on a 4-bit base (bitsandbytes layers were never
  measured compiled).
* `workers` (score's argument, not a model change): batches prepared in worker processes while the
  GPU runs (scoring.batches).

`evaluate.batch_size` is the fifth knob; the largest that fits is usually fastest. The values come
from params.yaml's `evaluate` section alone: evaluate reads it, records it in the operating point it
writes, and the gate takes it from there (or from a params file given to it).
"""
from __future__ import annotations

import re

from maskgate.model import fp8 as fp8_
SPEED_KEYS = ("merge_adapter", "fp8", "compile", "workers")
DECODER_LAYER = re.compile(r"(^|\.)language_model\.layers\.\d+$")


def speed_settings(cfg: dict) -> dict:
    """The speed keys of params["evaluate"]; ValueError on a missing key or a bad value."""
    missing = [k for k in SPEED_KEYS if k not in cfg]
    if missing:
        raise ValueError(f"the evaluate settings lack {missing} (params.yaml's evaluate section lists them)")
    out = {k: cfg[k] for k in SPEED_KEYS}
    for key in ("merge_adapter", "fp8", "compile"):
        if not isinstance(out[key], bool):
            raise ValueError(f"evaluate.{key} must be true or false, got {out[key]!r}")
    if not isinstance(out["workers"], int) or out["workers"] < 0:
        raise ValueError(f"evaluate.workers must be a non-negative integer, got {out['workers']!r}")
    return out


def decoder_layers(model) -> list:
    """The language model's decoder layers (under a peft wrapper or not)."""
    return [m for name, m in model.named_modules() if DECODER_LAYER.search(name)]


def compile_decoder(model, device, where: str, print_fn=print) -> bool:
    """torch.compile each decoder layer in place (CUDA only; else a no-op that says why); True if compiled."""
    import torch

    if torch.device(device).type != "cuda":
        print_fn(f"{where}: compile requested but device {device} is not a CUDA GPU; running eager")
        return False
    layers = decoder_layers(model)
    if not layers:
        raise ValueError(f"{where}: compile found no language-model decoder layer")
    for layer in layers:
        layer.compile(dynamic=True)
    print_fn(f"{where}: {len(layers)} decoder layers compiled (torch.compile, dynamic shapes)")
    return True


def for_scoring(model, cfg: dict, where: str = "scoring", print_fn=print):
    """The model (eval mode) with the speed settings of `cfg` (params["evaluate"]) applied; may be a new object."""
    from maskgate.model.verifier import is_quantized

    s = speed_settings(cfg)
    quantized = is_quantized(model)
    if s["merge_adapter"] and hasattr(model, "merge_and_unload"):
        if quantized:
            print_fn(f"{where}: the base is 4-bit (QLoRA): scoring base + adapter unmerged, since merging would "
                     "re-quantise the weights it was trained on")
        else:
            model = model.merge_and_unload()
            print_fn(f"{where}: LoRA adapter merged into the base weights")
    model.eval()
    if s["fp8"]:
        model.requires_grad_(False)  # scoring never needs gradients; fp8 converts frozen layers only
        fp8_.apply(model, model.device, where, print_fn)
    if s["compile"] and quantized:
        print_fn(f"{where}: compile is not used on a 4-bit base; running eager")
    elif s["compile"]:
        compile_decoder(model, model.device, where, print_fn)
    return model
