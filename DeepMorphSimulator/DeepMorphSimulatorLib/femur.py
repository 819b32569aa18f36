"""A femur for ground-truth projection: surface mesh, landmarks and head sphere (LPS mm).

``Femur`` is what the phantom produces and what a researcher's own CT provides through
:func:`load_femur` (mesh file or label map, optional Slicer markups with landmarks). Missing landmarks are
estimated from the mesh: the femoral head by a robust sphere fit near the proximal end, the shaft axis by
principal components of the shaft, trochanters and neck points from the shape around them.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .phantom_femur import LANDMARK_NAMES, SHAFT_CUT_MM

SIDES = ("right", "left")


@dataclasses.dataclass
class Femur:
    """One proximal femur. ``mesh``: vtkPolyData (LPS mm), closed at the shaft cut; ``landmarks``: name ->
    (3,) LPS mm (see LANDMARK_NAMES); ``head_radius_mm``; ``side``: "right" | "left"."""

    mesh: object
    landmarks: dict
    head_radius_mm: float
    side: str

    def __post_init__(self):
        if self.side not in SIDES:
            raise ValueError(f"Femur side must be 'right' or 'left', got {self.side!r}.")
        self.landmarks = {k: np.asarray(v, float).reshape(3) for k, v in self.landmarks.items()}
        if "head_center" not in self.landmarks:
            raise ValueError("A femur needs at least the 'head_center' landmark (LPS mm).")
        if not (np.isfinite(self.head_radius_mm) and 5.0 <= self.head_radius_mm <= 50.0):
            raise ValueError(f"Femoral head radius {self.head_radius_mm} mm is implausible (expected 15-35 mm).")


VOLUME_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd", ".hdr", ".img")
MIN_BONE_CONTRAST = 100.0  # HU: a femur's surface in its own CT: ~800-1500 HU inside over outside; off the bone ~0


def fit_sphere(points: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Least-squares sphere through points (N, 3): (centre, radius, rms residual) in mm."""
    p = np.asarray(points, float)
    m = p.mean(axis=0)
    q = p - m
    A = np.hstack([2 * q, np.ones((len(q), 1))])
    sol = np.linalg.lstsq(A, (q**2).sum(axis=1), rcond=None)[0]
    c = sol[:3] + m
    r = float(np.sqrt(max(sol[3] + sol[:3].dot(sol[:3]), 0.0)))
    res = float(np.sqrt(np.mean((np.linalg.norm(p - c, axis=1) - r) ** 2)))
    return c, r, res


def _normals(poly) -> np.ndarray:
    """Outward unit point normals (N, 3) of a closed surface and the surface they belong to, computed from the
    triangles: normals stored in the file are ignored (vtkPolyDataNormals keeps their orientation, and inward or
    stale ones would point the head search inward)."""
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    bare = vtk.vtkPolyData()
    bare.ShallowCopy(poly)
    bare.GetPointData().SetNormals(None)
    bare.GetCellData().SetNormals(None)
    f = vtk.vtkPolyDataNormals()
    f.SetInputData(bare)
    f.SplittingOff()
    f.ConsistencyOn()
    f.AutoOrientNormalsOn()
    f.ComputePointNormalsOn()
    f.Update()
    return vtk_to_numpy(f.GetOutput().GetPointData().GetNormals()).astype(float), f.GetOutput()


def bone_contrast(ct, mesh, inside_mm: float = 1.5, outside_mm: float = 3.0) -> tuple[float, float]:
    """Median CT values (HU, trilinear) ``inside_mm`` inside and ``outside_mm`` outside a femur surface (LPS mm, along
    its outward normals): cortex over soft tissue (~900 vs ~20) where the mesh lies on the femur of ``ct`` (a
    :class:`Volume`); about equal where it lies in soft tissue (a mesh of another CT, RAS read as LPS, a shift)."""
    from scipy.ndimage import map_coordinates
    from vtk.util.numpy_support import vtk_to_numpy

    normals, surface = _normals(mesh)
    v = vtk_to_numpy(surface.GetPoints().GetData()).astype(float)
    values = []
    for offset in (-inside_mm, outside_mm):
        kji = ct.lps_to_index(v + offset * normals)[:, ::-1].T
        values.append(float(np.median(map_coordinates(ct.data, kji, order=1, mode="nearest", output=np.float64))))
    return values[0], values[1]


