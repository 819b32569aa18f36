"""Synthetic proximal-femur outlines and confidence maps for tests, benchmarks and demos.

``femur_outline(params)`` draws an open 2-D outline of a right proximal femur as seen at rest (PA beam,
patient's right on the image's left, head up): lateral shaft (bottom to top) -> greater trochanter ->
superior neck -> femoral head (circle arc) -> inferior neck -> lesser trochanter -> medial shaft (top to
bottom). Each part gets a fixed number of points spaced evenly by arc length, so point ``i`` means the same
place on every generated femur (corresponding points for a PDM). Units are px, image frame (x right, y down).

``render_confidence(points, shape)`` draws a network-like confidence map: ``exp(-d^2 / (2 sigma^2))`` of the
distance ``d`` (px) to the polyline through the points.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

# points per part, in outline order (total 200)
PART_POINTS = {
    "lateral_shaft": 20,
    "greater_trochanter": 32,
    "superior_neck": 14,
    "head": 70,
    "inferior_neck": 14,
    "lesser_trochanter": 30,
    "medial_shaft": 20,
}


def landmark_indices(part_points: dict[str, int] | None = None) -> dict[str, int]:
    """Names -> point indices of the outline (start of each part, head tip, trochanter tips)."""
    part_points = part_points or PART_POINTS
    idx, start = {}, 0
    for name, n in part_points.items():
        idx[f"{name}_start"] = start
        start += n
    idx["shaft_lateral_distal"] = 0
    idx["greater_trochanter_tip"] = idx["greater_trochanter_start"] + part_points["greater_trochanter"] // 2
    idx["head_tip"] = idx["head_start"] + part_points["head"] // 2
    idx["lesser_trochanter_tip"] = idx["lesser_trochanter_start"] + part_points["lesser_trochanter"] // 2
    idx["shaft_medial_distal"] = start - 1
    return idx


@dataclass(frozen=True)
class FemurParams:
    """Shape and pose of a synthetic right proximal femur (lengths in units of the head radius)."""

    head_radius_px: float = 36.0
    neck_shaft_deg: float = 128.0  # angle between distal shaft axis and neck axis
    neck_length: float = 2.0  # shaft axis -> head centre, along the neck
    neck_half_width: float = 0.72
    neck_height: float = 0.9  # neck axis meets the shaft axis this far above the origin
    shaft_half_width: float = 0.78
    shaft_length: float = 3.6
    trochanter_height: float = 0.35  # greater trochanter tip above the head centre
    trochanter_bulge: float = 0.25
    lesser_trochanter: float = 0.35
    # pose in the image: rotation (deg, counter-clockwise on screen), centre of the head (px), mirror
    angle_deg: float = 0.0
    centre_px: tuple[float, float] = (250.0, 140.0)
    mirror: bool = False  # True gives a left femur (mirrored in x)


def random_params(rng: np.random.Generator, pose: bool = False, **fixed) -> FemurParams:
    """Random plausible femur shape (and, with ``pose``, random in-plane pose); ``fixed`` overrides."""
    p = dict(
        head_radius_px=rng.uniform(31, 41),
        neck_shaft_deg=rng.uniform(120, 138),
        neck_length=rng.uniform(1.8, 2.2),
        neck_half_width=rng.uniform(0.62, 0.8),
        neck_height=rng.uniform(0.75, 1.05),
        shaft_half_width=rng.uniform(0.7, 0.88),
        shaft_length=rng.uniform(3.3, 3.9),
        trochanter_height=rng.uniform(0.15, 0.55),
        trochanter_bulge=rng.uniform(0.15, 0.35),
        lesser_trochanter=rng.uniform(0.25, 0.45),
    )
    if pose:
        p.update(angle_deg=rng.uniform(-30, 30), centre_px=(rng.uniform(220, 280), rng.uniform(120, 170)))
    p.update(fixed)
    return FemurParams(**p)


def _resample(poly: np.ndarray, n: int, include_end: bool = False) -> np.ndarray:
    seg = np.hypot(*np.diff(poly, axis=0).T)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    t = np.linspace(0.0, s[-1], n + (0 if include_end else 1))[: n]
    return np.column_stack([np.interp(t, s, poly[:, 0]), np.interp(t, s, poly[:, 1])])


def _catmull_rom(ctrl: np.ndarray, per_seg: int = 40) -> np.ndarray:
    ctrl = np.asarray(ctrl, float)
    p = np.vstack([2 * ctrl[0] - ctrl[1], ctrl, 2 * ctrl[-1] - ctrl[-2]])
    t = np.linspace(0, 1, per_seg, endpoint=False)[:, None]
    out = []
    for i in range(1, len(p) - 2):
        p0, p1, p2, p3 = p[i - 1], p[i], p[i + 1], p[i + 2]
        a2, a3 = 2 * p0 - 5 * p1 + 4 * p2 - p3, -p0 + 3 * p1 - 3 * p2 + p3
        out.append(0.5 * ((2 * p1) + (-p0 + p2) * t + a2 * t**2 + a3 * t**3))
    out.append(ctrl[-1:])
    return np.vstack(out)


def femur_outline(params: FemurParams | None = None, part_points: dict[str, int] | None = None) -> np.ndarray:
    """``(N, 2)`` outline points (px, image frame) of a proximal femur; N = sum of ``part_points``."""
    p = params or FemurParams()
    pp = part_points or PART_POINTS
    # anatomical frame in head radii: x medial (+), y superior (+); shaft axis along y, origin at the
    # level of the lesser trochanter
    hw, nw = p.shaft_half_width, p.neck_half_width
    a = np.deg2rad(p.neck_shaft_deg)
    d = np.array([np.sin(a), -np.cos(a)])  # neck direction (up and medial)
    s = np.array([-d[1], d[0]])  # superior normal of the neck
    n0 = np.array([0.0, p.neck_height])
    c = n0 + p.neck_length * d  # head centre
    k = np.sqrt(max(1.0 - nw**2, 1e-6))
    p_sup = c - k * d + nw * s  # superior neck meets the head
    p_inf = c - k * d - nw * s
    q_sup = n0 + 0.45 * p.neck_length * d + nw * s
    q_inf = n0 + 0.45 * p.neck_length * d - nw * s
    y_bottom = -p.shaft_length
    y_gt = c[1] + p.trochanter_height
    gt_x = -hw - p.trochanter_bulge
    parts = {}
    parts["lateral_shaft"] = np.array([[-hw, y_bottom], [-hw, -0.2]])
    gt_ctrl = [
        [-hw, -0.2],
        [gt_x, 0.3 * y_gt],
        [gt_x + 0.08, 0.8 * y_gt],
        [-hw + 0.05, y_gt - 0.04],
        [-hw + 0.3, y_gt],
        [-hw + 0.6, y_gt - 0.3],
        q_sup - 0.3 * d,
        q_sup,
    ]
    parts["greater_trochanter"] = _catmull_rom(np.array(gt_ctrl))
    parts["superior_neck"] = np.array([q_sup, p_sup])
    phi_s = np.arctan2(*(p_sup - c)[::-1])
    phi_i = np.arctan2(*(p_inf - c)[::-1])
    if phi_i > phi_s:
        phi_i -= 2 * np.pi
    phi = np.linspace(phi_s, phi_i, 400)
    parts["head"] = c + np.column_stack([np.cos(phi), np.sin(phi)])
    parts["inferior_neck"] = np.array([p_inf, q_inf])
    lt = p.lesser_trochanter
    lt_ctrl = [q_inf, q_inf - 0.25 * d, [hw + 0.15, 0.15], [hw + lt, -0.25], [hw + 0.1, -0.6], [hw, -0.85], [hw, -1.0]]
    parts["lesser_trochanter"] = _catmull_rom(np.array(lt_ctrl))
    parts["medial_shaft"] = np.array([[hw, -1.0], [hw, y_bottom]])
    names = list(pp)
    pts = []
    for i, name in enumerate(names):
        last = i == len(names) - 1
        pts.append(_resample(parts[name], pp[name], include_end=last))
    xy = np.vstack(pts) - c  # head centre at the origin
    xy = xy * p.head_radius_px * np.array([1.0, -1.0])  # y down
    if p.mirror:
        xy[:, 0] *= -1.0
    ang = np.deg2rad(p.angle_deg)
    rot = np.array([[np.cos(ang), np.sin(ang)], [-np.sin(ang), np.cos(ang)]])  # counter-clockwise on screen
    return xy @ rot.T + np.asarray(p.centre_px, float)


def femur_training_set(n_shapes: int = 60, seed: int = 0, pose: bool = True) -> np.ndarray:
    """``(K, N, 2)`` random femur outlines (corresponding points) for building a test PDM."""
    rng = np.random.default_rng(seed)
    return np.stack([femur_outline(random_params(rng, pose=pose)) for _ in range(n_shapes)])


def render_confidence(
    points,
    shape: tuple[int, int] = (448, 448),
    sigma_px: float = 1.5,
    closed: bool = False,
    peak: float = 1.0,
) -> np.ndarray:
    """float32 ``(H, W)`` map ``peak * exp(-d^2 / (2 sigma_px^2))``, d = distance (px) to the polyline."""
    from scipy.spatial import cKDTree

    pts = np.asarray(points, float)
    if closed:
        pts = np.vstack([pts, pts[:1]])
    dense = _resample(pts, max(10, int(np.hypot(*np.diff(pts, axis=0).T).sum() / 0.05)), include_end=True)
    h, w = shape
    reach = 5.0 * sigma_px
    lo = np.floor(dense.min(axis=0) - reach).astype(int).clip(0, [w - 1, h - 1])
    hi = np.ceil(dense.max(axis=0) + reach).astype(int).clip(0, [w - 1, h - 1])
    out = np.zeros((h, w), np.float32)
    if np.any(hi < lo):
        return out
    yy, xx = np.mgrid[lo[1] : hi[1] + 1, lo[0] : hi[0] + 1]
    dist, _ = cKDTree(dense).query(np.column_stack([xx.ravel(), yy.ravel()]), distance_upper_bound=reach)
    val = np.where(np.isfinite(dist), peak * np.exp(-(np.nan_to_num(dist, posinf=1e3) ** 2) / (2 * sigma_px**2)), 0.0)
    out[lo[1] : hi[1] + 1, lo[0] : hi[0] + 1] = val.reshape(yy.shape)
    return out


def point_to_curve_distance(points, curve, closed: bool = False) -> np.ndarray:
    """Distance (px) from each of ``points`` (N, 2) to the polyline through ``curve`` (M, 2)."""
    from scipy.spatial import cKDTree

    c = np.asarray(curve, float)
    if closed:
        c = np.vstack([c, c[:1]])
    dense = _resample(c, max(10, int(np.hypot(*np.diff(c, axis=0).T).sum() / 0.02)), include_end=True)
    return cKDTree(dense).query(np.asarray(points, float))[0]


def with_pose(params: FemurParams, **changes) -> FemurParams:
    return replace(params, **changes)
