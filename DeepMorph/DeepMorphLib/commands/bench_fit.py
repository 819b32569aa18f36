"""``deepmorph bench fit``: speed and accuracy of the morphing stage, printed as one JSON line.

* CPD: our ``cpd_similarity`` vs pycpd 2.0.0's ``RigidRegistration`` (with scale) on the same points: a
  200-point femur outline (moving) and 200-2000 noisy target points with 5 % outliers under a known
  similarity (fixed). Both get identical inputs, w, max_iterations and tolerance (pycpd's |dQ| criterion),
  and start from the identity; coordinates are given in the fixed cloud's normalised frame (zero mean,
  unit RMS radius), which our code uses internally anyway and without which pycpd's outlier term swamps
  px data. Ours runs without target subsampling here (``max_fixed=None``) so both solve the same problem.
  Errors are RMS distances (px) between the moving points under the estimated and the true transform.
* Shape CPD (the femur fit's second opinion, ``shape_cpd.fit_pdm_cpd``): the fused numba E-step against the
  full (K, N) posterior matrix in numpy on the same synthetic outline pixels, clutter and start; both run the
  same number of EM iterations, ``shape_cpd_max_diff_px`` is the largest difference of their contour points.
* Morph: multi-start CPD + ASM (``fit_pdm_to_confidence``) on 448x448 synthetic confidence maps drawn from
  random femur outlines (half of them mirrored), with a PDM built from 60 other synthetic outlines.

Timings are wall-clock medians (``*_cpu_ms``: process CPU time, less sensitive to a busy machine).
"""
from __future__ import annotations

import json
import statistics
import time

HELP = "CPD vs pycpd and CPD+ASM fit speed/accuracy; prints one JSON line"


def add_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON line (the default output)")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs of ours per case (median)")
    parser.add_argument("--pycpd-repeats", type=int, default=2, help="timed runs of pycpd per case")
    parser.add_argument("--sizes", default="200,500,1000,2000", help="target point counts for the CPD cases")
    parser.add_argument("--maps", type=int, default=6, help="synthetic confidence maps for the morph timing")
    parser.add_argument("--quick", action="store_true", help="small run for smoke tests")


def _timed(fn, repeats):
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        walls.append((time.perf_counter() - w0) * 1e3)
        cpus.append((time.process_time() - c0) * 1e3)
    return out, walls, cpus


def _cpd_cases(sizes, repeats, pycpd_repeats, seed=0):
    import numpy as np

    from DeepMorphLib.cpd import cpd_similarity
    from DeepMorphLib.similarity import Similarity
    from DeepMorphLib.synthetic_shapes import PART_POINTS, FemurParams, femur_outline

    try:
        from pycpd import RigidRegistration
    except ImportError:  # pragma: no cover
        RigidRegistration = None
    rng = np.random.default_rng(seed)
    params = FemurParams(centre_px=(0.0, 0.0))
    moving = femur_outline(params)
    moving -= moving.mean(axis=0)
    dense = femur_outline(params, part_points={k: 12 * v for k, v in PART_POINTS.items()}) - femur_outline(params).mean(0)
    truth = Similarity.from_params(1.12, 35.0, (9.0, -6.0))
    cases, ours_ms, ours_cpu, py_ms, py_cpu = [], [], [], [], []
    for n in sizes:
        n_out = n // 20
        pts = truth.apply(dense[rng.choice(len(dense), n - n_out, replace=False)]) + rng.normal(0, 0.5, (n - n_out, 2))
        lo, hi = pts.min(0) - 20, pts.max(0) + 20
        fixed = np.vstack([pts, rng.uniform(lo, hi, (n_out, 2))])
        centre = fixed.mean(0)
        rho = float(np.sqrt(np.mean(np.sum((fixed - centre) ** 2, 1))))
        xn, yn = (fixed - centre) / rho, (moving - centre) / rho
        expected = (truth.apply(moving) - centre) / rho

        def err_px(ty):
            return float(np.sqrt(np.mean(np.sum((ty - expected) ** 2, 1)))) * rho

        cpd_similarity(yn, xn, max_iterations=2, max_fixed=None)  # compile / load the numba cache
        res, walls, cpus = _timed(
            lambda: cpd_similarity(yn, xn, w=0.1, max_iterations=100, tolerance=1e-3, max_fixed=None), repeats
        )
        case = {"n_fixed": n, "n_moving": len(moving), "ours_ms": statistics.median(walls),
                "ours_err_px": err_px(res.points), "ours_iterations": res.iterations}
        ours_ms += walls
        ours_cpu += cpus
        if RigidRegistration is not None:
            def run_pycpd():
                reg = RigidRegistration(X=xn, Y=yn, w=0.1, max_iterations=100, tolerance=1e-3)
                ty, _ = reg.register()
                return ty, reg.iteration

            (ty, iters), walls, cpus = _timed(run_pycpd, pycpd_repeats)
            case.update(pycpd_ms=statistics.median(walls), pycpd_err_px=err_px(ty), pycpd_iterations=iters)
            py_ms += walls
            py_cpu += cpus
        cases.append(case)
    return cases, ours_ms, ours_cpu, py_ms, py_cpu


