"""Constrained shape editing: the closest plausible PDM shape through points a user has fixed.

Used for interactive correction (a clinician drags a contour point or landmark in Slicer): the fitted
shape ``shape`` (N, 2) px is re-fitted to the PDM with the dragged points as heavily weighted targets,

    min_{T, b}  sum_n w_n |shape_n - T(mean + P b)_n|^2 + W sum_f |fixed_xy_f - T(mean + P b)_{i_f}|^2,
    |b_i| <= clip sqrt(lambda_i),

so the result stays a plausible femur (within +-``clip`` standard deviations per mode) and passes nearly
through the fixed points. With ``snap=True`` the remaining offsets at the fixed points are spread to their
neighbours along the contour (Gaussian in point index), so the fixed points are hit exactly at the price
of a small local departure from the model.
"""
from __future__ import annotations

import numpy as np

from .pdm import PointDistributionModel, ShapeParams
from .similarity import as_points


def constrained_fit(
    pdm: PointDistributionModel,
    shape,
    fixed_indices,
    fixed_xy,
    clip: float | None = 3.0,
    fixed_weight: float = 1000.0,
    weights=None,
    snap: bool = False,
    snap_sigma_points: float = 4.0,
    return_params: bool = False,
):
    """Closest plausible shape to ``shape`` (N, 2) px that passes (nearly) through ``fixed_xy`` (F, 2) px at
    the point indices ``fixed_indices`` (F,).

    ``fixed_weight``: weight of a fixed point relative to a free point of weight 1 (``weights`` (N,) gives
    per-point weights of the free points, e.g. the fit confidence). ``snap``: hit the fixed points exactly
    by spreading the residual offsets over ``snap_sigma_points`` neighbouring points. For a fit of the
    other side pass ``pdm.reflect()``. Returns the new shape (N, 2) px, or ``(shape, ShapeParams)`` with
    ``return_params`` (the params describe the model fit before snapping).
    """
    if not isinstance(pdm, PointDistributionModel):
        raise ValueError("pdm must be a PointDistributionModel.")
    shape = as_points(shape, "shape")
    if shape.shape[0] != pdm.n_points:
        raise ValueError(f"The shape has {shape.shape[0]} points but the PDM has {pdm.n_points}.")
    idx = np.asarray(fixed_indices).reshape(-1)
    if idx.size and not np.issubdtype(idx.dtype, np.integer):
        raise ValueError("fixed_indices must be integer point indices.")
    idx = idx.astype(np.int64)
    fixed = as_points(np.asarray(fixed_xy, dtype=np.float64).reshape(-1, 2), "fixed_xy")
    if len(fixed) != len(idx):
        raise ValueError(f"Got {len(idx)} fixed indices but {len(fixed)} fixed points; give one (x, y) per index.")
    if np.any(idx < 0) or np.any(idx >= pdm.n_points):
        raise ValueError(f"fixed_indices must be in 0..{pdm.n_points - 1}.")
    if len(np.unique(idx)) != len(idx):
        raise ValueError("fixed_indices contains duplicates; fix each point once.")
    if not fixed_weight > 0:
        raise ValueError("fixed_weight must be positive.")
    w = np.ones(pdm.n_points) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1).copy()
    if w.shape[0] != pdm.n_points or np.any(w < 0) or not np.all(np.isfinite(w)):
        raise ValueError("weights must be one finite, non-negative value per point.")
    target = shape.copy()
    target[idx] = fixed
    w[idx] = fixed_weight
    params: ShapeParams = pdm.fit_shape(target, weights=w, clip=clip, max_iterations=100, tol_px=1e-6)
    out = params.points.copy()
    if snap and len(idx):
        out += _spread(fixed - out[idx], idx, pdm.n_points, snap_sigma_points, pdm.closed)
    return (out, params) if return_params else out


def _spread(offsets: np.ndarray, idx: np.ndarray, n: int, sigma: float, closed: bool) -> np.ndarray:
    """Smooth displacement field (n, 2) that equals ``offsets`` at ``idx`` (Gaussian RBF in point index)."""
    sigma = max(float(sigma), 1e-6)

    def dist(a, b):
        d = np.abs(a[:, None] - b[None, :]).astype(np.float64)
        return np.minimum(d, n - d) if closed else d

    gram = np.exp(-0.5 * (dist(idx, idx) / sigma) ** 2)
    coef = np.linalg.lstsq(gram, offsets, rcond=None)[0]
    return np.exp(-0.5 * (dist(np.arange(n), idx) / sigma) ** 2) @ coef
