import inspect
import io

import numpy as np
import pytest
from PIL import Image

from maskgate.data import masks
from maskgate.render import overlay
from maskgate.utils import images
from tests.conftest import box_mask, settings

STYLE = overlay.Style(size=64, fill_color=(255, 0, 255), fill_alpha=0.5, outline_color=(255, 255, 0),
                      outline_width=2, jpeg_quality=95)


def image(w=80, h=40):
    return Image.fromarray(np.full((h, w, 3), 100, np.uint8))


def test_renderer_takes_no_label():
    for fn in (overlay.render_overlay, overlay.Canvas.draw, overlay.Canvas.render, overlay.Canvas.__init__):
        assert not {"label", "kind", "label_text"} & set(inspect.signature(fn).parameters)


def test_same_input_same_bytes():
    g = [masks.encode(box_mask(40, 80, 5, 20, 5, 30))]
    assert overlay.render_overlay(image(), g, STYLE) == overlay.render_overlay(image(), g, STYLE)


def test_letterbox_keeps_aspect_ratio():
    assert overlay.letterbox_box(80, 40, 64) == (0, 16, 64, 32)
    canvas, box = overlay.letterbox(image(), 64)
    canvas = np.asarray(canvas)
    assert canvas.shape == (64, 64, 3)
    assert (canvas[:16] == overlay.PAD_COLOR).all() and (canvas[48:] == overlay.PAD_COLOR).all()
    assert (canvas[16:48] == 100).all()


def test_fill_inside_outline_on_edge_nothing_outside():
    c = overlay.Canvas(image(), STYLE)
    piece = c.piece(masks.encode(box_mask(40, 80, 10, 30, 20, 60)), 40, 80)
    canvas, out = np.asarray(overlay.unpacked(c.base).convert("RGB")), np.asarray(overlay.unpacked(c.draw([piece])).convert("RGB"))
    # mask rows 10..30, cols 20..60 -> canvas rows 16+8..16+24, cols 16..48 at scale 0.8
    assert (out[:, :10] == canvas[:, :10]).all()  # left of the mask: untouched
    assert tuple(out[32, 32]) == (178, 50, 178)  # inside: 50% magenta over grey 100
    assert (out[16:64, 48:] == canvas[16:64, 48:]).all()  # right of the mask: untouched
    assert tuple(out[24, 32]) == (255, 255, 0)  # top edge: outline


def test_two_masks_get_two_outlines():
    c = overlay.Canvas(image(80, 80), STYLE)
    a, b = box_mask(80, 80, 0, 40, 0, 40), box_mask(80, 80, 0, 40, 40, 80)
    out = np.asarray(overlay.unpacked(c.draw([c.piece(masks.encode(m), 80, 80) for m in (a, b)])).convert("RGB"))
    assert tuple(out[10, 31]) == (255, 255, 0) and tuple(out[10, 32]) == (255, 255, 0)  # shared border drawn


def test_size_must_be_multiple_of_32(params):
    params["render"]["size"] = 100
    with pytest.raises(ValueError, match="render.size must be a multiple of 32"):
        settings(params)


def test_transparent_png_is_shown_over_white():
    buf = io.BytesIO()
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(buf, format="PNG")
    assert images.decode_image(buf.getvalue()).getpixel((0, 0)) == (255, 255, 255)


def test_piece_matches_nearest_scaling_of_the_whole_mask():
    rng = np.random.default_rng(0)
    for _ in range(20):
        h, w = (int(v) for v in rng.integers(20, 200, 2))
        nh, nw = (int(v) for v in rng.integers(20, 200, 2))
        y, x = int(rng.integers(0, h - 5)), int(rng.integers(0, w - 5))
        m = box_mask(h, w, y, y + int(rng.integers(1, h - y)), x, x + int(rng.integers(1, w - x)))
        p = overlay.Piece.of(masks.encode(m), h, w, nh, nw, 1)
        rows = ((np.arange(nh) + 0.5) * h / nh).astype(int)
        cols = ((np.arange(nw) + 0.5) * w / nw).astype(int)
        whole = m[rows][:, cols]
        placed = np.zeros_like(whole)
        placed[p.crop] = p.inside
        assert (placed == whole).all()


def test_empty_mask_draws_nothing():
    c = overlay.Canvas(image(), STYLE)
    assert c.piece(masks.encode(np.zeros((40, 80), bool)), 40, 80) is None
    assert (c.draw([None]) == c.base).all()


def test_jpeg_of_packed_pixels_is_plain_rgb():
    c = overlay.Canvas(image(), STYLE)
    jpeg = overlay.encode_jpeg(c.base, 95)
    img = Image.open(io.BytesIO(jpeg))
    assert img.mode == "RGB" and img.size == (64, 64)
    assert np.abs(np.asarray(img).astype(int) - np.asarray(overlay.unpacked(c.base).convert("RGB"))).max() < 8
