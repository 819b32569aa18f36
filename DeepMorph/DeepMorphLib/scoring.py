"""Accuracy measures, in px of the scored image, for head circles and femur contours (real and simulated).

Points are (N, 2) float arrays of (x = u = column, y = v = row), pixel centres at integers, y down.
Real images follow the dev set's rules (``real-hip-radiographs-dev/README.md``):
- head: the paper's RMSE ``||[cx, cy, r] - [cx^, cy^, r^]||`` and the centre error; an undetected head counts
  against the detection rate and is left out of the RMSE;
- femur: every fitted contour point inside the crop with ``y <= eval_max_y`` is scored by its distance to the
  ground-truth polygon, using only the polygon's segments with both ends inside the crop and at
  ``y <= eval_max_y``; RMS per hip, mean over hips.
Simulated images: head as above; femur = RMS distance of the fitted points inside the image to the closed
ground-truth outline polygon (all of its segments). A simulated view may show both hips: ``deepmorph evaluate``
then scores a fit against the femur it found (the dataset's ``other_femurs``; ``evaluate.scorable_femurs``).
``by_part`` splits the femur error along the outline (``contour_parts``: lateral shaft and greater trochanter,
head and neck, lesser trochanter and medial shaft). Simulated images may be collimated; ``p2c_in_field`` scores
only the fitted points in the exposed field (where the image shows anything), as a supplement to ``p2c`` over
every point inside the image.
A ground-truth head counts wherever its circle overlaps the image, also when most of it lies outside the crop or
the collimated field; ``head_in_view`` measures how much of it can be seen, and ``detection_rate_in_view`` is the
detection rate over the heads at least ``HEAD_IN_VIEW_MIN`` in view (``detection_rate`` stays over all heads).
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterable, Sequence

import numpy as np


def _points(xy, name: str) -> np.ndarray:
    arr = np.asarray(xy, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name} must be an (N, 2) array of (x, y) px, got shape {arr.shape}.")
    return arr


def head_errors(fit, truth) -> dict:
    """Errors of a fitted circle ``fit`` = (cx, cy, r) px against ``truth`` = (cx, cy, r) px:
    ``rmse`` (paper: norm of the 3-vector difference), ``center_err`` (px), ``radius_err`` (signed, px)."""
    f = np.asarray(fit, dtype=np.float64).reshape(3)
    t = np.asarray(truth, dtype=np.float64).reshape(3)
    d = f - t
    return {"rmse": float(np.linalg.norm(d)), "center_err": float(np.hypot(d[0], d[1])), "radius_err": float(d[2])}


def segment_distances(points, starts, ends) -> np.ndarray:
    """Distance (px) of each point to the nearest of the segments ``starts[k] -> ends[k]``; (N,) float."""
    p = _points(points, "points")
    a, b = _points(starts, "segment starts"), _points(ends, "segment ends")
    if len(a) == 0:
        raise ValueError("No ground-truth segments to measure against.")
    ab = b - a  # (M, 2)
    ab2 = np.maximum((ab**2).sum(axis=1), 1e-12)
    best = np.full(len(p), np.inf)
    for chunk in range(0, len(p), 256):  # (256, M) blocks keep memory small for long outlines
        q = p[chunk:chunk + 256, None, :]
        t = np.clip(((q - a) * ab).sum(axis=2) / ab2, 0.0, 1.0)
        d = np.hypot(*np.moveaxis(q - (a + t[..., None] * ab), 2, 0))
        best[chunk:chunk + 256] = d.min(axis=1)
    return best


def polygon_segments(polygon, closed: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of a polyline's segments; a closed polygon also gets last -> first."""
    poly = _points(polygon, "polygon")
    if closed and len(poly) > 2 and not np.array_equal(poly[0], poly[-1]):
        poly = np.vstack([poly, poly[:1]])
    return poly[:-1], poly[1:]


def inside_crop(xy, width: int, height: int) -> np.ndarray:
    """bool (N,): points within the crop's pixel area, -0.5 <= x <= width - 0.5 (same for y)."""
    p = _points(xy, "points")
    return (p[:, 0] >= -0.5) & (p[:, 0] <= width - 0.5) & (p[:, 1] >= -0.5) & (p[:, 1] <= height - 0.5)


