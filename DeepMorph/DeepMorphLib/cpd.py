"""Coherent point drift (CPD), rigid/similarity variant (Myronenko & Song 2010), paper section 3.1.

The moving points ``Y`` (M, 2) (e.g. the PDM mean shape) are the centroids of a Gaussian mixture with
common variance ``sigma2`` plus a uniform outlier component of weight ``w``; the fixed points ``X`` (N, 2)
(the confidence map's foreground pixels) are the data. EM alternates the posteriors ``P[m, n]`` (E-step) and
the closed-form scale/rotation/translation and ``sigma2`` (M-step), so ``sigma2`` anneals from the initial
spread to the residual. All coordinates in px, transforms map moving -> fixed (``Similarity``).

Speed: the whole EM loop is compiled with numba; one fused, vectorised E-step computes the posteriors'
row/column sums and ``P X`` without forming the (M, N) matrix, with a branch-free float32 polynomial
``exp`` (relative error ~1e-6) and float64 accumulation; Gaussian terms beyond ``cutoff_sigma`` standard
deviations (default 7: weight < 3e-11) are set to 0. A numpy fallback (full matrix) is used when numba
is unavailable (``backend="numpy"``). Large fixed clouds are thinned by a voxel grid (``max_fixed``).

``multistart_cpd`` runs CPD from several initial rotations, optionally with the moving shape mirrored, on
coarse subsets, and refines the best start(s) at full resolution; the winner has the lowest negative
log-likelihood of the fixed points under the final mixture (``CPDResult.objective``, per fixed point).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .similarity import Similarity, as_points, rotation_matrix

try:  # numba is a dependency, but keep a working numpy path (e.g. inside Slicer without numba)
    import numba

    _HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    numba = None
    _HAVE_NUMBA = False


_MIRROR = Similarity(1.0, np.diag([-1.0, 1.0]), np.zeros(2))


@dataclass(frozen=True)
class CPDResult:
    """Outcome of a CPD registration of moving (M, 2) onto fixed (N, 2) points (px)."""

    transform: Similarity  # moving -> fixed; ``transform.reflected`` when a mirrored start won
    points: np.ndarray  # transformed moving points (M, 2) px
    sigma2: float  # final mixture variance, px^2
    objective: float  # negative log-likelihood per fixed point under the final mixture (px units; lower is better)
    iterations: int
    converged: bool
    w: float  # outlier weight used
    n_fixed_used: int  # fixed points after subsampling
    start_angle_deg: float = 0.0
    start_reflected: bool = False
    info: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- kernels
def _estep_numpy(x, ty, sigma2, c, cutoff2):
    d2 = np.sum((x[None, :, :] - ty[:, None, :]) ** 2, axis=2)  # (M, N)
    e = np.exp(-d2 / (2.0 * sigma2))
    e[d2 > cutoff2] = 0.0
    den = e.sum(axis=0) + c
    den = np.maximum(den, 1e-300)
    p = e / den
    p1 = p.sum(axis=1)
    pt1 = p.sum(axis=0)
    px = p @ x
    return p1, pt1, px, float(np.sum(np.log(den)))


if _HAVE_NUMBA:

    @numba.njit(fastmath=True, inline="always")
    def _gauss32(t):  # pragma: no cover - compiled
        # exp(-t) for 0 <= t <= cutoff^2 / 2 as exp(-t / 32)^32, Taylor degree 7 in float32: branch-free,
        # so LLVM vectorises it (relative error ~1e-6, far below what EM can notice)
        r = t * np.float32(-0.03125)
        p = np.float32(1.0) + r * (np.float32(1.0) + r * (np.float32(0.5) + r * (np.float32(1.0 / 6.0) + r * (
            np.float32(1.0 / 24.0) + r * (np.float32(1.0 / 120.0) + r * (np.float32(1.0 / 720.0)
                                                                         + r * np.float32(1.0 / 5040.0)))))))
        p = p * p
        p = p * p
        p = p * p
        p = p * p
        return p * p

    @numba.njit(cache=True, fastmath=True, nogil=True)
    def _estep_numba(x0a, x1a, ty0, ty1, sigma2, c, cutoff2, p1, pt1, px0, px1, e, want_loglik):  # pragma: no cover
        """Fused E-step: posteriors' sums p1 (M,), pt1 (N,), P X (px0, px1) and sum_n log(den_n)."""
        n_fixed = x0a.shape[0]
        n_moving = ty0.shape[0]
        inv = np.float32(0.5 / sigma2)
        tcut = np.float32(cutoff2 * 0.5 / sigma2)
        for m in range(n_moving):
            p1[m] = 0.0
            px0[m] = 0.0
            px1[m] = 0.0
        loglik = 0.0
        for n in range(n_fixed):
            xx0 = x0a[n]
            xx1 = x1a[n]
            x0 = np.float32(xx0)
            x1 = np.float32(xx1)
            den = np.float32(0.0)
            for m in range(n_moving):
                d0 = x0 - ty0[m]
                d1 = x1 - ty1[m]
                t = (d0 * d0 + d1 * d1) * inv
                v = _gauss32(t) if t < tcut else np.float32(0.0)
                e[m] = v
                den += v
            dd = np.float64(den) + c
            if dd < 1e-300:
                dd = 1e-300
            if want_loglik:
                loglik += math.log(dd)
            inv_den = np.float32(1.0 / dd)
            tot = 0.0
            for m in range(n_moving):
                p = e[m] * inv_den
                p1[m] += p
                px0[m] += p * xx0
                px1[m] += p * xx1
                tot += p
            pt1[n] = tot
        return loglik

    @numba.njit(cache=True, nogil=True, error_model="numpy")
    def _em_numba(x0a, x1a, y, scale, angle, t0, t1, sigma2, w, max_it, tol, allow_scale, cutoff_sigma):  # pragma: no cover
        n = x0a.shape[0]
        m = y.shape[0]
        p1 = np.zeros(m)
        pt1 = np.zeros(n)
        px0 = np.zeros(m)
        px1 = np.zeros(m)
        e = np.zeros(m, dtype=np.float32)
        ty0 = np.empty(m, dtype=np.float32)
        ty1 = np.empty(m, dtype=np.float32)
        q = np.inf
        converged = False
        it = 0
        co = math.cos(angle)
        si = math.sin(angle)
        cut2 = cutoff_sigma * cutoff_sigma
        if not sigma2 > 0.0:  # mean squared pair distance / D, from moments
            mx0 = 0.0
            mx1 = 0.0
            sxx = 0.0
            for k in range(n):
                mx0 += x0a[k]
                mx1 += x1a[k]
                sxx += x0a[k] * x0a[k] + x1a[k] * x1a[k]
            my0 = 0.0
            my1 = 0.0
            syy = 0.0
            for k in range(m):
                a0 = scale * (co * y[k, 0] - si * y[k, 1]) + t0
                a1 = scale * (si * y[k, 0] + co * y[k, 1]) + t1
                my0 += a0
                my1 += a1
                syy += a0 * a0 + a1 * a1
            sigma2 = (sxx / n + syy / m - 2.0 * (mx0 * my0 + mx1 * my1) / (n * m)) / 2.0
        for it in range(1, max_it + 1):
            for k in range(m):
                ty0[k] = scale * (co * y[k, 0] - si * y[k, 1]) + t0
                ty1[k] = scale * (si * y[k, 0] + co * y[k, 1]) + t1
            c = 2.0 * math.pi * sigma2 * w / (1.0 - w) * m / n
            _estep_numba(x0a, x1a, ty0, ty1, sigma2, c, cut2 * sigma2, p1, pt1, px0, px1, e, False)
            np_ = 0.0
            muy0 = 0.0
            muy1 = 0.0
            for k in range(m):
                np_ += p1[k]
                muy0 += p1[k] * y[k, 0]
                muy1 += p1[k] * y[k, 1]
            if np_ < 1e-12:
                break
            mux0 = 0.0
            mux1 = 0.0
            for k in range(n):
                mux0 += pt1[k] * x0a[k]
                mux1 += pt1[k] * x1a[k]
            mux0 /= np_
            mux1 /= np_
            muy0 /= np_
            muy1 /= np_
            a00 = 0.0
            a01 = 0.0
            a10 = 0.0
            a11 = 0.0
            ypy = 0.0
            for k in range(m):
                u0 = px0[k] - p1[k] * mux0
                u1 = px1[k] - p1[k] * mux1
                v0 = y[k, 0] - muy0
                v1 = y[k, 1] - muy1
                a00 += u0 * v0
                a01 += u0 * v1
                a10 += u1 * v0
                a11 += u1 * v1
                ypy += p1[k] * (v0 * v0 + v1 * v1)
            xpx = 0.0
            for k in range(n):
                d0 = x0a[k] - mux0
                d1 = x1a[k] - mux1
                xpx += pt1[k] * (d0 * d0 + d1 * d1)
            angle = math.atan2(a10 - a01, a00 + a11)
            tr_ar = math.hypot(a10 - a01, a00 + a11)
            if allow_scale and ypy > 0.0:
                scale = tr_ar / ypy
            co = math.cos(angle)
            si = math.sin(angle)
            t0 = mux0 - scale * (co * muy0 - si * muy1)
            t1 = mux1 - scale * (si * muy0 + co * muy1)
            res = xpx - 2.0 * scale * tr_ar + scale * scale * ypy
            q_new = res / (2.0 * sigma2) + np_ * math.log(sigma2)
            sigma2 = res / (2.0 * np_)
            if not sigma2 > 1e-10:
                sigma2 = 1e-10
            if abs(q - q_new) <= tol:
                converged = True
                q = q_new
                break
            q = q_new
        # likelihood of the fixed points under the final mixture
        for k in range(m):
            ty0[k] = scale * (co * y[k, 0] - si * y[k, 1]) + t0
            ty1[k] = scale * (si * y[k, 0] + co * y[k, 1]) + t1
        c = 2.0 * math.pi * sigma2 * w / (1.0 - w) * m / n
        loglik = _estep_numba(x0a, x1a, ty0, ty1, sigma2, c, cut2 * sigma2, p1, pt1, px0, px1, e, True)
        nll = -(loglik + n * math.log((1.0 - w) / (m * 2.0 * math.pi * sigma2)))
        return scale, angle, t0, t1, sigma2, nll, it, converged, q