def _shape_cpd_case(repeats, seed=0):
    import numpy as np

    from DeepMorphLib.circle_fit import foreground_pixels
    from DeepMorphLib.pdm import PointDistributionModel
    from DeepMorphLib.shape_cpd import fit_pdm_cpd
    from DeepMorphLib.similarity import Similarity
    from DeepMorphLib.synthetic_shapes import femur_outline, femur_training_set, random_params, render_confidence

    pdm = PointDistributionModel.fit(femur_training_set(60, seed=seed + 1)[:, ::3])  # 67 points, as the shipped 60
    rng = np.random.default_rng(seed + 3)
    truth = femur_outline(random_params(rng, pose=True))
    xy, _ = foreground_pixels(render_confidence(truth, (448, 448), sigma_px=1.5), 0.5)
    xy = np.vstack([xy, rng.uniform(0, 448, (len(xy) // 10, 2))])
    start = Similarity.from_params(1.0, 0.0, tuple(truth.mean(axis=0) + 15.0))
    out = {}
    for backend in ("numba", "numpy"):
        fit_pdm_cpd(xy, pdm, start, max_iterations=2, backend=backend)  # warm-up (numba cache)
        fit, walls, _ = _timed(lambda: fit_pdm_cpd(xy, pdm, start, w=0.2, max_iterations=40, backend=backend), repeats)
        out[backend] = (fit, statistics.median(walls))
    return {"shape_cpd_ms": round(out["numba"][1], 2), "shape_cpd_numpy_ms": round(out["numpy"][1], 2),
            "shape_cpd_max_diff_px": round(float(np.max(np.abs(out["numba"][0].points - out["numpy"][0].points))), 5),
            "shape_cpd_fixed": int(len(xy)), "shape_cpd_iterations": int(out["numba"][0].iterations)}


def _morph_cases(n_maps, repeats, seed=0):
    import numpy as np

    from DeepMorphLib.asm_fit import fit_pdm_to_confidence
    from DeepMorphLib.pdm import PointDistributionModel
    from DeepMorphLib.synthetic_shapes import (
        femur_outline,
        femur_training_set,
        point_to_curve_distance,
        random_params,
        render_confidence,
    )

    pdm = PointDistributionModel.fit(femur_training_set(60, seed=seed + 1))
    rng = np.random.default_rng(seed + 2)
    walls, cpus, errs, reflect_ok, detected = [], [], [], [], []
    fit_pdm_to_confidence(render_confidence(femur_outline()), pdm)  # warm-up (numba cache)
    for k in range(n_maps):
        params = random_params(rng, pose=True, mirror=bool(k % 2))
        truth = femur_outline(params)
        conf = render_confidence(truth, (448, 448))
        fit, w, c = _timed(lambda: fit_pdm_to_confidence(conf, pdm), repeats)
        walls += w
        cpus += c
        detected.append(fit.detected)
        reflect_ok.append(fit.reflected == params.mirror)
        errs.append(float(np.median(point_to_curve_distance(fit.points, truth))) if fit.detected else float("nan"))
    return walls, cpus, errs, reflect_ok, detected


def run(args) -> int:
    try:
        sizes = [int(s) for s in str(args.sizes).split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--sizes must be comma-separated point counts such as 200,500,1000, not {args.sizes!r}.")
    repeats, py_repeats, n_maps = args.repeats, args.pycpd_repeats, args.maps
    if args.quick:
        sizes, repeats, py_repeats, n_maps = [200, 500], 3, 1, 2
    if not sizes or repeats < 1 or py_repeats < 1 or n_maps < 1:
        raise ValueError("bench fit needs at least one size, one repeat and one map.")
    cases, ours_ms, ours_cpu, py_ms, py_cpu = _cpd_cases(sizes, repeats, py_repeats)
    walls, cpus, errs, reflect_ok, detected = _morph_cases(n_maps, max(1, repeats // 2))
    cpd_ms = statistics.median(ours_ms)
    out = {
        "cpd_ms": round(cpd_ms, 3),
        "cpd_cpu_ms": round(statistics.median(ours_cpu), 3),
        "cpd_err_ours": round(max(c["ours_err_px"] for c in cases), 4),
        "morph_ms": round(statistics.median(walls), 2),
        "morph_cpu_ms": round(statistics.median(cpus), 2),
        "morph_err_px": round(float(statistics.median(errs)), 3),
        "morph_all_detected": all(detected),
        "morph_side_correct": all(reflect_ok),
        "morph_maps": n_maps,
    }
    try:
        import numba  # noqa: F401
        out.update(_shape_cpd_case(repeats))
    except ImportError:  # pragma: no cover - the fused path needs numba
        pass
    if py_ms:
        pycpd_ms = statistics.median(py_ms)
        out.update(
            pycpd_ms=round(pycpd_ms, 3),
            pycpd_cpu_ms=round(statistics.median(py_cpu), 3),
            cpd_err_pycpd=round(max(c["pycpd_err_px"] for c in cases), 4),
            speedup=round(pycpd_ms / cpd_ms, 2),
            cpd_ratio=round(cpd_ms / pycpd_ms, 4),
        )
    out["cpd_cases"] = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in c.items()} for c in cases]
    out["note"] = "ms are wall-clock medians; CPD inputs normalised identically for both; ours single-threaded numba"
    print(json.dumps(out))
    return 0
