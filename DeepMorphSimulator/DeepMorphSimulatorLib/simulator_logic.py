"""The DeepMorphSimulator module's logic on MRML nodes, without Qt (usable headless and from the console).

CT node + C-arm parameters -> DRR volume node on the detector plane, projected femur outline, head
circle and landmarks as markups on the DRR, and the C-arm (source, detector, central beam) as locked
markups in 3D. Also writes the inputs of ``deepmorph dataset`` and builds its command line.
The numerics are in ``drr.py`` / ``projection.py`` (imported when used).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from . import mrml_glue as glue
from .geometry import CArmGeometry, lps_from_ras, ras_from_lps
from .landmarks import side_and_name

GEOMETRY_ATTRIBUTE = "DeepMorph.geometry"
HEAD_CENTER = "head_center"


def geometry_from_parameters(
    sid_mm: float, sod_mm: float, width_px: int, height_px: int, pixel_mm: float, orbital_deg: float = 0.0,
    angular_deg: float = 0.0, inplane_deg: float = 0.0, isocenter_ras=(0.0, 0.0, 0.0),
) -> CArmGeometry:
    """A :class:`CArmGeometry` from GUI values; the isocentre is given in RAS (as Slicer shows it)."""
    return CArmGeometry(
        sid_mm=float(sid_mm), sod_mm=float(sod_mm), width_px=int(width_px), height_px=int(height_px),
        pixel_mm=float(pixel_mm), orbital_deg=float(orbital_deg), angular_deg=float(angular_deg),
        inplane_deg=float(inplane_deg), isocenter_lps=tuple(float(x) for x in lps_from_ras(isocenter_ras)),
    )


def isocenter_ras(ct_node, isocenter_node=None, index: int = 0) -> np.ndarray:
    """The isocentre (RAS mm): a markups control point if given, else the CT's centre."""
    if isocenter_node is not None and isocenter_node.GetNumberOfControlPoints() > index:
        return glue.control_points_ras(isocenter_node)[index]
    return ras_from_lps(glue.node_to_volume(ct_node).center_lps())


def geometry_of(node) -> CArmGeometry:
    """The C-arm geometry stored on a DRR volume node by :func:`render_drr_node`."""
    text = node.GetAttribute(GEOMETRY_ATTRIBUTE) if node is not None else None
    if not text:
        raise ValueError("This volume has no DeepMorph C-arm geometry; render it with the simulator first.")
    return CArmGeometry.from_dict(json.loads(text))


def render_drr_node(scene, ct_node, geometry: CArmGeometry, drr_node=None, name: str = "DRR",
                    step_mm: float = 0.5, method: str = "auto", device: str = "auto"):
    """Render the CT node's DRR into a single-slice volume node placed on the detector plane.

    The node stores the geometry (JSON attribute) and the raw line integrals are not kept (use the CLI).
    """
    from .drr import render_drr

    if ct_node is None:
        raise ValueError("Select a CT volume first.")
    drr = render_drr(glue.node_to_volume(ct_node), geometry, step_mm=step_mm, method=method, device=device)
    node = glue.image_to_node(
        np.asarray(drr.image), scene, name, glue.detector_ijk_to_ras(geometry), node=drr_node, window_level=(0, 255)
    )
    node.SetAttribute(GEOMETRY_ATTRIBUTE, json.dumps(geometry.to_dict()))
    return node