def _em_numpy(x, y, scale, angle, t0, t1, sigma2, w, max_iterations, tolerance, allow_scale, cutoff_sigma):
    """EM loop of similarity CPD with full (M, N) posteriors (reference and fallback implementation)."""
    n, m = len(x), len(y)
    rot, trans = rotation_matrix(math.degrees(angle)), np.array([t0, t1])
    q, converged, it = np.inf, False, 0
    for it in range(1, max_iterations + 1):
        ty = scale * (y @ rot.T) + trans
        c = (2.0 * np.pi * sigma2) * w / (1.0 - w) * m / n
        p1, pt1, px, _ = _estep_numpy(x, ty, sigma2, c, cutoff_sigma**2 * sigma2)
        np_ = float(p1.sum())
        if np_ < 1e-12:
            break  # every fixed point explained as an outlier: nothing to register
        # M-step (Myronenko & Song 2010, Fig. 2; the 2-D rotation in closed form)
        mu_x = pt1 @ x / np_
        mu_y = p1 @ y / np_
        yc = y - mu_y
        a = (px - p1[:, None] * mu_x).T @ yc  # X_hat^T P^T Y_hat (2x2)
        angle = math.atan2(a[1, 0] - a[0, 1], a[0, 0] + a[1, 1])
        tr_ar = math.hypot(a[1, 0] - a[0, 1], a[0, 0] + a[1, 1])
        rot = rotation_matrix(math.degrees(angle))
        ypy = float(p1 @ np.sum(yc * yc, axis=1))
        xc = x - mu_x
        xpx = float(pt1 @ np.sum(xc * xc, axis=1))
        if allow_scale and ypy > 0:
            scale = tr_ar / ypy
        trans = mu_x - scale * (rot @ mu_y)
        res = xpx - 2 * scale * tr_ar + scale * scale * ypy
        q_new = res / (2 * sigma2) + np_ * math.log(sigma2)
        sigma2 = max(res / (2.0 * np_), 1e-10)
        if abs(q - q_new) <= tolerance:
            converged, q = True, q_new
            break
        q = q_new
    ty = scale * (y @ rot.T) + trans
    c = (2.0 * np.pi * sigma2) * w / (1.0 - w) * m / n
    loglik = _estep_numpy(x, ty, sigma2, c, cutoff_sigma**2 * sigma2)[3]
    nll = -(loglik + n * math.log((1.0 - w) / (m * 2.0 * math.pi * sigma2)))
    return scale, angle, trans[0], trans[1], sigma2, nll, it, converged, q


