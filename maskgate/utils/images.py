"""Image bytes to pixels, one way for every part: prepare checks images with it, render and the gate draw on it."""
from __future__ import annotations

import io

from PIL import Image


def decode_image(data: bytes) -> Image.Image:
    """Decode fully (so truncation shows now, not later) and bring every mode to RGB."""
    img = Image.open(io.BytesIO(data))
    img.load()
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent pixels shown over white, as a viewer would show them.
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, img)
    return img.convert("RGB")
