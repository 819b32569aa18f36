"""Similarity CPD (paper section 3.1): known transforms, multi-start over rotations/mirror, pycpd agreement."""
import numpy as np
import pytest

from DeepMorphLib.cpd import cpd_similarity, multistart_cpd, subsample_points
from DeepMorphLib.similarity import Similarity
from DeepMorphLib.synthetic_shapes import PART_POINTS, FemurParams, femur_outline

PARAMS = FemurParams(centre_px=(0.0, 0.0))
MOVING = femur_outline(PARAMS)  # 200 model points
DENSE = femur_outline(PARAMS, part_points={k: 8 * v for k, v in PART_POINTS.items()})


def target_cloud(truth, rng, n=800, drop=(0.0, 0.0), noise=0.5, outliers=0.05):
    """Noisy, partial target: DENSE under ``truth``, a contiguous fraction ``drop`` removed, outliers added."""
    keep = np.ones(len(DENSE), bool)
    a, b = (np.array(drop) * len(DENSE)).astype(int)
    keep[a:b] = False
    pts = DENSE[keep]
    pts = truth.apply(pts[rng.choice(len(pts), min(n, len(pts)), replace=False)])
    pts += rng.normal(0, noise, pts.shape)
    n_out = int(outliers * len(pts))
    lo, hi = pts.min(0) - 20, pts.max(0) + 20
    return np.vstack([pts, rng.uniform(lo, hi, (n_out, 2))])


def rms_error(result, truth, moving=MOVING):
    return float(np.sqrt(np.mean(np.sum((result.transform.apply(moving) - truth.apply(moving)) ** 2, 1))))


@pytest.mark.parametrize("angle, scale", [(25.0, 1.15), (-40.0, 0.85)])
def test_recovers_similarity_on_noisy_partial_cloud(rng, angle, scale):
    centre = MOVING.mean(0)
    truth = Similarity.from_params(scale, angle, (12.0, -7.0)).compose(Similarity(1.0, np.eye(2), -centre))
    fixed = target_cloud(truth, rng, drop=(0.05, 0.2))
    moving = MOVING - centre
    res = cpd_similarity(moving, fixed, w=0.1, max_fixed=None)
    assert res.converged
    err = rms_error(res, Similarity.from_params(scale, angle, (12.0, -7.0)), moving)
    assert err < 1.0
    assert res.transform.scale == pytest.approx(scale, rel=0.02)
    assert res.transform.angle_deg == pytest.approx(angle, abs=1.0)
    sub = cpd_similarity(moving, fixed, w=0.1, max_fixed=300)  # thinned target: same answer
    assert sub.n_fixed_used <= 300
    assert rms_error(sub, Similarity.from_params(scale, angle, (12.0, -7.0)), moving) < 1.5


@pytest.mark.parametrize("angle", [100.0, -135.0, 180.0])
@pytest.mark.parametrize("reflect", [False, True])
def test_multistart_handles_large_rotations_and_reflections(rng, angle, reflect):
    truth = Similarity.from_params(1.1, angle, (250.0, 180.0), reflect=reflect)
    fixed = target_cloud(truth, rng, n=1500, drop=(0.0, 0.1))
    if reflect:  # a single (proper) start cannot find a mirror ...
        plain = cpd_similarity(MOVING, fixed, init=Similarity(1.0, np.eye(2), fixed.mean(0) - MOVING.mean(0)))
        assert rms_error(plain, truth) > 5.0
    res = multistart_cpd(MOVING, fixed)  # ... the multi-start does
    assert res.transform.reflected == reflect and res.start_reflected == reflect
    assert rms_error(res, truth) < 1.5
    assert len(res.info["coarse_objectives"]) == 16
    assert not multistart_cpd(MOVING, fixed, try_reflection=False, n_rotations=4).transform.reflected


def test_reflections_choose_which_starts_are_made(rng):
    """``reflections=(True,)`` only mirrored starts, ``(False,)`` only proper ones, whatever fits better."""
    truth = Similarity.from_params(1.1, 100.0, (250.0, 180.0), reflect=True)
    fixed = target_cloud(truth, rng, n=1500, drop=(0.0, 0.1))
    mirrored = multistart_cpd(MOVING, fixed, reflections=(True,))
    assert mirrored.transform.reflected and rms_error(mirrored, truth) < 1.5
    assert len(mirrored.info["coarse_objectives"]) == 8
    proper = multistart_cpd(MOVING, fixed, reflections=(False,))
    assert not proper.transform.reflected and proper.objective > mirrored.objective
    with pytest.raises(ValueError, match="reflections"):
        multistart_cpd(MOVING, fixed, reflections=())


