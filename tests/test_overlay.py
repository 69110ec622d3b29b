import dataclasses
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
                      outline_width=2, jpeg_quality=95, style="fill", background_dim=0.5, zoom=False, zoom_context=2.0)


def image(w=80, h=40):
    return Image.fromarray(np.full((h, w, 3), 100, np.uint8))


def test_renderer_takes_no_label():
    for fn in (overlay.render_overlay, overlay.Canvas.draw, overlay.Canvas.render, overlay.Canvas.__init__,
               overlay.Canvas.zoomed, overlay.zoom_region, overlay.masks_in):
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
        p, = overlay.Piece.all([masks.encode(m)], h, w, nh, nw, 1)
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


# ----------------------------------------------------------------------------- keep_colours and zoom

KEEP = dataclasses.replace(STYLE, style="keep_colours")
VIEWS = [STYLE, KEEP, dataclasses.replace(STYLE, zoom=True), dataclasses.replace(KEEP, zoom=True)]


def scene(w=80, h=40):
    """A white object on a coloured background: a tint would change its colour."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:] = (30, 170, 60)
    a[10:30, 20:60] = 245
    return Image.fromarray(a)


def rgb(packed):
    return np.asarray(overlay.unpacked(packed).convert("RGB")).astype(int)


def test_keep_colours_keeps_the_group_pixels_and_dims_the_rest():
    c = overlay.Canvas(scene(), KEEP)
    original = np.asarray(overlay.letterbox(scene(), 64)[0]).astype(int)
    piece = c.piece(masks.encode(box_mask(40, 80, 10, 30, 20, 60)), 40, 80)
    out = rgb(c.draw([piece]))
    # inside the outline: the white object exactly as it is; fill would have made it pink
    assert (out[26:38, 20:44] == original[26:38, 20:44]).all() and tuple(out[32, 32]) == (245, 245, 245)
    # outside: grey, at background_dim of the green's luma
    luma = round((30 * 299 + 170 * 587 + 60 * 114) / 1000)
    assert tuple(out[18, 4]) == (round(luma * 0.5),) * 3
    assert tuple(out[24, 32]) == (255, 255, 0)  # the outline as in fill
    filled = rgb(overlay.Canvas(scene(), STYLE).draw([overlay.Canvas(scene(), STYLE).piece(piece_counts(), 40, 80)]))
    assert tuple(filled[32, 32]) != (245, 245, 245)


def piece_counts():
    return masks.encode(box_mask(40, 80, 10, 30, 20, 60))


@pytest.mark.parametrize("view", VIEWS, ids=["fill", "keep_colours", "fill+zoom", "keep_colours+zoom"])
def test_every_view_is_deterministic_and_fills_the_canvas(view):
    g = [masks.encode(box_mask(40, 80, 12, 16, 30, 34)), masks.encode(box_mask(40, 80, 20, 26, 60, 66))]
    a, b = overlay.render_overlay(scene(), g, view), overlay.render_overlay(scene(), g, view)
    assert a == b and Image.open(io.BytesIO(a)).size == (64, 64)  # same canvas, so the same token count
    assert a != overlay.render_overlay(scene(), g[:1], view)


def test_zoom_shows_a_small_group_larger_beside_the_whole_image():
    small = box_mask(40, 80, 18, 22, 38, 42)  # 16 px of 3,200
    view = dataclasses.replace(STYLE, zoom=True, outline_width=1)
    c = overlay.Canvas(image(), view)  # a uniform image: every drawn pixel is the tint or the outline
    out = rgb(c.zoomed([masks.encode(small)], 40, 80))
    assert out.shape == (64, 64, 3)
    tint = (out == rgb(c.tinted)[32, 32]).all(axis=2) | (out == (255, 255, 0)).all(axis=2)
    # landscape: stacked, the whole image on top, the crop below; the crop shows the group far larger
    top, bottom = tint[:32].sum(), tint[32:].sum()
    assert 0 < top and bottom > 8 * top


def test_zoom_region_holds_the_group_in_the_panel_shape():
    group = [masks.encode(box_mask(40, 80, 18, 22, 38, 42))]
    x0, y0, x1, y1 = overlay.zoom_region(group, 40, 80, 2.0, 2.0)
    assert x0 <= 38 and x1 >= 42 and y0 <= 18 and y1 >= 22 and abs((x1 - x0) / (y1 - y0) - 2.0) < 0.2
    assert overlay.zoom_region([masks.encode(np.zeros((40, 80), bool))], 40, 80, 2.0, 2.0) == (0, 0, 80, 40)
    # a group at the image's edge: the crop is shifted inside the image, never past it
    x0, y0, x1, y1 = overlay.zoom_region([masks.encode(box_mask(40, 80, 0, 4, 76, 80))], 40, 80, 1.0, 3.0)
    assert x1 == 80 and y0 == 0 and x0 >= 0 and y1 <= 40


def test_zoom_of_a_portrait_image_is_side_by_side():
    img = scene(40, 80)
    out = rgb(overlay.Canvas(img, dataclasses.replace(STYLE, zoom=True)).zoomed(
        [masks.encode(box_mask(80, 40, 30, 34, 18, 22))], 80, 40))
    assert out.shape == (64, 64, 3)
    assert (out[:, :32] != overlay.PAD_COLOR).any(axis=2).any() and (out[:, 32:] != overlay.PAD_COLOR).any(axis=2).any()


@pytest.mark.parametrize("key, value, message", [("style", "outline", "render.style"),
                                                 ("background_dim", 1.5, "render.background_dim must be in"),
                                                 ("zoom_context", 0.5, "render.zoom_context must be >= 1")])
def test_view_settings_are_checked(params, key, value, message):
    params["render"][key] = value
    with pytest.raises(ValueError, match=message):
        settings(params)


@pytest.mark.parametrize("size", [(80, 40), (2100, 2100)])  # the second is past Pillow's 16 MB block: no zero copy
def test_packed_pixels_are_the_images_rgb_bytes(size):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    packed = overlay._packed(img)
    assert packed.shape == (size[1], size[0]) and packed.dtype == np.uint32
    rgb = packed.view(np.uint8).reshape(size[1], size[0], 4)[..., :3]
    assert np.array_equal(rgb, np.asarray(img))