def _initial_sigma2(x, ty) -> float:
    """Mean squared distance over all pairs / D (as in Myronenko's code and pycpd)."""
    mx, my = x.mean(0), ty.mean(0)
    return float(np.mean(np.sum((x - mx) ** 2, 1)) + np.mean(np.sum((ty - my) ** 2, 1)) + np.sum((mx - my) ** 2)) / 2.0


def _split(x: np.ndarray):
    """(x, x[:, 0], x[:, 1]) as contiguous float64 arrays, the fixed-cloud argument of ``_em``."""
    x = np.ascontiguousarray(x, dtype=np.float64)
    return x, np.ascontiguousarray(x[:, 0]), np.ascontiguousarray(x[:, 1])


def _em(xs, y, state, w, max_iterations, tolerance, allow_scale, cutoff_sigma, backend):
    """Run EM from ``state = (scale, angle_rad, tx, ty, sigma2)`` (normalised frame, proper rotation) on
    the fixed cloud ``xs = _split(x)``; ``sigma2=None`` starts from the mean squared pair distance / 2.

    Returns ``(state, nll, iterations, converged)``.
    """
    scale, angle, t0, t1, sigma2 = state
    sigma2 = -1.0 if sigma2 is None else float(sigma2)
    if backend == "numba":
        out = _em_numba(xs[1], xs[2], y, float(scale), float(angle), float(t0), float(t1), sigma2, float(w),
                        int(max_iterations), float(tolerance), bool(allow_scale), float(cutoff_sigma))
    else:
        if not sigma2 > 0:
            rot = rotation_matrix(math.degrees(angle))
            sigma2 = _initial_sigma2(xs[0], scale * (y @ rot.T) + np.array([t0, t1]))
        out = _em_numpy(xs[0], y, scale, angle, t0, t1, sigma2, w, max_iterations, tolerance, allow_scale, cutoff_sigma)
    scale, angle, t0, t1, sigma2, nll, it, converged, _ = out
    return (scale, angle, t0, t1, sigma2), float(nll), int(it), bool(converged)


