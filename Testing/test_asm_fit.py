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


@pytest.mark.parametrize("mirror", [False, True])
def test_a_known_side_tries_only_that_sides_shape(pdm, mirror):
    """``reflection`` (the side is known) restricts every start to the PDM as built (False) or its mirror (True):
    the right one fits as well as the free search; the wrong one is obeyed (and fits worse), never swapped."""
    truth, _, _ = known_shape(pdm, seed=8, angle=-20.0 if not mirror else 160.0, mirror=mirror)
    conf = render_confidence(truth, (448, 448))
    free = fit_pdm_to_confidence(conf, pdm)
    right = fit_pdm_to_confidence(conf, pdm, reflection=mirror)
    wrong = fit_pdm_to_confidence(conf, pdm, reflection=not mirror, second_opinion_below=1.1)
    assert free.reflected == right.reflected == mirror and wrong.reflected == (not mirror)
    assert np.mean(point_to_curve_distance(right.points, truth)) < 0.4
    assert wrong.quality < free.quality - 0.1
    assert "cpd" in wrong.info and wrong.info["cpd"]["reflected"] == (not mirror)
    with pytest.raises(ValueError, match="reflection must be"):
        fit_pdm_to_confidence(conf, pdm, reflection="left")


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


# ------------------------------------------------------------------------------------------------ upright prior
def _shaft_axis():
    li = landmark_indices()
    return li["head_tip"], li["shaft_lateral_distal"], li["shaft_medial_distal"]


@pytest.mark.parametrize("angle", [0.0, 35.0, 90.0, 180.0, -120.0])
def test_shaft_angle_of_a_placed_shape(pdm, angle):
    """The synthetic femur at rotation 0 has its shaft straight down the image (+y); rotating it by ``angle``
    (Similarity: +x towards +y) turns its shaft by -``angle`` (shaft_angle_deg counts from +y towards +x)."""
    from DeepMorphLib.asm_fit import shaft_angle_deg

    base = shaft_angle_deg(pdm.mean, _shaft_axis())
    assert abs(base) < 5.0
    placed = pdm.instance(None, Similarity.from_params(1.0, angle, (224.0, 230.0)))
    got = shaft_angle_deg(placed, _shaft_axis())
    assert abs((got - base + angle + 180.0) % 360.0 - 180.0) < 1e-6


def test_the_upright_prior_does_not_veto_a_clear_rotated_femur(pdm):
    """An upside-down femur that the map shows clearly is still found with the prior on; the prior only makes the
    fit ask for its second opinions and breaks near-ties."""
    truth, _, _ = known_shape(pdm, seed=8, angle=175.0)
    conf = render_confidence(truth, (448, 448))
    fit = fit_pdm_to_confidence(conf, pdm, shaft_axis=_shaft_axis(), upright_max_deg=60.0)
    err = point_to_curve_distance(fit.points, truth)
    assert fit.detected and np.mean(err) < 0.4
    assert abs(fit.info["shaft_angle_deg"]) > 170.0 and "second_opinions" in fit.info
    plain = fit_pdm_to_confidence(conf, pdm)
    assert "second_opinions" not in plain.info and "shaft_angle_deg" not in plain.info


def test_the_upright_prior_breaks_a_near_tie_between_fits(pdm, monkeypatch):
    """pipeline.fit_femur_confidence: a weak outline fit with the shaft pointing up loses to a slightly less
    confident upright region fit when the prior is on (``shaft_axis``), and wins without it."""
    from DeepMorphLib import pipeline
    from DeepMorphLib.asm_fit import UPRIGHT_WEIGHT

    upright = pdm.instance(None, Similarity.from_params(1.0, 10.0, (224.0, 230.0)))
    upside_down = pdm.instance(None, Similarity.from_params(1.0, 170.0, (224.0, 230.0)))
    fits = {"outline": ShapeFit(detected=True, points=upside_down, quality=0.62, info={}),
            "region": ShapeFit(detected=True, points=upright, quality=0.62 - UPRIGHT_WEIGHT / 2, info={})}
    monkeypatch.setattr(pipeline, "_fit_pdm", lambda conf, model, **kw: fits["region" if conf.max() < 0.5 else "outline"])
    outline = np.full((448, 448), 0.6, np.float32)
    region = np.zeros((448, 448), np.float32)  # its rim map is empty: max < 0.5 marks the region fit above
    on = pipeline.fit_femur_confidence(outline, "outline", pdm, {"shaft_axis": _shaft_axis()}, lambda: region)
    assert on.info.get("fit_map") == "region"
    off = pipeline.fit_femur_confidence(outline, "outline", pdm, {}, lambda: region)
    assert off.info.get("fit_map") is None and np.allclose(off.points, upside_down)
    none = pipeline.fit_femur_confidence(outline, "outline", pdm, {"shaft_axis": _shaft_axis(), "upright_max_deg": None},
                                         lambda: region)
    assert none.info.get("fit_map") is None


