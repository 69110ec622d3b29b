"""The built-in demo source: coloured-shape scenes in MaskGroups row format, no network needed.

Each scene holds one or two large shapes of each of two or three colours; each colour present is
one ground-truth group, and each query names one colour ("all red shapes", "the two blue shapes").
A wrong group from the same scene (a hard negative) has the same kind of mask statistics as the
right one, so the verifier must look at the pixels under the overlay and read the query to tell
them apart.
Some scenes get two queries for the same group in other words, as in real MaskGroups data, so
the negatives stage's IoU rule has real work to do.

Colours stay clear of the overlay's magenta fill and yellow outline. Deterministic by seed.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from maskgate.data import masks
COLORS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 70, 230), "white": (245, 245, 245)}
SHAPES = ("circle", "square", "triangle")
NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}
BACKGROUND = (150, 140, 120)
# Shapes are few and large (radius 1/9 to 1/5 of the scene): rendered at 96 px each one spans several
# 16 px patches, so the tiny demo model can read the colour under the overlay. With the earlier 1 to 3
# shapes of radius 1/14 to 1/7 per colour, a shape was about one patch (mixed with background and the
# outline) and the tiny model stayed at chance for the whole demo budget (bench/demo_learning.py).
SHAPE_RADIUS = (1 / 9, 1 / 5)  # shape radius range, as fractions of the scene size
SHAPES_PER_COLOR = (1, 2)  # shapes drawn per colour present, inclusive range


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: int, cy: int, r: int, fill) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)


def _place(rng: np.random.Generator, placed: list, size: int, r: int) -> tuple[int, int] | None:
    """A centre whose shape does not touch any placed one (so each mask is one whole object)."""
    for _ in range(50):
        cx, cy = (int(v) for v in rng.integers(r + 1, size - r - 1, size=2))
        if all((cx - x) ** 2 + (cy - y) ** 2 > (r + rr + 2) ** 2 for x, y, rr in placed):
            return cx, cy
    return None


def _query(rng: np.random.Generator, color: str, n: int) -> str:
    if n == 1 or rng.random() < 0.5:
        return rng.choice([f"all {color} shapes", f"every {color} shape", f"the {color} ones"]) if n > 1 \
            else rng.choice([f"the {color} shape", f"the {color} one"])
    return f"the {NUMBER_WORDS[n]} {color} shapes"


def scene(index: int, seed: int, size: int = 128) -> tuple[list[dict], bytes]:
    """One scene: its rows (one per query) and its PNG bytes."""
    rng = np.random.default_rng([seed, index])
    name = f"demo-{index:05d}.png"
    noise = rng.integers(-12, 13, size=(size, size, 3))
    img = Image.fromarray(np.clip(np.asarray(BACKGROUND) + noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    colors = rng.choice(list(COLORS), size=int(rng.integers(2, 4)), replace=False)
    placed, pool, groups = [], [], {}
    for color in colors:
        for _ in range(int(rng.integers(SHAPES_PER_COLOR[0], SHAPES_PER_COLOR[1] + 1))):
            r = int(rng.integers(int(size * SHAPE_RADIUS[0]), int(size * SHAPE_RADIUS[1])))
            at = _place(rng, placed, size, r)
            if at is None:
                continue
            placed.append((*at, r))
            layer = Image.new("L", (size, size), 0)
            _draw_shape(ImageDraw.Draw(layer), str(rng.choice(SHAPES)), *at, r, 255)
            draw.bitmap((0, 0), layer, fill=COLORS[color])
            pool.append({"size": [size, size], "counts": masks.encode(np.asarray(layer) > 127)})
            groups.setdefault(str(color), []).append(len(pool) - 1)
    rows = []
    for color, group in groups.items():
        queries = [_query(rng, color, len(group))]
        if rng.random() < 0.15:  # a second wording of the same group
            queries.append(f"every {color} shape" if not queries[0].startswith("every") else f"all {color} shapes")
        for q in queries:
            rows.append({
                "id": f"demo-{index:05d}-{len(rows)}",
                "image": name,
                "conversations": [{"from": "human", "value": f"<image>\n<mask_pool>\n{q}"},
                                  {"from": "gpt", "value": "<mask_group>"}],
                "gt_mask_pool": pool,
                "mask_pool": [pool[i] for i in rng.permutation(len(pool))],
                "gt_mask_group": [group],
            })
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return rows, buf.getvalue()


def generate(n_images: int, seed: int, size: int = 128) -> tuple[list[dict], dict[str, bytes]]:
    """Rows and images (name -> PNG bytes) of `n_images` scenes."""
    rows, images = [], {}
    for i in range(n_images):
        scene_rows, png = scene(i, seed, size)
        rows += scene_rows
        images[f"demo-{i:05d}.png"] = png
    return rows, images


GATE_FIRST_SCENE = 1_000_000  # scene indices of gate manifests: far past any demo training set


def gate_manifest(out_dir: Path, n_images: int, seed: int, size: int = 128) -> Path:
    """A gate manifest of unseen demo scenes: per query, its right group and another colour's group.

    Lines carry `expected` (ACCEPT / REJECT) so the routing can be checked by eye; the gate copies
    such extra keys to its outputs and never reads them. Masks are RLE dicts, and every fourth line
    gives them as mask image files instead, to show that form too.
    """
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(GATE_FIRST_SCENE, GATE_FIRST_SCENE + n_images):
        rows, png = scene(i, seed, size)
        (out_dir / "images" / rows[0]["image"]).write_bytes(png)
        groups = [r["gt_mask_group"][0] for r in rows]
        for r in rows:
            query = r["conversations"][0]["value"].split("<mask_pool>\n", 1)[1]
            right = r["gt_mask_group"][0]
            wrong = next((g for g in groups if g != right), None)
            for group, expected in ((right, "ACCEPT"), (wrong, "REJECT")):
                if group is None:
                    continue
                specs = [r["gt_mask_pool"][k] for k in group]
                if len(lines) % 4 == 3:
                    specs = [_mask_file(out_dir, f"{r['id']}-{k}.png", r["gt_mask_pool"][k]) for k in group]
                lines.append({"id": f"{r['id']}-{expected.lower()}", "image": f"images/{r['image']}",
                              "query": query, "masks": specs, "expected": expected})
    path = out_dir / "manifest.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _mask_file(out_dir: Path, name: str, rle: dict) -> str:
    h, w = rle["size"]
    Image.fromarray(masks.decode(rle["counts"], h, w).astype(np.uint8) * 255).save(out_dir / "images" / name)
    return f"images/{name}"
