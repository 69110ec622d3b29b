"""Speed settings for scoring (evaluate and the gate): the model made faster once it is loaded.

Each one keeps P(ACCEPT) equal within rounding, and each is off until bench/throughput.py has
measured it (docs/benchmarks.md):

* `merge_adapter`: fold the LoRA adapter into the base weights (peft `merge_and_unload`), so a
  forward pass is the base model's alone, with no LoRA branch beside each projection. Exact up to
  bf16 rounding of the merged weight. Never on a 4-bit (QLoRA) base: merging dequantises, adds and
  re-quantises, so the adapter would be scored on other weights than it was trained on.
* `compile`: `torch.compile` each decoder layer of the language model (dynamic shapes, so batches of
  other lengths do not recompile). CUDA only, else a no-op that prints why: on CPU compiling
  costs far more than it saves on the tiny model. Not on a 4-bit base (bitsandbytes layers were never
  measured compiled).
* `compile_vision`: the same for each block of the vision tower, whose shapes are fixed once its
  attention is batched (`batched_vision`; without it the library's attention splits per image with
  data-dependent shapes, and compiling is refused). CUDA only, not on a 4-bit base.
* `batched_vision`: the vision tower's attention as one call per layer over all images of a batch
  (maskgate/model/vision.py): bitwise the library's per-image result, without its per-layer sync.
* `workers` and `prefetch` (score's arguments, not model changes): batches prepared in worker
  processes, or the next batch in a thread, while the GPU runs (scoring.batches).
* `overlap` (score's argument too): no wait for the GPU between batches: position ids made with the
  batch, copied from pinned memory on a side stream, scores read back one batch late (scoring.Overlap).
* `patch_matmul`: the vision tower's patch embedding (a Conv3d whose kernel is its stride) as one matrix
  product (vision.patch_embed_as_matmul); equal within rounding.
* `last_layer_at_answer`: the last decoder layer computes only the position whose logits are read
  (maskgate/model/last_layer.py); equal within rounding.

`evaluate.batch_size` is the last knob; the largest that fits is usually fastest, and `auto` finds it
(maskgate/model/autobatch.py). Together they are `Scoring`. The values come from params.yaml's `evaluate` section alone: evaluate reads it, records it
in the operating point it writes, and the gate takes it from there (or from a params file given to it).
"""
from __future__ import annotations

import dataclasses
import re

from typing import Literal, Union

from pydantic import ConfigDict, StrictBool, StrictInt
from pydantic.dataclasses import dataclass

from maskgate import config
from maskgate.config import Evaluate

DECODER_LAYER = re.compile(r"(^|\.)language_model\.layers\.\d+$")


@dataclass(config=ConfigDict(extra="forbid", frozen=True))
class Scoring:
    """How evaluate scores, and so how the gate scores: the evaluate section's batch size and speed keys."""

    batch_size: Union[StrictInt, Literal["auto"]]
    workers: StrictInt
    prefetch: StrictBool
    merge_adapter: StrictBool
    compile: StrictBool
    batched_vision: StrictBool
    compile_vision: StrictBool
    # after the others: operating points recorded before these existed still read (as off)
    overlap: StrictBool = False
    patch_matmul: StrictBool = False
    last_layer_at_answer: StrictBool = False

    @classmethod
    def of(cls, e: Evaluate) -> "Scoring":
        return cls(**{f.name: getattr(e, f.name) for f in dataclasses.fields(cls)})

    @classmethod
    def from_dict(cls, d: dict, where: str) -> "Scoring":
        """The settings an operating point recorded; ParamsError in one line naming a missing or bad key."""
        return config.from_section(cls, d, f"{where}: the recorded scoring settings")

    def record(self) -> dict:
        return dataclasses.asdict(self)


# The gate with no params file and no operating point: base + adapter as loaded, modest batches (the
# batched vision attention is bitwise the library's, so it is on here too).
PLAIN = Scoring(batch_size=16, workers=0, prefetch=False, merge_adapter=False, compile=False, batched_vision=True,
                compile_vision=False)


def decoder_layers(model) -> list:
    """The language model's decoder layers (under a peft wrapper or not)."""
    return [m for name, m in model.named_modules() if DECODER_LAYER.search(name)]


def vision_blocks(model) -> list:
    """The vision tower's blocks (under a peft wrapper or not)."""
    return [m for m in model.modules() if type(m).__name__ == "Qwen3VLVisionBlock"]


def compile_layers(layers: list, what: str, device, where: str, print_fn=print, dynamic=True) -> bool:
    """torch.compile each of `layers` in place (CUDA only; else a no-op that says why); True if compiled."""
    import torch

    if torch.device(device).type != "cuda":
        print_fn(f"{where}: compiling the {what} requested but device {device} is not a CUDA GPU; running eager")
        return False
    if not layers:
        raise ValueError(f"{where}: compile found no {what}")
    for layer in layers:
        layer.compile(dynamic=dynamic)
    print_fn(f"{where}: {len(layers)} {what} compiled (torch.compile{', dynamic shapes' if dynamic else ''})")
    return True


def compile_decoder(model, device, where: str, print_fn=print) -> bool:
    return compile_layers(decoder_layers(model), "decoder layers", device, where, print_fn)


def vision_and_last_layer(model, s, where: str, print_fn=print):
    """The speed settings training and scoring share, in place: `s` is the train section or Scoring.
    batched_vision: the vision tower's attention batched over images; patch_matmul: its patch embedding as one
    matrix product (maskgate/model/vision.py); last_layer_at_answer: the last decoder layer at the answer positions
    only (maskgate/model/last_layer.py)."""
    if s.batched_vision:
        from maskgate.model.vision import batch_vision_attention

        batch_vision_attention(model, where, print_fn)
    if s.patch_matmul:
        from maskgate.model.vision import patch_embed_as_matmul

        patch_embed_as_matmul(model, where, print_fn)
    if s.last_layer_at_answer:
        from maskgate.model.last_layer import last_layer_at_answer

        last_layer_at_answer(model, where, print_fn)


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
    vision_and_last_layer(model, s, where, print_fn)  # before compiling, so the compiled layers are the changed ones
    if s.compile and quantized:
        print_fn(f"{where}: compile is not used on a 4-bit base; running eager")
    elif s.compile:
        compile_decoder(model, model.device, where, print_fn)
    if s.compile_vision and (quantized or not s.batched_vision):
        print_fn(f"{where}: compile_vision needs batched_vision and a 16-bit base; the vision tower runs eager")
    elif s.compile_vision:  # one grid per batch: only the batch size varies, and it is marked dynamic if it does
        compile_layers(vision_blocks(model), "vision blocks", model.device, where, print_fn, dynamic=None)
    return model


def batch_size(model, processor, prompt, image_size: int, max_length: int, s: Scoring, where: str,
               print_fn=print) -> int:
    """s.batch_size, or for auto the largest that fits this GPU with these settings (autobatch)."""
    if s.batch_size != "auto":
        return s.batch_size
    from maskgate.model.autobatch import scoring_batch_size
    from maskgate.model.verifier import is_quantized

    memory = {k: v for k, v in s.record().items() if k not in ("batch_size", "workers", "prefetch", "overlap")}
    memory["quantized"] = is_quantized(model)
    return scoring_batch_size(model, processor, prompt, image_size, max_length, memory, where, print_fn)