# ------------------------------------------------------------------------------------------------- size prior
def _dome():
    from DeepMorphLib.synthetic_shapes import PART_POINTS

    start = landmark_indices()["head_start"]
    return start, start + PART_POINTS["head"] - 1


def test_head_dome_radius_follows_the_placed_shape(pdm):
    """The synthetic femur's head is a circle of FemurParams.head_radius_px (36 px) in the model frame: placed at scale
    1.05 its dome radius is ~37.8 px, and it scales exactly with the shape; a straight 'dome' has none (nan)."""
    from DeepMorphLib.asm_fit import head_dome_radius

    one = pdm.instance(None, Similarity.from_params(1.05, 15.0, (224.0, 230.0)))
    two = pdm.instance(None, Similarity.from_params(2.10, -40.0, (300.0, 100.0)))
    r1 = head_dome_radius(one, _dome())
    assert r1 == pytest.approx(36.0 * 1.05, rel=0.05)
    assert head_dome_radius(two, _dome()) == pytest.approx(2.0 * r1, rel=1e-9)
    line = np.column_stack([np.arange(pdm.n_points, dtype=float), np.zeros(pdm.n_points)])
    assert np.isnan(head_dome_radius(line, _dome()))


def test_a_fit_shrunk_onto_the_ridge_is_refused_by_its_head_size(pdm):
    """Started at a fifth of its size, the ASM shrinks the PDM onto a few px of the head's ridge: every point sits on
    the outline (mean point-to-curve < 0.5 px, quality > 0.9: neither can tell), yet the head radius is < 5 px, which
    femur_confirm.confirm_femur refuses (448 px image: plausible 27-121 px); the true femur's head (~38 px) passes."""
    from DeepMorphLib import femur_confirm
    from DeepMorphLib.asm_fit import head_dome_radius

    truth, _, _ = known_shape(pdm, seed=5)
    conf = render_confidence(truth, (448, 448), sigma_px=1.5)
    shrunk = fit_pdm_to_confidence(conf, pdm, init=Similarity.from_params(0.2, 15.0, (224.0, 230.0)))
    assert shrunk.detected and head_dome_radius(shrunk.points, _dome()) < 5.0 and shrunk.quality > 0.9
    assert np.mean(point_to_curve_distance(shrunk.points, truth)) < 0.5
    assert "radius is" in femur_confirm.implausible_size_reason(shrunk.points, _dome(), (448, 448))
    assert femur_confirm.implausible_size_reason(truth, _dome(), (448, 448)) == ""


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_outline_coverage_of_the_true_and_a_shrunk_contour(pdm, backend):
    from DeepMorphLib.asm_fit import outline_coverage
    from DeepMorphLib.circle_fit import foreground_pixels

    truth, _, t = known_shape(pdm, seed=5)
    xy, _ = foreground_pixels(render_confidence(truth, (448, 448), sigma_px=1.5), 0.5)
    shrunk = pdm.instance(None, Similarity(0.2 * t.scale, t.rotation, t.translation))
    assert outline_coverage(xy, truth, backend=backend) == pytest.approx(1.0)
    assert outline_coverage(xy, shrunk, backend=backend) < 0.2
    assert outline_coverage(np.zeros((0, 2)), truth, backend=backend) == 0.0
    # a unit square's edges: of the points (0.5, y), y = -3..4, those within 1 px of the (closed) square
    square = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    column = np.column_stack([np.full(8, 0.5), np.arange(-3.0, 5.0)])
    assert outline_coverage(column, square, closed=True, within_px=1.0, backend=backend) == pytest.approx(4 / 8)


def test_outline_coverage_backends_agree():
    from DeepMorphLib.asm_fit import outline_coverage

    rng = np.random.default_rng(0)
    for _ in range(20):
        xy = rng.uniform(0, 100, (300, 2))
        contour = np.cumsum(rng.normal(0, 5, (60, 2)), axis=0) + 50
        for closed in (False, True):
            assert outline_coverage(xy, contour, closed, backend="numba") == \
                outline_coverage(xy, contour, closed, backend="numpy")


