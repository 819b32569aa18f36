"""PDM fit to a confidence map (paper section 3.2): CPD init + ASM search along normals."""
import numpy as np
import pytest

from DeepMorphLib.asm_fit import ShapeFit, contour_normals, fit_pdm_to_confidence, search_profiles
from DeepMorphLib.pdm import PointDistributionModel
from DeepMorphLib.similarity import Similarity
from DeepMorphLib.synthetic_shapes import (
    femur_training_set,
    landmark_indices,
    point_to_curve_distance,
    render_confidence,
)


@pytest.fixture(scope="module")
def pdm():
    return PointDistributionModel.fit(femur_training_set(50, seed=1), landmarks=landmark_indices())


def known_shape(pdm, seed, angle=15.0, mirror=False):
    """A plausible femur (PDM instance, |b_i| <= 1.5 sd) placed in a 448 x 448 image."""
    rng = np.random.default_rng(seed)
    b = rng.uniform(-1.5, 1.5, pdm.n_modes) * np.sqrt(pdm.variances)
    model = pdm.reflect() if mirror else pdm
    t = Similarity.from_params(1.05, angle, (224.0, 230.0))
    return model.instance(b, t), b, t


def test_converges_from_perturbed_start(pdm):
    truth, b, t = known_shape(pdm, seed=5)
    conf = render_confidence(truth, (448, 448), sigma_px=1.5)
    start = Similarity.from_params(1.05 * 0.97, 15.0 + 6.0, (224.0 + 6.0, 230.0 - 5.0))
    init_err = point_to_curve_distance(pdm.instance(None, start), truth)
    fit = fit_pdm_to_confidence(conf, pdm, init=start)
    err = point_to_curve_distance(fit.points, truth)
    assert isinstance(fit, ShapeFit) and fit.detected and fit.converged and not fit.reflected
    assert np.mean(init_err) > 5.0
    assert np.mean(err) < 0.4 and np.percentile(err, 95) < 1.0 and np.max(err) < 2.0
    assert fit.quality > 0.9 and fit.support > 0.95
    assert fit.point_confidence.shape == (pdm.n_points,)
    assert np.all(np.abs(fit.b) <= 3 * np.sqrt(pdm.variances) + 1e-9)
    d = fit.to_dict()
    assert d["detected"] and len(d["points"]) == pdm.n_points


@pytest.mark.parametrize("mirror, angle", [(False, -20.0), (True, 160.0)])
def test_full_pipeline_with_cpd_initialisation(pdm, mirror, angle):
    truth, _, _ = known_shape(pdm, seed=8, angle=angle, mirror=mirror)
    conf = render_confidence(truth, (448, 448))
    fit = fit_pdm_to_confidence(conf, pdm)
    err = point_to_curve_distance(fit.points, truth)
    assert fit.detected and fit.reflected == mirror
    assert np.mean(err) < 0.4 and np.percentile(err, 95) < 1.0 and np.max(err) < 2.0
    assert "cpd" in fit.info and fit.transform.reflected is False


def test_stays_plausible_where_the_map_is_blanked(pdm):
    truth, _, _ = known_shape(pdm, seed=11)
    conf = render_confidence(truth, (448, 448))
    tip = truth[landmark_indices()["greater_trochanter_tip"]].round().astype(int)
    conf[tip[1] - 30 : tip[1] + 30, tip[0] - 30 : tip[0] + 30] = 0.0  # e.g. hidden by an implant
    hidden = (np.abs(truth[:, 0] - tip[0]) < 30) & (np.abs(truth[:, 1] - tip[1]) < 30)
    assert hidden.sum() >= 10
    fit = fit_pdm_to_confidence(conf, pdm)
    err = np.hypot(*(fit.points - truth).T)
    assert fit.detected
    assert np.all(np.abs(fit.b) <= 3 * np.sqrt(pdm.variances) + 1e-9)
    assert np.median(point_to_curve_distance(fit.points[~hidden], truth)) < 0.5
    assert np.max(err[hidden]) < 4.0  # filled in by the shape model
    assert np.mean(fit.point_confidence[hidden]) < 0.1 < np.mean(fit.point_confidence[~hidden])
    assert fit.support < 0.97


def test_empty_map_is_not_detected(pdm):
    fit = fit_pdm_to_confidence(np.zeros((448, 448), np.float32), pdm)
    assert not fit.detected and fit.points is None and "fewer than min_pixels=100" in fit.reason
    few = np.zeros((100, 100))
    few[50, :60] = 0.9
    assert not fit_pdm_to_confidence(few, pdm).detected
    assert fit_pdm_to_confidence(few, pdm).to_dict()["detected"] is False


def test_profile_search_backends_agree(pdm):
    truth, _, _ = known_shape(pdm, seed=2)
    conf = render_confidence(truth, (448, 448)).astype(np.float64)
    pts = truth + np.random.default_rng(0).normal(0, 2.0, truth.shape)
    pts[:3] = [[-4.0, 10.0], [447.2, 3.0], [0.0, 0.0]]  # outside / on the border
    normals = contour_normals(pts)
    assert np.allclose(np.hypot(*normals.T), 1.0)
    a = search_profiles(conf, pts, normals, 6.0)
    b = search_profiles(conf, pts, normals, 6.0, backend="numpy")
    assert np.allclose(a[0], b[0], atol=1e-6) and np.allclose(a[1], b[1], atol=1e-6)
    found = point_to_curve_distance(a[0][3:][a[1][3:] > 0.5], truth)
    assert np.median(found) < 0.2


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.full((64, 64), np.nan), "NaN"),
        (np.zeros(64), "2-D"),
        (np.zeros((0, 0)), "empty"),
    ],
)
def test_bad_maps(pdm, bad, match):
    with pytest.raises(ValueError, match=match):
        fit_pdm_to_confidence(bad, pdm)


def test_bad_arguments(pdm):
    conf = render_confidence(known_shape(pdm, 1)[0], (448, 448))
    with pytest.raises(ValueError, match="PointDistributionModel"):
        fit_pdm_to_confidence(conf, "pdm.npz")
    with pytest.raises(ValueError, match="init shape has"):
        fit_pdm_to_confidence(conf, pdm, init=np.zeros((5, 2)))


def test_end_search_finds_where_the_ridge_ends(pdm):
    """Opt-in (``end_search=True``): on a map whose outline really ends at the model's ends (synthetic), the
    end points follow the end of the ridge."""
    truth, _, t = known_shape(pdm, seed=12, angle=0.0)
    conf = render_confidence(truth, (448, 448), sigma_px=1.5)
    start = Similarity(t.scale, t.rotation, t.translation + np.array([0.0, 8.0]))  # slid 8 px down the shaft
    fit = fit_pdm_to_confidence(conf, pdm, init=start, end_search=True)
    ends = np.hypot(*(fit.points[[0, -1]] - truth[[0, -1]]).T)
    assert fit.detected and np.all(ends < 2.0)
    assert np.mean(point_to_curve_distance(fit.points, truth)) < 0.5
