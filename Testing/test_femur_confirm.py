"""Femur fits that the network does not support (mean confidence at their points < FEMUR_MIN_QUALITY) are "not
detected", their contour kept for review: pipeline, overlays and evaluate's scoring."""
import types

import numpy as np
import pytest

from DeepMorphLib import femur_confirm, pipeline
from DeepMorphLib.overlay import FIT_CONTOUR, UNCONFIRMED, draw_overlay


def femur_result(quality, detected=True):
    t = np.linspace(0.0, np.pi, 40)
    contour = np.column_stack([100 + 60 * np.cos(t), 120 - 60 * np.sin(t)])
    return pipeline.FitResult(task="femur", image_shape=(200, 200), detected=detected, reason="", polarity="bone-dark",
                              polarity_score=None, polarity_mode="given", contour=contour, quality=quality,
                              landmarks={"head": contour[20].tolist()})


@pytest.mark.parametrize("quality, limit, confirmed", [(0.3, 0.4, False), (0.45, 0.4, True), (0.3, 0.0, True),
                                                       (0.39, 0.4, False), (0.4, 0.4, True)])
def test_confirm_femur(quality, limit, confirmed):
    res = femur_result(quality)
    femur_confirm.confirm_femur(res, limit)
    assert res.detected is confirmed
    assert res.contour is not None and res.landmarks  # kept either way: for review when not confirmed
    if not confirmed:
        assert "not confirmed" in res.reason and f"{quality:.2f}" in res.reason and f"{limit:g}" in res.reason


def test_confirm_femur_leaves_not_detected_results_and_refuses_a_negative_limit():
    res = femur_result(None, detected=False)
    res.reason = "only 3 foreground pixels"
    femur_confirm.confirm_femur(res)
    assert res.reason == "only 3 foreground pixels"
    with pytest.raises(ValueError, match=">= 0"):
        femur_confirm.confirm_femur(femur_result(0.3), -0.1)


@pytest.mark.parametrize("radius, confirmed", [(30.0, True), (60.0, False), (8.0, False)])
def test_confirm_femur_refuses_an_implausibly_sized_head(radius, confirmed):
    """With the head-dome indices, a contour whose dome radius is outside plausible_head_radius_px (200 x 200 image:
    0.06-0.27 x 200 = 12-54 px) is not confirmed, reason naming the radius; kept for review either way."""
    res = femur_result(0.8)
    t = np.linspace(0.0, np.pi, 40)
    res.contour = np.column_stack([100 + radius * np.cos(t), 120 - radius * np.sin(t)])
    assert femur_confirm.plausible_head_radius_px((200, 200)) == pytest.approx((12.0, 54.0))
    femur_confirm.confirm_femur(res, head_dome=(0, 39))
    assert res.detected is confirmed and res.contour is not None
    if not confirmed:
        assert f"radius is {radius:.1f} px" in res.reason and "12-54 px" in res.reason
        assert ("shrunk onto a small structure" in res.reason) == (radius < 12)  # the hint fits the direction
        assert ("wider view" in res.reason) == (radius > 54)


def _fit_image_with(monkeypatch, radius_px, quality, **kwargs):
    """pipeline.fit_image on noise, its PDM fit replaced by a 60-point half circle of ``radius_px`` and ``quality``."""
    t = np.linspace(0.0, np.pi, 60)
    points = np.column_stack([224 + radius_px * np.cos(t), 200 - radius_px * np.sin(t)])
    fit = types.SimpleNamespace(detected=True, reason="", quality=quality, points=points, reflected=False, info={},
                                point_confidence=np.full(60, quality))
    monkeypatch.setattr(pipeline, "fit_femur_confidence", lambda *a, **k: fit)
    image = np.random.default_rng(0).normal(100, 5, (448, 448)).astype(np.float32)
    net = lambda img: np.zeros(img.shape, np.float32)  # noqa: E731
    res = pipeline.fit_image(image, "femur", predictor=net, polarity="bone-dark", head_anchor=False, region=False,
                             **kwargs)
    return res, points