def check_on_bone(ct, mesh) -> None:
    """Raise ValueError when the femur surface does not lie on bone in ``ct`` (see :func:`bone_contrast`)."""
    inside, outside = bone_contrast(ct, mesh)
    if inside - outside < MIN_BONE_CONTRAST:
        raise ValueError(
            f"The femur surface does not lie on bone in the CT: the CT reads {inside:.0f} just inside it and "
            f"{outside:.0f} just outside (medians; on a femur the cortex reads hundreds of HU more than its "
            "surroundings). Is the mesh in RAS (--mesh-space RAS), shifted, or from another CT? Give the femur "
            "segmented from this CT.")


def find_head_sphere(vertices: np.ndarray, normals: np.ndarray, search_mm: float = 100.0,
                     radius_range=(15.0, 35.0), seed: int = 0) -> tuple[np.ndarray, float]:
    """Femoral head sphere (centre LPS mm, radius mm) by RANSAC near the proximal (superior, +z) end.

    Candidates: vertices within ``search_mm`` of the most superior vertex whose normals point away from the
    sphere centre (a convex sphere, not a concavity). Raises ValueError when no sphere of plausible radius
    covers enough of the surface.
    """
    v = np.asarray(vertices, float)
    top = v[:, 2].max()
    sel = np.nonzero(v[:, 2] > top - search_mm)[0]
    if len(sel) < 50:
        raise ValueError("Too few mesh vertices near the proximal end to find the femoral head; "
                         "give head_center in a markups file.")
    P, N = v[sel], normals[sel]
    rng = np.random.default_rng(seed)
    best, best_n = None, 0
    tol = 0.8
    for _ in range(400):
        idx = rng.choice(len(P), 4, replace=False)
        try:
            c, r, _ = fit_sphere(P[idx])
        except np.linalg.LinAlgError:
            continue
        if not (radius_range[0] <= r <= radius_range[1]):
            continue
        d = P - c
        dist = np.linalg.norm(d, axis=1)
        ok = (np.abs(dist - r) < tol) & ((d * N).sum(axis=1) > 0.9 * dist)
        n = int(ok.sum())
        if n > best_n:
            best, best_n = ok, n
    if best is None:
        raise ValueError("No femoral head found: no sphere of radius 15-35 mm fits the proximal end of the "
                         "mesh. Give head_center (and the radius) in a markups file.")
    for _ in range(3):  # refine on the inliers
        if best.sum() < 30:
            break
        c, r, _ = fit_sphere(P[best])
        d = P - c
        dist = np.linalg.norm(d, axis=1)
        best = (np.abs(dist - r) < tol) & ((d * N).sum(axis=1) > 0.9 * dist)
    area_fraction = best.sum() / max(len(P), 1)
    # a femoral head is ~ 60 % of a sphere; demand that its inliers span a large solid angle
    dirs = (P[best] - c) / r
    if best.sum() < 30 or np.linalg.norm(dirs.mean(axis=0)) > 0.8 or not (radius_range[0] <= r <= radius_range[1]):
        raise ValueError(f"No femoral head found near the proximal end (best sphere r = {r:.1f} mm, "
                         f"{int(best.sum())} vertices, {100 * area_fraction:.0f} % of the candidates). "
                         "Give head_center in a markups file.")
    return c, float(r)