def femur_distances_real(points, outline, eval_max_y: float, width: int, height: int) -> np.ndarray | None:
    """(N,) px: each fitted contour point's distance to a real-image outline under the dev-set rules (module
    docstring), NaN for the points those rules leave out. None when no outline segment is left to score against."""
    starts, ends = polygon_segments(outline, closed=True)
    keep = inside_crop(starts, width, height) & inside_crop(ends, width, height)
    keep &= (starts[:, 1] <= eval_max_y) & (ends[:, 1] <= eval_max_y)
    pts = _points(points, "points")
    scored = inside_crop(pts, width, height) & (pts[:, 1] <= eval_max_y)
    if not keep.any():
        return None
    dist = np.full(len(pts), np.nan)
    if scored.any():
        dist[scored] = segment_distances(pts[scored], starts[keep], ends[keep])
    return dist


def femur_distances_sim(points, contour, width: int | None = None, height: int | None = None) -> np.ndarray:
    """(N,) px: each fitted point's distance to the closed simulated outline ``contour``; with an image size, NaN
    for the points outside the image."""
    pts = _points(points, "points")
    dist = np.full(len(pts), np.nan)
    scored = np.ones(len(pts), bool) if width is None or height is None else inside_crop(pts, width, height)
    if scored.any():
        dist[scored] = segment_distances(pts[scored], *polygon_segments(contour, closed=True))
    return dist


def rms(distances) -> float | None:
    """Root mean square of the finite ``distances`` (px); None when there are none."""
    d = np.asarray(distances, dtype=np.float64)
    d = d[np.isfinite(d)]
    return float(np.sqrt(np.mean(d**2))) if d.size else None


def femur_p2c_real(points, outline, eval_max_y: float, width: int, height: int) -> float | None:
    """Point-to-curve RMS (px) of fitted contour ``points`` against a real-image outline, dev-set rules
    (module docstring). None when no fitted point or no outline segment is left to score."""
    dist = femur_distances_real(points, outline, eval_max_y, width, height)
    return None if dist is None else rms(dist)


def femur_p2c_sim(points, contour, width: int | None = None, height: int | None = None) -> float | None:
    """Point-to-curve RMS (px) of fitted ``points`` to the closed simulated outline ``contour``; with an image
    size, points outside the image are left out. None when no point is left."""
    return rms(femur_distances_sim(points, contour, width, height))


CONTOUR_PARTS = ("lateral", "head_neck", "medial")  # of the open PDM outline, lateral shaft -> head -> medial shaft


def contour_parts(n_points: int, landmark_indices: dict) -> dict | None:
    """{part: point indices} of an open femur contour of ``n_points`` points, split at its neck landmarks
    (``neck_superior`` / ``neck_inferior``, or the ``anchor_`` names of the shipped PDM): "lateral" = lateral shaft
    and greater trochanter (before the superior neck point), "head_neck" = superior to inferior neck point through
    the head, "medial" = lesser trochanter and medial shaft (after the inferior neck point). None without those
    landmarks."""
    def index(name):
        for key in (name, f"anchor_{name}"):
            if key in landmark_indices:
                return int(landmark_indices[key])
        return None

    sup, inf = index("neck_superior"), index("neck_inferior")
    if sup is None or inf is None or not 0 < sup < inf < n_points - 1:
        return None
    idx = np.arange(n_points)
    return {"lateral": idx[:sup], "head_neck": idx[sup:inf + 1], "medial": idx[inf + 1:]}


def rms_by_part(distances, parts: dict) -> dict:
    """{part: RMS of the finite distances of its points (px) or None} for ``contour_parts``' parts."""
    d = np.asarray(distances, dtype=np.float64)
    return {name: rms(d[idx]) for name, idx in parts.items()}


def points_in_field(points, field=None) -> np.ndarray:
    """The ``points`` (N, 2) px that lie in the exposed field: ``field`` (H, W) weight > 0.5 at the nearest pixel
    (e.g. ``detector.field_mask``); points outside the image and outside the field are dropped; all points when
    ``field`` is None (no collimation)."""
    pts = _points(points, "points")
    return pts if field is None else pts[_exposed(pts, field)]


def _exposed(pts: np.ndarray, field) -> np.ndarray:
    """bool (N,): points (N, 2) px whose nearest pixel lies in ``field`` (H, W) with weight > 0.5."""
    f = np.asarray(field)
    ij = np.rint(pts).astype(int)
    inside = (ij[:, 0] >= 0) & (ij[:, 0] < f.shape[1]) & (ij[:, 1] >= 0) & (ij[:, 1] < f.shape[0])
    keep = np.zeros(len(pts), bool)
    keep[inside] = f[ij[inside, 1], ij[inside, 0]] > 0.5
    return keep