def test_fit_image_gates_the_femur_fit_and_the_option_turns_it_off(monkeypatch):
    gated, points = _fit_image_with(monkeypatch, 80.0, 0.25)
    assert not gated.detected and "not confirmed" in gated.reason and np.allclose(gated.contour, points)
    kept, _ = _fit_image_with(monkeypatch, 80.0, 0.25, femur_min_quality=0)
    assert kept.detected and kept.quality == pytest.approx(0.25)


def test_fit_image_refuses_a_femur_fit_shrunk_to_a_few_px(monkeypatch):
    """A confident fit (0.9) whose head dome (the shipped PDM's) has a 5 px radius in a 448 px image is not confirmed."""
    res, points = _fit_image_with(monkeypatch, 5.0, 0.9)
    assert not res.detected and "radius is 5.0 px" in res.reason and np.allclose(res.contour, points)


def test_the_overlay_draws_an_unconfirmed_contour_dashed_orange():
    res = femur_result(0.3)
    femur_confirm.confirm_femur(res)
    rgb = draw_overlay(np.full((200, 200), 128, np.float32), res)
    orange = np.all(rgb == UNCONFIRMED, axis=-1)
    assert orange.sum() > 50 and not np.all(rgb == FIT_CONTOUR, axis=-1).any()
    x, y = np.round(res.contour[:, 0]).astype(int), np.round(res.contour[:, 1]).astype(int)
    near = np.zeros_like(orange)
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            near[np.clip(y + dy, 0, 199), np.clip(x + dx, 0, 199)] = True
    assert orange[near].mean() < 0.95  # dashed: gaps along the contour
    confirmed = draw_overlay(np.full((200, 200), 128, np.float32), femur_result(0.8))
    assert np.all(confirmed == FIT_CONTOUR, axis=-1).sum() > 50 and not np.all(confirmed == UNCONFIRMED, axis=-1).any()


def test_evaluate_scores_an_unconfirmed_contour_apart():
    from DeepMorphLib.commands.evaluate import score_sample
    from DeepMorphLib.scoring import summarize_femur

    res = femur_result(0.3)
    t = np.linspace(0.0, np.pi, 400)
    arc = np.column_stack([100 + 62 * np.cos(t), 120 - 62 * np.sin(t)])  # 2 px outside the fitted arc everywhere
    outline = arc.tolist() + [[38, 300], [162, 300]]
    sample = {"id": "x", "truth": {"contour": outline}, "meta": {"polarity": "bone-dark"}}
    femur_confirm.confirm_femur(res)
    rec = score_sample("femur", sample, res, real=False, shape=(448, 448))
    assert rec["p2c"] is None and rec["p2c_unconfirmed"] == pytest.approx(2.0, abs=0.3) and not rec["detected"]
    ok = score_sample("femur", sample, femur_result(0.8), real=False, shape=(448, 448))
    assert "extrapolated" not in ok  # no point confidences given
    weak = femur_result(0.8)
    weak.point_confidence = np.r_[np.full(30, 0.9), np.full(10, 0.05)]
    assert score_sample("femur", sample, weak, real=False, shape=(448, 448))["extrapolated"] == 10
    summary = summarize_femur([rec, ok])
    assert summary["detection_rate"] == 0.5 and summary["n_scored"] == 1 and summary["p2c_mean"] == pytest.approx(ok["p2c"])


def test_extrapolated_segments_need_both_ends_below_the_threshold():
    from DeepMorphLib.overlay import EXTRAPOLATED_BELOW, extrapolated_segments

    lo, hi = EXTRAPOLATED_BELOW / 2, 0.9
    conf = [hi, lo, lo, lo, hi]
    assert extrapolated_segments(conf).tolist() == [False, True, True, False]
    assert extrapolated_segments([lo, hi, hi, lo], closed=True).tolist() == [False, False, False, True]
    assert not extrapolated_segments([EXTRAPOLATED_BELOW] * 3).any()  # at the threshold: seen, not extrapolated


def _coverage_along(mask, points):
    """Fraction of the (densely sampled) contour ``points`` with a pixel of ``mask`` within their 3 x 3 neighbourhood."""
    x, y = np.round(points[:, 0]).astype(int), np.round(points[:, 1]).astype(int)
    hit = np.zeros(len(points), bool)
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            hit |= mask[np.clip(y + dy, 0, mask.shape[0] - 1), np.clip(x + dx, 0, mask.shape[1] - 1)]
    return hit.mean()


