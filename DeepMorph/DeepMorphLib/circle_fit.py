"""Circle fits to a confidence map: the femoral head in the paper's section 2.

The foreground is ``P_fg = {(x, y) | O(x, y) > threshold}`` (eq. 2, x = column u, y = row v, pixel centres
at integers). Methods:

* ``"algebraic"`` - eq. 4, ``min sum (x^2 + y^2 + B x + C y + D)^2``, closed-form linear least squares on
  centred and scaled coordinates (Kasa fit). Exact on noiseless data; biased towards small radii on short,
  noisy arcs.
* ``"geometric"`` - eq. 3, ``min sum (sqrt((cx - x)^2 + (cy - y)^2) - r)^2``, Levenberg-Marquardt started
  from the algebraic fit.
* ``"robust"`` - for outlines partly hidden by implants or with false positives: RANSAC over 3-point circles,
  then a hyper fit (Al-Sharadqah & Chernov 2009) and the geometric fit on the consensus set, with iterative
  rejection of points farther than ``max(inlier_px, 3 * 1.4826 * MAD)`` from the circle.

The paper's rule is kept: fewer than ``min_pixels`` (default 100) foreground pixels means "not detected",
returned as ``CircleFit(detected=False, reason=...)``; no circle is guessed. Quality is reported as the RMS
geometric residual (px) of the points used and the arc coverage (degrees of the circle with support).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .similarity import as_points

METHODS = ("algebraic", "geometric", "robust")


@dataclass(frozen=True)
class CircleFit:
    """Result of a circle fit; centre ``(cx, cy)`` and radius ``r`` in px (x = column, y = row)."""

    detected: bool
    cx: float = float("nan")
    cy: float = float("nan")
    r: float = float("nan")
    n_pixels: int = 0  # foreground pixels (map) or points given (point fit)
    residual_px: float = float("nan")  # RMS of |dist(p, centre) - r| over the points used
    arc_coverage_deg: float = 0.0  # degrees of the circle supported by the points used
    reason: str = ""  # why not detected (empty when detected)
    method: str = ""
    n_inliers: int = 0  # points used by the final fit (all points unless method="robust")

    @property
    def circle(self) -> tuple[float, float, float] | None:
        """``(cx, cy, r)`` px, or None when not detected."""
        return (self.cx, self.cy, self.r) if self.detected else None

    def to_dict(self) -> dict:
        return asdict(self)


def foreground_pixels(conf_map, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """``(xy (N, 2) px, confidence (N,))`` of the pixels with ``conf_map > threshold`` (eq. 2).

    Raises ValueError for maps that are not 2-D, empty, or contain NaN/inf.
    """
    conf = validate_map(conf_map)
    rows, cols = np.nonzero(conf > threshold)
    xy = np.column_stack([cols, rows]).astype(np.float64)
    return xy, conf[rows, cols].astype(np.float64)


def validate_map(conf_map) -> np.ndarray:
    """Return ``conf_map`` as a 2-D float array or raise ValueError naming the problem."""
    if conf_map is None:
        raise ValueError("The confidence map is None; pass the network's (H, W) sigmoid output.")
    conf = np.asarray(conf_map)
    if conf.ndim == 3 and 1 in conf.shape:
        conf = np.squeeze(conf)
    if conf.ndim != 2:
        raise ValueError(f"The confidence map must be 2-D (H, W), got shape {conf.shape}; pass one channel.")
    if conf.size == 0:
        raise ValueError(f"The confidence map is empty (shape {conf.shape}).")
    if conf.dtype == bool:
        conf = conf.astype(np.float32)
    if not np.issubdtype(conf.dtype, np.number) or np.issubdtype(conf.dtype, np.complexfloating):
        raise ValueError(f"The confidence map must be real numbers, got dtype {conf.dtype}.")
    if np.issubdtype(conf.dtype, np.floating) and not np.all(np.isfinite(conf)):
        raise ValueError("The confidence map contains NaN or infinite values; check the network output.")
    return conf


def map_radius_range(shape) -> tuple[float, float]:
    """Plausible radii (px) of a circle found in a map of ``shape``: 2 px to half the larger side, so straight
    edges cannot pass as huge circles (the robust fit's default for maps)."""
    return 2.0, 0.5 * max(shape)


def fit_circle(
    conf_map,
    threshold: float = 0.5,
    min_pixels: int = 100,
    method: str = "algebraic",
    weighted: bool = False,
    **kwargs,
) -> CircleFit:
    """Fit a circle to the foreground (``conf_map > threshold``) of a 2-D confidence map.

    ``weighted`` uses the confidence of each foreground pixel as its weight. Fewer than ``min_pixels``
    foreground pixels gives ``detected=False`` with a reason. Extra keyword arguments go to
    ``fit_circle_points`` (e.g. ``inlier_px``, ``radius_range`` for the robust fit; for maps the robust
    fit's default ``radius_range`` is 2 px to half the larger map side, so straight edges cannot pass as
    huge circles).
    """
    _check_method(method)
    xy, conf = foreground_pixels(conf_map, threshold)
    if method == "robust" and kwargs.get("radius_range") is None:
        kwargs["radius_range"] = map_radius_range(np.shape(validate_map(conf_map)))
    n = len(xy)
    if n < min_pixels:
        return CircleFit(
            detected=False,
            n_pixels=n,
            method=method,
            reason=f"only {n} foreground pixels above threshold {threshold:g} (fewer than min_pixels={min_pixels}); "
            "femoral head not detected",
        )
    return fit_circle_points(xy, weights=conf if weighted else None, method=method, **kwargs)


def fit_circle_points(
    xy,
    weights=None,
    method: str = "algebraic",
    min_points: int = 3,
    inlier_px: float = 2.5,
    radius_range: tuple[float, float] | None = None,
    n_trials: int = 400,
    seed: int = 0,
) -> CircleFit:
    """Fit a circle to ``(N, 2)`` points ``xy`` (px) with optional non-negative ``weights`` (N,).

    ``method``: "algebraic" (eq. 4), "geometric" (eq. 3) or "robust" (RANSAC + hyper + geometric with
    outlier rejection; ``inlier_px`` = inlier distance in px, ``radius_range`` = plausible (r_min, r_max) px,
    ``n_trials`` RANSAC samples drawn with the fixed ``seed``). Fewer than ``min_points`` points or a
    degenerate (collinear) set gives ``detected=False`` with a reason.
    """
    _check_method(method)
    xy = as_points(xy, "xy")
    n = len(xy)
    w = _check_weights(weights, n)
    if n < max(3, min_points):
        return CircleFit(False, n_pixels=n, method=method, reason=f"only {n} points (need at least {max(3, min_points)})")
    try:
        if method == "algebraic":
            cx, cy, r = algebraic_fit(xy, w)
            used = np.ones(n, bool)
        elif method == "geometric":
            cx, cy, r = geometric_fit(xy, w, algebraic_fit(xy, w))
            used = np.ones(n, bool)
        else:
            (cx, cy, r), used = robust_fit(xy, w, inlier_px, radius_range, n_trials, seed)
    except _Degenerate as exc:
        return CircleFit(False, n_pixels=n, method=method, reason=str(exc))
    if radius_range is not None and not (radius_range[0] <= r <= radius_range[1]):
        return CircleFit(False, n_pixels=n, method=method, reason=f"fitted radius {r:.1f} px is outside {radius_range}")
    pts = xy[used]
    res = np.hypot(pts[:, 0] - cx, pts[:, 1] - cy) - r
    return CircleFit(
        detected=True,
        cx=float(cx),
        cy=float(cy),
        r=float(r),
        n_pixels=n,
        residual_px=float(np.sqrt(np.mean(res**2))),
        arc_coverage_deg=arc_coverage_deg(pts, cx, cy, r),
        method=method,
        n_inliers=int(used.sum()),
    )


class _Degenerate(Exception):
    pass


def _check_method(method):
    if method not in METHODS:
        raise ValueError(f"Unknown circle fit method {method!r}; choose one of {', '.join(METHODS)}.")


def _check_weights(weights, n):
    if weights is None:
        return None
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape[0] != n:
        raise ValueError(f"weights must have one value per point ({n}), got {w.shape[0]}.")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("weights must be finite and non-negative.")
    return w


def _normalise(xy, w):
    """Centre (weighted mean) and scale (RMS radius) for conditioning; returns (xy_n, centre, scale)."""
    centre = np.average(xy, axis=0, weights=w)
    d = xy - centre
    scale = float(np.sqrt(np.average(np.sum(d * d, axis=1), weights=w)))
    if not scale > 0:
        raise _Degenerate("all points coincide; no circle can be fitted")
    return d / scale, centre, scale


def algebraic_fit(xy, weights=None) -> tuple[float, float, float]:
    """Eq. 4: closed-form least squares for ``x^2 + y^2 + B x + C y + D = 0``; returns (cx, cy, r) px."""
    p, centre, scale = _normalise(xy, weights)
    a = np.column_stack([p[:, 0], p[:, 1], np.ones(len(p))])
    rhs = -(p[:, 0] ** 2 + p[:, 1] ** 2)
    if weights is not None:
        sw = np.sqrt(weights)
        a, rhs = a * sw[:, None], rhs * sw
    sol, _, rank, sv = np.linalg.lstsq(a, rhs, rcond=None)
    if rank < 3 or sv[-1] < 1e-9 * sv[0]:
        raise _Degenerate("points are collinear or degenerate; no circle can be fitted")
    b, c, d = sol
    cx, cy = -b / 2, -c / 2
    r2 = cx * cx + cy * cy - d
    if not r2 > 0:
        raise _Degenerate("algebraic fit gave no real circle (points degenerate)")
    return cx * scale + centre[0], cy * scale + centre[1], float(np.sqrt(r2)) * scale


def hyper_fit(xy, weights=None) -> tuple[float, float, float]:
    """Hyper-accurate algebraic circle fit (Al-Sharadqah & Chernov 2009): nearly unbiased on short arcs."""
    p, centre, scale = _normalise(xy, weights)
    z = np.sum(p * p, axis=1)
    w = np.ones(len(p)) if weights is None else weights / weights.mean()
    zmat = np.column_stack([z, p[:, 0], p[:, 1], np.ones(len(p))]) * np.sqrt(w)[:, None]
    _, s, vt = np.linalg.svd(zmat, full_matrices=False)
    if s[2] < 1e-9 * s[0]:
        raise _Degenerate("points are collinear or degenerate; no circle can be fitted")
    if s[3] < 1e-12 * s[0]:
        a = vt[3]
    else:
        y = vt.T @ np.diag(s) @ vt
        zmean = float(np.average(z, weights=w))
        binv = np.array([[0, 0, 0, 0.5], [0, 1, 0, 0], [0, 0, 1, 0], [0.5, 0, 0, -2 * zmean]])
        evals, evecs = np.linalg.eig(y @ binv @ y)
        evals = np.real(evals)
        order = np.argsort(evals)
        pos = [k for k in order if evals[k] > 0]
        if not pos:
            raise _Degenerate("hyper fit found no valid circle")
        a = np.linalg.solve(y, np.real(evecs[:, pos[0]]))
    if abs(a[0]) < 1e-14:
        raise _Degenerate("points are collinear; no circle can be fitted")
    cx, cy = -a[1] / a[0] / 2, -a[2] / a[0] / 2
    r = np.sqrt(a[1] ** 2 + a[2] ** 2 - 4 * a[0] * a[3]) / abs(a[0]) / 2
    return cx * scale + centre[0], cy * scale + centre[1], float(r) * scale


def geometric_fit(xy, weights=None, start=None) -> tuple[float, float, float]:
    """Eq. 3: Levenberg-Marquardt on geometric distances, started at ``start`` (cx, cy, r) px."""
    from scipy.optimize import least_squares

    p, centre, scale = _normalise(xy, weights)
    if start is None:
        start = algebraic_fit(xy, weights)
    x0 = np.array([(start[0] - centre[0]) / scale, (start[1] - centre[1]) / scale, start[2] / scale])
    sw = np.ones(len(p)) if weights is None else np.sqrt(weights)

    def fun(q):
        return sw * (np.hypot(p[:, 0] - q[0], p[:, 1] - q[1]) - q[2])

    def jac(q):
        dx, dy = q[0] - p[:, 0], q[1] - p[:, 1]
        d = np.maximum(np.hypot(dx, dy), 1e-12)
        return np.column_stack([sw * dx / d, sw * dy / d, -sw])

    sol = least_squares(fun, x0, jac=jac, method="lm", xtol=1e-12, ftol=1e-12)
    cx, cy, r = sol.x
    if not (np.all(np.isfinite(sol.x)) and r > 0):
        raise _Degenerate("geometric fit diverged")
    return cx * scale + centre[0], cy * scale + centre[1], float(r) * scale


def _circumcircles(a, b, c):
    """Vectorised circles through triples of points (each (T, 2)); returns (cx, cy, r, ok)."""
    bx, by = b[:, 0] - a[:, 0], b[:, 1] - a[:, 1]
    cx_, cy_ = c[:, 0] - a[:, 0], c[:, 1] - a[:, 1]
    d = 2 * (bx * cy_ - by * cx_)
    ok = np.abs(d) > 1e-9 * (bx * bx + by * by + cx_ * cx_ + cy_ * cy_ + 1e-12)
    d = np.where(ok, d, 1.0)
    b2, c2 = bx * bx + by * by, cx_ * cx_ + cy_ * cy_
    ux = (cy_ * b2 - by * c2) / d
    uy = (bx * c2 - cx_ * b2) / d
    return ux + a[:, 0], uy + a[:, 1], np.hypot(ux, uy), ok


def robust_fit(xy, weights, inlier_px=2.5, radius_range=None, n_trials=400, seed=0, max_rounds=10):
    """RANSAC + hyper + geometric fit with iterative outlier rejection; returns ((cx, cy, r), inlier mask)."""
    n = len(xy)
    w = np.ones(n) if weights is None else weights
    rng = np.random.default_rng(seed)
    sel = np.arange(n) if n <= 4000 else np.sort(rng.choice(n, 4000, replace=False))
    pts, pw = xy[sel], (None if weights is None else w[sel])
    idx = rng.integers(0, len(pts), size=(n_trials, 3))
    cx, cy, r, ok = _circumcircles(pts[idx[:, 0]], pts[idx[:, 1]], pts[idx[:, 2]])
    if radius_range is not None:
        ok &= (r >= radius_range[0]) & (r <= radius_range[1])
    ok &= r < 1e6
    if not np.any(ok):
        raise _Degenerate("robust fit found no valid 3-point circle (points collinear or radius out of range)")
    cand = np.flatnonzero(ok)
    best, best_score = None, -1.0
    for chunk in np.array_split(cand, max(1, len(cand) // 64)):
        dist = np.abs(np.hypot(pts[None, :, 0] - cx[chunk, None], pts[None, :, 1] - cy[chunk, None]) - r[chunk, None])
        inl = dist < inlier_px
        score = inl.sum(axis=1) if pw is None else inl.astype(float) @ pw
        k = int(np.argmax(score))
        if score[k] > best_score:
            best_score, best = float(score[k]), (cx[chunk[k]], cy[chunk[k]], r[chunk[k]])
    circle = best
    mask = np.zeros(n, bool)
    for _ in range(max_rounds):
        res = np.abs(np.hypot(xy[:, 0] - circle[0], xy[:, 1] - circle[1]) - circle[2])
        inl = res < inlier_px
        if inl.sum() < 3:
            raise _Degenerate("robust fit kept fewer than 3 inliers")
        mad = 1.4826 * np.median(res[inl])
        new_mask = res < max(inlier_px, 3.0 * mad)
        if np.array_equal(new_mask, mask):
            break
        mask = new_mask
        wi = None if weights is None else weights[mask]
        circle = geometric_fit(xy[mask], wi, hyper_fit(xy[mask], wi))
    return circle, mask


def arc_coverage_deg(xy, cx, cy, r, gap_tol_deg: float | None = None) -> float:
    """Degrees of the circle covered by ``xy``: 360 minus the angular gaps wider than ``gap_tol_deg``.

    The default tolerance is ``max(5 deg, 3 px / r, 3 x median gap)`` so that pixel spacing and sparse
    point sets do not count as gaps.
    """
    if len(xy) < 2:
        return 0.0
    ang = np.sort(np.degrees(np.arctan2(xy[:, 1] - cy, xy[:, 0] - cx)))
    gaps = np.diff(np.concatenate([ang, ang[:1] + 360.0]))
    if gap_tol_deg is None:
        gap_tol_deg = max(5.0, float(np.degrees(3.0 / max(r, 1e-9))), 3.0 * float(np.median(gaps)))
    return float(np.clip(360.0 - gaps[gaps > gap_tol_deg].sum(), 0.0, 360.0))