def check_head_center(mesh, head_center, head_radius=None, centre_tol_mm: float = 4.0,
                      radius_tol_mm: float = 3.0) -> None:
    """Raise ValueError when a given ``head_center`` (LPS mm) lies more than ``centre_tol_mm`` from the centre of the
    sphere fitted to the mesh's femoral head (find_head_sphere), or a given ``head_radius`` differs from its radius by
    more than ``radius_tol_mm``: landmarks of another CT or frame would put the head circle beside the head. Nothing
    is checked where no head sphere can be fitted to the mesh."""
    from .mesh import mesh_arrays

    normals, surface = _normals(mesh)
    try:
        centre, radius = find_head_sphere(mesh_arrays(surface)[0], normals)
    except ValueError:
        return
    off = float(np.linalg.norm(np.asarray(head_center, float) - centre))
    if off > centre_tol_mm or (head_radius is not None and abs(head_radius - radius) > radius_tol_mm):
        given = "" if head_radius is None else f", radius {head_radius:.1f} mm"
        raise ValueError(
            f"The landmarks' head_center {np.round(head_center, 1).tolist()}{given} is not the femoral head of the mesh "
            f"(a sphere fitted to its head: centre {np.round(centre, 1).tolist()} mm LPS, {off:.1f} mm away, radius "
            f"{radius:.1f} mm). Are the landmarks from another CT or in another frame (RAS positions in an LPS file)? "
            "Fix them, or leave head_center out to have it fitted.")


def _section(mesh, origin, normal) -> np.ndarray:
    """Points (K, 3) where the plane (origin, normal) cuts the surface (vtkCutter)."""
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    plane = vtk.vtkPlane()
    plane.SetOrigin(*np.asarray(origin, float))
    plane.SetNormal(*np.asarray(normal, float))
    cut = vtk.vtkCutter()
    cut.SetInputData(mesh)
    cut.SetCutFunction(plane)
    cut.Update()
    out = cut.GetOutput()
    if out.GetNumberOfPoints() == 0:
        return np.zeros((0, 3))
    return vtk_to_numpy(out.GetPoints().GetData()).astype(float)


