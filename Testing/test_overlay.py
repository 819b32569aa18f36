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
    band = rgb[13:40, 0:200]  # the reason, on a dark band over the (grey) image
    assert (band == 0).all(axis=-1).mean() > 0.5 and ((band[..., 0] > 200) & (band[..., 1] < 120)).any()  # red text


def test_a_long_caption_wraps_to_the_image_width_and_the_reason_goes_below_it():
    from DeepMorphLib.overlay import CHAR_PX, caption_rows

    caption = "cgmh_44_L.png: contour 60 points, 24 extrapolated (network confidence < 0.2), quality 0.56; bone-bright"
    rows = caption_rows(caption, 240)
    assert len(rows) == 3 and all(CHAR_PX * len(r) <= 240 - 4 for r in rows)
    assert " ".join(rows).split() == caption.split()  # nothing lost
    assert caption_rows(caption * 3, 240)[-1].endswith("...") and len(caption_rows(caption * 3, 240)) == 3
    assert caption_rows(None, 240) == [] and caption_rows("short", 240) == ["short"]

    image = np.full((200, 240), 100.0)
    result = {"detected": False, "reason": "femur not confirmed: mean confidence 0.2 < 0.4"}
    rgb = draw_overlay(image, result, caption=caption)
    white = rgb.min(axis=-1) > 200  # antialiased text
    for k in range(3):  # a line of white text in each of the three caption rows
        assert white[12 * k:12 * k + 11].any()
    assert not white[37:].any()
    red = (rgb[..., 0] > 200) & (rgb[..., 1] < 120)
    rows_red = np.nonzero(red.any(axis=1))[0]
    assert len(rows_red) and rows_red.min() >= 37  # the reason starts below the caption's band
