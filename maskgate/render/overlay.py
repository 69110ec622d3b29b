"""Draw a candidate mask group on its image: the picture the verifier judges.

The overlay style is one fixed style for every example (params' render section), never chosen by
label. `render_overlay` takes no label: a positive and a negative with the same image and candidate
give byte-identical pixels, so the label cannot leak into the picture. Two styles (`render.style`):

fill: the group tinted with `fill_color` at `fill_alpha`, the rest as it is. A magenta tint turns
  a white shape pink, so a colour query is judged on changed colours.
keep_colours: the group's own pixels untouched, the rest of the picture desaturated and dimmed
  (grey level times `background_dim`), so the object keeps its colours and still stands out.
Both outline each mask with `outline_color`.

`render.zoom` (SAM 3's view for small objects): the same fixed canvas holds two panels, the whole
image and a crop around the group (`zoom_context` times the group's bounding box, in the panel's
shape), both drawn in the style; stacked when the image is landscape or square, side by side when
it is portrait. The canvas size, and so the image token count, stays the same.

Aspect ratio is kept by letterboxing: the long side is scaled to `size`, the short side keeps
the ratio, and the rest of the square is filled with `PAD_COLOR`, image centred. Masks are
scaled with the same transform (nearest neighbour), so they stay aligned with the pixels.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from PIL import Image
from pycocotools import mask as coco_mask

from maskgate.config import Render
from maskgate.data import masks as mask_utils
from maskgate.render.scaled_masks import scaled_boxes
PAD_COLOR = (114, 114, 114)  # neutral grey: no colour the fill or outline uses
# A zoom crop never narrower than 1/MAX_ZOOM of the image's long side: past that, upscaling adds blur, not detail.
MAX_ZOOM = 8


@dataclass(frozen=True)
class Style:
    size: int
    fill_color: tuple[int, int, int]
    fill_alpha: float
    outline_color: tuple[int, int, int]
    outline_width: int
    jpeg_quality: int
    style: str  # "fill" | "keep_colours"
    background_dim: float  # keep_colours only
    zoom: bool
    zoom_context: float  # zoom only

    @classmethod
    def of(cls, r: Render) -> "Style":
        """The drawing settings of the render section (its other keys say how the shards are written)."""
        return cls(size=r.size, fill_color=tuple(r.fill_color), fill_alpha=r.fill_alpha,
                   outline_color=tuple(r.outline_color), outline_width=r.outline_width, jpeg_quality=r.jpeg_quality,
                   style=r.style, background_dim=r.background_dim, zoom=r.zoom, zoom_context=r.zoom_context)


def letterbox_box(width: int, height: int, size: int, box_height: int | None = None) -> tuple[int, int, int, int]:
    """(left, top, new_width, new_height) of the image inside the size x size square (or size x box_height)."""
    box_w, box_h = size, size if box_height is None else box_height
    scale = min(box_w / width, box_h / height)
    nw, nh = max(1, round(width * scale)), max(1, round(height * scale))
    return (box_w - nw) // 2, (box_h - nh) // 2, nw, nh


def letterbox(img: Image.Image, size: int, box_height: int | None = None) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """The image scaled into a size x size canvas (or size x box_height) and where it sits (left, top, width, height)."""
    box = letterbox_box(img.width, img.height, size, box_height)
    left, top, nw, nh = box
    canvas = Image.new("RGB", (size, size if box_height is None else box_height), PAD_COLOR)
    canvas.paste(img.resize((nw, nh), Image.Resampling.BILINEAR), (left, top))
    return canvas, box


class Canvas:
    """One letterboxed image, ready to take many candidate groups.

    Two copies of the picture are made once per image: `base`, what lies outside the group, and
    `tinted`, what lies inside it (fill: the original and the original blended with the fill colour;
    keep_colours: the desaturated, dimmed original and the original). Each group then copies
    `tinted` through its own mask, inside the group's bounding box only, so the per-candidate cost
    is the mask work and the JPEG encode. With zoom, `render` hands each group to a `Zoom`.
    """

    def __init__(self, image: Image.Image, style: Style, panel: tuple[int, int] | None = None):
        self.style = style
        self.image = image
        width, height = panel or (style.size, style.size)
        original, self.box = letterbox(image, width, height)
        if style.style == "keep_colours":
            d = style.background_dim
            # ITU-R 601 luma (PIL's "L"), then dimmed by a lookup table: the group stands out by its colours alone
            base = original.convert("L").point([int(v * d + 0.5) for v in range(256)]).convert("RGB")
            tinted = original
        else:
            a = style.fill_alpha
            # The alpha blend as a per-channel lookup table: one pass in C, several times faster than Image.blend.
            base = original
            tinted = original.point([int(v * (1 - a) + c * a + 0.5) for c in style.fill_color for v in range(256)])
        self.base, self.tinted = _packed(base), _packed(tinted)
        self.outline = _packed(Image.new("RGB", (1, 1), style.outline_color))[0, 0]
        self._pieces: dict[str, Piece | None] = {}
        self._context: Canvas | None = None  # zoom: the whole image in its panel, made once
        self._scratch: np.ndarray | None = None  # render: the base, drawn on and put back for each group

    def piece(self, counts: str, height: int, width: int) -> "Piece | None":
        """A mask ready to draw, prepared once per image however many groups share it."""
        if counts not in self._pieces:
            self.prepare([counts], height, width)
        return self._pieces[counts]

    def prepare(self, counts: list[str], height: int, width: int) -> None:
        """Prepare the masks not prepared yet, all in one pass: `scaled_boxes` reads the runs of many
        masks with the numpy calls one mask would take (`render_image` hands it every mask of the image)."""
        new = list(dict.fromkeys(c for c in counts if c not in self._pieces))
        if new:
            _, _, nw, nh = self.box
            self._pieces.update(zip(new, Piece.all(new, height, width, nh, nw, self.style.outline_width,
                                                   self.base.shape[1])))

    def draw(self, pieces: list["Piece | None"], out: np.ndarray | None = None) -> np.ndarray:
        """Fill the union of the group, then outline each mask; packed pixels (see `_packed`).
        `out`: draw into this copy of `base` (`render`'s scratch, put back by `undraw`), not a new one."""
        left, top, nw, nh = self.box
        out = self.base.copy() if out is None else out
        view, tinted = out[top:top + nh, left:left + nw], self.tinted[top:top + nh, left:left + nw]
        pieces = [p for p in pieces if p is not None]  # an empty mask draws nothing
        for p in pieces:
            np.copyto(view[p.crop], tinted[p.crop], where=p.inside)
        origin = top * out.shape[1] + left
        for p in pieces:  # outlines after all fills, so a neighbour's fill never covers them
            np.put(out, p.edge_at + origin, self.outline)
        return out

    def undraw(self, out: np.ndarray, pieces: list["Piece | None"]) -> None:
        """`out` back to `base` where `draw` drew `pieces`: their boxes only."""
        left, top, nw, nh = self.box
        view, base = out[top:top + nh, left:left + nw], self.base[top:top + nh, left:left + nw]
        for p in pieces:
            if p is not None:
                view[p.crop] = base[p.crop]

    def render(self, group_counts: list[str], height: int, width: int) -> bytes:
        if self.style.zoom:
            return encode_jpeg(self.zoomed(group_counts, height, width), self.style.jpeg_quality)
        # One scratch copy of the base per image, put back after each encode: a full copy of the canvas per
        # overlay (1.8 MB at 672 px) cost more than putting back the groups' boxes.
        pieces = [self.piece(c, height, width) for c in group_counts]
        if self._scratch is None:
            self._scratch = self.base.copy()
        try:
            return encode_jpeg(self.draw(pieces, self._scratch), self.style.jpeg_quality)
        finally:
            self.undraw(self._scratch, pieces)

    def zoomed(self, group_counts: list[str], height: int, width: int) -> np.ndarray:
        """The whole image and a crop around the group, two panels of the one size x size canvas (packed)."""
        size, stacked = self.style.size, width >= height
        first = (size, size // 2) if stacked else (size // 2, size)
        second = (size, size - size // 2) if stacked else (size - size // 2, size)
        if self._context is None:
            self._context = Canvas(self.image, self.style, first)
        self._context.prepare(group_counts, height, width)
        context = self._context.draw([self._context.piece(c, height, width) for c in group_counts])
        x0, y0, x1, y1 = zoom_region(group_counts, height, width, second[0] / second[1], self.style.zoom_context)
        crop = Canvas(self.image.crop((x0, y0, x1, y1)), self.style, second)
        h, w = y1 - y0, x1 - x0
        cut = [masks_in(c, height, width, x0, y0, x1, y1) for c in group_counts]
        crop.prepare(cut, h, w)
        zoom = crop.draw([crop.piece(c, h, w) for c in cut])
        return np.ascontiguousarray(np.concatenate([context, zoom], axis=0 if stacked else 1))


@dataclass(frozen=True)
class Piece:
    """One mask scaled to the letterboxed size and cut to its bounding box (plus one pixel):
    where to fill and where to outline. None stands for a mask with no pixel."""
    crop: tuple[slice, slice]
    inside: np.ndarray  # (h, w) bool
    # The outline's pixels as flat indices into rows of `stride` pixels from the letterboxed image's corner:
    # a write of the outline's pixels alone, where a boolean mask over the box read all of the box's
    # (one sixth of it at 3 px: 68 against 10 us a mask on the samples)
    edge_at: np.ndarray  # (n,) intp

    @classmethod
    def all(cls, counts: list[str], height: int, width: int, nh: int, nw: int, outline_width: int,
            stride: int | None = None) -> list["Piece | None"]:
        """Masks of one size nearest-neighbour scaled to nh x nw, each its bounding box only (`scaled_masks`:
        the full-size mask is never built), None for an empty one. `stride`: the row length of the canvas the
        outline is written into (nw when None)."""
        stride = nw if stride is None else stride
        out = []
        for b in scaled_boxes(counts, height, width, nh, nw):
            if b is None:
                out.append(None)
                continue
            (rows, cols), inside = b
            ys, xs = outline(inside, outline_width)  # image edge counts as boundary
            out.append(cls((rows, cols), inside, (ys + rows.start) * stride + (xs + cols.start)))
        return out


def zoom_region(group_counts: list[str], height: int, width: int, aspect: float, context: float) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the zoom crop: the group's bounding box times `context`, widened to the panel's
    aspect (width / height), at least 1/MAX_ZOOM of the long side, shifted inside the image and clipped to it."""
    boxes = [coco_mask.toBbox({"size": [height, width], "counts": c.encode()}) for c in group_counts]
    boxes = [b for b in boxes if b[2] > 0 and b[3] > 0]
    if not boxes:  # an empty group: the crop is the whole image
        return 0, 0, width, height
    x0 = min(b[0] for b in boxes); y0 = min(b[1] for b in boxes)
    x1 = max(b[0] + b[2] for b in boxes); y1 = max(b[1] + b[3] for b in boxes)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    w = max((x1 - x0) * context, (y1 - y0) * context * aspect, max(width, height) / MAX_ZOOM)
    w, h = min(w, width), min(w / aspect, height)
    left = int(round(min(max(cx - w / 2, 0), width - w)))
    top = int(round(min(max(cy - h / 2, 0), height - h)))
    return left, top, min(width, left + max(1, int(round(w)))), min(height, top + max(1, int(round(h))))


def masks_in(counts: str, height: int, width: int, x0: int, y0: int, x1: int, y1: int) -> str:
    """A mask cut to the crop (x0, y0)-(x1, y1), as RLE at the crop's size."""
    return mask_utils.encode(mask_utils.decode(counts, height, width, check=False)[y0:y1, x0:x1])


def _packed(img: Image.Image) -> np.ndarray:
    """RGB pixels as one uint32 each (RGBX bytes): a masked copy then moves one word per pixel,
    about twenty times faster than three bytes broadcast over a channel axis. Read-only: `base` and
    `tinted` are only read. Pillow keeps an RGB pixel in four bytes already, and its Arrow export hands
    those over without a copy (0.01 ms against 0.6 to 1.5 ms for tobytes at 672 px, twice an image);
    the fourth byte is Pillow's padding, which the JPEG encoder of RGBX skips as it skips X."""
    try:
        flat = pa.array(img).flatten()  # width*height x 4 uint8, the image's own memory, kept alive by the array
    except ValueError:  # an image Pillow holds in several memory blocks (past 16 MB) has no zero-copy export
        return np.frombuffer(img.tobytes("raw", "RGBX"), np.uint32).reshape(img.height, img.width)
    return np.frombuffer(flat.buffers()[1], np.uint8, len(flat), flat.offset).view(np.uint32).reshape(img.height, img.width)


def outline(mask: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns) of the mask's inner boundary band of `width` px: the mask minus its erosion by the
    4-neighbour cross, `width` times (a diamond of radius `width`), outside the array counting as outside.

    The mask sits in a frame of empty pixels and the erosion runs on the flat array: a pixel's neighbours
    are the ones 1 and one row length away, and a pixel of the frame never turns on (an erosion only takes
    pixels away), so each neighbour is one contiguous slice. On 2-D slices numpy ran one short loop per
    row, the column-shifted ones three times slower than the rest."""
    h, w = mask.shape
    row = w + 2
    framed = np.zeros((h + 2) * row, bool)
    framed.reshape(h + 2, row)[1:-1, 1:-1] = mask
    inner = slice(row, len(framed) - row)  # rows 1..h: every pixel of it has all four neighbours in the array
    eroded, scratch = framed.copy(), np.zeros_like(framed)
    for _ in range(width):
        e = scratch[inner]
        np.logical_and(eroded[inner], eroded[row - 1:len(framed) - row - 1], out=e)
        e &= eroded[row + 1:len(framed) - row + 1]
        e &= eroded[:len(framed) - 2 * row]
        e &= eroded[2 * row:]
        eroded, scratch = scratch, eroded
    ys, xs = np.divmod(np.flatnonzero(framed > eroded), row)  # in the mask and not in its erosion
    return ys - 1, xs - 1


def unpacked(packed: np.ndarray) -> Image.Image:
    """An RGBX image sharing the packed pixels' memory (JPEG writes it as plain RGB)."""
    return Image.frombuffer("RGBX", (packed.shape[1], packed.shape[0]), packed, "raw", "RGBX", 0, 1)


def encode_jpeg(pixels: np.ndarray | Image.Image, quality: int) -> bytes:
    """JPEG bytes of an image or of packed pixels."""
    img = pixels if isinstance(pixels, Image.Image) else unpacked(pixels)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def render_overlay(image: Image.Image, group: list[str], style: Style) -> bytes:
    """JPEG bytes of `image` letterboxed to style.size with `group` (compressed RLE strings at
    the image's size) drawn on it. No label here."""
    return Canvas(image, style).render(group, image.height, image.width)
