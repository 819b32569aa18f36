"""Point distribution model (paper section 3): Procrustes + PCA, clipping, reflection, I/O, constrained edits."""
import json

import numpy as np
import pytest

from DeepMorphLib.pdm import PointDistributionModel, box_least_squares
from DeepMorphLib.shape_edit import constrained_fit
from DeepMorphLib.similarity import Similarity, fit_similarity
from DeepMorphLib.synthetic_shapes import femur_training_set, landmark_indices


@pytest.fixture(scope="module")
def shapes():
    return femur_training_set(40, seed=3)


@pytest.fixture(scope="module")
def pdm(shapes):
    return PointDistributionModel.fit(shapes, landmarks=landmark_indices(), metadata={"side": "right"})


def test_model_structure(pdm, shapes):
    assert pdm.n_points == shapes.shape[1]
    assert pdm.variance_kept >= 0.98
    assert np.all(np.diff(pdm.variances) <= 0)
    assert np.allclose(pdm.modes.T @ pdm.modes, np.eye(pdm.n_modes), atol=1e-10)
    assert np.allclose(pdm.mean.mean(axis=0), 0.0, atol=1e-9)
    assert pdm.n_modes < 40
    fewer = PointDistributionModel.fit(shapes, variance_kept=0.9)
    assert fewer.n_modes < pdm.n_modes and fewer.variance_kept >= 0.9


@pytest.mark.parametrize("k", [0, 7, 39])
def test_reconstruction_exact_with_all_modes(shapes, k):
    full = PointDistributionModel.fit(shapes, variance_kept=1.0)
    assert full.n_modes == len(shapes) - 1 and full.variance_kept == pytest.approx(1.0)
    target = Similarity.from_params(1.7, 135.0, (40.0, -25.0)).apply(shapes[k])
    fit = full.fit_shape(target, clip=None)
    assert np.max(np.abs(fit.points - target)) < 1e-6
    assert np.max(np.abs(full.project(target, clip=None) - target)) < 1e-6
    assert np.max(np.abs(full.fit_shape(target, clip=None).points - target)) < 1e-6


def test_clipping_limits(pdm):
    sd = np.sqrt(pdm.variances)
    b = np.zeros(pdm.n_modes)
    b[0], b[1] = 10 * sd[0], -5 * sd[1]
    t = Similarity.from_params(0.8, -20.0, (200.0, 150.0))
    target = pdm.instance(b, t)
    free = pdm.fit_shape(target, clip=None)
    assert np.allclose(free.b, b, atol=1e-6 * sd[0])
    clipped = pdm.fit_shape(target, clip=3.0)
    assert np.all(np.abs(clipped.b) <= 3 * sd + 1e-9)
    assert clipped.b[0] == pytest.approx(3 * sd[0]) and clipped.b[1] == pytest.approx(-3 * sd[1])
    assert np.all(np.abs(pdm.clip_b(b, 2.0)) <= 2 * sd + 1e-12)
    # noisy and partly weighted fits stay within the limits
    rng = np.random.default_rng(0)
    noisy = target + rng.normal(0, 4.0, target.shape)
    w = rng.uniform(0, 1, pdm.n_points)
    for kw in (dict(clip=1.0), dict(clip=3.0, weights=w, regularization=1.0)):
        a = pdm.fit_shape(noisy, **kw)
        assert np.all(np.abs(a.b) <= kw["clip"] * sd + 1e-9)



def test_box_least_squares_matches_reference(rng):
    from scipy.optimize import lsq_linear

    for _ in range(20):
        a = rng.normal(size=(30, 6))
        y = rng.normal(size=30) * 3
        lim = rng.uniform(0.1, 1.0, 6)
        ref = lsq_linear(a, y, bounds=(-lim, lim), tol=1e-12).x
        assert np.allclose(box_least_squares(a.T @ a, a.T @ y, lim), ref, atol=1e-6)


def test_compiled_box_least_squares_matches_reference(rng):
    from scipy.optimize import lsq_linear

    from DeepMorphLib import pdm_numba

    if not pdm_numba.AVAILABLE:
        pytest.skip("numba not installed")
    for _ in range(20):
        a = rng.normal(size=(30, 6))
        y = rng.normal(size=30) * 3
        lim = np.r_[rng.uniform(0.1, 1.0, 4), np.inf, np.inf]
        ref = lsq_linear(a, y, bounds=(-lim, lim), tol=1e-12).x
        assert np.allclose(pdm_numba.box_least_squares(a.T @ a, a.T @ y, lim), ref, atol=1e-6)


