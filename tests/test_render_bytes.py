"""Every overlay of samples/coco-groups is the same JPEG bytes as the renderer pinned in
tests/data/sample_overlay_digests.json drew them (commit 5d6d9e5, before render was made faster).

A faster renderer must not change a picture: a changed byte re-renders every output (new DVC hashes)
and may change what the verifier learns. The candidates are every group of every validated sample
row, each pool mask alone, each image's whole pool as one group (masks overlapping, many at once) and
the first four groups of the next image in name order scaled to this one's size (as easy negatives
are), rendered through the render stage's own per-image job at 672 px in fill, keep_colours and zoom,
and at 96 px (the demo's size). Digests are per image, so a failure names the images that changed.

    python tests/test_render_bytes.py --write    # re-pin after a change that is meant to change the pictures
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from maskgate import config  # noqa: E402
from maskgate.data import masks, sources  # noqa: E402
from maskgate.data.validation import validate_all  # noqa: E402
from maskgate.render.overlay import Style  # noqa: E402
from maskgate.render.shards import render_image  # noqa: E402

SAMPLES = ROOT / "samples" / "coco-groups"
PINNED = Path(__file__).parent / "data" / "sample_overlay_digests.json"
# The drawing settings, pinned here rather than read from params.yaml: a change of params is a
# change of pictures on purpose, not what this test guards.
BASE = dict(size=672, fill_color=(255, 0, 255), fill_alpha=0.45, outline_color=(255, 255, 0), outline_width=3,
            jpeg_quality=95, style="fill", background_dim=0.5, zoom=False, zoom_context=2.0)
VIEWS = {"fill": {}, "keep_colours": {"style": "keep_colours"}, "zoom": {"zoom": True}, "fill-96px": {"size": 96}}


def sample_jobs() -> list[tuple[str, bytes, list[list[str]], int, int]]:
    """(image, its bytes, candidate groups, height, width) per sample image, in name order."""
    source = sources.load_local(SAMPLES)
    rows, _, _ = validate_all(source.rows["train"], source.images, "rescale", config.GATE_LIMITS)
    by_image: dict[str, dict] = {}
    for r in rows:
        entry = by_image.setdefault(r.image, {"size": (r.height, r.width), "groups": {}})
        for g in [*r.groups, *([m] for m in r.pool), r.pool]:
            entry["groups"].setdefault(tuple(g), None)  # first seen first, each candidate once
    names = sorted(by_image)
    for image, other in zip(names, names[1:] + names[:1]):  # the groups of another image, as easy negatives
        (height, width), (h, w) = by_image[image]["size"], by_image[other]["size"]
        for g in list(by_image[other]["groups"])[:4]:
            g = tuple(masks.encode(masks.resize(masks.decode(c, h, w), height, width)) for c in g)
            by_image[image]["groups"].setdefault(g, None)
    return [(image, source.images.read(image), [list(g) for g in by_image[image]["groups"]], *by_image[image]["size"])
            for image in names]


def digests(jobs, view: dict) -> dict[str, str]:
    style = Style(**{**BASE, **view})
    out = {}
    for image, data, groups, height, width in jobs:
        h = hashlib.sha256()
        for jpeg in render_image(data, groups, height, width, style):
            h.update(len(jpeg).to_bytes(8, "little") + jpeg)
        out[image] = h.hexdigest()[:16]
    return out


@pytest.fixture(scope="module")
def jobs():
    return sample_jobs()


def test_sample_set_is_what_was_pinned(jobs):
    pinned = json.loads(PINNED.read_text())
    assert [j[0] for j in jobs] == sorted(pinned["fill"])
    assert sum(len(j[2]) for j in jobs) == pinned["overlays"]


@pytest.mark.parametrize("view", sorted(VIEWS))
def test_every_sample_overlay_is_the_pinned_bytes(jobs, view):
    pinned = json.loads(PINNED.read_text())[view]
    got = digests(jobs, VIEWS[view])
    changed = sorted(k for k in pinned if got.get(k) != pinned[k])
    assert not changed, f"{view}: the overlays of {len(changed)} images changed, e.g. {changed[:3]}"


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(__doc__)
    jobs = sample_jobs()
    pinned = {"overlays": sum(len(j[2]) for j in jobs), **{v: digests(jobs, VIEWS[v]) for v in sorted(VIEWS)}}
    PINNED.parent.mkdir(exist_ok=True)
    PINNED.write_text(json.dumps(pinned, indent=1, sort_keys=True) + "\n")
    print(f"{pinned['overlays']} overlays of {len(jobs)} images, {len(VIEWS)} views -> {PINNED}")
