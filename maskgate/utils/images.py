"""Image bytes to pixels, one way for every part: prepare checks images with it, render and the gate draw on it."""
from __future__ import annotations

import io
import warnings
from pathlib import Path

from PIL import Image


class ImageTooLarge(ValueError):
    """An image whose header asks for more pixels than allowed; the message names the limit."""


def open_bounded(data: bytes | Path, max_pixels: int | None, key: str = "max_image_pixels") -> Image.Image:
    """The image, loaded, with its header's width x height checked against `max_pixels` before a pixel
    is decoded, so a small file that decompresses to billions of pixels is refused, not allocated.

    PIL's own decompression-bomb check, which would only warn below twice its limit, is made an error
    too: ImageTooLarge either way, naming limits.`key`. `data` may be a file's path: then only the bytes
    decoding needs are read. max_pixels None: no limit of ours (PIL's still holds).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(data if isinstance(data, Path) else io.BytesIO(data))  # lazy: the header only
            if max_pixels is not None and img.width * img.height > max_pixels:
                raise ImageTooLarge(f"{img.width}x{img.height} = {img.width * img.height} pixels "
                                    f"> limits.{key} = {max_pixels}")
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # PIL checks at open, before the size can be read here: past its limit (89.5 MP), so past the default of ours
        raise ImageTooLarge(f"PIL refuses it as a decompression bomb ({e}); limits.{key} = {max_pixels} "
                            "does not lift PIL's own limit") from None
    return img


def decode_image(data: bytes | Path, max_pixels: int | None = None) -> Image.Image:
    """Decode fully (so truncation shows now, not later) and bring every mode to RGB.

    `max_pixels` (limits.max_image_pixels): checked before decoding (open_bounded). None: rows that
    passed prepare's check.
    """
    img = open_bounded(data, max_pixels)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent pixels shown over white, as a viewer would show them.
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, img)
    return img.convert("RGB")
