"""Ground truth of a projected femur (paper, appendix A.2): silhouette, outline, head circle, PDM points.

Given a femur surface mesh (LPS mm), its landmarks, the head radius and a C-arm geometry:

* ``silhouette``: every mesh triangle is projected and scan-converted (3 x 3 sub-samples per pixel); the
  union is the silhouette; ``silhouette[v, u]`` tells whether the pixel centre is covered.
* ``contour``: the outer boundary of the silhouette as a sub-pixel closed polygon (0.5 iso-line of the
  sub-sample coverage; holes and inner boundaries ignored), computed on a canvas that holds the whole
  projected femur (it may extend past the detector). It starts at the lateral corner of the shaft cut and
  runs lateral shaft -> greater trochanter -> superior neck -> head -> inferior neck -> lesser trochanter ->
  medial shaft -> along the cut back to the start. For a right femur in the standard PA view (patient's
  right on the image's left) that is clockwise as displayed; a left femur runs counter-clockwise, i.e.
  clockwise after mirroring the image left-right, so left and right femurs correspond after reflection.
* ``femur_target``: the outline target of the paper's femur network, a band ``band_px`` wide along the
  contour, without the artificial shaft cut (the bone continues there in the image).
* ``head_circle`` (cx, cy, r) px: the projected head sphere. Its exact perspective outline is the conic
  where the sphere's tangent cone from the source meets the detector (an ellipse with axis ratio about
  1 / cos(angle of the head off the central ray), < 1.5 % at the corner of a 448 px / 0.6 mm / 1000 mm
  detector); it is reduced to the least-squares (algebraic) circle through 360 points of that conic, which
  is exact for a head on the central ray and within (a - b) / 2 of the ellipse otherwise. None when the
  circle lies completely outside the detector.
* ``head_target``: a band ``band_px`` wide along the part of the head's outline that is part of the femur's
  outer contour (the head's dome; not where the head meets the neck or lies inside the silhouette). It is
  an arc of the projected head outline, so a circle fit to the band recovers ``head_circle``.
* ``points`` (n_points, 2) and ``visible``: corresponding contour points for the PDM. Seven anchors are
  placed on the contour (the contour points closest to the projected landmarks greater_trochanter,
  neck_superior, head_apex, neck_inferior, lesser_trochanter, and the two shaft-cut corners, where the
  viewing rays graze the cut rim); each of the seven segments between consecutive anchors gets a fixed
  number of points at equal arc length (fixed fractions of n_points, see SEGMENT_WEIGHTS), so anchor k is
  always point ``anchor_indices[name]``. ``visible`` is False for points outside the detector and for
  points on the artificial cut (between the two corners).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .geometry import CArmGeometry
from .raster import (band_mask, closest_on_polygon, iso_contours, point_at_arclength, polygon_area,
                     polyline_between, rasterize)

# anchors in contour order (from the lateral corner of the shaft cut, see module docstring)
ANCHORS = ("shaft_cut_lateral", "greater_trochanter", "neck_superior", "head_apex", "neck_inferior",
           "lesser_trochanter", "shaft_cut_medial")
# share of the points on each segment: anchor k -> anchor k+1 (the last segment is the cut, medial -> lateral)
SEGMENT_WEIGHTS = (0.30, 0.08, 0.10, 0.12, 0.08, 0.24, 0.08)
REQUIRED_LANDMARKS = ("head_center", "head_apex", "neck_superior", "neck_inferior", "greater_trochanter",
                      "lesser_trochanter", "shaft_axis_proximal", "shaft_axis_distal", "shaft_cut_lateral")
MAX_CANVAS_PIXELS = 40_000_000


@dataclasses.dataclass
class GroundTruth:
    """Projected femur ground truth; pixel coordinates (u, v), arrays [v, u] (see module docstring)."""

    silhouette: np.ndarray  # bool (H, W)
    contour: np.ndarray  # (M, 2) closed polygon, first vertex = lateral cut corner
    femur_target: np.ndarray  # uint8 {0, 1} (H, W)
    head_target: np.ndarray  # uint8 {0, 1} (H, W)
    head_circle: tuple | None  # (cx, cy, r) px
    points: np.ndarray  # (n_points, 2)
    visible: np.ndarray  # (n_points,) bool
    landmarks_uv: dict  # name -> (2,)
    anchor_indices: dict = dataclasses.field(default_factory=dict)  # anchor name -> index into points
    anchors_in_order: bool = True  # False: the view scrambled the anchors' order (points marked invisible)
    head_outline: np.ndarray | None = None  # (360, 2) exact perspective outline of the head sphere

    def to_dict(self) -> dict:
        """JSON-ready: head circle, contour, points, visibility, landmarks (masks excluded)."""
        return {
            "head_circle": None if self.head_circle is None else [float(x) for x in self.head_circle],
            "contour": np.round(self.contour, 3).tolist(),
            "points": np.round(self.points, 3).tolist(),
            "visible": [bool(v) for v in self.visible],
            "landmarks_uv": {k: [round(float(x), 3) for x in v] for k, v in self.landmarks_uv.items()},
            "anchor_indices": {k: int(v) for k, v in self.anchor_indices.items()},
            "anchors_in_order": bool(self.anchors_in_order),
            "contour_orientation": "lateral cut corner -> greater trochanter -> head -> lesser trochanter -> "
                                   "medial cut corner -> cut; clockwise as displayed for a right femur in PA view",
        }


def segment_counts(n_points: int) -> np.ndarray:
    """Points per segment for ``n_points`` (largest-remainder rounding of SEGMENT_WEIGHTS, >= 1 each)."""
    if n_points < 2 * len(ANCHORS):
        raise ValueError(f"n_points must be >= {2 * len(ANCHORS)}, got {n_points}.")
    w = np.asarray(SEGMENT_WEIGHTS, float)
    raw = n_points * w / w.sum()
    counts = np.maximum(np.floor(raw).astype(int), 1)
    order = np.argsort(-(raw - np.floor(raw)), kind="stable")
    i = 0
    while counts.sum() < n_points:
        counts[order[i % len(counts)]] += 1
        i += 1
    while counts.sum() > n_points:
        j = int(np.argmax(counts))
        counts[j] -= 1
    return counts


def anchor_indices(n_points: int) -> dict:
    counts = segment_counts(n_points)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return {name: int(s) for name, s in zip(ANCHORS, starts)}


# --- the head sphere ------------------------------------------------------------------------------------
def sphere_outline(center_lps, radius_mm: float, geometry: CArmGeometry, n: int = 360) -> np.ndarray:
    """Exact perspective outline (n, 2) px of a sphere: where its tangent cone from the source meets the
    detector (points of tangency projected)."""
    c = np.asarray(center_lps, float).reshape(3)
    s = geometry.source_lps
    g = c - s
    dist = float(np.linalg.norm(g))
    if dist <= radius_mm:
        raise ValueError("The X-ray source lies inside the femoral head sphere: no projection.")
    axis = g / dist
    # tangency circle: centre c - (r^2 / d) * axis, radius r * sqrt(1 - r^2 / d^2)
    tc = c - (radius_mm**2 / dist) * axis
    tr = radius_mm * np.sqrt(1 - (radius_mm / dist) ** 2)
    helper = np.array([1.0, 0.0, 0.0]) if abs(axis[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = np.cross(axis, helper)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(axis, e1)
    a = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    pts = tc + tr * (np.cos(a)[:, None] * e1 + np.sin(a)[:, None] * e2)
    return geometry.project(pts)


def fit_circle_algebraic(xy: np.ndarray) -> tuple[float, float, float]:
    """Least-squares algebraic (Kasa) circle through points (N, 2): (cx, cy, r)."""
    xy = np.asarray(xy, float)
    m = xy.mean(axis=0)
    q = xy - m
    A = np.hstack([2 * q, np.ones((len(q), 1))])
    b = (q**2).sum(axis=1)
    sol = np.linalg.lstsq(A, b, rcond=None)[0]
    cx, cy = sol[0] + m[0], sol[1] + m[1]
    return float(cx), float(cy), float(np.sqrt(sol[2] + sol[0] ** 2 + sol[1] ** 2))


def project_sphere(center_lps, radius_mm: float, geometry: CArmGeometry) -> tuple[tuple, np.ndarray]:
    """Circle (cx, cy, r) px of a sphere's projection (see module docstring) and its exact outline (360, 2)."""
    outline = sphere_outline(center_lps, radius_mm, geometry)
    return fit_circle_algebraic(outline), outline