def test_compiled_and_numpy_shape_fits_agree(pdm, shapes, rng):
    from DeepMorphLib import pdm_numba
    from DeepMorphLib.similarity import Similarity

    if not pdm_numba.AVAILABLE:
        pytest.skip("numba not installed")
    sd = np.sqrt(pdm.variances)
    for k in range(12):  # noisy, partly missing, out-of-model targets; clipped and free; from a rotated start
        target = Similarity.from_params(1.3, 40.0 * k, (200.0, 150.0)).apply(shapes[k]) + rng.normal(0, 2.0, shapes[k].shape)
        w = np.where(rng.uniform(size=pdm.n_points) < 0.2, 0.0, rng.uniform(0.2, 1.0, pdm.n_points))
        lim = None if k % 3 == 0 else (0.5 + k % 2) * sd
        start = Similarity.from_params(1.1, 40.0 * k + 10.0, (190.0, 160.0))
        b0 = rng.uniform(-1, 1, pdm.n_modes) * sd
        args = (target, w, lim, start, b0, 0.5 * (k % 2), 30, 1e-6)
        p1, b1, t1, i1 = pdm._gauss_newton(*args, compiled=True)
        p2, b2, t2, i2 = pdm._gauss_newton(*args, compiled=False)
        assert i1 == i2 and np.allclose(p1, p2, atol=1e-9) and np.allclose(b1, b2, atol=1e-9)
        assert np.isclose(t1.scale, t2.scale) and np.allclose(t1.rotation, t2.rotation)
        if lim is not None:
            assert np.all(np.abs(b1) <= lim + 1e-12)


def test_reflect_gives_the_other_side(pdm, shapes):
    left = pdm.reflect()
    assert np.allclose(left.mean, pdm.mean * [-1, 1])
    assert left.landmarks == pdm.landmarks and left.metadata["side"] == "left"
    assert np.allclose(left.reflect().modes, pdm.modes) and np.allclose(left.reflect().mean, pdm.mean)
    mirrored = shapes[5] * [-1, 1] + [400, 0]
    assert pdm.fit_shape(mirrored).rms_px > 5 * left.fit_shape(mirrored).rms_px
    full = PointDistributionModel.fit(shapes, variance_kept=1.0).reflect()
    assert np.max(np.abs(full.fit_shape(mirrored, clip=None).points - mirrored)) < 1e-6


def test_save_load_round_trip(pdm, tmp_path):
    path = pdm.save(tmp_path / "models" / "pdm.npz")
    assert path.name == "pdm.npz" and (tmp_path / "models" / "pdm.json").is_file()
    with np.load(path, allow_pickle=False) as data:
        assert set(data.files) == {"mean", "modes", "variances", "total_variance"}
    side = json.loads((tmp_path / "models" / "pdm.json").read_text())
    assert side["n_points"] == pdm.n_points and side["n_modes"] == pdm.n_modes
    assert side["landmarks"]["head_tip"] == landmark_indices()["head_tip"]
    assert side["build"]["n_shapes"] == 40 and side["variance_kept"] == pytest.approx(pdm.variance_kept)
    for p in (path, tmp_path / "models" / "pdm.json", tmp_path / "models" / "pdm"):
        back = PointDistributionModel.load(p)
        assert np.array_equal(back.mean, pdm.mean) and np.array_equal(back.modes, pdm.modes)
        assert np.array_equal(back.variances, pdm.variances)
        assert back.landmarks == pdm.landmarks and back.metadata == pdm.metadata
        assert back.total_variance == pdm.total_variance


def test_load_errors(pdm, tmp_path):
    with pytest.raises(FileNotFoundError):
        PointDistributionModel.load(tmp_path / "missing.npz")
    pdm.save(tmp_path / "m")
    side = json.loads((tmp_path / "m.json").read_text())
    (tmp_path / "m.json").write_text(json.dumps({**side, "n_modes": 99}))
    with pytest.raises(ValueError, match="does not match"):
        PointDistributionModel.load(tmp_path / "m")
    (tmp_path / "m.json").write_text(json.dumps({**side, "format": "other"}))
    with pytest.raises(ValueError, match="not a DeepMorph PDM"):
        PointDistributionModel.load(tmp_path / "m")
    np.savez(tmp_path / "bad.npz", mean=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="not a valid PDM"):
        PointDistributionModel.load(tmp_path / "bad.npz")


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((5, 10, 3)), r"\(K, N, 2\)"),
        (np.zeros((1, 10, 2)), "at least 2 shapes"),
        (np.full((4, 10, 2), np.nan), "NaN"),
        (np.ones((4, 10, 2)), "all its points at one place"),
    ],
)
def test_fit_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        PointDistributionModel.fit(bad)


