"""Second opinions of the femur PDM fit: shape-constrained CPD and head-anchored starts (known geometry)."""
import numpy as np
import pytest

from DeepMorphLib.asm_fit import fit_pdm_to_confidence, head_anchored_starts
from DeepMorphLib.circle_fit import fit_circle_points, foreground_pixels
from DeepMorphLib.pdm import PointDistributionModel
from DeepMorphLib.shape_cpd import densify_matrix, fit_pdm_cpd
from DeepMorphLib.similarity import Similarity
from DeepMorphLib.synthetic_shapes import (
    PART_POINTS,
    femur_training_set,
    landmark_indices,
    point_to_curve_distance,
    render_confidence,
)

IDX = landmark_indices()
DOME = (IDX["head_start"], IDX["head_start"] + PART_POINTS["head"] - 1)


@pytest.fixture(scope="module")
def pdm():
    return PointDistributionModel.fit(femur_training_set(50, seed=1), landmarks=IDX)


def known_shape(pdm, seed, angle=10.0, mirror=False):
    rng = np.random.default_rng(seed)
    b = rng.uniform(-1.5, 1.5, pdm.n_modes) * np.sqrt(pdm.variances)
    model = pdm.reflect() if mirror else pdm
    t = Similarity.from_params(1.05, angle, (224.0, 230.0))
    return model.instance(b, t), model


def test_densify_matrix_interpolates_the_polyline():
    pts = np.array([[0.0, 0.0], [4.0, 0.0], [4.0, 8.0]])
    a = densify_matrix(3, 4)
    dense = a @ pts
    assert a.shape == (9, 3) and np.allclose(a.sum(axis=1), 1.0)
    assert np.allclose(dense[::4], pts)  # control points kept
    assert np.allclose(dense[1], [1.0, 0.0]) and np.allclose(dense[6], [4.0, 4.0])
    closed = densify_matrix(3, 2, closed=True) @ pts
    assert closed.shape == (6, 2) and np.allclose(closed[5], [2.0, 4.0])  # back towards the first point
    with pytest.raises(ValueError, match="at least 2 points"):
        densify_matrix(1, 4)


@pytest.mark.parametrize("mirror", [False, True])
def test_shape_cpd_recovers_the_shape_from_a_far_start(pdm, mirror):
    truth, model = known_shape(pdm, seed=3, mirror=mirror)
    xy, _ = foreground_pixels(render_confidence(truth, (448, 448), sigma_px=1.5), 0.5)
    start = Similarity.from_params(0.9, 10.0 + 20.0, (224.0 + 25.0, 230.0 - 20.0))
    assert np.mean(point_to_curve_distance(model.instance(None, start), truth)) > 10.0
    fit = fit_pdm_cpd(xy, model, start, max_iterations=80)
    err = point_to_curve_distance(fit.points, truth)
    # the two end points of the open outline see pixels on one side only: pulled in by about a band width
    assert np.mean(err) < 0.5 and np.max(err[1:-1]) < 0.5 and np.max(err) < 3.0
    assert np.all(np.abs(fit.b) <= 3 * np.sqrt(pdm.variances) + 1e-9)
    assert fit.sigma2 < 2.0


def test_shape_cpd_ignores_clutter(pdm):
    truth, model = known_shape(pdm, seed=4)
    conf = render_confidence(truth, (448, 448), sigma_px=1.5)
    xy, _ = foreground_pixels(conf, 0.5)
    rng = np.random.default_rng(0)
    t = np.linspace(0.0, np.pi, 150)
    arc = np.column_stack([120 + 60 * np.cos(t), 60 + 40 * np.sin(t)])  # a pelvis-like edge elsewhere
    clutter = rng.uniform(0, 448, (60, 2))
    start = Similarity.from_params(1.0, 14.0, (230.0, 225.0))
    fit = fit_pdm_cpd(np.vstack([xy, arc, clutter]), model, start, w=0.2, max_iterations=80)
    assert np.mean(point_to_curve_distance(fit.points, truth)) < 1.0


def test_fused_e_step_gives_the_full_matrix_fit(pdm):
    pytest.importorskip("numba")
    truth, model = known_shape(pdm, seed=5, angle=-8.0)
    xy, _ = foreground_pixels(render_confidence(truth, (448, 448), sigma_px=1.5), 0.5)
    clutter = np.random.default_rng(1).uniform(0, 448, (80, 2))
    start = Similarity.from_params(0.95, 0.0, (235.0, 220.0))
    fits = {be: fit_pdm_cpd(np.vstack([xy, clutter]), model, start, w=0.2, max_iterations=40, backend=be)
            for be in ("numpy", "numba")}
    # same EM, posteriors summed in one compiled pass instead of a (K, N) matrix: the same contour to ~1e-3 px
    assert fits["numba"].iterations == fits["numpy"].iterations
    assert np.max(np.abs(fits["numba"].points - fits["numpy"].points)) < 1e-2
    assert fits["numba"].sigma2 == pytest.approx(fits["numpy"].sigma2, rel=1e-3)
    assert np.mean(point_to_curve_distance(fits["numba"].points, truth)) < 1.0


