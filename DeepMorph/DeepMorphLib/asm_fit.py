"""Fit a point distribution model to a confidence map (paper sections 3.1-3.2).

``fit_pdm_to_confidence(conf_map, pdm)``:

1. Foreground pixels ``conf_map > threshold`` (eq. 2); fewer than ``min_pixels`` -> not detected.
2. Initialisation: multi-start CPD (``cpd.multistart_cpd``) of the PDM mean shape onto the foreground,
   over rotations and the mirrored shape (the mirror selects ``pdm.reflect()``, i.e. the other side).
3. ASM iterations: every model point searches along its contour normal, within +-``search_px``, for the
   maximum confidence (bilinear sampling as ``scipy.ndimage.map_coordinates(order=1)``, compiled with numba
   when available; parabolic sub-pixel peak);
   the found points, weighted by their confidence, are projected onto the PDM (``b`` clipped to
   +-``clip`` sqrt(lambda), with a strong Gaussian prior on ``b``: ``regularization``); the search range
   shrinks by ``shrink`` per iteration down to ``min_search_px``; stop when the mean point movement is below
   ``tol_px``. After CPD the first search range is ``3 sigma`` of the CPD mixture, between ``min_search_px``
   and ``search_px``.

4. Second opinions, when the fit's mean confidence over its points inside the map (``in_view_confidence``: a
   shaft leaving the image is no sign of a bad fit) is below ``second_opinion_below`` (a clean fit is kept as
   it is): the normal search is one-sided and folds the shape where the start is off by more than the gap
   between two parts of the outline (head dome and neck, trochanter and shaft), and CPD can lock onto pelvis
   edges the network lit up. So (a) the shape-constrained CPD (``shape_cpd``: every outline pixel pulls on the
   model too) from the CPD optimum, and (b) with a head circle (cx, cy, r) px, starts that put the model's
   head dome (points ``head_dome``) on that circle at ``anchor_angles_deg`` shaft directions and both sides,
   each screened by a few ASM iterations, the most confident fitted to the end. The fit with the highest
   mean confidence at its points plus ``coverage_weight`` x its coverage (the fraction of the outline pixels
   within ``COVERAGE_PX`` of it: a fit shrunk onto one strong ridge piece covers little) is kept
   (``info["start_used"]`` says which).
5. Refinement: the kept fit gets more ASM iterations within ``min_search_px`` under the weak prior
   ``final_regularization`` (None = none). Searching under the strong prior keeps the shape from bending onto
   wrong ridges where the outline is missing or faint (a lateral shaft lost in the soft-tissue washout, a
   greater trochanter beyond the collimator); the refinement then lets the parts the network does see follow
   them closely.
6. Polish (``polish_px``): each point moves along its normal onto the ridge nearby where it is confident.

Points are (x, y) = (column, row) px. Points whose best confidence along the normal is below
``min_point_confidence`` (e.g. hidden by an implant or outside the map) get no weight: the shape model
fills them in. For open outlines (``pdm.closed`` False) the two end points can also search along the tangent
for the end of the ridge (``end_search``, off by default): right where the outline really ends there (a
synthetic map), but in X-rays the shaft leaves the field of view (collimator, image border) rather than ending
at the model's shaft cut, and pulling the ends to where the ridge stops stretched the fits (on simulated
images from training seeds it took fits started at the true pose from ~2 px to 14-23 px).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .circle_fit import foreground_pixels, validate_map
from .cpd import multistart_cpd, subsample_points
from .pdm import PointDistributionModel
from .similarity import Similarity, as_points

try:  # the profile search runs every ASM iteration: compiled when numba is there
    import numba

    _HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    numba = None
    _HAVE_NUMBA = False

_MIRROR = Similarity(1.0, np.diag([-1.0, 1.0]), np.zeros(2))
END_WEIGHT = 5.0  # weight of an end point that found the end of the ridge (a normal point: <= 1)
POLISH_PX = 3.0  # px: default polish reach, also the one fits are compared with (pipeline.FINAL_POLISH_PX: the last)
REGULARIZATION = 30.0  # weight of sum b_i^2 / lambda_i while searching and comparing fits (one fully confident
#   point = 1); FINAL_REGULARIZATION: the kept fit's refinement. Simulated tuning images (training seeds), femur
#   p2c_mean / median, one prior of 1 throughout before: tune3 2.85 / 1.35 -> 2.11 / 1.07 px (detected 186 -> 182
#   of 200), tune2 3.30 / 1.81 -> 2.47 / 1.50 (146 -> 145 of 160); searching at 10 or 100: tune3 2.17 / 2.14;
#   one prior of 3 / 10 / 30 without the refinement: tune3 2.96 / 2.28 / 2.17, medians 1.46 / 1.38 / 1.77.
FINAL_REGULARIZATION = 1.0
UNSEEN_BELOW = 0.2  # a point of a final femur fit with a lower confidence is unseen (``extrapolate_unseen``)
UNSEEN_REGULARIZATION = 10.0  # prior of the refit that extrapolates the unseen points from the seen ones. The weak
#   refinement prior (FINAL_REGULARIZATION) lets the seen parts follow the outline, but also lets them swing the
#   unseen parts (a burned-out greater trochanter, a shaft leaving the image). Simulated tuning sets (training seeds),
#   femur task (pipeline.EXTRAPOLATE_UNSEEN), p2c_mean / median: tune3 1.988 / 0.971 -> 1.812 / 1.026 px (181 of 200
#   detected both), tune7 2.696 / 1.091 -> 2.589 / 1.060 px (354 -> 353 of 400). Prior 1 / 3 / 10 / 30 / 100 on tune3
#   (the fits' own final points, offline): 1.91, 1.86, 1.81, 1.79, 1.82 px mean, medians 0.96-1.10
COVERAGE_PX = 3.0  # px: an outline pixel this close to a fit's contour is covered by it
COVERAGE_WEIGHT = 0.25  # weight of the coverage when the second opinions are compared. Simulated tuning images
#   (training seeds): femur p2c_mean tune3 4.39 -> 4.29 px (p95 11.1 -> 10.5), tune2 3.92 -> 3.49 (p95 16.6 -> 13.2),
#   medians unchanged (1.38 / 2.08); 0.5: tune3 4.13 but tune2 4.39 (the fits spread over pelvis outlines)


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
    model_points: np.ndarray | None = None  # (N, 2) the PDM instance; ``points`` differ from it when polished

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


def _end_targets(conf, points, targets, peak, search_px, step_px, min_conf, margin_px=2.0):
    """Tangential search at the two ends of an open contour (in place).

    From the outermost point well on the ridge (peak >= 0.7 x median peak), the confidence is sampled along
    the outward tangent of the end, up to ``search_px`` beyond the model's end point. The ridge ends where
    the confidence falls below half its ridge value; the end point's target moves there (less the half
    width of the ridge across it, i.e. the size of the band's round cap). Ridges that go on beyond that
    range or stop at the map border (no anatomical end) give no target. Without this, the ends of an open
    outline slide freely along the ridge.
    """
    h, w = conf.shape
    n = len(points)
    good = peak >= min_conf
    if not np.any(good):
        return
    on = peak[good]
    solid = 0.7 * float(np.partition(on, len(on) // 2)[len(on) // 2])  # well on the ridge, not on its end cap
    for end, step in ((0, 1), (n - 1, -1)):
        j = end
        while 0 <= j < n and peak[j] < solid and abs(j - end) < n // 4:
            j += step
        if not 0 <= j < n or peak[j] < solid:
            continue
        u = points[end] - points[end + 2 * step]
        norm = np.hypot(*u)
        if norm == 0:
            continue
        u = u / norm
        base = targets[j]
        reach = float(np.dot(points[end] - base, u)) + search_px
        if reach <= step_px:
            continue
        offsets = np.arange(0.0, reach + 0.5 * step_px, step_px)
        across = np.arange(-4.0, 4.0 + 0.5 * step_px, step_px)
        prof_across = sample_bilinear(conf, base[None, :] + across[:, None] * np.array([-u[1], u[0]])[None, :])
        ridge = float(prof_across.max())
        half = 0.5 * ridge
        hw = float(np.count_nonzero(prof_across >= half)) * step_px / 2.0  # half width of the ridge
        prof = sample_bilinear(conf, base[None, :] + offsets[:, None] * u[None, :])
        below = np.flatnonzero(prof < half)
        if ridge < min_conf or len(below) == 0 or below[0] == 0:
            continue  # no ridge here, or it goes on beyond the search range
        k = below[0] - 1
        a, b = prof[k], prof[k + 1]
        cross = offsets[k] + step_px * (a - half) / max(a - b, 1e-12)
        end_pt = base + max(cross - hw, 0.0) * u
        lo = margin_px + hw
        if end_pt[0] < lo or end_pt[1] < lo or end_pt[0] > w - 1 - lo or end_pt[1] > h - 1 - lo:
            continue  # the ridge stops at the map border: no information about the end
        targets[end] = end_pt
        peak[end] = ridge * END_WEIGHT


def polish_points(conf, points, closed: bool = False, search_px: float = 2.0, step_px: float = 0.5,
                  min_confidence: float = 0.5) -> np.ndarray:
    """The PDM instance's points moved, each along its normal within +-``search_px``, onto the confidence ridge
    (sub-pixel peak, ``search_profiles``) where that ridge is at least ``min_confidence``; other points stay.
    The shape model cannot follow every femur exactly (a 10-mode PDM misses the true outline by ~1.8 px on
    average); the last step lets well-supported points sit on the outline the network sees."""
    points = np.asarray(points, dtype=np.float64)
    targets, peak = search_profiles(conf, points, contour_normals(points, closed), search_px, step_px)
    return np.where((peak >= min_confidence)[:, None], targets, points)


def extrapolate_unseen(conf, model: PointDistributionModel, points, transform: Similarity, b,
                       regularization: float = UNSEEN_REGULARIZATION, below: float = UNSEEN_BELOW, clip: float = 3.0,
                       min_seen: float = 0.25) -> tuple[np.ndarray, int]:
    """A final fit's contour with its unseen parts extrapolated under a stronger prior: (points (N, 2) px, number
    replaced). ``points`` (polished) whose confidence is below ``below`` are unseen; they are replaced by the
    ``model`` instance (the fit's reflection) fitted (``fit_shape``, prior ``regularization``, from ``transform`` and
    ``b``) to the seen points. The seen points stay. Unchanged when every point is seen or fewer than ``min_seen``
    of them are (nothing to extrapolate from)."""
    points = np.asarray(points, dtype=np.float64)
    seen = sample_bilinear(conf, points) >= below
    n_seen = int(np.count_nonzero(seen))
    if n_seen == len(points) or n_seen < max(3, min_seen * len(points)):
        return points, 0
    refit = model.fit_shape(points, weights=seen.astype(np.float64), clip=clip, init=transform, b0=b,
                            regularization=regularization)
    out = points.copy()
    out[~seen] = refit.points[~seen]
    return out, len(points) - n_seen


def in_view_confidence(conf: np.ndarray, points: np.ndarray) -> float:
    """Mean confidence of ``conf`` (H, W) at the ``points`` (N, 2) px that lie inside it (0 when none does): how well
    a fit lies on the outline where the network can see, whatever part of the femur leaves the image."""
    h, w = np.shape(conf)
    pts = np.asarray(points, dtype=np.float64)
    inside = (pts[:, 0] >= 0) & (pts[:, 0] <= w - 1) & (pts[:, 1] >= 0) & (pts[:, 1] <= h - 1)
    return float(sample_bilinear(conf, pts[inside]).mean()) if np.any(inside) else 0.0


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


def sample_bilinear(conf: np.ndarray, xy: np.ndarray, backend: str = "auto") -> np.ndarray:
    """Bilinear confidence at points ``xy`` (..., 2) px; 0 outside the map (map_coordinates, order=1)."""
    from scipy.ndimage import map_coordinates

    flat = xy.reshape(-1, 2)
    if _HAVE_NUMBA and backend != "numpy" and conf.dtype == np.float64 and conf.flags.c_contiguous:
        out = np.empty(len(flat))
        _sample_numba(conf, np.ascontiguousarray(flat, dtype=np.float64), out)
        return out.reshape(xy.shape[:-1])
    vals = map_coordinates(conf, [flat[:, 1], flat[:, 0]], order=1, mode="constant", cval=0.0, prefilter=False)
    return vals.reshape(xy.shape[:-1])


def search_profiles(
    conf: np.ndarray, points: np.ndarray, normals: np.ndarray, search_px: float, step_px: float = 0.5, backend: str = "auto"
):
    """Best point along each normal within +-``search_px``; returns (targets (N, 2), peak confidence (N,)).

    Profiles are sampled every ``step_px`` with bilinear interpolation (0 outside the map, as
    ``scipy.ndimage.map_coordinates(order=1, mode="constant")``). The peak is picked on the profile damped
    by ``1 - 0.25 |offset| / search_px`` (prefers the nearer of two similar edges) and refined to sub-pixel
    precision by a parabola through the raw samples. ``backend``: "auto" (numba if available) or "numpy"
    (map_coordinates).
    """
    offsets = np.arange(-search_px, search_px + 0.5 * step_px, step_px)
    if _HAVE_NUMBA and backend != "numpy":
        targets = np.empty_like(points)
        peak = np.empty(len(points))
        _search_numba(np.ascontiguousarray(conf, dtype=np.float64), np.ascontiguousarray(points),
                      np.ascontiguousarray(normals), offsets, float(search_px), float(step_px), targets, peak)
        return targets, peak
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


if _HAVE_NUMBA:

    @numba.njit(cache=True)
    def _bilinear(conf, x, y):  # pragma: no cover - compiled; same values as map_coordinates(order=1, "constant")
        h = conf.shape[0]
        w = conf.shape[1]
        if not (x >= 0.0 and y >= 0.0 and x <= w - 1 and y <= h - 1):
            return 0.0
        x0 = min(int(x), w - 2) if w > 1 else 0
        y0 = min(int(y), h - 2) if h > 1 else 0
        fx = x - x0
        fy = y - y0
        x1 = min(x0 + 1, w - 1)
        y1 = min(y0 + 1, h - 1)
        top = conf[y0, x0] * (1.0 - fx) + conf[y0, x1] * fx
        bottom = conf[y1, x0] * (1.0 - fx) + conf[y1, x1] * fx
        return top * (1.0 - fy) + bottom * fy

    @numba.njit(cache=True)
    def _covered_numba(xy, a, b, r2):  # pragma: no cover - compiled; pixels within sqrt(r2) px of any segment a->b
        count = 0
        for i in range(xy.shape[0]):
            for k in range(a.shape[0]):
                ux, uy = b[k, 0] - a[k, 0], b[k, 1] - a[k, 1]
                qx, qy = xy[i, 0] - a[k, 0], xy[i, 1] - a[k, 1]
                t = (qx * ux + qy * uy) / max(ux * ux + uy * uy, 1e-12)
                t = min(max(t, 0.0), 1.0)
                dx, dy = qx - t * ux, qy - t * uy
                if dx * dx + dy * dy <= r2:
                    count += 1
                    break
        return count

    @numba.njit(cache=True)
    def _sample_numba(conf, xy, out):  # pragma: no cover - compiled
        for i in range(xy.shape[0]):
            out[i] = _bilinear(conf, xy[i, 0], xy[i, 1])

    @numba.njit(cache=True)
    def _search_numba(conf, points, normals, offsets, search_px, step_px, targets, peak):  # pragma: no cover
        n_off = offsets.shape[0]
        prof = np.empty(n_off)
        for i in range(points.shape[0]):
            px = points[i, 0]
            py = points[i, 1]
            nx = normals[i, 0]
            ny = normals[i, 1]
            best = 0
            best_v = -1.0
            for k in range(n_off):
                v = _bilinear(conf, px + offsets[k] * nx, py + offsets[k] * ny)
                prof[k] = v
                d = v * (1.0 - 0.25 * abs(offsets[k]) / search_px)
                if d > best_v:
                    best_v = d
                    best = k
            off = offsets[best]
            if 0 < best < n_off - 1:
                a = prof[best - 1]
                b = prof[best]
                c = prof[best + 1]
                den = a - 2.0 * b + c
                if den < -1e-12:
                    shift = 0.5 * (a - c) / den
                    off += min(max(shift, -0.5), 0.5) * step_px
            targets[i, 0] = px + off * nx
            targets[i, 1] = py + off * ny
            peak[i] = prof[best]


def _asm(conf, model, transform, b, radius, wide_px, min_search_px, shrink, step_px, max_iterations, tol_px, clip,
         min_point_confidence, regularization, end_search, rescue):
    """ASM iterations from ``transform``/``b``; returns (points, b, transform, iterations, converged, stopped)."""
    points = model.instance(b, transform)
    it, converged, stopped = 0, False, ""
    for it in range(1, max_iterations + 1):
        normals = contour_normals(points, model.closed)
        targets, peak = search_profiles(conf, points, normals, radius, step_px)
        lost = peak < min_point_confidence
        if rescue and radius < wide_px and np.any(lost):  # points that lost the ridge look further
            t2, p2 = search_profiles(conf, points[lost], normals[lost], wide_px, step_px)
            targets[lost], peak[lost] = t2, p2
        if end_search and not model.closed:
            _end_targets(conf, points, targets, peak, wide_px, step_px, min_point_confidence)
        weights = np.where(peak >= min_point_confidence, peak, 0.0)
        if np.count_nonzero(weights) < max(3, model.n_points // 10):
            stopped = "too few model points found confident pixels along their normals"
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
    return points, b, transform, it, converged, stopped


def shaft_angle_deg(points: np.ndarray, shaft_axis) -> float:
    """Angle (degrees, -180..180] of a femur contour's shaft direction from image "down" (+y), positive towards +x:
    from the head point ``shaft_axis[0]`` to the midpoint of the shaft-cut points ``shaft_axis[1:]``."""
    head, *ends = (int(i) for i in shaft_axis)
    v = np.mean(np.asarray(points, dtype=np.float64)[ends], axis=0) - np.asarray(points, dtype=np.float64)[head]
    return float(np.degrees(np.arctan2(v[0], v[1])))


def head_dome_radius(points: np.ndarray, head_dome) -> float:
    """Radius (px) of the circle through a femur contour's head-dome points ``head_dome[0]..head_dome[1]``
    (algebraic fit); nan when they are not round enough to fit."""
    from .circle_fit import fit_circle_points

    i0, i1 = sorted(int(i) for i in head_dome)
    circle = fit_circle_points(np.asarray(points, dtype=np.float64)[i0: i1 + 1], method="algebraic", min_points=3)
    return float(circle.r) if circle.detected else float("nan")


def upright_penalty(points, prior: dict | None) -> float:
    """Score penalty of a fit whose shaft points more than ``prior["max_deg"]`` from image down
    (``shaft_angle_deg``): ``prior["penalty"]``, else 0; ``prior`` None = no prior."""
    if not prior:
        return 0.0
    return float(prior["penalty"]) if abs(shaft_angle_deg(points, prior["shaft_axis"])) > float(prior["max_deg"]) else 0.0


UPRIGHT_MAX_DEG = 60.0  # upright prior: shaft within this angle of image down (simulated poses: ~94 %)
UPRIGHT_WEIGHT = 0.15  # ... else this much off a fit's score when fits are compared


def upright_prior(shaft_axis, max_deg: float | None = UPRIGHT_MAX_DEG, weight: float = UPRIGHT_WEIGHT) -> dict | None:
    """The prior ``upright_penalty`` reads; None (no prior) without ``shaft_axis`` or ``max_deg``."""
    if shaft_axis is None or max_deg is None:
        return None
    return {"shaft_axis": tuple(int(i) for i in shaft_axis), "max_deg": float(max_deg), "penalty": float(weight)}


ANCHOR_ANGLES_DEG = (-45.0, -30.0, -15.0, 0.0, 15.0, 30.0, 45.0, 90.0, 135.0, 180.0, 225.0, 270.0)


def head_anchored_starts(pdm: PointDistributionModel, head_dome, circle, angles_deg=ANCHOR_ANGLES_DEG,
                         reflections=(False, True)) -> list:
    """Model -> image ``Similarity`` starts that put the circle through the model's mean head dome (points
    ``head_dome[0]..head_dome[1]``) onto ``circle`` (cx, cy, r) px, rotated by each of ``angles_deg`` about the
    head centre, unmirrored and mirrored (a mirror selects ``pdm.reflect()`` in ``fit_pdm_to_confidence``)."""
    from .circle_fit import fit_circle_points

    cx, cy, r = (float(v) for v in circle)
    if not (np.isfinite([cx, cy, r]).all() and r > 0):
        raise ValueError(f"head_circle must be a finite (cx, cy, r) with r > 0 px, got {circle}.")
    if head_dome is None or len(head_dome) != 2:
        raise ValueError("head_dome must be the (first, last) model point indices of the head dome, e.g. the PDM's "
                         "anchor_neck_superior and anchor_neck_inferior landmarks.")
    i0, i1 = sorted(int(i) for i in head_dome)
    if i0 < 0 or i1 >= pdm.n_points or i1 - i0 < 3:
        raise ValueError(f"head_dome {head_dome} does not select at least 4 of the PDM's {pdm.n_points} points.")
    dome = fit_circle_points(pdm.mean[i0: i1 + 1], method="algebraic", min_points=3)
    if not dome.detected or dome.r <= 0:
        raise ValueError(f"The PDM's head dome (points {i0}..{i1}) is not round enough to anchor on.")
    centre_model = np.array([dome.cx, dome.cy])
    scale = r / dome.r
    starts = []
    for reflect in reflections:
        for angle in angles_deg:
            rot = Similarity.from_params(scale, angle, (0.0, 0.0), reflect=reflect)
            starts.append(Similarity(scale, rot.rotation, np.array([cx, cy]) - rot.apply(centre_model[None])[0]))
    return starts


def outline_coverage(xy: np.ndarray, points: np.ndarray, closed: bool = False, within_px: float = COVERAGE_PX,
                     backend: str = "auto") -> float:
    """Fraction of the outline pixels ``xy`` (N, 2) px within ``within_px`` of the contour ``points`` (a polyline,
    closed or not); 0 for no pixels. ``backend``: "numba" (compiled, stops at the first segment near enough),
    "numpy" (``scoring.segment_distances``) or "auto"."""
    from .scoring import polygon_segments, segment_distances

    if len(xy) == 0:
        return 0.0
    starts, ends = polygon_segments(points, closed=closed)
    if backend == "numba" or (backend == "auto" and _HAVE_NUMBA):
        xy = np.ascontiguousarray(xy, dtype=np.float64)
        count = _covered_numba(xy, np.ascontiguousarray(starts, np.float64), np.ascontiguousarray(ends, np.float64),
                               float(within_px) ** 2)
        return count / len(xy)
    return float(np.mean(segment_distances(xy, starts, ends) <= within_px))


def _second_opinions(conf, pdm, best, xy, cpd_transform, head_circle, head_dome, opts, anchor, threshold, info,
                     upright=None):
    """``best`` (the fit tuple of ``fit_pdm_to_confidence``) or a fit from another start, whichever scores highest
    (mean confidence at its points + ``anchor["coverage_weight"]`` x ``outline_coverage`` of the outline pixels
    ``xy``, less the upright penalty): the shape-constrained CPD (``shape_cpd.fit_pdm_cpd``) from the rigid CPD
    optimum ``cpd_transform`` (None: skipped) and the head-anchored starts (``head_circle`` None: skipped; a
    callable is called now, and may return None)."""
    from .shape_cpd import fit_pdm_cpd

    coverage_weight = float(anchor.get("coverage_weight", 0.0))

    def quality(points):  # compared as they will be reported: after the polish
        if anchor["polish_px"] > 0:
            points = polish_points(conf, points, pdm.closed, anchor["polish_px"], opts["step_px"], threshold)
        score = float(sample_bilinear(conf, points).mean()) - upright_penalty(points, upright)
        return score + coverage_weight * outline_coverage(xy, points, pdm.closed) if coverage_weight else score

    chosen, chosen_q = best, (quality(best[0]) if not best[5] else -1.0)
    tried = []

    def consider(points, b, transform, it, converged, reflected, label):
        nonlocal chosen, chosen_q
        q = quality(points)
        tried.append((label, round(q, 4)))
        if q > chosen_q:
            chosen = (points, b, transform, it, converged, "", reflected, label,
                      float(np.mean(sample_bilinear(conf, points) > threshold)))
            chosen_q = q

    if cpd_transform is not None:
        reflected = cpd_transform.reflected
        model = pdm.reflect() if reflected else pdm
        start = cpd_transform.compose(_MIRROR) if reflected else cpd_transform
        r = fit_pdm_cpd(xy, model, start, max_iterations=anchor["shape_cpd_iterations"], clip=opts["clip"],
                        regularization=opts["regularization"])
        consider(r.points, r.b, r.transform, r.iterations, r.converged, reflected, "shape-cpd")
    circle = head_circle() if callable(head_circle) else head_circle
    if circle is not None:
        screened = []
        screen_opts = {**opts, "max_iterations": max(1, int(anchor["screen_iterations"]))}
        for start in head_anchored_starts(pdm, head_dome, circle, anchor["angles_deg"],
                                          anchor.get("reflections", (False, True))):
            model = pdm.reflect() if start.reflected else pdm
            transform = start.compose(_MIRROR) if start.reflected else start
            points, b, transform, _, _, stopped = _asm(conf, model, transform, np.zeros(pdm.n_modes), opts["wide_px"],
                                                       **screen_opts)
            if not stopped:
                screened.append((quality(points), model, transform, b, start.reflected))
        screened.sort(key=lambda item: -item[0])
        radius = max(opts["min_search_px"], opts["wide_px"] * opts["shrink"] ** screen_opts["max_iterations"])
        for rank, (_, model, transform, b0, reflected) in enumerate(screened[:max(1, int(anchor["keep"]))]):
            points, b, transform, it, converged, stopped = _asm(conf, model, transform, b0, radius, **opts)
            if not stopped:
                consider(points, b, transform, it, converged, reflected, f"head-anchor {rank}")
        info["head_anchor"] = {"circle": [float(v) for v in circle], "starts": len(screened)}
    info["second_opinions"] = tried
    return chosen


def fit_pdm_to_confidence(
    conf_map,
    pdm: PointDistributionModel,
    threshold: float = 0.5,
    min_pixels: int = 100,
    init: Similarity | np.ndarray | None = None,
    n_rotations: int = 8,
    try_reflection: bool = True,
    w: float = 0.1,
    max_fixed: int = 400,
    cpd_iterations: int = 40,
    cpd_tolerance: float = 0.1,
    search_px: float = 15.0,
    min_search_px: float = 3.0,
    shrink: float = 0.8,
    step_px: float = 0.5,
    max_iterations: int = 30,
    tol_px: float = 0.1,
    clip: float = 3.0,
    min_point_confidence: float = 0.1,
    regularization: float = REGULARIZATION,
    final_regularization: float | None = FINAL_REGULARIZATION,
    min_quality: float = 0.0,
    end_search: bool = False,
    rescue: bool = True,
    polish_px: float = POLISH_PX,
    verify_support: float = 0.6,
    seed: int = 0,
    second_opinion_below: float = 0.7,
    shape_cpd: bool = True,
    shape_cpd_iterations: int = 30,
    head_circle=None,
    head_dome: tuple | None = None,
    anchor_angles_deg=ANCHOR_ANGLES_DEG,
    anchor_screen_iterations: int = 4,
    anchor_keep: int = 2,
    shaft_axis: tuple | None = None,
    upright_max_deg: float | None = UPRIGHT_MAX_DEG,
    upright_weight: float = UPRIGHT_WEIGHT,
    reflection: bool | None = None,
    coverage_weight: float = COVERAGE_WEIGHT,
) -> ShapeFit:
    """Fit ``pdm`` to a 2-D confidence map (H, W) in [0, 1]; see the module docstring for the steps.

    ``n_rotations``, ``try_reflection``, ``w``, ``max_fixed`` (foreground points kept), ``cpd_iterations``
    and ``cpd_tolerance`` (|dQ|, loose: ASM refines) control the CPD initialisation. If the fit from the
    most likely CPD optimum has fewer than ``verify_support`` of its points on the foreground, the other
    refined CPD optima are tried too and the fit with the most support is kept. ``init``: skip CPD and
    start from this model->image ``Similarity`` (a mirror selects the reflected PDM) or from an (N, 2) px
    start shape. ``search_px`` is the widest normal search (also used to re-find lost points and the ends
    of the ridge); ``regularization`` adds ``sum b_i^2 / lambda_i`` (in units of one fully confident
    point) to keep unsupported parts plausible while searching and comparing fits; ``final_regularization``
    replaces it in the kept fit's refinement (step 5; None = no refinement). Returns ``ShapeFit``;
    ``detected`` is False (with ``reason``) when there are too few foreground pixels or the mean contour
    confidence is below ``min_quality``. ``polish_px``: finally move the points onto the confidence ridge
    within this many px (``polish_points``; 0 = keep the PDM instance, which ``ShapeFit.model_points`` always
    holds). Second opinions (module docstring), only when the fit's mean confidence over its points inside the
    map is below ``second_opinion_below``: ``shape_cpd`` (``shape_cpd_iterations`` EM steps from the CPD optimum) and,
    with ``head_circle`` ((cx, cy, r) px, or a callable returning it or None, called only then) and
    ``head_dome`` ((first, last) model point indices of the head dome), starts anchored on the head:
    ``anchor_angles_deg`` shaft directions (model frame rotated by these degrees) x both sides, each
    screened by ``anchor_screen_iterations`` ASM iterations, the ``anchor_keep`` most confident fitted to
    the end. Upright prior, with ``shaft_axis`` (head point index, shaft-cut point indices; None = off): a fit
    whose shaft points more than ``upright_max_deg`` from image down (``shaft_angle_deg``) loses
    ``upright_weight`` when fits are compared (support of the CPD starts, mean confidence of the second
    opinions) and always asks for the second opinions; the reported quality is not changed.
    ``reflection``: None = try the PDM and its mirror (either side); False / True = only the PDM as built / only
    its mirror (``pdm.reflection_for(side)`` when the side is known), for the CPD and the head-anchored starts.
    ``coverage_weight``: weight of ``outline_coverage`` when the second opinions are compared (0 = mean confidence
    alone, as the paper's fit measure).
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
    if reflection not in (None, False, True):
        raise ValueError(f"reflection must be None, False or True, got {reflection!r}.")
    mirrors = (False, True) if reflection is None else (bool(reflection),)
    info: dict = {}
    b = np.zeros(pdm.n_modes)
    starts = []
    if init is None:
        cpd = multistart_cpd(
            pdm.mean, xy, n_rotations=n_rotations, try_reflection=try_reflection, w=w, max_fixed=max_fixed,
            max_iterations=cpd_iterations, tolerance=cpd_tolerance, seed=seed,
            reflections=mirrors if reflection is not None or try_reflection else (False,),
        )
        starts.append((cpd.transform, b, float(np.clip(3.0 * np.sqrt(cpd.sigma2), min_search_px, search_px))))
        for alt in cpd.info.get("alternatives", []):
            starts.append((alt["transform"], b, float(np.clip(3.0 * np.sqrt(alt["sigma2"]), min_search_px, search_px))))
        info["cpd"] = {
            "objective": cpd.objective,
            "sigma_px": float(np.sqrt(cpd.sigma2)),
            "iterations": cpd.iterations,
            "start_angle_deg": cpd.start_angle_deg,
            "reflected": cpd.transform.reflected,
            "alternatives": len(starts) - 1,
        }
    elif isinstance(init, Similarity):
        starts.append((init, b, search_px))
    else:
        start = as_points(init, "init shape")
        if start.shape[0] != pdm.n_points:
            raise ValueError(f"The init shape has {start.shape[0]} points but the PDM has {pdm.n_points}.")
        sp = pdm.fit_shape(start, clip=clip)
        starts.append((sp.transform, sp.b, search_px))
    opts = dict(
        wide_px=search_px, min_search_px=min_search_px, shrink=shrink, step_px=step_px,
        max_iterations=max_iterations, tol_px=tol_px,
        clip=clip, min_point_confidence=min_point_confidence, regularization=regularization,
        end_search=end_search, rescue=rescue,
    )
    upright = upright_prior(shaft_axis, upright_max_deg, upright_weight)
    best, best_score = None, -np.inf
    for k, (transform, b0, radius) in enumerate(starts):
        reflected = transform.reflected
        model = pdm.reflect() if reflected else pdm
        if reflected:
            transform = transform.compose(_MIRROR)
        points, b, transform, it, converged, stopped = _asm(conf, model, transform, b0, radius, **opts)
        support = float(np.mean(sample_bilinear(conf, points) > threshold))
        penalty = upright_penalty(points, upright)
        if best is None or support - penalty > best_score:
            best, best_score = (points, b, transform, it, converged, stopped, reflected, k, support), support - penalty
        if support >= verify_support and penalty == 0.0:
            break  # good enough: the other CPD optima are only tried when this fit looks wrong

    def refine(fit):  # step 5: the kept fit's seen parts follow the outline under the weak prior
        if final_regularization is None or fit[5]:
            return fit
        model = pdm.reflect() if fit[6] else pdm
        r = _asm(conf, model, fit[2], fit[1], min_search_px, **{**opts, "regularization": final_regularization})
        if r[5]:
            return fit
        return (r[0], r[1], r[2], fit[3] + r[3], r[4], "", fit[6], fit[7],
                float(np.mean(sample_bilinear(conf, r[0]) > threshold)))

    first_quality = -1.0 if best[5] else in_view_confidence(conf, best[0])
    doubtful = first_quality < second_opinion_below or upright_penalty(best[0], upright) > 0.0
    if doubtful and (shape_cpd and init is None or head_circle is not None):
        anchor = {"angles_deg": anchor_angles_deg, "screen_iterations": anchor_screen_iterations, "keep": anchor_keep,
                  "shape_cpd_iterations": shape_cpd_iterations, "polish_px": polish_px, "reflections": mirrors,
                  "coverage_weight": coverage_weight}
        cpd_transform = cpd.transform if shape_cpd and init is None else None
        best = _second_opinions(conf, pdm, best, subsample_points(xy, max_fixed), cpd_transform, head_circle,
                                head_dome, opts, anchor, threshold, info, upright)
        info["first_quality"] = first_quality
    best = refine(best)
    points, b, transform, it, converged, stopped, reflected, k, _ = best
    info["start_used"] = k
    if upright is not None and not stopped:
        info["shaft_angle_deg"] = shaft_angle_deg(points, upright["shaft_axis"])
    if stopped:
        return ShapeFit(detected=False, n_pixels=n_px, reflected=reflected, iterations=it, info=info,
                        reason=f"the shape fit failed: {stopped}")
    model_points = points
    if polish_px > 0:
        points = polish_points(conf, points, pdm.closed, polish_px, step_px, threshold)
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
        model_points=model_points,
    )
    if quality < min_quality:
        return ShapeFit(**{**fit.__dict__, "detected": False,
                           "reason": f"mean contour confidence {quality:.2f} below min_quality={min_quality:g}"})
    return fit
