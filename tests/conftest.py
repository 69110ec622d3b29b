"""Shared fixtures: the project's params, small MaskGroups folders made on the fly, real rows."""
import io
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from maskgate.data import masks
ROOT = Path(__file__).resolve().parents[1]
REALDATA = ROOT / "samples" / "coco-groups"


def project_params_text() -> str:
    """params.yaml as committed: the project's defaults, not what a `dvc exp run` (scripts/demo.sh
    applies its settings to the workspace) left in the working copy; the file itself outside git."""
    import subprocess

    shown = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=ROOT, capture_output=True, text=True)
    return shown.stdout if shown.returncode == 0 else (ROOT / "params.yaml").read_text()


def project_params() -> dict:
    """A fresh dict of the project's default params (project_params_text)."""
    return yaml.safe_load(project_params_text())


@pytest.fixture
def params():
    return project_params()


def box_mask(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def rle(m):
    return {"size": list(m.shape), "counts": masks.encode(m)}


def jpeg_bytes(h, w, color=(90, 120, 150)):
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, format="JPEG")
    return buf.getvalue()


def make_row(row_id, image, query, pool, groups):
    return {"id": row_id, "image": image,
            "conversations": [{"from": "human", "value": f"<image>\n<mask_pool>\n{query}"},
                              {"from": "gpt", "value": "<mask_group>"}],
            "gt_mask_pool": pool, "mask_pool": pool, "gt_mask_group": groups}


def write_local(folder: Path, rows, images: dict[str, bytes], name="rows.jsonl") -> Path:
    """A folder in MaskGroups local layout: a rows file and images/."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for n, data in images.items():
        (folder / "images" / n).write_bytes(data)
    with (folder / name).open("w") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return folder


@pytest.fixture
def boxes_dataset(tmp_path):
    """Six 40x60 images, each with three box objects and two queries (one group each)."""
    rows, images = [], {}
    for i in range(6):
        name = f"img{i}.jpg"
        images[name] = jpeg_bytes(40, 60, (20 * i, 100, 200 - 20 * i))
        pool = [rle(box_mask(40, 60, 2, 12, 2 + i, 14 + i)), rle(box_mask(40, 60, 20, 35, 30, 50)),
                rle(box_mask(40, 60, 15, 25, 5, 20))]
        rows.append(make_row(f"r{i}-0", name, "the top box", pool, [[0]]))
        rows.append(make_row(f"r{i}-1", name, "the lower boxes", pool, [[1, 2]]))
    return write_local(tmp_path / "boxes", rows, images)


@pytest.fixture(scope="session")
def verifier_prompt():
    """The project's Prompt, from params.yaml."""
    from maskgate.prompt import Prompt

    return Prompt.from_params(project_params())


@pytest.fixture(scope="session")
def tiny_qwen3vl_dir(tmp_path_factory, verifier_prompt):
    """A folder holding the default tiny Qwen3-VL (seed 0) and its processor, built once per session."""
    from maskgate.model.qwen import build_tiny

    out = tmp_path_factory.mktemp("tiny_qwen3vl")
    build_tiny(out, verifier_prompt, seed=0)
    return out


def save_tiny_verifier(out: Path, tiny_dir: Path, params: dict, max_length: int = 4096):
    """A tiny base with a fresh (non-zero) LoRA adapter, saved the way the train stage saves it."""
    import shutil

    from peft import LoraConfig, get_peft_model

    from maskgate.model import qwen as M
    from maskgate.model import verifier
    from maskgate.prompt import Prompt

    shutil.copytree(tiny_dir, out / "base")
    base, processor = M.load(out / "base")
    peft = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft.save_pretrained(out / "adapter", safe_serialization=True)
    summary = {"preset": "tiny", "backend": "hf", "max_length": max_length,
               "base_model": {"repo": str(out / "base"), "revision": None, "load_in_4bit": False, "prequantized": False},
               "prompt_tokens": M.prompt_tokens(processor, Prompt.from_params(params))}
    verifier.write_manifest(out, summary, params)
    return out, peft


@pytest.fixture
def tiny_verifier(tmp_path, tiny_qwen3vl_dir, params):
    """(model folder, the peft model in memory) of an untrained tiny verifier."""
    return save_tiny_verifier(tmp_path / "verifier", tiny_qwen3vl_dir, params)


@pytest.fixture(scope="session")
def two_demo_experiments(tmp_path_factory):
    """The project in a fresh git repo after two tiny demo experiments through `dvc exp run`:
    `first` (lr 1e-3), then `second` (lr 1e-4), which the workspace holds at the end.

    Returns (repo, what `dvc status` printed right after `first`). Built once per session because
    the runs take minutes; the experiment and report tests share it.
    """
    from tests.test_experiments import SMALL_DEMO
    from tests.test_pipeline_dvc import project_copy, sh

    repo = project_copy(tmp_path_factory.mktemp("experiments"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", str(repo))  # the stages import the copy's package, not an installed one
        sh("dvc", "exp", "run", "-n", "first", *SMALL_DEMO, "-S", "lr=1e-3", cwd=repo)
        status = sh("dvc", "status", cwd=repo)
        sh("dvc", "exp", "run", "-n", "second", *SMALL_DEMO, "-S", "lr=1e-4", cwd=repo)
    return repo, status
