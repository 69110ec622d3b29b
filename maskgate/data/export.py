"""Export rendered shards in the exported row schema (overlay file, prompt, label), for anyone training elsewhere.

Writes `rows-{split}.jsonl` with one line per example,
    {"path_to_overlay_image": "images/<example>.jpg", "prompt_text": ..., "label_text": ...,
     "system_text": ..., "example_id": ..., "kind": ...}
and the overlay JPEGs under `images/` (paths relative to the output folder).
"""
from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm

from maskgate.utils import tables
from maskgate.data.prepared import SPLITS

COLUMNS = ["example_id", "kind", "system", "user", "label_text", "overlay"]


def file_name(example_id: str) -> str:
    return example_id.replace("/", "__") + ".jpg"


def export(rendered: Path, out: Path) -> dict[str, int]:
    """Write the export folder; return the number of rows per split."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in SPLITS:
        n = 0
        tmp = out / f".rows-{split}.jsonl.tmp"
        with tmp.open("w") as f:
            for r in tqdm(tables.iter_shards(rendered, split, COLUMNS), desc=f"export: {split}", unit="row"):
                rel = f"images/{file_name(r['example_id'])}"
                (out / rel).write_bytes(r["overlay"])
                f.write(json.dumps({"path_to_overlay_image": rel, "prompt_text": r["user"], "label_text": r["label_text"],
                                    "system_text": r["system"], "example_id": r["example_id"], "kind": r["kind"]}) + "\n")
                n += 1
        tmp.replace(out / f"rows-{split}.jsonl")
        counts[split] = n
    return counts