def _state_to_similarity(state, norm: Similarity, mirror: bool) -> Similarity:
    scale, angle, t0, t1, _ = state
    t = norm.inverse().compose(Similarity(scale, rotation_matrix(math.degrees(angle)), np.array([t0, t1])))
    return t.compose(_MIRROR) if mirror else t


def _resolve_backend(backend: str) -> str:
    if backend not in ("auto", "numba", "numpy"):
        raise ValueError(f"backend must be 'auto', 'numba' or 'numpy', not {backend!r}.")
    if backend == "numba" and not _HAVE_NUMBA:
        raise ValueError("backend='numba' requested but numba is not installed; use 'numpy' or 'auto'.")
    if backend == "auto":
        return "numba" if _HAVE_NUMBA else "numpy"
    return backend


# ---------------------------------------------------------------------------------------------- subsampling
def subsample_points(xy, max_points: int = 800, seed: int = 0) -> np.ndarray:
    """Thin a point cloud (N, 2) px to at most ``max_points`` (and usually >= 85 % of it) by a voxel grid.

    One point per occupied square cell (the mean of its points), so thick outline bands or dense blobs do
    not dominate; the cell size is found by a few bisection steps on log(size). Falls back to a seeded
    random pick if the grid search does not settle. Returns ``xy`` unchanged when small enough.
    """
    xy = np.asarray(xy, dtype=np.float64)
    n = len(xy)
    if max_points is None or n <= max_points:
        return xy
    if max_points < 1:
        raise ValueError("max_points must be at least 1.")
    lo_xy = xy.min(axis=0)
    span = np.maximum(xy.max(axis=0) - lo_xy, 1e-9)

    def grid(h):
        cell = np.floor((xy - lo_xy) / h).astype(np.int64)
        key = cell[:, 0] * (int(cell[:, 1].max()) + 1) + cell[:, 1]
        uniq, inv = np.unique(key, return_inverse=True)
        return inv, len(uniq)

    h_small, h_big = 0.0, None  # count(h_small) > max_points >= count(h_big)
    h = max(float(np.sqrt(span[0] * span[1] / max_points)), float(span.max()) / max_points, 1e-9)
    best = None
    for _ in range(14):
        inv, count = grid(h)
        if count <= max_points:
            best = (inv, count) if best is None or count > best[1] else best
            if count >= 0.85 * max_points:
                break
            h_big = h
        else:
            h_small = h
        h = np.sqrt(h_small * h_big) if (h_big is not None and h_small > 0) else (h * 2.0 if h_big is None else h * 0.7)
    if best is None:  # pragma: no cover - grid search did not settle
        return xy[np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))]
    inv, count = best
    w = np.bincount(inv, minlength=count).astype(np.float64)
    return np.column_stack([np.bincount(inv, xy[:, 0], count) / w, np.bincount(inv, xy[:, 1], count) / w])