def test_fit_shape_bad_input(pdm):
    with pytest.raises(ValueError, match="points but the PDM has"):
        pdm.fit_shape(np.zeros((10, 2)))
    with pytest.raises(ValueError, match="weights"):
        pdm.fit_shape(pdm.mean, weights=-np.ones(pdm.n_points))
    with pytest.raises(ValueError, match="variance_kept"):
        PointDistributionModel.fit(femur_training_set(3), variance_kept=0)


def test_constrained_fit_passes_through_fixed_points(pdm, shapes):
    current = pdm.project(shapes[2])
    head = landmark_indices()["head_tip"]
    troch = landmark_indices()["greater_trochanter_tip"]
    moved = current[[head, troch]] + [[4.0, -3.0], [-2.0, 2.0]]
    out, params = constrained_fit(pdm, current, [head, troch], moved, return_params=True)
    assert np.max(np.hypot(*(out[[head, troch]] - moved).T)) < 0.5
    assert np.all(np.abs(params.b) <= 3 * np.sqrt(pdm.variances) + 1e-9)
    far = np.hypot(*(out - current).T)
    assert np.median(far) < 5.0  # the rest of the contour follows smoothly, it does not jump
    snapped = constrained_fit(pdm, current, [head, troch], moved, snap=True)
    assert np.allclose(snapped[[head, troch]], moved, atol=1e-9)
    # an implausible request stays plausible: the fixed point is not reached
    wild = constrained_fit(pdm, current, [head], current[[head]] + [[150.0, 0.0]], clip=3.0, return_params=True)
    assert np.all(np.abs(wild[1].b) <= 3 * np.sqrt(pdm.variances) + 1e-9)
    unchanged = constrained_fit(pdm, current, [], np.zeros((0, 2)))
    assert np.allclose(unchanged, current, atol=1e-4)


def test_constrained_fit_bad_input(pdm):
    with pytest.raises(ValueError, match="one \\(x, y\\) per index"):
        constrained_fit(pdm, pdm.mean, [1, 2], [[0.0, 0.0]])
    with pytest.raises(ValueError, match="in 0.."):
        constrained_fit(pdm, pdm.mean, [pdm.n_points], [[0.0, 0.0]])
    with pytest.raises(ValueError, match="duplicates"):
        constrained_fit(pdm, pdm.mean, [3, 3], [[0.0, 0.0], [1.0, 1.0]])
    with pytest.raises(ValueError, match="integer"):
        constrained_fit(pdm, pdm.mean, [1.5], [[0.0, 0.0]])
    with pytest.raises(ValueError, match="PointDistributionModel"):
        constrained_fit(None, pdm.mean, [1], [[0.0, 0.0]])


def test_fit_similarity_with_reflection(rng):
    src = rng.normal(size=(30, 2))
    for reflect in (False, True):
        t = Similarity.from_params(2.5, 140.0, (3.0, -1.0), reflect=reflect)
        fit = fit_similarity(src, t.apply(src), allow_reflection=True)
        assert fit.reflected == reflect and np.allclose(fit.apply(src), t.apply(src))
        assert np.allclose(fit.inverse().apply(fit.apply(src)), src)
    assert not fit_similarity(src, t.apply(src)).reflected


def test_side_from_the_build_metadata(shapes):
    """The side is the first word of the build's "side" ("right (left femurs mirrored)", as build-pdm writes it)."""
    built = PointDistributionModel.fit(shapes, landmarks=landmark_indices(),
                                       metadata={"side": "right (left femurs mirrored)"})
    assert built.side == "right" and built.reflect().side == "left" and built.reflect().reflect().side == "right"
    assert built.reflection_for("right") is False and built.reflection_for("left") is True
    assert built.reflect().reflection_for("left") is False and built.reflection_for(None) is None
    with pytest.raises(ValueError, match="'left' or 'right'"):
        built.reflection_for("both")
    unknown = PointDistributionModel.fit(shapes, landmarks=landmark_indices())
    assert unknown.side is None and unknown.reflection_for(None) is None
    with pytest.raises(ValueError, match="does not say which femur side"):
        unknown.reflection_for("left")