def _shaft_axis(mesh, v: np.ndarray, head: np.ndarray, r: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Shaft axis (point, unit direction towards proximal, lowest height) from centroids of cross-sections
    of the shaft below the trochanters (3.8 head radii under the head centre and lower)."""
    centred = v - v.mean(axis=0)
    a = np.linalg.svd(centred, full_matrices=False)[2][0]
    if a.dot(head - v.mean(axis=0)) < 0:
        a = -a
    for _ in range(3):
        h = (v - head) @ a
        lo_mm = max(h.min() + 2.0, -220.0)
        hi_mm = -3.8 * r
        if hi_mm - lo_mm < 20.0:
            hi_mm = -2.8 * r
        if hi_mm - lo_mm < 10.0:
            raise ValueError("The femur mesh has too little shaft below the trochanters to find the shaft axis "
                             "(need >= ~20 mm); give shaft_axis_proximal/shaft_axis_distal landmarks.")
        cents = []
        for level in np.linspace(lo_mm, hi_mm, 12):
            pts = _section(mesh, head + level * a, a)
            if len(pts) >= 6:
                cents.append(pts.mean(axis=0))
        cents = np.array(cents)
        if len(cents) < 2:
            raise ValueError("Could not find the shaft axis of the femur mesh; give shaft axis landmarks.")
        p0 = cents.mean(axis=0)
        a_new = np.linalg.svd(cents - p0, full_matrices=False)[2][0]
        if a_new.dot(a) < 0:
            a_new = -a_new
        a = a_new
    h = (v - head) @ a
    return p0, a, float(h.min())


def estimate_landmarks(mesh, head_center=None, head_radius=None, known: dict | None = None) -> tuple[dict, float]:
    """Landmarks (LANDMARK_NAMES, LPS mm) and head radius of a femur mesh; ``known`` ones are kept.

    Heuristics (documented, approximate except the head): head by sphere fit (find_head_sphere) unless
    given; shaft axis through centroids of 5 mm slabs of the shaft below 3.8 head radii under the head;
    lateral = away from the head; neck axis from the head centre through the centroid of a mid-neck slab
    (started at a 130 degree neck-shaft angle, refined twice); neck superior/inferior = extreme slab vertices;
    greater trochanter = most proximal vertex lateral of the shaft axis; lesser trochanter = vertex farthest
    from the shaft axis between medial and 75 degrees postero-medial, 2.2-4.2 head radii below the head, standing out most
    from its 5 mm slab; shaft cut = the
    mesh's distal end.
    """
    from .mesh import mesh_arrays

    known = {k: np.asarray(v, float) for k, v in (known or {}).items()}
    if head_radius is not None and all(k in known for k in LANDMARK_NAMES):
        return dict(known), float(head_radius)
    v, _ = mesh_arrays(mesh)
    nrm, _ = _normals(mesh)
    if head_center is None:
        head_center, fitted_r = find_head_sphere(v, nrm)
        head_radius = head_radius or fitted_r
    head = np.asarray(head_center, float)
    if head_radius is None:
        d = np.linalg.norm(v - head, axis=1)
        outward = ((v - head) * nrm).sum(axis=1) > 0.9 * d
        near = outward & (d < 40.0)
        if near.sum() < 20:
            raise ValueError("Cannot measure the femoral head radius around the given head_center; "
                             "put the radius in its description ('head radius 24 mm') or add head_apex.")
        head_radius = float(np.median(d[near][d[near] <= np.percentile(d[near], 60)]))
    r = float(head_radius)
    p0, a, h_min = _shaft_axis(mesh, v, head, r)

    def axis_at(h):  # shaft-axis point at height h (mm, relative to the head along a)
        return p0 + ((head - p0) @ a + h) * a

    q_head = axis_at(0.0)
    medial = head - q_head
    medial -= medial.dot(a) * a
    medial /= np.linalg.norm(medial)
    lateral = -medial
    lm = {"head_center": head}
    # neck axis
    nsa = np.deg2rad(130.0)
    n = np.cos(nsa) * (-a) + np.sin(nsa) * medial  # base -> head
    for _ in range(3):
        ring = _neck_ring(mesh, head - 1.3 * r * n, n, r)
        if len(ring) < 6:
            break
        cn = ring.mean(axis=0)
        n = (head - cn) / np.linalg.norm(head - cn)
    mid = head - 1.3 * r * n
    es = a - a.dot(n) * n
    es /= np.linalg.norm(es)
    ring = _neck_ring(mesh, mid, n, r)
    lm["neck_axis_point"] = mid
    lm["head_apex"] = head + r * n
    if len(ring) >= 4:
        proj = (ring - mid) @ es
        lm["neck_superior"] = ring[np.argmax(proj)]
        lm["neck_inferior"] = ring[np.argmin(proj)]
    h = (v - head) @ a
    radial = v - (p0 + ((v - p0) @ a)[:, None] * a)
    lat_amount = radial @ lateral
    gt = (lat_amount > 0.3 * r) & (h > -3.0 * r)
    if gt.any():
        lm["greater_trochanter"] = v[gt][np.argmax(h[gt])]
    # lesser trochanter: the vertex standing out most from its 5 mm slab's median distance to the axis,
    # on the medial / posterior side, 2.2-4.2 head radii below the head
    dist_ax = np.linalg.norm(radial, axis=1)
    posterior = np.array([0.0, 1.0, 0.0]) - a[1] * a
    posterior /= np.linalg.norm(posterior)
    band = (h < -2.2 * r) & (h > -4.2 * r)
    if band.any():
        bins = np.floor(h / 5.0).astype(int)
        excess = np.full(len(v), -np.inf)
        for b in np.unique(bins[band]):
            m = band & (bins == b)
            excess[m] = dist_ax[m] - np.median(dist_ax[m])
        phi = np.degrees(np.arctan2(radial @ posterior, radial @ medial))
        cand = band & (phi > -20.0) & (phi < 75.0)  # medial to postero-medial, not the posterior crest
        if cand.any():
            lm["lesser_trochanter"] = v[np.argmax(np.where(cand, excess, -np.inf))]
    lm["shaft_axis_proximal"] = axis_at(-2.8 * r)
    cut_c = axis_at(h_min)
    lm["shaft_axis_distal"] = cut_c
    sec = _section(mesh, axis_at(h_min + 3.0), a)
    if len(sec) >= 6:
        rsec = sec - (p0 + ((sec - p0) @ a)[:, None] * a)
        rad = float(np.median(np.linalg.norm(rsec, axis=1)))
    else:
        rad = 0.55 * r
    lm["shaft_cut_lateral"] = cut_c + rad * lateral
    lm["shaft_cut_medial"] = cut_c + rad * medial
    lm.update(known)
    return lm, r


def _neck_ring(mesh, centre, normal, r) -> np.ndarray:
    """Cross-section of the neck: section points within 1.2 head radii of ``centre`` (drops the trochanter)."""
    pts = _section(mesh, centre, normal)
    return pts[np.linalg.norm(pts - centre, axis=1) < 1.2 * r] if len(pts) else pts


def femur_side(landmarks: dict) -> str:
    """'right' or 'left' from the anatomy in LPS: the head lies medial of the shaft (right femur: +x)."""
    head = landmarks["head_center"]
    ref = landmarks.get("greater_trochanter", landmarks.get("shaft_axis_proximal"))
    if ref is None:
        raise ValueError("Cannot tell the femur's side without a trochanter or shaft landmark.")
    return "right" if head[0] > ref[0] else "left"


def cut_mesh(mesh, landmarks: dict, cut_mm: float):
    """Clip a femur mesh with the plane perpendicular to the shaft axis ``cut_mm`` below the head centre and
    close it (vtkClipClosedSurface); returns (mesh, landmarks, clipped?). No-op if the mesh is shorter."""
    import vtk

    head = landmarks["head_center"]
    a = landmarks["shaft_axis_proximal"] - landmarks["shaft_axis_distal"]
    a /= np.linalg.norm(a)
    from .mesh import mesh_arrays

    v, _ = mesh_arrays(mesh)
    if ((v - head) @ a).min() >= -cut_mm - 0.5:
        return mesh, landmarks, False
    p0 = landmarks["shaft_axis_distal"]
    centre = p0 + ((head - p0) @ a - cut_mm) * a
    plane = vtk.vtkPlane()
    plane.SetOrigin(*centre)
    plane.SetNormal(*a)  # keep the proximal side
    planes = vtk.vtkPlaneCollection()
    planes.AddItem(plane)
    clip = vtk.vtkClipClosedSurface()
    clip.SetInputData(mesh)
    clip.SetClippingPlanes(planes)
    clip.GenerateFacesOn()
    clip.Update()
    tri = vtk.vtkTriangleFilter()
    tri.SetInputConnection(clip.GetOutputPort())
    tri.Update()
    out = vtk.vtkPolyData()
    out.DeepCopy(tri.GetOutput())
    lm = dict(landmarks)
    for k in ("shaft_axis_distal", "shaft_cut_lateral", "shaft_cut_medial"):
        lm.pop(k, None)
    lm["shaft_axis_distal"] = centre
    return out, lm, True


def load_femur(source, landmarks=None, side: str | None = None, ct=None, coordinate_system: str | None = None,
               cut_mm: float | None = SHAFT_CUT_MM, target_triangles: int = 5000) -> Femur:
    """A Femur from a researcher's data.

    ``source``: mesh file (.vtp/.vtk/.stl/.ply/.obj, LPS; see mesh.read_mesh), label-map file (NRRD,
    NIfTI, ...), vtkPolyData or a label :class:`Volume`. A label map holding 1 (right) and 2 (left), as
    the phantom writes, is split by ``side``; any other non-zero labelling is taken as one femur.
    ``landmarks``: a ``.mrk.json`` path or a dict (LPS mm); missing ones are estimated from the mesh
    (estimate_landmarks). ``side`` is checked against the anatomy (head medial of the shaft); ``ct``
    (Volume) lets the mesh be checked to lie inside the CT and on its bone (check_on_bone). ``cut_mm``: shorten the
    femur to this distance below the head centre (as the phantom's femurs; None keeps the whole mesh).
    """
    from pathlib import Path

    from .landmarks import femur_landmarks_from_markups
    from .mesh import label_to_mesh, mesh_arrays, read_mesh
    from .volume import Volume, read_volume

    if side is not None and side not in SIDES:
        raise ValueError(f"side must be 'right' or 'left', got {side!r}.")
    if cut_mm is not None and not (np.isfinite(cut_mm) and cut_mm > 0):
        raise ValueError(f"cut_mm must be a positive length in mm (None keeps the whole femur), got {cut_mm}.")
    mesh = None
    if isinstance(source, Volume):
        mesh = _label_mesh(source, side, target_triangles)
    elif isinstance(source, (str, Path)):
        path = Path(source)
        name = path.name.lower()
        if any(name.endswith(sfx) for sfx in VOLUME_SUFFIXES):
            mesh = _label_mesh(read_volume(path), side, target_triangles)
        else:
            mesh = read_mesh(path, coordinate_system)
    else:
        mesh = source
    v, f = mesh_arrays(mesh)
    if len(f) == 0:
        raise ValueError("The femur mesh has no triangles.")
    if ct is not None:
        lo, hi = ct.corners_lps().min(axis=0) - 2.0, ct.corners_lps().max(axis=0) + 2.0
        outside = np.mean(np.any((v < lo) | (v > hi), axis=1))
        if outside > 0.05:
            raise ValueError(
                f"{100 * outside:.0f} % of the femur mesh lies outside the CT (mesh box {v.min(0).round(1).tolist()}"
                f" .. {v.max(0).round(1).tolist()} mm, CT box {lo.round(1).tolist()} .. {hi.round(1).tolist()} mm, "
                "LPS). Is the mesh in RAS (--mesh-space RAS) or from another CT?"
            )
        check_on_bone(ct, mesh)
    known, radius = {}, None
    if landmarks is not None:
        if isinstance(landmarks, dict):
            known = {k: np.asarray(p, float) for k, p in landmarks.items()}
        else:
            known, radius = femur_landmarks_from_markups(landmarks, side)
    head = known.get("head_center")
    if head is not None:
        check_head_center(mesh, head, radius)
    lm, radius = estimate_landmarks(mesh, head, radius, known)
    anatomical = femur_side(lm)
    if side is not None and side != anatomical:
        raise ValueError(f"The femur given is a {anatomical} femur (its head lies "
                         f"{'+x' if anatomical == 'right' else '-x'} (LPS) of its shaft), not a {side} one; "
                         "pick the other side or the other femur.")
    clipped = False
    if cut_mm is not None:
        mesh, lm, clipped = cut_mesh(mesh, lm, float(cut_mm))
    if clipped:
        try:
            lm, radius = estimate_landmarks(mesh, lm["head_center"], radius, {k: lm[k] for k in lm
                                            if k not in ("shaft_cut_lateral", "shaft_cut_medial")})
        except ValueError:
            raise ValueError(f"Shortening the femur to {cut_mm:g} mm below the head centre (--cut-mm) leaves too "
                             "little shaft below the trochanters to find its axis; use about "
                             f"{2.8 * radius + 10:.0f} mm or more for this femur (default {SHAFT_CUT_MM:g}), or 0 to keep "
                             "the whole femur.") from None
    return Femur(mesh=mesh, landmarks=lm, head_radius_mm=radius, side=anatomical)


def _label_mesh(label, side, target_triangles):
    from .mesh import label_to_mesh

    values = set(int(x) for x in np.unique(label.data)) - {0}
    if not values:
        raise ValueError("The femur label map is empty (no non-zero voxel).")
    value = None
    if side is not None and values <= {1, 2} and len(values) == 2:
        value = 1 if side == "right" else 2
    elif len(values) > 1 and not values <= {1, 2}:
        raise ValueError(f"The label map holds several labels {sorted(values)}; keep only the femur "
                         "(or use 1 = right, 2 = left and give the side).")
    elif len(values) == 2 and side is None:
        raise ValueError("The label map holds a right (1) and a left (2) femur; give the side.")
    return label_to_mesh(label, value, target_triangles=target_triangles)


__all__ = ["Femur", "LANDMARK_NAMES", "SHAFT_CUT_MM", "SIDES", "load_femur", "estimate_landmarks",
           "find_head_sphere", "fit_sphere", "femur_side", "cut_mesh", "bone_contrast", "check_on_bone",
           "check_head_center"]