# --------------------------------------------------------------------------------------------
# Femur ground truth as markups
# --------------------------------------------------------------------------------------------
def fit_sphere(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares sphere (centre (3,), radius) through points (N, 3); N >= 4."""
    points = np.asarray(points, dtype=float)
    if len(points) < 4:
        raise ValueError(f"A sphere fit needs at least 4 points, got {len(points)}.")
    a = np.hstack([2.0 * points, np.ones((len(points), 1))])
    b = (points**2).sum(axis=1)
    sol, *_ = np.linalg.lstsq(a, b, rcond=None)
    centre = sol[:3]
    return centre, float(np.sqrt(sol[3] + centre @ centre))


def head_sphere(mesh_points_lps: np.ndarray, landmarks_lps: dict, search_mm: float = 35.0) -> tuple[np.ndarray, float]:
    """Femoral head centre (LPS) and radius (mm): sphere fitted to the mesh around ``head_center``.

    Iterates four times, keeping the vertices within 15, 8, 4 and 4 % of the radius, so neck vertices drop
    out (a fixed 15 % band kept the head-neck junction and biased the centre by ~1 mm).
    """
    if HEAD_CENTER not in landmarks_lps:
        raise ValueError(
            f"The landmarks need a control point labelled '{HEAD_CENTER}' (femoral head centre); "
            f"got {sorted(landmarks_lps) or 'none'}."
        )
    centre = np.asarray(landmarks_lps[HEAD_CENTER], dtype=float)
    pts = np.asarray(mesh_points_lps, dtype=float)
    near = pts[np.linalg.norm(pts - centre, axis=1) < search_mm]
    if len(near) < 20:
        raise ValueError(f"Fewer than 20 femur vertices within {search_mm} mm of '{HEAD_CENTER}': wrong landmark or mesh?")
    centre, radius = fit_sphere(near)
    for tol in (0.15, 0.08, 0.04, 0.04):
        d = np.linalg.norm(pts - centre, axis=1)
        shell = pts[np.abs(d - radius) < tol * radius]
        if len(shell) >= 20:
            centre, radius = fit_sphere(shell)
    return centre, radius


def _polydata_points(polydata) -> np.ndarray:
    from vtk.util import numpy_support

    return numpy_support.vtk_to_numpy(polydata.GetPoints().GetData()).astype(float)


def femur_landmarks_lps(landmarks_node, mesh_points_lps: np.ndarray) -> dict[str, np.ndarray]:
    """{name: (3,) LPS mm} of a point list, its labels read as ``deepmorph dataset --landmarks`` reads them
    (``landmarks.side_and_name``): any case, spaces or hyphens for underscores, a ``right_`` / ``left_`` prefix
    dropped. A list with both femurs' points (``deepmorph phantom``'s ``landmarks.mrk.json``) gives those of the
    femur whose ``head_center`` lies nearest the mesh (N, 3), plus the unprefixed ones."""
    return {name: point for name, (point, _) in _one_femur(_points_lps(landmarks_node), mesh_points_lps).items()}


def _points_lps(node, placed_only: bool = False) -> list[tuple[str, np.ndarray, str]]:
    """(label, world LPS mm (3,), description) of a markups node's control points (``placed_only``: those placed)."""
    lps = lps_from_ras(glue.control_points_ras(node)).reshape(-1, 3)
    return [(node.GetNthControlPointLabel(i), lps[i], node.GetNthControlPointDescription(i))
            for i in range(node.GetNumberOfControlPoints())
            if not placed_only or node.GetNthControlPointPositionStatus(i) == node.PositionDefined]


def _one_femur(points, mesh_points_lps: np.ndarray) -> dict[str, tuple[np.ndarray, str]]:
    """{name: (LPS mm, description)} of ``points`` (label, LPS, description) as :func:`femur_landmarks_lps` picks
    them."""
    by_side = {None: {}, "right": {}, "left": {}}
    for label, point, description in points:
        side, key = side_and_name(label)
        by_side[side][key] = (np.asarray(point, dtype=float), description)
    points = np.asarray(mesh_points_lps, dtype=float)

    def distance(side):
        head = by_side[side].get(HEAD_CENTER)
        return np.inf if head is None or not len(points) else float(np.min(np.linalg.norm(points - head[0], axis=1)))

    sides = [side for side in ("right", "left") if by_side[side]]
    chosen = min(sides, key=distance) if sides else None
    return {**by_side[None], **(by_side[chosen] if chosen else {})}


