"""Overlay pictures: where the fit and the circle kept for review are drawn."""
import numpy as np

from DeepMorphLib.overlay import FIT_CIRCLE, UNCONFIRMED, draw_overlay


def _pixels_of(rgb, colour):
    yy, xx = np.nonzero(np.all(rgb == np.asarray(colour, np.uint8), axis=-1))
    return xx.astype(float), yy.astype(float)


def test_a_found_circle_is_drawn_solid_where_it_is():
    image = np.full((200, 240), 100.0)
    rgb = draw_overlay(image, {"detected": True, "reason": "", "circle": {"cx": 120.0, "cy": 110.0, "r": 40.0}})
    xx, yy = _pixels_of(rgb, FIT_CIRCLE)
    ring = np.abs(np.hypot(xx - 120.0, yy - 110.0) - 40.0) < 2.0
    assert ring.sum() > 200  # the whole circumference (~250 px), plus the centre cross
    assert not len(_pixels_of(rgb, UNCONFIRMED)[0])


def test_a_rejected_circle_is_kept_dashed_for_review_with_the_reason():
    image = np.full((200, 240), 100.0)
    result = {"detected": False, "reason": "head not found: the circle is not on the femur " * 3,
              "circle": {"cx": 120.0, "cy": 110.0, "r": 40.0}}
    rgb = draw_overlay(image, result)
    xx, yy = _pixels_of(rgb, UNCONFIRMED)
    d = np.hypot(xx - 120.0, yy - 110.0)
    on_ring = np.abs(d - 40.0) < 2.0
    assert on_ring.sum() > 60  # dashed: about half of the circumference ...
    angles = np.degrees(np.arctan2(yy[on_ring] - 110.0, xx[on_ring] - 120.0)) % 360
    covered = len(np.unique((angles // 3).astype(int))) / 120.0  # ... in dashes: about half of 3-degree steps
    assert 0.35 < covered < 0.7
    assert not len(_pixels_of(rgb, FIT_CIRCLE)[0])  # not drawn as a fit
    red = (rgb[..., 0] > 200) & (rgb[..., 1] < 120)  # the reason, in red text below the image, never over it
    assert rgb.shape[0] > 200 and red[200:].any() and not red[:200].any()
    assert (rgb[:200] == draw_overlay(image, {**result, "reason": ""})[:200]).all()


def test_a_long_caption_wraps_to_the_image_width_and_the_reason_goes_below_it():
    from DeepMorphLib.overlay import caption_font, caption_rows

    caption = "cgmh_44_L.png: contour 60 points, 24 extrapolated (network confidence < 0.2), quality 0.56; bone-bright"
    font = caption_font(240)
    rows = caption_rows(caption, 240)
    assert 2 <= len(rows) <= 3 and all(font.getlength(r) <= 240 - 8 for r in rows)
    assert " ".join(rows).split() == caption.split()  # nothing lost
    assert caption_rows(caption * 9, 240)[-1].endswith("...") and len(caption_rows(caption * 9, 240)) == 10
    assert caption_rows(None, 240) == [] and caption_rows("short", 240) == ["short"]
    name = "1.2.840.113619.2.55.3.604688119.868.1234567890.123.png"  # longer than a row: cut, not lost
    long_name = caption_rows(f"{name}: circle", 128)
    assert len(long_name) > 1 and all(caption_font(128).getlength(r) <= 128 - 8 for r in long_name)
    assert "".join(long_name).replace(" ", "") == f"{name}:circle"

    image = np.full((200, 240), 100.0)
    result = {"detected": False, "reason": "femur not confirmed: mean confidence 0.2 < 0.4"}
    rgb = draw_overlay(image, result, caption=caption)
    assert rgb.shape[1] == 240 and rgb.shape[0] > 200 + 15 * (len(rows) + 1)  # a band below the image
    assert (rgb[:200] == draw_overlay(image)).all()  # the image is not written on
    white = rgb.min(axis=-1) > 200  # antialiased text
    red = (rgb[..., 0] > 200) & (rgb[..., 1] < 120)
    rows_white, rows_red = np.nonzero(white.any(axis=1))[0], np.nonzero(red.any(axis=1))[0]
    assert rows_white.min() >= 200 and len(rows_red) and rows_red.min() > rows_white.max()  # the reason below it


def test_on_small_images_the_caption_hides_nothing_and_is_not_cut_off():
    from DeepMorphLib.overlay import caption_rows

    caption = ("000001.png: contour 60 points, 14 extrapolated (network confidence < 0.2), quality 0.76; "
               "bone-dark (auto)")
    for size in (128, 256, 448):
        image = np.tile(np.linspace(40.0, 200.0, size), (size, 1))
        result = {"detected": True, "reason": "", "circle": {"cx": size / 2, "cy": size / 5, "r": size / 6}}
        plain, rgb = draw_overlay(image, result), draw_overlay(image, result, caption=caption)
        assert plain.shape == (size, size, 3) and rgb.shape[1] == size
        assert (rgb[:size] == plain).all()  # the head at the top is as visible as without a caption
        text = rgb[size:].max(axis=-1) > 60
        assert text.any() and not text[:, -3:].any() and not text[-2:].any()  # nothing cut off at the edges
        assert " ".join(caption_rows(caption, size)).split() == caption.split()  # the whole caption
    result = {"detected": False, "reason": "head not confirmed: " + "no clear edge and no confident femur fit " * 2}
    for caption in ("x.png: not detected", None):  # the reason, with or without a caption, below the image
        rgb = draw_overlay(np.full((128, 128), 100.0), result, caption=caption)
        red = (rgb[..., 0] > 200) & (rgb[..., 1] < 120)
        assert red[128:].any() and not red[:128].any() and not red[:, -3:].any() and not red[-2:].any()