def test_the_overlay_draws_the_extrapolated_part_of_a_contour_dashed():
    res = femur_result(0.8)
    n = len(res.contour)
    res.point_confidence = np.where(np.arange(n) < n // 2, 0.95, 0.05)  # second half: no network support
    rgb = draw_overlay(np.full((200, 200), 128, np.float32), res)
    yellow = np.all(rgb == FIT_CONTOUR, axis=-1)
    dense = lambda pts: np.vstack([np.linspace(a, b, 8) for a, b in zip(pts[:-1], pts[1:])])  # noqa: E731
    seen, extrapolated = dense(res.contour[: n // 2 - 1]), dense(res.contour[n // 2 + 1:])
    assert _coverage_along(yellow, seen) > _coverage_along(yellow, extrapolated) + 0.15  # gaps only where extrapolated
    assert _coverage_along(yellow, extrapolated) > 0.2  # ... but drawn
    res.point_confidence = np.full(n, 0.95)  # all seen: one solid line, as before
    solid = np.all(draw_overlay(np.full((200, 200), 128, np.float32), res) == FIT_CONTOUR, axis=-1)
    assert _coverage_along(solid, extrapolated) > _coverage_along(yellow, extrapolated) + 0.15


def test_a_mostly_extrapolated_weak_fit_is_not_confirmed():
    """40 contour points in the image: 12 (30 %) with confidence < 0.2 and a mean confidence of 0.5 (< 0.55) is
    mostly the shape model's guess; 11 extrapolated (27.5 %), a mean of 0.6, points outside the image, or
    ``min_quality`` 0 (confirmation off) keep it confirmed."""
    assert (femur_confirm.FEMUR_MAX_EXTRAPOLATED, femur_confirm.FEMUR_EXTRAPOLATED_QUALITY) == (0.3, 0.55)

    def fit(n_low, quality, shift=0.0):
        res = femur_result(quality)
        res.contour = res.contour + [shift, 0.0]
        res.point_confidence = np.r_[np.full(n_low, 0.05), np.full(40 - n_low, 0.9)]
        return res

    weak = fit(12, 0.5)
    femur_confirm.confirm_femur(weak)
    assert not weak.detected and "30% of its contour in the image is extrapolated" in weak.reason
    for ok, limit in ((fit(11, 0.5), 0.35), (fit(12, 0.6), 0.35), (fit(12, 0.5), 0.0)):
        femur_confirm.confirm_femur(ok, limit)
        assert ok.detected, ok.reason
    half_out = fit(12, 0.5, shift=52.0)  # x = 152 + 60 cos t: points 0-8 (9 of the 12 extrapolated) leave the image
    assert np.all(half_out.contour[:9, 0] > 199.5) and np.all(half_out.contour[9:, 0] < 199.5)  # 200 px wide
    femur_confirm.confirm_femur(half_out)
    assert half_out.detected  # 3 of the 31 points inside are extrapolated: 10 %


def test_the_slicer_logic_confirms_femurs_the_same_way():
    """``fit_logic`` (the Slicer module's logic) applies the mostly-extrapolated rule too."""
    from DeepMorphLib import fit_logic

    t = np.linspace(0.0, np.pi, 40)
    contour = np.column_stack([100 + 60 * np.cos(t), 120 - 60 * np.sin(t)])
    conf = np.r_[np.full(16, 0.05), np.full(24, 0.9)]
    weak = fit_logic.FitResult(task="femur", detected=True, contour=contour, quality={"quality": 0.45},
                               point_confidence=conf, image_shape=(200, 200))
    fit_logic._confirm_femur(weak, image_shape=(200, 200))
    assert not weak.detected and "extrapolated" in weak.reason
    sure = fit_logic.FitResult(task="femur", detected=True, contour=contour, quality={"quality": 0.6},
                               point_confidence=conf, image_shape=(200, 200))
    fit_logic._confirm_femur(sure, image_shape=(200, 200))
    assert sure.detected
