"""Stand-ins for the hub repositories the pipeline reads, written into a local hub folder (server.py).

The same inputs give byte-identical files, hence the same repo sha on the local hub:
  build_maskgroups  datasets/Shengcao1006/MaskGroups-HQ: the sample rows as train/validation parquet
                    (split by image), their photos in images_resized.zip, and a dataset card;
  build_qwen        models/Qwen/Qwen3-VL-8B-Instruct: the tiny Qwen3-VL (seed 0), or a model folder
                    built elsewhere (hard-linked: the GPU machine's random-8b is 16 GB);
  build_hub         both.
CLI: python -m tests.hub.repos ROOT [--model-dir DIR] [--repo-id ID]
"""
from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import shutil
import zipfile
from pathlib import Path

MASKGROUPS_ID = "Shengcao1006/MaskGroups-HQ"
QWEN_ID = "Qwen/Qwen3-VL-8B-Instruct"
SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "coco-groups"
IMAGES_FILE = "images_resized.zip"
ZIP_TOP = "images_resized"
ZIP_DATE = (2024, 1, 1, 0, 0, 0)  # fixed, so the archive's bytes do not depend on when it was built
VALIDATION_EVERY = 5  # an image goes to validation when its name hashes to 0 mod 5: about 20%

CARD = """---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*
  - split: validation
    path: data/validation-*
---
# MaskGroups-HQ (local stand-in)

Rows of `samples/coco-groups` in MaskGroups-HQ row format, split by image, for tests against a local
hub. Photos are in `images_resized.zip` under `images_resized/`. Row ids restart at "0" in each split.
"""


def split_of(image: str) -> str:
    digest = hashlib.sha256(image.encode()).digest()
    return "validation" if int.from_bytes(digest[:8], "big") % VALIDATION_EVERY == 0 else "train"


def maskgroups_schema():
    import pyarrow as pa

    rle = pa.struct([("size", pa.list_(pa.int64())), ("counts", pa.string())])
    return pa.schema([
        ("id", pa.string()),
        ("image", pa.string()),
        ("conversations", pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))),
        ("gt_mask_pool", pa.list_(rle)),
        ("mask_pool", pa.list_(rle)),
        ("gt_mask_group", pa.list_(pa.list_(pa.int64()))),
    ])


def split_rows(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows by split, in file order, ids renumbered from "0" within each split (they repeat across splits)."""
    out: dict[str, list[dict]] = {"train": [], "validation": []}
    for row in rows:
        rows_of_split = out[split_of(row["image"])]
        rows_of_split.append({**row, "id": str(len(rows_of_split))})
    for name, part in out.items():
        if not part:
            raise ValueError(f"the by-image split left {name} empty; the samples need more images")
    return out


def write_parquet(rows: list[dict], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = maskgroups_schema()
    table = pa.Table.from_pylist([{k: r[k] for k in schema.names} for r in rows], schema=schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def write_images_zip(images: Path, out: Path) -> None:
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for p in sorted(images.iterdir()):
            if not p.is_file():
                continue
            info = zipfile.ZipInfo(f"{ZIP_TOP}/{p.name}", date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_STORED
            info.create_system = 3
            info.external_attr = 0o644 << 16
            z.writestr(info, p.read_bytes())


def fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def build_maskgroups(root: Path, samples: Path = SAMPLES, repo_id: str = MASKGROUPS_ID) -> Path:
    """datasets/<repo_id>/ from the sample rows and photos; returns the repo folder."""
    repo = fresh(Path(root) / "datasets" / repo_id)
    for split, rows in split_rows(read_jsonl(Path(samples) / "maskgroups.jsonl")).items():
        write_parquet(rows, repo / "data" / f"{split}-00000-of-00001.parquet")
    write_images_zip(Path(samples) / "images", repo / IMAGES_FILE)
    (repo / "README.md").write_text(CARD, encoding="utf-8")
    return repo


def link_tree(src: Path, dst: Path) -> None:
    """Hard-link every file of `src` under `dst`; a symlink where a hard link cannot be made (another
    filesystem). Never a copy: a full-size model is 16 GB."""
    for p in sorted(src.rglob("*")):
        if p.is_dir():
            continue
        target = dst / p.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(p, target)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise
            target.symlink_to(p.resolve())


def build_qwen(root: Path, params: dict, model_dir: Path | None = None, repo_id: str = QWEN_ID) -> Path:
    """models/<repo_id>/: the tiny model (seed 0, params' prompt and model.tiny sizes), or `model_dir` linked."""
    repo = fresh(Path(root) / "models" / repo_id)
    if model_dir is not None:
        link_tree(Path(model_dir), repo)
        return repo
    import dataclasses

    from maskgate import config
    from maskgate.model.base import local_size
    from maskgate.model.qwen import build_tiny

    s = config.from_dict(params)
    build_tiny(repo, s.prompt, seed=0, **local_size(dataclasses.replace(s.model, preset="tiny")))
    return repo


def build_hub(root: Path, params: dict, samples: Path = SAMPLES) -> Path:
    build_maskgroups(root, samples)
    build_qwen(root, params)
    return Path(root)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tests.hub.repos", description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path, help="the local hub folder (server.py serves it)")
    ap.add_argument("--model-dir", type=Path, help="a built model folder to serve (hard-linked), not the tiny one")
    ap.add_argument("--repo-id", help=f"model repo id for --model-dir (default {QWEN_ID})")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"), help="for the tiny model's prompt and sizes")
    ap.add_argument("--samples", type=Path, default=SAMPLES)
    args = ap.parse_args(argv)
    if args.repo_id and not args.model_dir:
        ap.error("--repo-id names the repo of --model-dir")
    if args.model_dir:
        if not args.model_dir.is_dir():
            ap.error(f"not a folder: {args.model_dir}")
        print(build_qwen(args.root, {}, args.model_dir, args.repo_id or QWEN_ID))
        return
    import yaml

    params = yaml.safe_load(args.params.read_text())
    print(build_hub(args.root, params, args.samples))


if __name__ == "__main__":
    main()