def femur_for_projection(femur_node, landmarks_node=None) -> tuple:
    """(mesh (LPS mm), {name: (3,) LPS mm}, head radius mm) of a femur node, as the projection needs them.

    With a ``head_center`` in ``landmarks_node`` the head is the sphere fitted around it (:func:`head_sphere`), the
    other points as given; without one, the landmarks are estimated from the mesh as ``deepmorph drr --mesh`` does
    without ``--landmarks`` (``femur.estimate_landmarks``, the given ones kept). ValueError when that fails.
    """
    mesh = glue.femur_polydata_lps(femur_node)
    vertices = _polydata_points(mesh)
    landmarks = femur_landmarks_lps(landmarks_node, vertices) if landmarks_node is not None else {}
    if HEAD_CENTER in landmarks:
        centre, radius = head_sphere(vertices, landmarks)
        return mesh, {**landmarks, HEAD_CENTER: centre}, radius
    from .femur import estimate_landmarks

    try:
        landmarks, radius = estimate_landmarks(mesh, known=landmarks)
    except ValueError as exc:
        raise ValueError(f"The femoral head could not be found on '{femur_node.GetName()}' ({exc}); give landmarks "
                         f"with a '{HEAD_CENTER}' point to place it.") from None
    return mesh, landmarks, radius


GROUND_TRUTH_KEYS = ("outline", "head_circle", "head_centre", "landmarks")


def hide_ground_truth(scene, nodes: dict | None) -> dict:
    """Hide the ground-truth markups of ``nodes`` (e.g. when the DRR they lie on is rendered again without a femur);
    returns ``nodes`` without those no longer in the scene."""
    nodes = glue.nodes_in_scene(scene, nodes)
    for key in GROUND_TRUTH_KEYS:
        if nodes.get(key) is not None:
            nodes[key].GetDisplayNode().SetVisibility(False)
    return nodes


def ground_truth_to_markups(scene, drr_node, femur_node, landmarks_node=None, geometry: CArmGeometry | None = None,
                            nodes: dict | None = None, n_points: int = 64, femur: tuple | None = None) -> dict:
    """Project the femur onto the DRR: outline (closed curve), head circle + centre, named landmarks.

    ``nodes`` (from a previous call) are updated in place, those not drawn this time hidden; returns the dict of nodes
    ``{"outline", "head_circle", "head_centre", "landmarks"}`` and ``"ground_truth"`` (the arrays). ``femur``:
    :func:`femur_for_projection` of the femur and landmarks nodes, when already made.
    """
    from .projection import project_ground_truth

    geometry = geometry or geometry_of(drr_node)
    mesh, landmarks, radius = femur or femur_for_projection(femur_node, landmarks_node)
    nodes = hide_ground_truth(scene, nodes)
    gt = project_ground_truth(mesh, landmarks, radius, geometry, n_points=n_points)
    nodes["outline"] = glue.uv_curve_to_markups(
        scene, drr_node, np.asarray(gt.contour), closed=True, name="Femur outline", node=nodes.get("outline")
    )
    if gt.head_circle is not None:
        nodes["head_circle"], nodes["head_centre"] = glue.circle_to_markups(
            scene, drr_node, gt.head_circle, name="Femoral head", curve_node=nodes.get("head_circle"),
            centre_node=nodes.get("head_centre"),
        )
    if gt.landmarks_uv:
        names = [k for k in gt.landmarks_uv if k != HEAD_CENTER]
        uv = np.array([gt.landmarks_uv[k] for k in names], dtype=float).reshape(-1, 2)
        nodes["landmarks"] = glue.uv_points_to_markups(
            scene, drr_node, uv, names, name="Projected landmarks", node=nodes.get("landmarks")
        )
    nodes["ground_truth"] = gt
    drawn = {"outline", "head_circle", "head_centre"} if gt.head_circle is not None else {"outline"}
    for key in drawn | ({"landmarks"} if gt.landmarks_uv else set()):
        nodes[key].GetDisplayNode().SetVisibility(True)
    return nodes


