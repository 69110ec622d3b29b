"""Load a trained verifier (base model + LoRA adapter) for scoring: evaluate and the gate.

The train stage writes `verifier.json` beside the adapter. It names the base the adapter was
trained on: a hub repository at the commit training resolved (so evaluate and the gate load the
very weights and tokenizer training used, however the branch moved since), or `base/` inside the
model folder for a local preset; and whether it was 4-bit (QLoRA). It records the input contract
too: the prompt, its token ids under training's tokenizer, the render style and the token budget.
A model folder copied elsewhere thus scores its inputs exactly as it was trained, whatever
params.yaml says by then, and a base whose tokenizer gives other prompt ids is refused.

Scoring loads the base in bf16 on a GPU (fp32 on CPU) with transformers and puts the adapter on
it. A QLoRA adapter is scored on 4-bit weights again, never on a full-precision copy. Weights load
from safetensors only, and no remote code runs.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from maskgate import config
from maskgate.config import Render
from maskgate.prompt import Prompt

MANIFEST = "verifier.json"
RENDER_BEFORE_VIEWS = {"style": "fill", "background_dim": 1.0, "zoom": False, "zoom_context": 1.0}


def write_manifest(model_dir: Path, summary: dict, prompt: Prompt, render: Render) -> None:
    """verifier.json from the train stage's summary: the base, the adapter, the input contract."""
    model_dir = Path(model_dir)
    base = dict(summary["base_model"])
    src = Path(base["repo"])
    if src.is_dir() and src.resolve().is_relative_to(model_dir.resolve()):
        base["repo"] = str(src.resolve().relative_to(model_dir.resolve()))  # the folder travels with the model
    manifest = {"preset": summary["preset"], "backend": summary["backend"], "adapter": "adapter",
                "base": base, "prompt": dataclasses.asdict(prompt), "prompt_tokens": summary["prompt_tokens"],
                "render": dataclasses.asdict(render), "max_length": int(summary["max_length"])}
    (model_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def read_manifest(model_dir: Path) -> dict:
    """verifier.json, its `prompt` and `render` as the typed sections they were written from."""
    path = Path(model_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {model_dir} is not a trained verifier (run `dvc repro train`)")
    manifest = json.loads(path.read_text())
    if not isinstance(manifest.get("base"), dict) or "prompt_tokens" not in manifest or "render" not in manifest:
        raise ValueError(f"{path} was written by an older maskgate (no base revision, prompt tokens or render "
                         "settings): re-run `dvc repro train`")
    manifest["prompt"] = config.from_section(Prompt, manifest["prompt"], f"{path}: prompt")
    # A model trained before render.style and render.zoom existed was drawn in the only view there was:
    # fill, no zoom. Its verifier.json lacks those keys; they are filled in so the gate keeps drawing it so
    # (background_dim and zoom_context are unused by that view; any valid value draws the same bytes).
    render = {**RENDER_BEFORE_VIEWS, **manifest["render"]} if isinstance(manifest["render"], dict) else manifest["render"]
    manifest["render"] = config.from_section(config.Render, render, f"{path}: render")
    return manifest


def is_quantized(model) -> bool:
    """True for a model whose weights are bitsandbytes 4-bit (a QLoRA base): merging would re-quantise them."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return bool(getattr(base, "is_loaded_in_4bit", False) or getattr(base, "hf_quantizer", None))


def load_verifier(model_dir: Path, device: str | None = None):
    """(model in eval mode, processor) of the verifier in `model_dir`."""
    import torch
    from peft import PeftModel

    from maskgate.model import qwen as M

    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    base = manifest["base"]
    src = str(model_dir / base["repo"]) if (model_dir / base["repo"]).is_dir() else base["repo"]
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    adapter = model_dir / manifest["adapter"]
    if not adapter.is_dir():
        raise FileNotFoundError(f"adapter folder {adapter} not found (run `dvc repro train`)")
    M.require_safetensors(adapter, "adapter", "adapter_model.safetensors")  # checked before the base is loaded
    processor = M.load_processor(src, base["revision"])
    tokens = M.prompt_tokens(processor, manifest["prompt"])
    if tokens != manifest["prompt_tokens"]:
        raise ValueError(f"the tokenizer of {src} (revision {base['revision']}) gives another prompt than the one "
                         f"the adapter in {model_dir} was trained on: score with the base training used")
    quantization = None
    if base["load_in_4bit"]:
        if not device.startswith("cuda"):
            raise ValueError(f"{model_dir} is a QLoRA adapter: it is scored on its 4-bit base, which needs a CUDA GPU")
        if not base["prequantized"]:  # quantised on load in training: the same settings as Unsloth's
            from transformers import BitsAndBytesConfig

            quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                              bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16)
    model, _ = M.load(src, device=device, dtype=dtype, revision=base["revision"], quantization=quantization)
    model = PeftModel.from_pretrained(model, str(adapter), use_safetensors=True)
    return model.eval(), processor