# --- helpers ---------------------------------------------------------------------------------------------
def _mesh_arrays(mesh) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(mesh, tuple) and len(mesh) == 2:
        v, f = np.asarray(mesh[0], float), np.asarray(mesh[1], np.int64)
    else:
        from .mesh import mesh_arrays

        v, f = mesh_arrays(mesh)
    if len(v) == 0 or len(f) == 0:
        raise ValueError("The femur mesh has no triangles; give a closed surface mesh of the femur.")
    if f.ndim != 2 or f.shape[1] != 3 or f.min() < 0 or f.max() >= len(v):
        raise ValueError("Mesh faces must be (M, 3) vertex indices into the vertex array.")
    if not np.all(np.isfinite(v)):
        raise ValueError("The femur mesh has NaN/infinite vertex coordinates.")
    return v, f


def cut_corners_3d(landmarks: dict, source_lps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two points of the shaft-cut rim where viewing rays from the source graze the shaft (modelled as
    a cylinder along the shaft axis): (lateral, medial), LPS mm."""
    c = landmarks["shaft_axis_distal"]
    axis = landmarks["shaft_axis_proximal"] - c
    axis = axis / np.linalg.norm(axis)
    lat = landmarks["shaft_cut_lateral"] - c
    lat = lat - lat.dot(axis) * axis
    radius = float(np.linalg.norm(lat))
    if "shaft_cut_medial" in landmarks:
        med = landmarks["shaft_cut_medial"] - c
        radius = 0.5 * (radius + float(np.linalg.norm(med - med.dot(axis) * axis)))
    e1 = lat / max(np.linalg.norm(lat), 1e-9)
    e2 = np.cross(axis, e1)
    g = c - source_lps
    g1, g2 = g.dot(e1), g.dot(e2)
    rho = np.hypot(g1, g2)
    if rho <= radius * 1.0001:  # looking down the shaft axis: fall back to the lateral/medial rim points
        return c + radius * e1, c - radius * e1
    psi = np.arctan2(g2, g1)
    delta = np.arccos(np.clip(-radius / rho, -1.0, 1.0))
    phis = np.array([psi + delta, psi - delta])
    pts = [c + radius * (np.cos(p) * e1 + np.sin(p) * e2) for p in phis]
    # the lateral corner is the one closer to the lateral direction e1
    if np.cos(phis[0]) >= np.cos(phis[1]):
        return pts[0], pts[1]
    return pts[1], pts[0]


def _check_landmarks(landmarks: dict) -> dict:
    lm = {k: np.asarray(v, float).reshape(3) for k, v in landmarks.items()}
    missing = [k for k in REQUIRED_LANDMARKS if k not in lm]
    if missing:
        raise ValueError(
            f"Missing femur landmarks {missing}; load the femur with femur.load_femur() (it estimates missing "
            f"landmarks from the mesh) or provide them in the markups file."
        )
    return lm


# --- main entry ------------------------------------------------------------------------------------------
def project_ground_truth(mesh, landmarks: dict, head_radius_mm: float, geometry: CArmGeometry, n_points: int = 64,
                         band_px: float = 3.0) -> GroundTruth:
    """Ground truth of one femur (mesh: vtkPolyData or (vertices, faces), LPS mm) under ``geometry``."""
    lm = _check_landmarks(landmarks)
    counts = segment_counts(n_points)
    if not (np.isfinite(band_px) and band_px > 0):
        raise ValueError(f"band_px must be > 0, got {band_px}.")
    V, F = _mesh_arrays(mesh)
    H, W = int(geometry.height_px), int(geometry.width_px)
    if np.any(geometry.depth(V) <= 1.0):
        raise ValueError("Part of the femur mesh lies at or behind the X-ray source; check the C-arm geometry.")
    uv = geometry.project(V)

    # --- silhouette and its outer contour on a canvas holding the whole projection ---
    lo = np.floor(uv.min(axis=0)).astype(int) - 3
    hi = np.ceil(uv.max(axis=0)).astype(int) + 3
    cw, ch = int(hi[0] - lo[0] + 1), int(hi[1] - lo[1] + 1)
    if cw * ch > MAX_CANVAS_PIXELS:
        raise ValueError(f"The femur projects onto {cw} x {ch} px; the geometry's magnification or pixel size "
                         f"is implausible for a femur (check SID/SOD, pixel_mm and the mesh units: mm).")
    coverage, centre = rasterize(uv[F], (int(lo[0]), int(lo[1])), (ch, cw))
    silhouette = np.zeros((H, W), bool)
    du0, dv0 = max(0, lo[0]), max(0, lo[1])
    du1, dv1 = min(W, hi[0] + 1), min(H, hi[1] + 1)
    if du1 > du0 and dv1 > dv0:
        silhouette[dv0:dv1, du0:du1] = centre[dv0 - lo[1]:dv1 - lo[1], du0 - lo[0]:du1 - lo[0]]
    loops = iso_contours(coverage, 0.5, origin_uv=(float(lo[0]), float(lo[1])))
    if not loops:
        raise ValueError("The projected femur covers no pixel; it is smaller than a pixel in this geometry.")
    contour = max(loops, key=lambda p: abs(polygon_area(p)))

    # --- landmarks and anchors ---
    names = sorted(lm)
    luv = geometry.project(np.array([lm[k] for k in names]))
    landmarks_uv = {k: luv[i] for i, k in enumerate(names)}
    corner_lat, corner_med = cut_corners_3d(lm, geometry.source_lps)
    corners_uv = geometry.project(np.array([corner_lat, corner_med]))
    anchor_uv = np.array([corners_uv[0]] + [landmarks_uv[k] for k in ANCHORS[1:-1]] + [corners_uv[1]])
    landmarks_uv["shaft_cut_corner_lateral"] = corners_uv[0]
    landmarks_uv["shaft_cut_corner_medial"] = corners_uv[1]
    s_anchor, _ = closest_on_polygon(contour, anchor_uv)
    total = float(np.sum(np.linalg.norm(np.diff(np.vstack([contour, contour[:1]]), axis=0), axis=1)))

    def rel(s, s0):
        return np.mod(s - s0, total)

    fwd = rel(s_anchor, s_anchor[0])
    rev = rel(-s_anchor, -s_anchor[0])
    ok_f = bool(np.all(np.diff(fwd) > 0))
    ok_r = bool(np.all(np.diff(rev) > 0))
    if ok_r and not ok_f or (not ok_f and not ok_r and rev[1] + rev[3] < fwd[1] + fwd[3]):
        contour = contour[::-1].copy()
        s_anchor, _ = closest_on_polygon(contour, anchor_uv)
        fwd = rel(s_anchor, s_anchor[0])
    in_order = bool(np.all(np.diff(fwd) > 0))
    bad_segments = set()
    if not in_order:  # force monotonic positions, flag the segments next to displaced anchors
        for k in range(1, len(fwd)):
            if fwd[k] <= fwd[k - 1]:
                nxt = fwd[k + 1] if k + 1 < len(fwd) and fwd[k + 1] > fwd[k - 1] else total
                fwd[k] = 0.5 * (fwd[k - 1] + nxt)
                bad_segments.update({k - 1, k})
    # re-start the contour at the lateral corner
    s0 = s_anchor[0]
    contour = polyline_between(contour, s0, s0 + total)[:-1]
    # anchors positions relative to the new start; segment ends (the last wraps to the total length)
    ends = np.append(fwd, total)
    pts, seg_of = [], []
    for k, c in enumerate(counts):
        t = ends[k] + (ends[k + 1] - ends[k]) * np.arange(c) / c
        pts.append(t)
        seg_of += [k] * c
    s_pts = np.concatenate(pts)
    seg_of = np.array(seg_of)
    points = point_at_arclength(contour, s_pts)
    cut_seg = len(ANCHORS) - 1
    inside = (points[:, 0] >= -0.5) & (points[:, 0] <= W - 0.5) & (points[:, 1] >= -0.5) & (points[:, 1] <= H - 0.5)
    on_cut = (seg_of == cut_seg) & (s_pts > ends[cut_seg])
    visible = inside & ~on_cut & ~np.isin(seg_of, sorted(bad_segments))

    # --- targets ---
    bone_outline = polyline_between(contour, 0.0, ends[cut_seg])
    femur_target = band_mask([bone_outline], (H, W), band_px)
    circle, outline = project_sphere(lm["head_center"], float(head_radius_mm), geometry)
    _, dist = closest_on_polygon(contour, outline)
    on = dist <= 1.0
    head_target = band_mask(_runs(outline, on), (H, W), band_px)
    cx, cy, r = circle
    if cx + r < -0.5 or cx - r > W - 0.5 or cy + r < -0.5 or cy - r > H - 0.5:
        head_circle = None
    else:
        head_circle = (cx, cy, r)
    return GroundTruth(
        silhouette=silhouette,
        contour=contour,
        femur_target=femur_target,
        head_target=head_target,
        head_circle=head_circle,
        points=points,
        visible=visible,
        landmarks_uv=landmarks_uv,
        anchor_indices=anchor_indices(n_points),
        anchors_in_order=in_order,
        head_outline=outline,
    )


def _runs(closed_pts: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
    """Consecutive runs of ``closed_pts`` where ``mask`` holds, as polylines (wrapping around)."""
    n = len(mask)
    if mask.all():
        return [np.vstack([closed_pts, closed_pts[:1]])]
    if not mask.any():
        return []
    start = int(np.argmin(mask))  # a False position: runs never wrap past it
    idx = (np.arange(n) + start) % n
    runs, cur = [], []
    for i in idx:
        if mask[i]:
            cur.append(i)
        elif cur:
            runs.append(closed_pts[cur])
            cur = []
    if cur:
        runs.append(closed_pts[cur])
    return runs


# --- files ---------------------------------------------------------------------------------------------------
def mask_paths(image_path) -> dict:
    """Sidecar PNG paths for a DRR ``x.png``: ``x_femur.png``, ``x_head.png`` (targets), ``x_silhouette.png``."""
    from pathlib import Path

    p = Path(image_path)
    return {name: p.with_name(f"{p.stem}_{name}.png") for name in ("femur", "head", "silhouette")}


def write_ground_truth_masks(gt: GroundTruth, image_path) -> dict:
    """Write the femur/head outline targets and the silhouette as 8-bit PNGs (0 or 255) next to ``image_path``."""
    from .files import write_png

    paths = mask_paths(image_path)
    write_png(paths["femur"], (gt.femur_target > 0).astype(np.uint8) * 255)
    write_png(paths["head"], (gt.head_target > 0).astype(np.uint8) * 255)
    write_png(paths["silhouette"], gt.silhouette.astype(np.uint8) * 255)
    return paths


def ground_truth_record(gt: GroundTruth, femur, band_px: float) -> dict:
    """JSON fields for a sample: the dataset format's keys (GroundTruth.to_dict() and ``side``) plus, under
    ``ground_truth``, the femur's 3-D description (landmarks in LPS mm, head radius, band width)."""
    record = gt.to_dict()  # head_circle, contour, points, visible, landmarks_uv, anchor_indices, ...
    record["side"] = femur.side
    record["ground_truth"] = {
        "band_px": float(band_px),
        "head_radius_mm": float(femur.head_radius_mm),
        "landmarks_lps": {k: [float(x) for x in v] for k, v in femur.landmarks.items()},
        "head_circle_method": "algebraic circle through the exact perspective outline of the head sphere",
    }
    return record
