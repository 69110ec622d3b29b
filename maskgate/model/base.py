"""The base model a run trains on, and the trainable model made from it (LoRA or QLoRA, hf or Unsloth)."""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from maskgate.config import Lora, Model, ParamsError, Train
from maskgate.prompt import Prompt


def local_size(model: Model) -> dict:
    """TinySize fields of a locally built preset (tiny, random-8b): its shape, then `model.tiny`."""
    from maskgate.model.qwen import preset_size

    return preset_size(model.preset, {k: tuple(v) if isinstance(v, list) else v for k, v in model.tiny.items()})


def lora_config(lora: Lora):
    from peft import LoraConfig

    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.targets,
        modules_to_save=list(lora.modules_to_save) or None,
        bias="none",
        task_type="CAUSAL_LM",
    )


def build_local_base(model: Model, prompt: Prompt, seed: int, out_dir: Path, device: str, dtype) -> Path:
    """`out_dir/base`: the local preset built from the seed, reused when already built with the same settings.

    The build is deterministic, so a folder stamped (in `out_dir/base.json`) with the same seed, size and
    prompt is what a rebuild would write; random-8b takes minutes to draw and 16 GB to write. The folder
    is built under a temporary name and renamed, so a half-written base is never taken for a built one.
    """
    from maskgate.model import qwen as M

    size = local_size(model)
    stamp = json.loads(json.dumps(
        {"preset": model.preset, "seed": seed, "size": size, "prompt": [prompt.system, prompt.user, prompt.answers]}
    ))
    base, stamp_file = out_dir / "base", out_dir / "base.json"
    if base.is_dir() and stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp:
        return base
    tmp = out_dir / ".base.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    M.build_tiny(tmp, prompt, seed=seed, device=device, dtype=dtype, **size)
    shutil.rmtree(base, ignore_errors=True)
    tmp.rename(base)
    stamp_file.write_text(json.dumps(stamp, indent=1) + "\n")
    return base


@dataclass(frozen=True)
class Base:
    """The base model a run trains on: what `from_pretrained` gets, at which commit, in which precision."""

    src: str  # a local folder (local presets) or a hub repository id
    revision: str | None  # the hub commit (hub.resolve); None for a local folder
    load_in_4bit: bool = False  # trained as QLoRA: scored on the same 4-bit weights (verifier.load_verifier)
    prequantized: bool = False  # the repository holds 4-bit weights (Unsloth's bnb-4bit), else quantised on load

    def record(self) -> dict:
        return {"repo": self.src, "revision": self.revision, "load_in_4bit": self.load_in_4bit,
                "prequantized": self.prequantized}


def resolve_base(model: Model, cfg: Train, backend: str, prompt: Prompt, seed: int, out_dir: Path, device: str) -> Base:
    """The base of `model.preset`: a local preset built into `out_dir/base`, or a hub repository pinned to a commit.

    Refuses, before anything is downloaded or built, a model too large to train without a CUDA GPU.
    """
    import torch

    from maskgate.model import qwen as M
    from maskgate.utils import hub

    preset = model.preset
    if preset not in M.PRESETS:
        raise ParamsError(f"model.preset must be one of {sorted(M.PRESETS)}, got {preset!r}")
    cuda = device.startswith("cuda")
    four_bit = backend == "unsloth" and cfg.load_in_4bit
    if preset in M.LOCAL_PRESETS:
        if preset != "tiny" and not cuda:
            raise ParamsError(f"model.preset {preset} has Qwen3-VL-8B's shape and no CUDA GPU is available: "
                              "train it on a GPU, or set model.preset: tiny for a CPU run")
        dtype = torch.bfloat16 if cuda else torch.float32
        return Base(str(build_local_base(model, prompt, seed, Path(out_dir), device, dtype)), None, four_bit)
    repo = M.source(preset, backend, four_bit)
    revision = model.revision_4bit if four_bit else model.revision
    base = Base(repo, hub.resolve(repo, revision), four_bit, prequantized=four_bit)
    M.check_device(base.src, base.revision, cuda)
    return base


def load_model(cfg: Train, preset: str, seed: int, backend: str, base: Base, device: str):
    """(peft model in train mode, processor) on `base`, with fresh LoRA weights drawn from the seed."""
    import torch
    from transformers import set_seed

    from maskgate.model import qwen as M
    from maskgate.utils import hub

    lora = cfg.lora
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    if backend == "unsloth":
        from unsloth import FastVisionModel

        # train.gradient_checkpointing here too: "unsloth" is its offloading variant, False none at all
        # (both calls take it: get_peft_model's own default would turn it back on)
        checkpointing = "unsloth" if gradient_checkpointing(cfg, preset) else False
        M.require_safetensors(base.src, "base model")
        with hub.errors(f"model {base.src}"):
            # use_exact_model_name: else Unsloth swaps Qwen/... for its own mirror unsloth/... (another repository)
            model, processor = FastVisionModel.from_pretrained(
                base.src, revision=base.revision, use_exact_model_name=True, load_in_4bit=base.load_in_4bit,
                use_gradient_checkpointing=checkpointing,
            )
        model = FastVisionModel.get_peft_model(
            model,
            use_gradient_checkpointing=checkpointing,
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora.targets,
            bias="none",
            random_state=seed,
            use_rslora=False,
            loftq_config=None,
            **({"modules_to_save": list(lora.modules_to_save)} if lora.modules_to_save else {}),
        )
        FastVisionModel.for_training(model)
        return speed_settings(model, cfg), M.set_image_bounds(processor)

    from peft import get_peft_model

    model, processor = M.load(base.src, device=device, dtype=dtype, revision=base.revision)
    model.train()
    set_seed(seed)  # LoRA's A matrices are drawn now
    model = get_peft_model(model, lora_config(lora))
    if gradient_checkpointing(cfg, preset):
        model.enable_input_require_grads()
    return speed_settings(model, cfg), processor


def speed_settings(model, cfg: Train):
    """train.batched_vision, train.patch_matmul and train.last_layer_at_answer, as scoring applies them."""
    from maskgate.model.speedups import vision_and_last_layer

    vision_and_last_layer(model, cfg, "train")
    return model


def gradient_checkpointing(cfg: Train, preset: str) -> bool:
    """train.gradient_checkpointing, with auto = on except for the tiny preset (which it only slows)."""
    g = cfg.gradient_checkpointing
    return preset != "tiny" if g == "auto" else bool(g)
