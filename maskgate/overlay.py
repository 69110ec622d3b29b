"""Draw a candidate mask group on its image: the picture the verifier judges.

The overlay style is one fixed style for every example (fill colour, alpha, outline colour and
width from params). `render_overlay` takes no label: a positive and a negative with the same
image and candidate give byte-identical pixels, so the label cannot leak into the picture.

Aspect ratio is kept by letterboxing: the long side is scaled to `size`, the short side keeps
the ratio, and the rest of the square is filled with `PAD_COLOR`, image centred. Masks are
scaled with the same transform (nearest neighbour), so they stay aligned with the pixels.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from maskgate import masks as mask_utils

PAD_COLOR = (114, 114, 114)  # neutral grey: no colour the fill or outline uses


@dataclass(frozen=True)
class Style:
    size: int
    fill_color: tuple[int, int, int]
    fill_alpha: float
    outline_color: tuple[int, int, int]
    outline_width: int
    jpeg_quality: int

    @classmethod
    def from_params(cls, params: dict) -> "Style":
        r = params["render"]
        if r["size"] % 32:
            raise ValueError(f"render.size must be a multiple of 32 (Qwen3-VL merges 32 px cells), got {r['size']}")
        if not 0.0 <= r["fill_alpha"] <= 1.0:
            raise ValueError(f"render.fill_alpha must be in [0, 1], got {r['fill_alpha']}")
        return cls(size=int(r["size"]), fill_color=tuple(r["fill_color"]), fill_alpha=float(r["fill_alpha"]),
                   outline_color=tuple(r["outline_color"]), outline_width=int(r["outline_width"]),
                   jpeg_quality=int(r["jpeg_quality"]))


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


def letterbox_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """(left, top, new_width, new_height) of the image inside the size x size square."""
    scale = size / max(width, height)
    nw, nh = max(1, round(width * scale)), max(1, round(height * scale))
    return (size - nw) // 2, (size - nh) // 2, nw, nh


def letterbox(img: Image.Image, size: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The image scaled into a size x size canvas (uint8 HxWx3) and where it sits."""
    box = letterbox_box(img.width, img.height, size)
    left, top, nw, nh = box
    canvas = np.empty((size, size, 3), np.uint8)
    canvas[:] = PAD_COLOR
    canvas[top:top + nh, left:left + nw] = np.asarray(img.resize((nw, nh), Image.Resampling.BILINEAR))
    return canvas, box


def _boundary(mask: np.ndarray, width: int) -> np.ndarray:
    """Inner boundary band of `width` px: the mask minus its erosion (square structuring element)."""
    eroded = mask.copy()
    for _ in range(width):
        e = eroded.copy()
        e[1:, :] &= eroded[:-1, :]
        e[:-1, :] &= eroded[1:, :]
        e[:, 1:] &= eroded[:, :-1]
        e[:, :-1] &= eroded[:, 1:]
        e[0, :] = e[-1, :] = False
        e[:, 0] = e[:, -1] = False
        eroded = e
    return mask & ~eroded


def _crop_box(mask: np.ndarray, pad: int) -> tuple[slice, slice] | None:
    rows, cols = np.any(mask, axis=1), np.any(mask, axis=0)
    if not rows.any():
        return None
    r0, r1 = np.argmax(rows), len(rows) - np.argmax(rows[::-1])
    c0, c1 = np.argmax(cols), len(cols) - np.argmax(cols[::-1])
    return slice(max(0, r0 - pad), r1 + pad), slice(max(0, c0 - pad), c1 + pad)


def draw_group(canvas: np.ndarray, box: tuple[int, int, int, int], group: list[np.ndarray], style: Style) -> np.ndarray:
    """Fill the union of the group, then outline each mask, on a copy of the letterboxed canvas."""
    left, top, nw, nh = box
    out = canvas.copy()
    view = out[top:top + nh, left:left + nw]
    scaled = [mask_utils.resize(m, nh, nw) for m in group]
    fill = np.logical_or.reduce(scaled) if scaled else np.zeros((nh, nw), bool)
    a = style.fill_alpha
    view[fill] = (view[fill] * (1.0 - a) + np.asarray(style.fill_color) * a + 0.5).astype(np.uint8)
    for m in scaled:
        crop = _crop_box(m, 1)
        if crop is None:
            continue
        edge = _boundary(m[crop], style.outline_width)  # pixels on the image edge count as boundary
        view[crop][edge] = style.outline_color
    return out


def encode_jpeg(canvas: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def render_overlay(image: Image.Image, group: list[np.ndarray], style: Style) -> bytes:
    """JPEG bytes of `image` letterboxed to style.size with `group` drawn on it. No label here."""
    canvas, box = letterbox(image, style.size)
    return encode_jpeg(draw_group(canvas, box, group, style), style.jpeg_quality)