# ---------------------------------------------------------------------------------------------- CPD
def _same_optimum(a, b) -> bool:
    """Two coarse runs ``[nll, k, mirror, state, ...]`` ended at the same transform (normalised frame)."""
    if a[2] != b[2]:
        return False
    sa, sb = a[3], b[3]
    dang = abs((sa[1] - sb[1] + math.pi) % (2 * math.pi) - math.pi)
    same_scale = abs(sa[0] - sb[0]) < 0.05 * max(sa[0], sb[0])
    return dang < 0.1 and same_scale and math.hypot(sa[2] - sb[2], sa[3] - sb[3]) < 0.05


def _normaliser(x: np.ndarray) -> Similarity:
    """Similarity mapping ``x`` to zero mean and unit RMS radius."""
    centre = x.mean(axis=0)
    rho = float(np.sqrt(np.mean(np.sum((x - centre) ** 2, axis=1))))
    if not rho > 0:
        raise ValueError("The fixed points all coincide; nothing to register to.")
    return Similarity(1.0 / rho, np.eye(2), -centre / rho)


def _check_common(w, max_iterations):
    if not 0 <= w < 1:
        raise ValueError(f"Outlier weight w must be in [0, 1), got {w}.")
    if max_iterations < 1:
        raise ValueError("max_iterations must be at least 1.")


