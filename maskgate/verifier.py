"""Load a trained verifier (base model + LoRA adapter) for scoring: evaluate and the gate.

The train stage writes `verifier.json` beside the adapter, naming the base it trained on (a hub id,
or `base/` inside the model folder for the tiny preset) and the backend, and recording the input
contract the adapter was trained on: the prompt, the render style and the token budget. The gate
reads that contract from here, so a model folder copied elsewhere scores its inputs exactly as
it was trained, whatever params.yaml says by then. Scoring loads the base in
bf16 on a GPU (fp32 on CPU) with transformers and puts the adapter on it; weights load from
safetensors only, and no remote code runs.
"""
from __future__ import annotations

import json
from pathlib import Path

MANIFEST = "verifier.json"


def write_manifest(model_dir: Path, preset: str, base: str, backend: str, params: dict, max_length: int) -> None:
    """verifier.json: where the base and adapter are, and the params sections the inputs came from."""
    model_dir = Path(model_dir)
    inside = Path(base).resolve().is_relative_to(model_dir.resolve()) if Path(base).exists() else False
    manifest = {"preset": preset, "backend": backend, "adapter": "adapter",
                "base": str(Path(base).resolve().relative_to(model_dir.resolve())) if inside else base,
                "prompt": params["prompt"], "render": params["render"], "max_length": int(max_length)}
    (model_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def read_manifest(model_dir: Path) -> dict:
    path = Path(model_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {model_dir} is not a trained verifier (run `dvc repro train`)")
    return json.loads(path.read_text())


def load_verifier(model_dir: Path, device: str | None = None):
    """(model in eval mode, processor) of the verifier in `model_dir`."""
    import torch
    from peft import PeftModel

    from maskgate import model as M

    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    base = manifest["base"]
    if (model_dir / base).is_dir():
        base = str(model_dir / base)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    adapter = model_dir / manifest["adapter"]
    if not adapter.is_dir():
        raise FileNotFoundError(f"adapter folder {adapter} not found (run `dvc repro train`)")
    M.require_safetensors(adapter, "adapter", "adapter_model.safetensors")  # checked before the base is loaded
    model, processor = M.load(base, device=device, dtype=dtype)
    model = PeftModel.from_pretrained(model, str(adapter), use_safetensors=True)
    return model.eval(), processor