# --------------------------------------------------------------------------------------------
# The C-arm in 3D
# --------------------------------------------------------------------------------------------
def detector_corners_uv(geometry: CArmGeometry) -> np.ndarray:
    """The detector's outer corners (4, 2) px (pixel edges, half a pixel outside the centres)."""
    w, h = geometry.width_px, geometry.height_px
    return np.array([[-0.5, -0.5], [w - 0.5, -0.5], [w - 0.5, h - 0.5], [-0.5, h - 0.5]])


def draw_carm(scene, geometry: CArmGeometry, nodes: dict | None = None, visible_2d: bool = False) -> dict:
    """The C-arm in 3D: locked, labelled markups for the source/isocentre/detector centre, the detector
    outline (closed curve) and the central beam (line), and a translucent beam pyramid (model).
    Hidden in slice views unless ``visible_2d``. Returns the nodes dict (pass it back to update)."""
    nodes = glue.nodes_in_scene(scene, nodes)
    points_lps = {
        "X-ray source": geometry.source_lps,
        "isocentre": np.asarray(geometry.isocenter_lps, dtype=float),
        "detector centre": geometry.detector_center_lps,
    }
    nodes["carm_points"] = glue.landmarks_to_fiducials(
        scene, points_lps, name="C-arm", node=nodes.get("carm_points"), color=glue.COLORS["carm"]
    )
    corners = geometry.pixel_positions_lps(*detector_corners_uv(geometry).T)
    nodes["detector"] = glue.curve_to_node(
        scene, ras_from_lps(corners), closed=True, name="Detector", node=nodes.get("detector"),
        color=glue.COLORS["carm"], line_diameter_mm=4.0,
    )
    beam = ras_from_lps(np.stack([geometry.source_lps, geometry.detector_center_lps]))
    if nodes.get("beam") is None:
        nodes["beam"] = scene.AddNewNodeByClass("vtkMRMLMarkupsLineNode", "Central beam")
        nodes["beam"].CreateDefaultDisplayNodes()
    glue.set_control_points(nodes["beam"], beam)
    glue.style_markups(nodes["beam"], glue.COLORS["carm"], point_labels=False, glyph_scale=0.0, line_diameter_mm=3.0)
    nodes["cone"] = glue.polydata_to_model_node(
        scene, beam_cone_polydata(geometry), "X-ray beam", node=nodes.get("cone"), color=glue.COLORS["carm"],
        opacity=0.12,
    )
    for node in (nodes["carm_points"], nodes["detector"], nodes["beam"], nodes["cone"]):
        node.GetDisplayNode().SetVisibility2D(visible_2d)
        node.SetAttribute(GEOMETRY_ATTRIBUTE, json.dumps(geometry.to_dict()))
    return nodes


def beam_cone_polydata(geometry: CArmGeometry):
    """The X-ray beam as a pyramid (LPS mm): apex at the source, base = the detector's outline."""
    import vtk

    corners = geometry.pixel_positions_lps(*detector_corners_uv(geometry).T)
    points = vtk.vtkPoints()
    points.InsertNextPoint(*geometry.source_lps)
    for corner in corners:
        points.InsertNextPoint(*corner)
    polys = vtk.vtkCellArray()
    for a in range(4):
        polys.InsertNextCell(3, [0, 1 + a, 1 + (a + 1) % 4])
    polydata = vtk.vtkPolyData()
    polydata.SetPoints(points)
    polydata.SetPolys(polys)
    return polydata