HEAD_IN_VIEW_MIN = 0.5  # fraction of the head disk in the crop and field for ``detection_rate_in_view``


def _disk_samples(cx: float, cy: float, r: float, n: int = 2000) -> np.ndarray:
    """``n`` points (x, y) px spread evenly over the disk (Vogel's sunflower spiral), deterministic."""
    k = np.arange(n) + 0.5
    rho = r * np.sqrt(k / n)
    phi = k * math.pi * (3.0 - math.sqrt(5.0))
    return np.column_stack([cx + rho * np.cos(phi), cy + rho * np.sin(phi)])


def head_in_view(circle, width: int, height: int, field=None) -> float:
    """Fraction (0-1) of the head disk ``circle`` = (cx, cy, r) px inside the crop (``inside_crop``) and, with
    ``field`` ((H, W) weight of the exposed area, e.g. ``detector.field_mask``), inside the collimated field
    (weight > 0.5 at the nearest pixel)."""
    pts = _disk_samples(*(float(v) for v in np.asarray(circle, dtype=np.float64).reshape(3)))
    seen = inside_crop(pts, width, height)
    if field is not None:
        seen &= _exposed(pts, field)
    return float(seen.mean())


def _stats(values: Sequence[float], prefix: str, p95: bool) -> dict:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    out = {f"{prefix}_mean": float(v.mean()) if v.size else None,
           f"{prefix}_median": float(np.median(v)) if v.size else None}
    if p95:
        out[f"{prefix}_p95"] = float(np.percentile(v, 95)) if v.size else None
    return out


def summarize_head(records: Iterable[dict], p95: bool = False) -> dict:
    """Head figures over per-image records holding ``detected`` (bool) and, when detected, ``rmse`` and
    ``center_err``: rmse_mean, rmse_median[, rmse_p95], center_err_mean, detection_rate, n (images scored); with
    ``head_in_view`` in the records also detection_rate_in_view and n_in_view (heads >= ``HEAD_IN_VIEW_MIN`` in
    view)."""
    recs = list(records)
    hits = [r for r in recs if r.get("detected")]
    out = _stats([r["rmse"] for r in hits], "rmse", p95)
    ce = [r["center_err"] for r in hits]
    out["center_err_mean"] = float(np.mean(ce)) if ce else None
    out["detection_rate"] = len(hits) / len(recs) if recs else None
    out["n"] = len(recs)
    if recs and all(r.get("head_in_view") is not None for r in recs):
        seen = [r for r in recs if r["head_in_view"] >= HEAD_IN_VIEW_MIN]
        out["detection_rate_in_view"] = sum(bool(r.get("detected")) for r in seen) / len(seen) if seen else None
        out["n_in_view"] = len(seen)
    return out


def summarize_femur(records: Iterable[dict], p95: bool = False) -> dict:
    """Femur figures over per-image records holding ``detected`` and ``p2c`` (px or None): p2c_mean,
    p2c_median[, p2c_p95] over the scored hips, detection_rate, n (images), n_scored (hips with a p2c)."""
    recs = list(records)
    vals = [r.get("p2c") for r in recs if r.get("detected") and r.get("p2c") is not None]
    out = _stats(vals, "p2c", p95)
    out["detection_rate"] = sum(bool(r.get("detected")) for r in recs) / len(recs) if recs else None
    out["n"] = len(recs)
    out["n_scored"] = len(vals)
    return out


def summarize_parts(records: Iterable[dict]) -> dict | None:
    """{part: {p2c_mean, p2c_median, n}} over the detected fits' ``p2c_parts`` (``rms_by_part``); None when no
    record has them. Says where along the outline the error lies (``contour_parts``)."""
    recs = [r for r in records if r.get("detected") and r.get("p2c_parts")]
    if not recs:
        return None
    out = {}
    for part in CONTOUR_PARTS:
        vals = [r["p2c_parts"].get(part) for r in recs if r["p2c_parts"].get(part) is not None]
        out[part] = {**_stats(vals, "p2c", False), "n": len(vals)}
    return out


def summarize_by(records: Iterable[dict], key: str, summarize) -> dict:
    """``{group value: summarize(records of that group)}`` for the record field ``key`` (sorted groups)."""
    groups: dict[str, list] = defaultdict(list)
    for r in records:
        groups[str(r.get(key))].append(r)
    return {name: summarize(groups[name]) for name in sorted(groups)}
