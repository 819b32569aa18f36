"""Edge snapping: move a head circle estimate onto the femoral head's own edge in the image, when it is clear.

The projected femoral head is a sphere's shadow: its attenuation rises steeply just inside the rim, so on a
bone-dark image (high attenuation = low value) the intensity rises outward across the whole visible rim.
Around a circle estimate (cx, cy, r) px (x = column, y = row, pixel centres at integers) every candidate
circle with its centre within ``span`` radii and its radius within ``radius_range`` of r is scored by

  edge(c)  = mean of the strongest (1 - ``trim``) of the outward radial derivatives at ``n_angles`` points
             of the circle (Gaussian derivative, ``sigma`` px; scaled by the image's 99th percentile gradient
             magnitude, then e -> e / (``edge_cap`` + e) for e > 0, 0 otherwise: inward edges count as none and
             very strong (metal) edges at most as one point each);
  score(c) = edge(c) + ``conf_weight`` * (mean confidence at 0.7 rho - mean confidence at 1.3 rho; a third
             of the angles, the map is smooth),

with a coarse grid search and then a fine one (0.5 px centres, 0.25 px radii) around the best (a third, finer
level was tried and was no better on the tuning images; refining several coarse maxima and taking the best score
found wrong circles elsewhere). The femoral head lies inside the acetabulum's ring, which often has an outward edge
of its own a few px outside the head's: with ``nested``, when a nested, nearly concentric ring (``NESTED_*``)
inside a clear best circle scores as well and has an edge at least as clear, it is taken instead. The strongest
derivative of a *homogeneous* sphere's edge blurred by the ``sigma`` px Gaussian lies 0.75 ``sigma`` inside the
rim (numerically, for the 2 sqrt(R^2 - rho^2) profile: ``HOMOGENEOUS_RIM_OFFSET_SIGMAS``); a femoral head has a denser
cortical shell, whose steep shadow just inside the rim pulls that maximum outward (0.3-1 px less inside for shells
of 1.5-4 px at 2-5x the interior's attenuation), so ``rim_offset_sigmas`` (default ``RIM_OFFSET_SIGMAS``) x ``sigma``
is added to the radius found, calibrated on the tuning images. The best circle is
used only when the evidence is clear: at least ``min_support`` of its points have a scaled outward
derivative above ``edge_level`` (otherwise ``applied`` is False and the estimate stays). The parameters were
chosen on simulated images from training seeds (never on evaluation images).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi


HOMOGENEOUS_RIM_OFFSET_SIGMAS = 0.75  # strongest derivative of a blurred homogeneous sphere: this far inside the rim
RIM_OFFSET_SIGMAS = 0.25  # what is added to the radius found (sigmas). Calibrated on simulated tuning images (training
#   seeds; tune3-448 / tune2-448): snapped circles with 0.75 were 1.17 / 0.99 px too large on average (median 0.76 /
#   0.77) and their RMSE was lowest after removing 0.75 px (tune3 mean 1.57 -> 1.27 px, tune2 1.43 -> 1.13 px)
NESTED_RADIUS_RANGE = (0.72, 0.94)  # radii of the nested rings tried inside the best circle (fractions of its radius)
NESTED_CENTRE_REACH = 0.15  # ... with centres this far from its centre (fraction of its radius), 1 px steps
NESTED_MAX_RADIUS = 0.96  # ... and, refined, below this fraction of its radius
NESTED_SCORE_RATIO = 0.99  # a nested ring inside a clear best circle replaces it when its edge is at least as clear
#   (support) and it scores at least this fraction of the best score. Simulated tuning images (training seeds;
#   tune3-448, tune2-448): the snaps onto the acetabular ring around the head (8-14 px off, radius 5-13 px too large;
#   6 images) had a nested ring, the head (0.5-1.4 px off), scoring 0.996-1.12 of theirs with a clearer edge; of the
#   snaps on the head the highest nested ratio was 0.99 (with a less clear edge), the next 0.976 (1.0 -> 2.8 px).
#   Every change there was a snap of the head network's own circle, so the head task uses it there only (on the
#   real dev radiographs it changes no result, applied there only or to every snap)


@dataclass(frozen=True)
class EdgeSnap:
    """Outcome of ``snap_circle``: the best edge circle (cx, cy, r) px and whether it replaces the estimate."""

    applied: bool
    cx: float
    cy: float
    r: float
    support: float  # fraction of the circle's points with a clear outward edge
    reason: str = ""


def _scaled_gradients(image: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    gx = ndi.gaussian_filter(image, sigma, order=(0, 1))
    gy = ndi.gaussian_filter(image, sigma, order=(1, 0))
    scale = float(np.percentile(np.hypot(gx, gy), 99.0))
    if not np.isfinite(scale) or scale <= 0:
        scale = 1.0
    return gx / scale, gy / scale


def _bilinear(arrays, y: np.ndarray, x: np.ndarray) -> list:
    """Bilinear samples of each (H, W) array in ``arrays`` at (y, x) px (coordinates clamped to the array, edge
    values continue); the corner indices and weights are computed once for all arrays."""
    h, w = arrays[0].shape
    y = np.clip(y, 0.0, h - 1.0).astype(np.float32)
    x = np.clip(x, 0.0, w - 1.0).astype(np.float32)
    y0 = np.minimum(y.astype(np.intp), h - 2)
    x0 = np.minimum(x.astype(np.intp), w - 2)
    fy, fx = y - y0, x - x0
    i00 = y0 * w + x0
    w00, w01, w10, w11 = (1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx
    out = []
    for a in arrays:
        flat = a.ravel()
        out.append(flat[i00] * w00 + flat[i00 + 1] * w01 + flat[i00 + w] * w10 + flat[i00 + w + 1] * w11)
    return out


def _radial(grad, cx, cy, rad, cos, sin) -> np.ndarray:
    """Outward radial derivative (N centres, A angles) on circles of radius ``rad`` around (cx, cy) (N,);
    ``grad`` = (d/dx, d/dy) arrays (H, W). Compiled with numba when available (the snap's hot loop)."""
    if _HAVE_NUMBA:
        out = np.empty((len(cx), len(cos)), np.float32)
        _radial_numba(grad[0], grad[1], np.ascontiguousarray(cx, np.float32), np.ascontiguousarray(cy, np.float32),
                      np.float32(rad), cos, sin, out)
        return out
    vx, vy = _bilinear(grad, cy[:, None] + rad * sin[None], cx[:, None] + rad * cos[None])
    return vx * cos[None] + vy * sin[None]


try:
    import numba

    _HAVE_NUMBA = True

    @numba.njit(cache=True, inline="always")
    def _sample(a, y, x):  # pragma: no cover - compiled; bilinear as ``_bilinear`` (clamped to the array)
        h, w = a.shape
        y = min(max(y, 0.0), h - 1.0)
        x = min(max(x, 0.0), w - 1.0)
        y0 = min(int(y), h - 2)
        x0 = min(int(x), w - 2)
        fy = y - y0
        fx = x - x0
        return ((1 - fy) * ((1 - fx) * a[y0, x0] + fx * a[y0, x0 + 1])
                + fy * ((1 - fx) * a[y0 + 1, x0] + fx * a[y0 + 1, x0 + 1]))

    @numba.njit(cache=True)
    def _radial_numba(gx, gy, cx, cy, rad, cos, sin, out, plain=0.0):  # pragma: no cover - compiled
        """Bilinear samples (as ``_bilinear``) on circles: outward derivative vx cos + vy sin, or with
        ``plain`` = 1 the value of ``gx`` itself."""
        for i in range(cx.shape[0]):
            for k in range(cos.shape[0]):
                y = cy[i] + rad * sin[k]
                x = cx[i] + rad * cos[k]
                vx = _sample(gx, y, x)
                out[i, k] = vx if plain > 0 else vx * cos[k] + _sample(gy, y, x) * sin[k]
except ImportError:  # pragma: no cover
    _HAVE_NUMBA = False


def _circle_scores(grad, conf_padded, cxs, cys, radii, cos, sin, keep: int, edge_cap: float,
                   conf_weight: float) -> np.ndarray:
    """Score (radii, centres) of every candidate circle (``snap_circle``'s ``score(c)``): trimmed mean of the
    capped outward derivatives (the ``keep`` strongest of the angles) plus ``conf_weight`` x (ring mean of
    ``conf_padded`` at 0.7 rad - at 1.3 rad, every third angle; ``conf_padded`` None = no confidence term).
    One compiled, parallel pass over the centres with numba; numpy otherwise (same numbers to float32 rounding)."""
    cxs = np.ascontiguousarray(cxs, np.float32)
    cys = np.ascontiguousarray(cys, np.float32)
    if _HAVE_NUMBA:  # compiled sampling in parallel over the centres, numpy's (vectorised) sort
        edges = np.empty((len(radii), len(cxs), len(cos)), np.float32)
        rings = np.zeros((len(radii), len(cxs)), np.float64)
        empty = np.zeros((2, 2), np.float32)
        _capped_edges_numba(grad[0], grad[1], empty if conf_padded is None else conf_padded, cxs, cys,
                            np.ascontiguousarray(radii, np.float32), cos, sin, np.float32(edge_cap),
                            conf_padded is not None and bool(conf_weight), edges, rings)
        return np.sort(edges, axis=2)[:, :, -keep:].mean(axis=2) + conf_weight * rings
    scores = np.empty((len(radii), len(cxs)))
    for k, rad in enumerate(radii):
        edge = np.clip(_radial(grad, cxs, cys, rad, cos, sin), 0.0, None)
        edge = edge / (edge_cap + edge)
        scores[k] = np.sort(edge, axis=1)[:, -keep:].mean(axis=1)
        if conf_padded is not None and conf_weight:
            scores[k] += conf_weight * (_ring_mean(conf_padded, cxs, cys, 0.7 * rad, cos[::3], sin[::3])
                                        - _ring_mean(conf_padded, cxs, cys, 1.3 * rad, cos[::3], sin[::3]))
    return scores


if _HAVE_NUMBA:
    @numba.njit(cache=True, parallel=True)
    def _capped_edges_numba(gx, gy, conf, cx, cy, radii, cos, sin, edge_cap, with_conf, edges,
                            rings):  # pragma: no cover - compiled
        """edges[k, j, a]: capped outward derivative on circle (cx[j], cy[j], radii[k]) at angle a;
        rings[k, j]: ring mean of the padded ``conf`` at 0.7 - at 1.3 radii[k] (every third angle)."""
        n_ang = cos.shape[0]
        for j in numba.prange(cx.shape[0]):
            for k in range(radii.shape[0]):
                rad = radii[k]
                for a in range(n_ang):
                    y = cy[j] + rad * sin[a]
                    x = cx[j] + rad * cos[a]
                    e = max(_sample(gx, y, x) * cos[a] + _sample(gy, y, x) * sin[a], np.float32(0.0))
                    edges[k, j, a] = e / (edge_cap + e)
                if with_conf:
                    inner = np.float32(0.0)
                    outer = np.float32(0.0)
                    n_ring = 0
                    for a in range(0, n_ang, 3):  # +1 px: the map's zero border (outside counts as 0)
                        inner += _sample(conf, cy[j] + 0.7 * rad * sin[a] + 1, cx[j] + 0.7 * rad * cos[a] + 1)
                        outer += _sample(conf, cy[j] + 1.3 * rad * sin[a] + 1, cx[j] + 1.3 * rad * cos[a] + 1)
                        n_ring += 1
                    rings[k, j] = inner / n_ring - outer / n_ring


def _ring_mean(conf_padded, cx, cy, rad, cos, sin) -> np.ndarray:
    """Mean confidence on circles; ``conf_padded`` has a 1 px zero border (outside the image counts as 0)."""
    if _HAVE_NUMBA:
        out = np.empty((len(cx), len(cos)), np.float32)
        _radial_numba(conf_padded, conf_padded, np.ascontiguousarray(cx + 1, np.float32),
                      np.ascontiguousarray(cy + 1, np.float32), np.float32(rad), np.ascontiguousarray(cos),
                      np.ascontiguousarray(sin), out, np.float32(1.0))
        return out.mean(axis=1)
    ring = _bilinear([conf_padded], cy[:, None] + rad * sin[None] + 1, cx[:, None] + rad * cos[None] + 1)[0]
    return ring.mean(axis=1)


def ring_means(confidence, circle, radius_factors=(0.7, 1.3), n_angles: int = 24) -> list:
    """Mean of ``confidence`` (H, W) on circles around ``circle`` (cx, cy, r) px of radius f r for each f in
    ``radius_factors`` (bilinear; outside the map counts as 0)."""
    conf = np.pad(np.asarray(confidence, dtype=np.float32), 1)
    cx, cy, r = (float(v) for v in circle)
    ang = np.linspace(0.0, 2 * np.pi, n_angles, endpoint=False)
    cos, sin = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
    return [float(_ring_mean(conf, np.array([cx]), np.array([cy]), f * r, cos, sin)[0]) for f in radius_factors]


def snap_circle(image, circle, confidence=None, *, sigma: float = 1.5, n_angles: int = 72, span: float = 0.8,
                radius_range: tuple = (0.75, 1.3), trim: float = 0.25, conf_weight: float = 0.3,
                edge_level: float = 0.1, min_support: float = 0.65, edge_cap: float = 0.1,
                rim_offset_sigmas: float = RIM_OFFSET_SIGMAS, nested: bool = False) -> EdgeSnap:
    """Best edge circle near ``circle`` (cx, cy, r) px on the bone-dark ``image`` (H, W); ``confidence`` (H, W)
    in [0, 1] (the head network's map, optional) favours circles around its confident region. ``nested``: prefer
    a ring nested inside a clear best circle (``NESTED_SCORE_RATIO``); the head task uses it for the head network's
    own circle, whose blob may cover the acetabulum, not for circles predicted from a femur fit's head dome."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"snap_circle expects a 2-D image (H, W), got shape {img.shape}.")
    if not np.all(np.isfinite(img)):
        raise ValueError("The image contains NaN/infinite pixels.")
    cx0, cy0, r0 = (float(v) for v in circle)
    if not (np.isfinite([cx0, cy0, r0]).all() and r0 > 0):
        raise ValueError(f"snap_circle needs a finite centre and a positive radius, got {circle}.")
    if r0 > max(img.shape):  # a degenerate circle fit: no edge to look for (and the search grid would not fit memory)
        return EdgeSnap(False, cx0, cy0, r0, 0.0, f"radius {r0:.0f} px is larger than the image {img.shape}: not searched")
    conf = None if confidence is None else np.asarray(confidence, dtype=np.float32)
    if conf is not None and conf.shape != img.shape:
        raise ValueError(f"confidence map {conf.shape} and image {img.shape} differ in shape.")
    grad = [g.astype(np.float32) for g in _scaled_gradients(img, sigma)]
    if conf is not None:
        conf = np.pad(conf, 1)
    ang = np.linspace(0.0, 2 * np.pi, n_angles, endpoint=False)
    cos, sin = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
    keep = n_angles - int(n_angles * trim)

    def search(centre, reach, step, radii):  # best (cx, cy, r) px on a centre grid x radii, and its score
        offsets = np.arange(-reach, reach + 1e-9, step)
        gxs, gys = np.meshgrid(centre[0] + offsets, centre[1] + offsets)
        cxs, cys = gxs.ravel(), gys.ravel()
        scores = _circle_scores(grad, conf if conf_weight else None, cxs, cys, radii, cos, sin, keep, edge_cap,
                                conf_weight)
        k, j = np.unravel_index(int(np.argmax(scores)), scores.shape)
        return (float(cxs[j]), float(cys[j]), float(radii[k])), float(scores[k, j])

    def fine(circle, below=np.inf):  # centres within r0 / 10, radii +-5 % (< ``below``): 1 px centres and 0.5 px
        # radii first, then 0.5 px centres and 0.25 px radii within 1 px / 0.5 px of the best (~7x fewer circles
        # than the 0.5 px / 0.25 px grid over the whole reach)
        radii = circle[2] + np.arange(-0.05 * circle[2], 0.05 * circle[2] + 1e-9, 0.5)
        best, _ = search(circle, r0 / 10.0, 1.0, radii[radii < below])
        radii = best[2] + np.arange(-0.5, 0.5 + 1e-9, 0.25)
        return search(best, 1.0, 0.5, radii[radii < below])

    def support_of(circle):
        edge = _radial(grad, np.array([circle[0]]), np.array([circle[1]]), circle[2], cos, sin)[0]
        return float(np.mean(edge > edge_level))

    coarse, _ = search((cx0, cy0), span * r0, max(1.0, r0 / 15.0), r0 * np.linspace(*radius_range, 16))
    best, score = fine(coarse)
    support = support_of(best)
    if nested and support >= min_support:  # a clear ring: is the head a ring nested inside it (the acetabulum's)?
        lo, hi = NESTED_RADIUS_RANGE
        inner, _ = search(best, NESTED_CENTRE_REACH * best[2], 1.0, best[2] * np.linspace(lo, hi, 12))
        inner, inner_score = fine(inner, below=NESTED_MAX_RADIUS * best[2])
        inner_support = support_of(inner)
        if inner_score >= NESTED_SCORE_RATIO * score and inner_support >= support:
            best, support = inner, inner_support
    best = (best[0], best[1], best[2] + rim_offset_sigmas * sigma)
    if support < min_support:
        return EdgeSnap(False, *best, support=support,
                        reason=f"edge too weak: {support:.0%} of the circle has a clear edge (< {min_support:.0%})")
    return EdgeSnap(True, *best, support=support)