def test_shape_cpd_bad_input(pdm):
    with pytest.raises(ValueError, match="at least 3 finite"):
        fit_pdm_cpd(np.zeros((2, 2)), pdm, Similarity())
    with pytest.raises(ValueError, match="outlier weight"):
        fit_pdm_cpd(np.zeros((10, 2)), pdm, Similarity(), w=1.0)
    with pytest.raises(ValueError, match="backend"):
        fit_pdm_cpd(np.zeros((10, 2)), pdm, Similarity(), backend="cuda")


def test_head_anchored_starts_put_the_dome_on_the_circle(pdm):
    circle = (210.0, 150.0, 31.0)
    starts = head_anchored_starts(pdm, DOME, circle, angles_deg=(-30.0, 0.0, 90.0))
    assert len(starts) == 6 and sum(s.reflected for s in starts) == 3
    for s in starts:
        dome = s.apply(pdm.mean[DOME[0]: DOME[1] + 1])
        cf = fit_circle_points(dome, method="algebraic")
        assert np.allclose([cf.cx, cf.cy, cf.r], circle, atol=1e-6)
    with pytest.raises(ValueError, match="head_dome"):
        head_anchored_starts(pdm, None, circle)
    with pytest.raises(ValueError, match="finite"):
        head_anchored_starts(pdm, DOME, (np.nan, 1.0, 2.0))


def test_head_anchor_rescues_a_fit_from_a_wrong_start(pdm):
    truth, _ = known_shape(pdm, seed=6, angle=-5.0)
    conf = render_confidence(truth, (448, 448), sigma_px=1.5)
    dome = fit_circle_points(truth[DOME[0]: DOME[1] + 1], method="algebraic")
    wrong = Similarity.from_params(1.0, 130.0, (300.0, 320.0))  # shaft pointing the wrong way, off the femur
    lost = fit_pdm_to_confidence(conf, pdm, init=wrong)
    assert lost.quality < 0.6 and np.mean(point_to_curve_distance(lost.points, truth)) > 5.0
    calls = []

    def circle():
        calls.append(1)
        return dome.cx + 1.5, dome.cy - 1.0, dome.r * 1.05  # a slightly-off head circle, as a network gives

    fit = fit_pdm_to_confidence(conf, pdm, init=wrong, head_circle=circle, head_dome=DOME)
    assert calls == [1]
    assert str(fit.info["start_used"]).startswith("head-anchor") and fit.info["head_anchor"]["starts"] == 24
    err = point_to_curve_distance(fit.points, truth)
    assert np.mean(err) < 0.5 and fit.quality > 0.9
    # a convincing first fit asks for no second opinion: the callable is not called
    calls.clear()
    good = fit_pdm_to_confidence(conf, pdm, head_circle=circle, head_dome=DOME)
    assert calls == [] and good.quality > 0.9 and "second_opinions" not in good.info


def test_slicer_logic_passes_the_head_anchor_to_weak_femur_fits(pdm):
    from DeepMorphLib import fit_logic

    named = PointDistributionModel(pdm.mean, pdm.modes, pdm.variances, landmarks={
        **IDX, "anchor_neck_superior": DOME[0], "anchor_neck_inferior": DOME[1]})
    truth, _ = known_shape(pdm, seed=7, angle=0.0)
    conf = 0.65 * render_confidence(truth, (448, 448), sigma_px=1.5)  # a faint map: mean confidence < 0.7
    dome = fit_circle_points(truth[DOME[0]: DOME[1] + 1], method="algebraic")
    yy, xx = np.mgrid[0:448, 0:448]
    disk = (np.hypot(xx - dome.cx, yy - dome.cy) < dome.r).astype(np.float32)
    head_calls = []

    def head_net(image):  # a stand-in head network: the true head disk
        head_calls.append(image.shape)
        return disk

    head_net.target = "region"
    image = np.full((448, 448), 100.0, np.float32)
    result = fit_logic.fit_image(image, "femur", pdm=named, polarity="bone-dark", predict=lambda x: conf,
                                 head_anchor=head_net)
    assert head_calls, "the weak femur fit did not ask the head network"
    assert result.detected and np.mean(point_to_curve_distance(result.contour, truth)) < 1.0
    assert fit_logic._head_dome(pdm) is None  # a PDM without the dome landmarks is fitted without anchoring