def cpd_similarity(
    moving,
    fixed,
    w: float = 0.1,
    max_iterations: int = 100,
    tolerance: float = 1e-3,
    init: Similarity | None = None,
    sigma2: float | None = None,
    allow_scale: bool = True,
    max_fixed: int | None = 800,
    cutoff_sigma: float = 7.0,
    backend: str = "auto",
    seed: int = 0,
) -> CPDResult:
    """Register ``moving`` (M, 2) onto ``fixed`` (N, 2) px by similarity CPD.

    ``w`` in [0, 1): outlier (uniform) weight. Computations run in the fixed cloud's normalised frame
    (zero mean, unit RMS radius), as in Myronenko's reference code, so ``w`` and ``tolerance`` do not
    depend on the pixel size (the uniform term ``w / N`` is not unit-free). Stops after ``max_iterations``
    or when the EM objective ``Q`` changes by less than ``tolerance`` (absolute; the same criterion as
    pycpd). ``init`` is the starting transform (default identity), ``sigma2`` the starting variance in px^2
    (default: mean squared pair distance / 2). ``allow_scale=False`` gives rigid CPD. ``max_fixed`` thins
    the fixed cloud by a voxel grid (None: keep all). The rotation found is proper; a mirrored ``init``
    (det -1) keeps its mirror.
    """
    y = as_points(moving, "moving points", min_points=3)
    x = as_points(fixed, "fixed points", min_points=3)
    _check_common(w, max_iterations)
    x = subsample_points(x, max_fixed, seed) if max_fixed else x
    backend = _resolve_backend(backend)
    norm = _normaliser(x)
    rho = 1.0 / norm.scale
    xn = norm.apply(x)
    t0 = norm.compose(init or Similarity())
    mirror = t0.reflected
    if mirror:  # keep the mirror of a reflected start: register the mirrored moving points instead
        y_work = y * np.array([-1.0, 1.0])
        t0 = t0.compose(_MIRROR)
    else:
        y_work = y
    if sigma2 is not None and not sigma2 > 0:
        raise ValueError("sigma2 must be positive (px^2) or None.")
    state = (t0.scale, math.atan2(t0.rotation[1, 0], t0.rotation[0, 0]), t0.translation[0], t0.translation[1],
             None if sigma2 is None else float(sigma2) / rho**2)
    state, nll, it, converged = _em(
        _split(xn), np.ascontiguousarray(y_work), state, w, max_iterations, tolerance, allow_scale, cutoff_sigma, backend
    )
    transform = _state_to_similarity(state, norm, mirror)
    n = len(x)
    return CPDResult(
        transform=transform,
        points=transform.apply(y),
        sigma2=float(state[4]) * rho**2,
        objective=nll / n + 2.0 * math.log(rho),
        iterations=it,
        converged=converged,
        w=w,
        n_fixed_used=n,
        info={"backend": backend},
    )