# --------------------------------------------------------------------------------------------
# Training data generation (deepmorph dataset)
# --------------------------------------------------------------------------------------------
def write_mesh_vtp(polydata, path: str | os.PathLike) -> Path:
    """Write a polydata (LPS mm) as VTK XML ``.vtp`` (atomic: temporary file + rename)."""
    import vtk

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.vtp")
    writer = vtk.vtkXMLPolyDataWriter()
    writer.SetFileName(str(tmp))
    writer.SetInputData(polydata)
    if not writer.Write():
        raise ValueError(f"Could not write the femur mesh to {path}.")
    os.replace(tmp, path)
    return path


def write_markups_json(node, path: str | os.PathLike, mesh_points_lps: np.ndarray | None = None) -> Path:
    """Write a markups node's placed control points to ``.mrk.json`` (LPS), without attaching a storage node to it.

    The positions are the world positions (a linear parent transform applied), as the CT and femur mesh are
    exported: Slicer's own markups storage writes the untransformed ones, which would not match them.
    With ``mesh_points_lps`` (a femur mesh's vertices, N x 3), a list with both femurs' points is written as that
    femur's (:func:`femur_landmarks_lps`), which ``deepmorph dataset`` reads without ``--side``.
    """
    from .landmarks import write_markups

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    glue.node_to_world_matrix(node)  # a non-linear transform: ValueError (harden it first)
    points = _points_lps(node, placed_only=True)
    if mesh_points_lps is not None and {"right", "left"} <= {side_and_name(label)[0] for label, _, _ in points}:
        points = [(name, point, description)
                  for name, (point, description) in _one_femur(points, mesh_points_lps).items()]
    write_markups(path, points, name=node.GetName())
    return path


def export_dataset_inputs(ct_node, femur_node, landmarks_node, folder: str | os.PathLike) -> dict[str, Path]:
    """Write the CT (``ct.nrrd``), femur mesh (``femur.vtp``, LPS) and landmarks (the femur's: ``write_markups_json``)
    for ``deepmorph dataset``."""
    from .volume import write_volume

    folder = Path(folder)
    if ct_node is None or femur_node is None:
        raise ValueError("Select a CT volume and the femur (segmentation, label map or model) first.")
    paths = {"ct": folder / "ct.nrrd", "mesh": folder / "femur.vtp"}
    write_volume(glue.node_to_volume(ct_node), paths["ct"])
    mesh = glue.femur_polydata_lps(femur_node)
    write_mesh_vtp(mesh, paths["mesh"])
    if landmarks_node is not None:
        paths["landmarks"] = write_markups_json(landmarks_node, folder / "landmarks.mrk.json", _polydata_points(mesh))
    return paths


def dataset_arguments(out_dir, n: int, size: int, inputs: dict | None = None, implants: float | None = None,
                      workers: int = 1, seed: int = 0) -> list[str]:
    """Arguments of ``deepmorph dataset`` (after the command name); ``inputs`` None = built-in phantoms."""
    args = ["dataset", "--out", str(out_dir), "--n", str(int(n)), "--size", str(int(size))]
    if inputs is None:
        args.append("--phantom")
    else:
        args += ["--ct", str(inputs["ct"]), "--mesh", str(inputs["mesh"])]
        if inputs.get("landmarks"):
            args += ["--landmarks", str(inputs["landmarks"])]
    if implants is not None:
        args += ["--implants", f"{float(implants):g}"]
    return args + ["--workers", str(int(workers)), "--seed", str(int(seed))]


def lib_environment(extra_paths: list[str] | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a child Python that must import both Lib packages (PYTHONPATH prepended).

    ``base`` is the environment to start from (inside Slicer: ``slicer.util.startupEnvironment()``,
    as TotalSegmentator and MONAIAuto3DSeg launch their processes); default: this process's.
    """
    here = Path(__file__).resolve().parent.parent  # the folder holding DeepMorphSimulatorLib
    paths = [str(here), str(here.parent / "DeepMorph"), *(extra_paths or [])]
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [*paths, env.get("PYTHONPATH", "")] if p)
    return env
