"""Fit a point distribution model to a confidence map (paper sections 3.1-3.2).

``fit_pdm_to_confidence(conf_map, pdm)``:

1. Foreground pixels ``conf_map > threshold`` (eq. 2); fewer than ``min_pixels`` -> not detected.
2. Initialisation: multi-start CPD (``cpd.multistart_cpd``) of the PDM mean shape onto the foreground,
   over rotations and the mirrored shape (the mirror selects ``pdm.reflect()``, i.e. the other side).
3. ASM iterations: every model point searches along its contour normal, within +-``search_px``, for the
   maximum confidence (bilinear sampling with ``scipy.ndimage.map_coordinates``, parabolic sub-pixel peak);
   the found points, weighted by their confidence, are projected onto the PDM (``b`` clipped to
   +-``clip`` sqrt(lambda)); the search range shrinks by ``shrink`` per iteration down to ``min_search_px``;
   stop when the mean point movement is below ``tol_px``. After CPD the first search range is
   ``3 sigma`` of the CPD mixture, between ``min_search_px`` and ``search_px``.

Points are (x, y) = (column, row) px. Points whose best confidence along the normal is below
``min_point_confidence`` (e.g. hidden by an implant or outside the map) get no weight: the shape model
fills them in.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .circle_fit import foreground_pixels, validate_map
from .cpd import multistart_cpd
from .pdm import PointDistributionModel
from .similarity import Similarity, as_points

_MIRROR = Similarity(1.0, np.diag([-1.0, 1.0]), np.zeros(2))


@dataclass(frozen=True)
class ShapeFit:
    """Result of ``fit_pdm_to_confidence``; arrays are None when not detected."""

    detected: bool
    points: np.ndarray | None = None  # (N, 2) fitted contour points, px
    b: np.ndarray | None = None  # (M,) mode weights of the (possibly mirrored) PDM
    transform: Similarity | None = None  # model frame -> image px (of ``pdm.reflect()`` when ``reflected``)
    point_confidence: np.ndarray | None = None  # (N,) bilinear confidence at the fitted points, 0-1
    quality: float = 0.0  # mean of point_confidence
    reason: str = ""
    reflected: bool = False  # True: the mirrored PDM (other side) fitted best
    n_pixels: int = 0  # foreground pixels
    iterations: int = 0
    converged: bool = False
    support: float = 0.0  # fraction of points whose confidence exceeds the threshold
    info: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = {
            "detected": self.detected,
            "reason": self.reason,
            "quality": self.quality,
            "support": self.support,
            "reflected": self.reflected,
            "n_pixels": self.n_pixels,
            "iterations": self.iterations,
            "converged": self.converged,
            "info": self.info,
        }
        if self.detected:
            out.update(
                points=self.points.tolist(),
                b=self.b.tolist(),
                transform=self.transform.to_dict(),
                point_confidence=self.point_confidence.tolist(),
            )
        return out


def contour_normals(points: np.ndarray, closed: bool = False) -> np.ndarray:
    """Unit normals (N, 2) of a polyline: tangent by central differences, rotated by 90 degrees.

    The sign follows the point order (it flips for a mirrored model); the profile search is symmetric.
    """
    if closed:
        tangent = np.roll(points, -1, axis=0) - np.roll(points, 1, axis=0)
    else:
        tangent = np.empty_like(points)
        tangent[1:-1] = points[2:] - points[:-2]
        tangent[0] = points[1] - points[0]
        tangent[-1] = points[-1] - points[-2]
    norm = np.hypot(tangent[:, 0], tangent[:, 1])
    norm[norm == 0] = 1.0
    return np.column_stack([-tangent[:, 1], tangent[:, 0]]) / norm[:, None]


def sample_bilinear(conf: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Bilinear confidence at points ``xy`` (..., 2) px; 0 outside the map."""
    from scipy.ndimage import map_coordinates

    flat = xy.reshape(-1, 2)
    vals = map_coordinates(conf, [flat[:, 1], flat[:, 0]], order=1, mode="constant", cval=0.0, prefilter=False)
    return vals.reshape(xy.shape[:-1])


def search_profiles(conf: np.ndarray, points: np.ndarray, normals: np.ndarray, search_px: float, step_px: float = 0.5):
    """Best point along each normal within +-``search_px``; returns (targets (N, 2), peak confidence (N,)).

    The peak is picked on the profile damped by ``1 - 0.25 |offset| / search_px`` (prefers the nearer of
    two similar edges) and refined to sub-pixel precision by a parabola through the raw samples.
    """
    offsets = np.arange(-search_px, search_px + 0.5 * step_px, step_px)
    samples = points[:, None, :] + offsets[None, :, None] * normals[:, None, :]
    prof = sample_bilinear(conf, samples)  # (N, K)
    damped = prof * (1.0 - 0.25 * np.abs(offsets) / max(search_px, 1e-9))[None, :]
    k = np.argmax(damped, axis=1)
    rows = np.arange(len(points))
    kk = np.clip(k, 1, len(offsets) - 2)
    a, b, c = prof[rows, kk - 1], prof[rows, kk], prof[rows, kk + 1]
    den = a - 2.0 * b + c
    shift = np.where(den < -1e-12, 0.5 * (a - c) / np.where(den < -1e-12, den, -1.0), 0.0)
    shift = np.clip(shift, -0.5, 0.5)
    best = offsets[kk] + shift * step_px
    best = np.where((k == kk), best, offsets[k])  # peak at the end of the range: no refinement
    peak = prof[rows, k]
    return points + best[:, None] * normals, peak


