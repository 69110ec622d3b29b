"""Speed settings for scoring (evaluate and the gate): the model made faster once it is loaded.

Each one keeps P(ACCEPT) equal within rounding, and each is off until bench/throughput.py has
measured it (docs/benchmarks.md):

* `merge_adapter`: fold the LoRA adapter into the base weights (peft `merge_and_unload`), so a
  forward pass is the base model's alone, with no LoRA branch beside each projection. Exact up to
  bf16 rounding of the merged weight. Never on a 4-bit (QLoRA) base: merging dequantises, adds and
  re-quantises, so the adapter would be scored on other weights than it was trained on.
* `compile`: `torch.compile` each decoder layer of the language model (dynamic shapes, so batches of
  other lengths do not recompile); the vision tower splits its attention per image with
  data-dependent shapes and stays eager. CUDA only, else a no-op that prints why: on CPU compiling
  costs far more than it saves on the tiny model. Not on a 4-bit base (bitsandbytes layers were never
  measured compiled).
* `workers` (score's argument, not a model change): batches prepared in worker processes while the
  GPU runs (scoring.batches).

`evaluate.batch_size` is the fourth knob; the largest that fits is usually fastest. Together they are
`Scoring`. The values come from params.yaml's `evaluate` section alone: evaluate reads it, records it
in the operating point it writes, and the gate takes it from there (or from a params file given to it).
"""
from __future__ import annotations

import dataclasses
import re

from pydantic import ConfigDict, StrictBool, StrictInt
from pydantic.dataclasses import dataclass

from maskgate import config
from maskgate.config import Evaluate

DECODER_LAYER = re.compile(r"(^|\.)language_model\.layers\.\d+$")


@dataclass(config=ConfigDict(extra="forbid", frozen=True))
class Scoring:
    """How evaluate scores, and so how the gate scores: the evaluate section's batch size and speed keys."""

    batch_size: StrictInt
    workers: StrictInt
    merge_adapter: StrictBool
    compile: StrictBool

    @classmethod
    def of(cls, e: Evaluate) -> "Scoring":
        return cls(**{f.name: getattr(e, f.name) for f in dataclasses.fields(cls)})

    @classmethod
    def from_dict(cls, d: dict, where: str) -> "Scoring":
        """The settings an operating point recorded; ParamsError in one line naming a missing or bad key."""
        return config.from_section(cls, d, f"{where}: the recorded scoring settings")

    def record(self) -> dict:
        return dataclasses.asdict(self)


# The gate with no params file and no operating point: base + adapter as loaded, modest batches.
PLAIN = Scoring(batch_size=16, workers=0, merge_adapter=False, compile=False)


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


def for_scoring(model, s: Scoring, where: str = "scoring", print_fn=print):
    """The model (eval mode) with the speed settings of `s` applied; may be a new object."""
    from maskgate.model.verifier import is_quantized

    quantized = is_quantized(model)
    if s.merge_adapter and hasattr(model, "merge_and_unload"):
        if quantized:
            print_fn(f"{where}: the base is 4-bit (QLoRA): scoring base + adapter unmerged, since merging would "
                     "re-quantise the weights it was trained on")
        else:
            model = model.merge_and_unload()
            print_fn(f"{where}: LoRA adapter merged into the base weights")
    model.eval()
    if s.compile and quantized:
        print_fn(f"{where}: compile is not used on a 4-bit base; running eager")
    elif s.compile:
        compile_decoder(model, model.device, where, print_fn)
    return model
