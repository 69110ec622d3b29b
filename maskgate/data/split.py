"""Split rows into train and validation by image, so no image is on both sides."""
from __future__ import annotations

import hashlib


def image_rank(image: str, seed: int) -> str:
    """A seed-dependent, order-independent sort key for an image name."""
    return hashlib.sha256(f"{seed}:{image}".encode()).hexdigest()


def split_by_image(images: set[str] | list[str], val_fraction: float, seed: int) -> dict[str, str]:
    """image name -> "train" | "val"; exactly round(n * val_fraction) images in val (at least 1
    when there are two or more images and val_fraction > 0), chosen by hash rank."""
    names = sorted(set(images), key=lambda n: image_rank(n, seed))
    n_val = round(len(names) * val_fraction)
    if val_fraction > 0 and len(names) >= 2:
        n_val = min(max(n_val, 1), len(names) - 1)
    return {n: ("val" if i < n_val else "train") for i, n in enumerate(names)}