def fit_pdm_to_confidence(
    conf_map,
    pdm: PointDistributionModel,
    threshold: float = 0.5,
    min_pixels: int = 100,
    init: Similarity | np.ndarray | None = None,
    n_rotations: int = 8,
    try_reflection: bool = True,
    w: float = 0.1,
    max_fixed: int = 600,
    search_px: float = 15.0,
    min_search_px: float = 3.0,
    shrink: float = 0.8,
    step_px: float = 0.5,
    max_iterations: int = 25,
    tol_px: float = 0.1,
    clip: float = 3.0,
    min_point_confidence: float = 0.1,
    regularization: float = 1.0,
    min_quality: float = 0.0,
    seed: int = 0,
) -> ShapeFit:
    """Fit ``pdm`` to a 2-D confidence map (H, W) in [0, 1]; see the module docstring for the steps.

    ``init``: skip CPD and start from this model->image ``Similarity`` (a mirror selects the reflected
    PDM) or from an (N, 2) px start shape. ``regularization`` adds ``sum b_i^2 / lambda_i`` (in units of
    one fully confident point) to keep unsupported parts plausible. Returns ``ShapeFit``; ``detected`` is
    False (with ``reason``) when there are too few foreground pixels or the mean contour confidence is
    below ``min_quality``.
    """
    if not isinstance(pdm, PointDistributionModel):
        raise ValueError("pdm must be a PointDistributionModel (load one with PointDistributionModel.load).")
    conf = validate_map(conf_map).astype(np.float64)
    xy, _ = foreground_pixels(conf, threshold)
    n_px = len(xy)
    if n_px < min_pixels:
        return ShapeFit(
            detected=False,
            n_pixels=n_px,
            reason=f"only {n_px} foreground pixels above threshold {threshold:g} (fewer than min_pixels={min_pixels}); "
            "femur not detected",
        )
    info: dict = {}
    model = pdm
    b = np.zeros(pdm.n_modes)
    if init is None:
        cpd = multistart_cpd(
            pdm.mean, xy, n_rotations=n_rotations, try_reflection=try_reflection, w=w, max_fixed=max_fixed, seed=seed
        )
        transform = cpd.transform
        search_px = float(np.clip(3.0 * np.sqrt(cpd.sigma2), min_search_px, search_px))
        info["cpd"] = {
            "objective": cpd.objective,
            "sigma_px": float(np.sqrt(cpd.sigma2)),
            "iterations": cpd.iterations,
            "start_angle_deg": cpd.start_angle_deg,
            "reflected": cpd.transform.reflected,
        }
    elif isinstance(init, Similarity):
        transform = init
    else:
        start = as_points(init, "init shape")
        if start.shape[0] != pdm.n_points:
            raise ValueError(f"The init shape has {start.shape[0]} points but the PDM has {pdm.n_points}.")
        sp = pdm.fit_shape(start, clip=clip)
        transform, b = sp.transform, sp.b
    reflected = transform.reflected
    if reflected:
        model = pdm.reflect()
        transform = transform.compose(_MIRROR)
    points = model.instance(b, transform)
    radius = search_px
    it, converged = 0, False
    for it in range(1, max_iterations + 1):
        normals = contour_normals(points, model.closed)
        targets, peak = search_profiles(conf, points, normals, radius, step_px)
        weights = np.where(peak >= min_point_confidence, peak, 0.0)
        if np.count_nonzero(weights) < max(3, pdm.n_points // 10):
            info["stopped"] = "too few model points found confident pixels along their normals"
            break
        sp = model.fit_shape(
            targets, weights=weights, clip=clip, init=transform, b0=b, regularization=regularization, max_iterations=2
        )
        moved = float(np.mean(np.hypot(*(sp.points - points).T)))
        points, b, transform = sp.points, sp.b, sp.transform
        at_min = radius <= min_search_px + 1e-9
        radius = max(min_search_px, radius * shrink)
        if moved < tol_px and at_min:
            converged = True
            break
    point_conf = sample_bilinear(conf, points)
    quality = float(point_conf.mean())
    fit = ShapeFit(
        detected=True,
        points=points,
        b=b,
        transform=transform,
        point_confidence=point_conf,
        quality=quality,
        reflected=reflected,
        n_pixels=n_px,
        iterations=it,
        converged=converged,
        support=float(np.mean(point_conf > threshold)),
        info=info,
    )
    if quality < min_quality:
        return ShapeFit(**{**fit.__dict__, "detected": False,
                           "reason": f"mean contour confidence {quality:.2f} below min_quality={min_quality:g}"})
    return fit