def test_mirrored_init_keeps_its_mirror(rng):
    truth = Similarity.from_params(1.0, 10.0, (5.0, 5.0), reflect=True)
    fixed = target_cloud(truth, rng, n=600)
    init = Similarity.from_params(1.0, 0.0, (5.0, 5.0), reflect=True)
    res = cpd_similarity(MOVING, fixed, init=init)
    assert res.transform.reflected and rms_error(res, truth) < 1.0


def test_agrees_with_pycpd(rng):
    pycpd = pytest.importorskip("pycpd")
    truth = Similarity.from_params(1.12, 30.0, (8.0, -5.0))
    moving = MOVING - MOVING.mean(0)
    fixed = target_cloud(truth.compose(Similarity(1.0, np.eye(2), -MOVING.mean(0))), rng, n=500)
    centre, rho = fixed.mean(0), np.sqrt(np.mean(np.sum((fixed - fixed.mean(0)) ** 2, 1)))
    xn, yn = (fixed - centre) / rho, (moving - centre) / rho  # normalised, as our code does internally
    reg = pycpd.RigidRegistration(X=xn, Y=yn, w=0.1, max_iterations=100, tolerance=1e-3)
    ty, (s, r, t) = reg.register()
    for backend in ("numba", "numpy"):
        ours = cpd_similarity(yn, xn, w=0.1, max_iterations=100, tolerance=1e-3, max_fixed=None, backend=backend)
        assert ours.iterations == reg.iteration
        assert ours.transform.scale == pytest.approx(s, rel=1e-4)
        assert np.allclose(ours.points, ty, atol=1e-4)  # normalised units (px / rho)
    assert np.sqrt(np.mean(np.sum((ty * rho + centre - truth.apply(moving)) ** 2, 1))) < 1.0


def test_numba_and_numpy_backends_agree(rng):
    truth = Similarity.from_params(0.9, -15.0, (3.0, 4.0))
    fixed = target_cloud(truth, rng, n=400)
    a = cpd_similarity(MOVING, fixed, backend="numba", max_fixed=None)
    b = cpd_similarity(MOVING, fixed, backend="numpy", max_fixed=None)
    assert np.allclose(a.points, b.points, atol=1e-3)
    assert a.objective == pytest.approx(b.objective, abs=1e-4)


def test_subsample_points_keeps_spread(rng):
    band = DENSE[:, None, :] + rng.normal(0, 1.5, (len(DENSE), 6, 2))  # a thick outline band
    pts = band.reshape(-1, 2)
    for k in (100, 400, 800):
        sub = subsample_points(pts, k)
        assert 0.5 * k <= len(sub) <= k
        assert np.allclose(sub.min(0), pts.min(0), atol=15) and np.allclose(sub.max(0), pts.max(0), atol=15)
    assert subsample_points(pts[:50], 100) is not None and len(subsample_points(pts[:50], 100)) == 50


def test_bad_input():
    with pytest.raises(ValueError, match="w must be in"):
        cpd_similarity(MOVING, MOVING, w=1.0)
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        cpd_similarity(np.zeros((10, 3)), MOVING)
    with pytest.raises(ValueError, match="NaN"):
        multistart_cpd(MOVING, np.full((20, 2), np.nan))
    with pytest.raises(ValueError, match="coincide"):
        cpd_similarity(MOVING, np.ones((20, 2)))
    with pytest.raises(ValueError, match="at least 3"):
        cpd_similarity(MOVING, np.zeros((2, 2)))
    with pytest.raises(ValueError, match="backend"):
        cpd_similarity(MOVING, MOVING + 1, backend="cuda")
    with pytest.raises(ValueError, match="n_rotations"):
        multistart_cpd(MOVING, MOVING + 1, n_rotations=0)


def test_bench_fit_prints_one_json_line(capsys):
    import argparse
    import json

    pytest.importorskip("pycpd")
    from DeepMorphLib.commands import bench_fit

    parser = argparse.ArgumentParser()
    bench_fit.add_arguments(parser)
    args = parser.parse_args(["--json", "--sizes", "200", "--repeats", "1", "--pycpd-repeats", "1", "--maps", "1"])
    assert bench_fit.run(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    out = json.loads(lines[0])
    for key in ("cpd_ms", "pycpd_ms", "cpd_err_ours", "cpd_err_pycpd", "morph_ms", "speedup"):
        assert key in out
    assert out["cpd_err_ours"] < 1.0 and out["cpd_err_ours"] == pytest.approx(out["cpd_err_pycpd"], abs=1e-3)
    assert out["morph_all_detected"] and out["morph_err_px"] < 1.0
    # the shape CPD's fused E-step against the full-matrix numpy path, same fit
    assert out["shape_cpd_max_diff_px"] < 1e-2 and out["shape_cpd_ms"] > 0 and out["shape_cpd_numpy_ms"] > 0