def test_coverage_decides_between_a_shrunk_fit_and_the_whole_femur(pdm):
    """A faint map (peak 0.65, so the fit asks for second opinions) and a start at a fifth of the size: the shrunk
    fit on one ridge piece and the head-anchored whole femur have the same mean confidence (~0.62), and by that
    alone the shrunk one is kept (head radius < 5 px); counting the outline pixels each covers
    (``coverage_weight``) keeps the whole femur."""
    from DeepMorphLib.asm_fit import COVERAGE_WEIGHT, head_dome_radius
    from DeepMorphLib.circle_fit import fit_circle_points

    truth, _, _ = known_shape(pdm, seed=5)
    conf = 0.65 * render_confidence(truth, (448, 448), sigma_px=1.5)
    head = fit_circle_points(truth[_dome()[0]: _dome()[1] + 1])
    kw = dict(init=Similarity.from_params(0.2, 15.0, (224.0, 230.0)), head_dome=_dome(),
              head_circle=(head.cx, head.cy, head.r))
    alone = fit_pdm_to_confidence(conf, pdm, coverage_weight=0.0, **kw)
    assert head_dome_radius(alone.points, _dome()) < 5.0
    fit = fit_pdm_to_confidence(conf, pdm, **kw)  # default: COVERAGE_WEIGHT
    assert COVERAGE_WEIGHT > 0 and fit.info["start_used"].startswith("head-anchor")
    assert head_dome_radius(fit.points, _dome()) == pytest.approx(head.r, abs=1.0)
    assert np.mean(point_to_curve_distance(fit.points, truth)) < 0.4


def _ridge_4px_out(pdm):
    """A placed PDM instance, its normals, an outline 4 px out along them and that outline's confidence map."""
    points, _, _ = known_shape(pdm, seed=3)
    normals = contour_normals(points, pdm.closed)
    outline = points + 4.0 * normals
    return points, normals, outline, render_confidence(outline, (448, 448), closed=pdm.closed)


@pytest.mark.parametrize("reach, left_px", [(5.0, 0.0), (3.0, 1.0)])
def test_polish_moves_points_onto_a_ridge_within_its_reach(pdm, reach, left_px):
    """A femur whose outline lies 4 px out along the normals from the model's points (the shape model cannot
    follow it): a 5 px polish (pipeline.FINAL_POLISH_PX) puts the points on that ridge; a 3 px one moves them as
    far as it reaches, up the ridge's flank, 1 px short of it."""
    from DeepMorphLib.asm_fit import polish_points

    points, normals, outline, conf = _ridge_4px_out(pdm)
    polished = polish_points(conf, points, pdm.closed, reach)
    inner = slice(5, -5)  # the ends' normals lean over the tangent
    short = np.sum((outline - polished) * normals, axis=1)[inner]
    np.testing.assert_allclose(short, left_px, atol=0.3)


def test_the_kept_femur_fit_gets_the_final_polish(pdm, monkeypatch):
    """``pipeline.fit_femur_confidence`` polishes the kept outline fit's PDM points (``model_points``) with
    ``final_polish_px`` (default ``FINAL_POLISH_PX`` = 5 px) after the fits are compared: onto a ridge 4 px out,
    with the point confidences and quality recomputed there; 0 px gives the PDM points themselves."""
    from DeepMorphLib import pipeline

    points, normals, outline, conf = _ridge_4px_out(pdm)
    fit = ShapeFit(detected=True, points=points + 3.0 * normals, model_points=points, quality=0.8, info={})
    monkeypatch.setattr(pipeline, "_fit_pdm", lambda *a, **k: fit)
    kept = pipeline.fit_femur_confidence(conf, "outline", pdm, {})
    assert pipeline.FINAL_POLISH_PX == 5.0
    inner = slice(5, -5)
    assert np.max(np.hypot(*(kept.points - outline).T)[inner]) < 0.3
    assert kept.quality > 0.95 and np.allclose(kept.point_confidence.mean(), kept.quality)
    raw = pipeline.fit_femur_confidence(conf, "outline", pdm, {"final_polish_px": 0.0})
    np.testing.assert_allclose(raw.points, points)
    same = pipeline.fit_femur_confidence(conf, "outline", pdm, {"final_polish_px": 3.0})
    assert same is fit


