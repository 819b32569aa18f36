"""Circle fits of the femoral head (paper section 2): eq. 3, eq. 4, robust variant, the < 100 px rule."""
import numpy as np
import pytest

from DeepMorphLib.circle_fit import METHODS, CircleFit, fit_circle, fit_circle_points
from DeepMorphLib.synthetic_shapes import render_confidence


def arc(cx, cy, r, start_deg, span_deg, n=300):
    t = np.deg2rad(start_deg + np.linspace(0.0, span_deg, n))
    return np.column_stack([cx + r * np.cos(t), cy + r * np.sin(t)])


def circle_map(cx, cy, r, shape=(200, 220), sigma=1.0):
    t = np.linspace(0, 2 * np.pi, 721)
    return render_confidence(np.column_stack([cx + r * np.cos(t), cy + r * np.sin(t)]), shape, sigma_px=sigma)


@pytest.mark.parametrize("method", METHODS)
def test_full_circle_recovered_exactly(method):
    fit = fit_circle_points(arc(103.7, 88.2, 41.3, 0, 360, 400)[:-1], method=method)
    assert fit.detected and fit.reason == ""
    assert fit.circle == pytest.approx((103.7, 88.2, 41.3), abs=1e-8)
    assert fit.residual_px < 1e-8
    assert fit.arc_coverage_deg == pytest.approx(360.0)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("start", [0.0, 75.0, 200.0, 310.0])
def test_quarter_arc_recovered_exactly(method, start):
    fit = fit_circle_points(arc(-20.0, 350.5, 27.0, start, 90.0), method=method)
    assert fit.circle == pytest.approx((-20.0, 350.5, 27.0), abs=1e-7)
    assert fit.arc_coverage_deg == pytest.approx(90.0, abs=1.0)


def test_geometric_and_algebraic_agree_on_clean_map():
    conf = circle_map(97.3, 102.6, 35.4)
    alg = fit_circle(conf, method="algebraic")
    geo = fit_circle(conf, method="geometric")
    assert alg.detected and geo.detected and alg.n_pixels >= 100
    assert np.allclose(alg.circle, geo.circle, atol=0.05)
    assert np.allclose(geo.circle, (97.3, 102.6, 35.4), atol=0.1)
    assert geo.residual_px < 1.0
    assert geo.arc_coverage_deg == pytest.approx(360.0)
    weighted = fit_circle(conf, method="geometric", weighted=True)
    assert np.allclose(weighted.circle, (97.3, 102.6, 35.4), atol=0.1)


def test_robust_fit_ignores_30_percent_outliers(rng):
    inliers = arc(120.0, 95.0, 38.0, 0, 360, 700)[:-1] + rng.normal(0, 0.3, (699, 2))
    outliers = rng.uniform([40, 20], [200, 170], (300, 2))  # 30 % of all points
    pts = np.vstack([inliers, outliers])
    robust = fit_circle_points(pts, method="robust")
    assert robust.detected
    assert np.allclose(robust.circle, (120.0, 95.0, 38.0), atol=0.15)
    assert robust.n_inliers < len(pts)
    assert robust.residual_px < 0.6
    plain = fit_circle_points(pts, method="algebraic")
    assert np.max(np.abs(np.array(plain.circle) - (120.0, 95.0, 38.0))) > 2.0  # the outliers do matter


def test_robust_fit_on_partly_hidden_head_with_implant_edge():
    conf = circle_map(110.0, 100.0, 40.0)
    conf[:, 60:95] = 0.0  # part of the outline hidden (e.g. by an implant)
    conf[20:200, 170:174] = 0.9  # a straight bright edge (false positive), more pixels than the arc
    fit = fit_circle(conf, method="robust")
    assert fit.detected
    assert np.allclose(fit.circle, (110.0, 100.0, 40.0), atol=0.3)
    assert 200.0 < fit.arc_coverage_deg < 330.0


def test_fewer_than_min_pixels_is_not_detected():
    conf = np.zeros((64, 64), np.float32)
    conf.reshape(-1)[:99] = 0.9  # 99 foreground pixels
    fit = fit_circle(conf)
    assert isinstance(fit, CircleFit) and not fit.detected
    assert fit.circle is None and np.isnan(fit.cx)
    assert fit.n_pixels == 99 and "min_pixels=100" in fit.reason
    conf[10, 50] = 0.6  # the 100th pixel: a fit is attempted
    assert fit_circle(conf).n_pixels == 100
    assert not fit_circle(circle_map(50, 50, 20, (100, 100)), min_pixels=10**5).detected
    assert fit_circle(np.full((30, 30), 0.5)).n_pixels == 0  # the rule is O > threshold, strictly


def test_degenerate_points_are_reported_not_guessed():
    line = np.column_stack([np.arange(50.0), 2.0 * np.arange(50.0) + 1])
    for method in METHODS:
        fit = fit_circle_points(line, method=method)
        assert not fit.detected and fit.reason
    assert not fit_circle_points(np.ones((2, 2))).detected


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.full((20, 20), np.nan), "NaN"),
        (np.zeros((0, 5)), "empty"),
        (np.zeros((4, 5, 6)), "2-D"),
        (np.zeros(10), "2-D"),
        (None, "None"),
    ],
)
def test_bad_maps_raise_clear_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        fit_circle(bad)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="method"):
        fit_circle(np.zeros((5, 5)), method="ellipse")
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        fit_circle_points(np.zeros((10, 3)))
    with pytest.raises(ValueError, match="NaN"):
        fit_circle_points(np.array([[0.0, 1.0], [np.nan, 2.0], [3.0, 4.0]]))
    with pytest.raises(ValueError, match="weights"):
        fit_circle_points(arc(0, 0, 5, 0, 90, 10), weights=np.ones(3))