def multistart_cpd(
    moving,
    fixed,
    n_rotations: int = 8,
    try_reflection: bool = True,
    w: float = 0.1,
    max_iterations: int = 100,
    tolerance: float = 1e-3,
    coarse_moving: int = 32,
    coarse_fixed: int = 150,
    coarse_iterations: int = 20,
    prune_after: int = 8,
    prune_keep: int = 8,
    n_refine: int = 4,
    refine_margin: float = 1.0,
    max_fixed: int | None = 400,
    allow_scale: bool = True,
    cutoff_sigma: float = 7.0,
    backend: str = "auto",
    seed: int = 0,
    reflections: tuple | None = None,
) -> CPDResult:
    """CPD from ``n_rotations`` initial rotations (x2 with the mirrored moving shape), best by likelihood.

    ``reflections``: which starts to make, ``(False,)`` the moving shape as given, ``(True,)`` only its mirror,
    ``(False, True)`` both; None = both when ``try_reflection``, else the shape as given.

    Each start places the moving centroid on the fixed centroid with the RMS-radius scale ratio and one of
    the rotations ``360 k / n_rotations`` deg; it runs ``coarse_iterations`` on thinned sets
    (``coarse_moving`` points taken evenly along the moving set, ``coarse_fixed`` fixed points by voxel
    grid); after ``prune_after`` iterations only the ``prune_keep`` most likely starts continue (0: no
    pruning). Then up to ``n_refine`` distinct optima whose coarse negative log-likelihood per point is
    within ``refine_margin`` of the best are refined (``max_iterations``) on the full moving set and
    ``max_fixed`` fixed points. The winner has the lowest final negative log-likelihood. The returned
    transform maps the (unmirrored) moving points onto the fixed ones and includes the mirror when a
    reflected start won (``result.transform.reflected``).
    """
    y = as_points(moving, "moving points", min_points=3)
    x = as_points(fixed, "fixed points", min_points=3)
    _check_common(w, max_iterations)
    if n_rotations < 1:
        raise ValueError("n_rotations must be at least 1.")
    backend = _resolve_backend(backend)
    x_full = subsample_points(x, max_fixed, seed) if max_fixed else x
    norm = _normaliser(x_full)
    rho = 1.0 / norm.scale
    xn = norm.apply(x_full)
    xn_coarse = subsample_points(xn, coarse_fixed, seed)
    xs, xs_coarse = _split(xn), _split(xn_coarse)
    pick = np.unique(np.linspace(0, len(y) - 1, min(coarse_moving, len(y))).round().astype(int))
    mu_y = y.mean(0)
    s0 = 1.0 / float(np.sqrt(np.mean(np.sum((y - mu_y) ** 2, 1))))  # normalised fixed cloud: RMS radius 1
    starts = []
    first = min(prune_after, coarse_iterations) if prune_keep else coarse_iterations
    if reflections is None:
        reflections = (False, True) if try_reflection else (False,)
    if not reflections or any(m not in (False, True) for m in reflections):
        raise ValueError(f"reflections must be a non-empty tuple of False/True, got {reflections!r}.")
    for mirror in reflections:
        yw = np.ascontiguousarray(y * np.array([-1.0, 1.0]) if mirror else y)
        yw_coarse = np.ascontiguousarray(yw[pick])
        mu = yw.mean(0)
        for k in range(n_rotations):
            angle = 2.0 * math.pi * k / n_rotations
            rot = rotation_matrix(math.degrees(angle))
            t = -s0 * (rot @ mu)  # moving centroid onto the fixed centroid (0)
            state, nll, _, _ = _em(xs_coarse, yw_coarse, (s0, angle, t[0], t[1], None), w, first,
                                   tolerance, allow_scale, cutoff_sigma, backend)
            starts.append([nll, k, mirror, state, yw, yw_coarse])
    starts.sort(key=lambda s: s[0])
    coarse_objectives = [s[0] / len(xn_coarse) + 2.0 * math.log(rho) for s in starts]
    if prune_keep and coarse_iterations > first:  # successive halving: only the best starts go on
        starts = starts[: max(prune_keep, n_refine)]
        for s in starts:
            s[3], s[0], _, _ = _em(xs_coarse, s[5], s[3], w, coarse_iterations - first, tolerance, allow_scale,
                                   cutoff_sigma, backend)
        starts.sort(key=lambda s: s[0])
    # refine distinct candidates (adjacent starts often reach the same optimum) that are nearly as likely
    n_c = len(xn_coarse)
    candidates = []
    for cand in starts:
        if len(candidates) >= max(1, n_refine) or cand[0] > starts[0][0] + refine_margin * n_c:
            break
        if not any(_same_optimum(cand, other) for other in candidates):
            candidates.append(cand)
    n = len(x_full)
    refined = []
    for _, k, mirror, state, yw, _ in candidates:
        state, nll, it, converged = _em(xs, yw, state, w, max_iterations, tolerance, allow_scale, cutoff_sigma, backend)
        refined.append((nll, k, mirror, state, it, converged))
    refined.sort(key=lambda r: r[0])
    nll, k, mirror, state, it, converged = refined[0]
    transform = _state_to_similarity(state, norm, mirror)
    alternatives = [  # the other refined optima, most likely first (for callers that verify the fit)
        {"transform": _state_to_similarity(r[3], norm, r[2]), "objective": r[0] / n + 2.0 * math.log(rho),
         "sigma2": float(r[3][4]) * rho**2}
        for r in refined[1:]
    ]
    return CPDResult(
        transform=transform,
        points=transform.apply(y),
        sigma2=float(state[4]) * rho**2,
        objective=nll / n + 2.0 * math.log(rho),
        iterations=it,
        converged=converged,
        w=w,
        n_fixed_used=n,
        start_angle_deg=360.0 * k / n_rotations,
        start_reflected=mirror,
        info={"backend": backend, "coarse_objectives": coarse_objectives, "refined": len(candidates),
              "alternatives": alternatives},
    )