@pytest.mark.parametrize("seed", [0, 2])
def test_the_kept_fit_is_refined_under_the_weak_prior(pdm, seed):
    """Searching under the strong prior (``regularization`` 30) pulls an unusual but plausible femur (|b_i| up
    to 2.5 sd) towards the mean shape; the refinement under ``final_regularization`` (1) lets the PDM points
    follow the outline again. Compared without the polish, which would hide the difference."""
    from DeepMorphLib.asm_fit import FINAL_REGULARIZATION, REGULARIZATION

    rng = np.random.default_rng(seed)
    b = rng.uniform(-2.5, 2.5, pdm.n_modes) * np.sqrt(pdm.variances)
    truth = pdm.instance(b, Similarity.from_params(1.05, 15.0, (224.0, 230.0)))
    conf = render_confidence(truth, (448, 448))
    assert (REGULARIZATION, FINAL_REGULARIZATION) == (30.0, 1.0)
    strong = fit_pdm_to_confidence(conf, pdm, polish_px=0.0, final_regularization=None)
    refined = fit_pdm_to_confidence(conf, pdm, polish_px=0.0)
    err_strong = np.mean(point_to_curve_distance(strong.points, truth))
    err_refined = np.mean(point_to_curve_distance(refined.points, truth))
    assert err_strong > 0.45 and err_refined < 0.3
    assert refined.detected and refined.converged and refined.iterations > strong.iterations
    np.testing.assert_allclose(refined.points, refined.model_points)
    assert np.all(np.abs(refined.b) <= 3 * np.sqrt(pdm.variances) + 1e-9)


def test_unseen_points_are_extrapolated_from_the_seen_ones(pdm):
    from DeepMorphLib.asm_fit import extrapolate_unseen

    truth, b, t = known_shape(pdm, seed=8)
    hidden = np.arange(len(truth)) < 45  # lateral shaft and greater trochanter: not in the map (burned out)
    conf = render_confidence(truth[~hidden], (448, 448), sigma_px=1.5)
    swung = truth.copy()
    swung[hidden] += contour_normals(truth)[hidden] * np.linspace(0.0, 12.0, hidden.sum())[:, None]  # a wider shaft
    start = pdm.fit_shape(swung)
    points, n = extrapolate_unseen(conf, pdm, swung, start.transform, start.b)
    assert n == hidden.sum()  # every point off the lit outline is unseen, every point on it seen
    moved = np.any(points != swung, axis=1)
    assert np.all(points[~moved] == swung[~moved]) and not np.any(moved & ~hidden)  # seen points stay
    before = point_to_curve_distance(swung[hidden], truth)
    after = point_to_curve_distance(points[hidden], truth)
    assert np.mean(before) > 5.0 and np.mean(after) < 0.4 * np.mean(before)  # the prior pulls towards the mean shape
    exact, _ = extrapolate_unseen(conf, pdm, swung, start.transform, start.b, regularization=0.0)
    assert np.mean(point_to_curve_distance(exact[hidden], truth)) < 0.5  # without it, the truth (a PDM instance)
    # nothing to do when every point is seen, nothing to go by when almost none is
    full = render_confidence(truth, (448, 448), sigma_px=1.5)
    assert extrapolate_unseen(full, pdm, truth, t, b)[1] == 0
    assert extrapolate_unseen(np.zeros((448, 448), np.float32), pdm, swung, start.transform, start.b)[1] == 0


def test_extrapolated_femur_keeps_the_confidences_it_was_confirmed_by(pdm):
    from DeepMorphLib import pipeline

    truth, b, t = known_shape(pdm, seed=9)
    hidden = np.arange(len(truth)) < 45
    conf = render_confidence(truth[~hidden], (448, 448), sigma_px=1.5)
    swung = truth.copy()
    swung[hidden] += contour_normals(truth)[hidden] * 10.0
    start = pdm.fit_shape(swung)
    pc = np.where(hidden, 0.05, 0.95)
    fit = ShapeFit(detected=True, points=swung, b=start.b, transform=start.transform, point_confidence=pc,
                   quality=float(pc.mean()), reflected=False)
    out = pipeline._extrapolate_unseen(conf, fit, pdm)
    assert out.info["unseen_extrapolated"] > 0
    assert np.mean(point_to_curve_distance(out.points[hidden], truth)) < 0.4 * 10.0
    assert out.quality == fit.quality and np.array_equal(out.point_confidence, pc)
    assert pipeline._extrapolate_unseen(conf, ShapeFit(detected=False), pdm).detected is False
