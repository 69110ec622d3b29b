"""Shared fixtures: the project's params, small MaskGroups folders made on the fly, real rows."""
import io
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from maskgate import config
from maskgate.data import masks
ROOT = Path(__file__).resolve().parents[1]
REALDATA = ROOT / "samples" / "coco-groups"


def project_params() -> dict:
    """A fresh dict of the project's params.yaml. After scripts/demo.sh it holds the demo's settings
    (configs/demo.yaml): a test sets whatever it depends on, and passes in either state."""
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def settings(params: dict) -> config.Params:
    """A params dict (a test's changed copy) as the typed settings a stage builds from params.yaml."""
    return config.from_dict(params, "test params")


TINY_MODEL = {"preset": "tiny", "revision": "main", "revision_4bit": "main", "tiny": {}}


def tiny_train(**changes) -> dict:
    """A whole train section for a few steps of the tiny model on CPU (no key is left to a default)."""
    lora = {"r": 4, "alpha": 8, "dropout": 0.1, "targets": ["q_proj", "v_proj", "down_proj"], "modules_to_save": []}
    return {"backend": "auto", "batch_size": 4, "micro_batch_size": 2, "gpus": 1, "epochs": 1, "warmup_ratio": 0.03,
            "lr_scheduler": "linear", "weight_decay": 0.0, "max_grad_norm": 1.0, "max_text_tokens": 64, "lora": lora,
            "gradient_checkpointing": False, "load_in_4bit": False, "save_steps": 2, "keep_checkpoints": 2,
            "eval_steps": 3, "eval_examples": 8, "logging_steps": 1, "dataloader_workers": 0, "cpu_threads": 0,
            "batched_vision": True, "patch_matmul": True, "last_layer_at_answer": True, **changes}


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
    return settings(project_params()).prompt


@pytest.fixture(scope="session")
def tiny_qwen3vl_dir(tmp_path_factory, verifier_prompt):
    """A folder holding the default tiny Qwen3-VL (seed 0) and its processor, built once per session."""
    from maskgate.model.qwen import build_tiny

    out = tmp_path_factory.mktemp("tiny_qwen3vl")
    build_tiny(out, verifier_prompt, seed=0)
    return out


def save_tiny_verifier(out: Path, tiny_dir: Path, params: dict, max_length: int = 4096):
    """`params`: a params dict; its prompt and render sections go into verifier.json."""
    """A tiny base with a fresh (non-zero) LoRA adapter, saved the way the train stage saves it."""
    import shutil

    from peft import LoraConfig, get_peft_model

    from maskgate.model import qwen as M
    from maskgate.model import verifier

    s = settings(params)
    shutil.copytree(tiny_dir, out / "base")
    base, processor = M.load(out / "base")
    peft = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft.save_pretrained(out / "adapter", safe_serialization=True)
    summary = {"preset": "tiny", "backend": "hf", "max_length": max_length,
               "base_model": {"repo": str(out / "base"), "revision": None, "load_in_4bit": False, "prequantized": False},
               "prompt_tokens": M.prompt_tokens(processor, s.prompt)}
    verifier.write_manifest(out, summary, s.prompt, s.render)
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
