"""MRML glue: DeepMorph arrays (LPS mm, detector px) <-> 3D Slicer nodes (RAS mm).

This is the only place where the Lib meets Slicer's scene. Everything works headless with the
``slicer-core`` wheel as well as inside the Slicer application; ``slicer`` and ``vtk`` are imported
inside the functions, so ``import DeepMorphSimulatorLib.mrml_glue`` works without Slicer installed.

Frames:

* Node geometry is RAS (Slicer); DeepMorph's world frame is LPS. The conversion is done by
  :func:`geometry.ras_from_lps` / :func:`geometry.lps_from_ras` only (see :func:`ijk_to_ras_from_lps`).
* A 2-D image (H, W) becomes a single-slice volume node (``data[0, v, u]``): pixel (u, v) is voxel
  IJK (u, v, 0), and its RAS position is ``IJKToRAS @ (u, v, 0, 1)``; see :func:`uv_to_ras` and
  :func:`ras_to_uv`. Markups drawn "on" an image therefore land on its pixels in every view.
* Every function takes the scene explicitly (``slicer.mrmlScene`` inside the application).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from .geometry import lps_from_ras, ras_from_lps

# Colours (RGB 0-1) used consistently by both modules.
COLORS = {
    "outline": (0.1, 0.9, 0.2),  # projected femur outline / fitted contour: green
    "circle": (1.0, 0.85, 0.0),  # femoral head circle: yellow
    "centre": (1.0, 0.85, 0.0),
    "landmarks": (0.2, 0.8, 1.0),  # named landmarks: cyan
    "carm": (1.0, 0.4, 0.2),  # C-arm source/detector in 3D: orange
    "femur": (0.95, 0.9, 0.75),  # femur model: bone
}
LINE_PX = 1.5  # width of outlines drawn on images, in image pixels


# --------------------------------------------------------------------------------------------
# Headless application (tests, CLI, screenshots)
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class HeadlessSlicer:
    """A scene with Slicer's application logic and module logics, as the Slicer app sets them up.

    Keep this object alive as long as the scene is used: when the application logic is garbage
    collected, its colour nodes vanish from the scene.
    """

    scene: object  # vtkMRMLScene
    app_logic: object  # vtkSlicerApplicationLogic
    logics: dict  # module name -> vtkSlicer*Logic

    def logic(self, name: str):
        return self.logics[name]


def create_headless_slicer() -> HeadlessSlicer:
    """Scene + ``vtkSlicerApplicationLogic`` + Colors/Markups/Volumes/Models/Segmentations logics.

    Mirrors what qSlicerCoreApplication (and trame-slicer's ``SlicerApp``) do, without Qt.
    Registering the Markups logic registers the markups node classes in the scene.
    """
    import slicer
    import vtk

    scene = slicer.vtkMRMLScene()
    crosshair = slicer.vtkMRMLCrosshairNode()
    crosshair.SetCrosshairName("default")
    scene.AddNode(crosshair)

    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    app_logic.GetColorLogic().SetMRMLScene(scene)
    app_logic.GetColorLogic().AddDefaultColorNodes()
    app_logic.SetSliceLogics(vtk.vtkCollection())
    app_logic.SetViewLogics(vtk.vtkCollection())
    slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance().SetMRMLApplicationLogic(app_logic)
    slicer.vtkMRMLThreeDViewDisplayableManagerFactory.GetInstance().SetMRMLApplicationLogic(app_logic)

    logics = {"Colors": app_logic.GetColorLogic()}  # the volumes logic looks up "Colors"
    app_logic.SetModuleLogic("Colors", logics["Colors"])
    for name, cls in (
        ("Markups", slicer.vtkSlicerMarkupsLogic),
        ("Volumes", slicer.vtkSlicerVolumesLogic),
        ("Models", slicer.vtkSlicerModelsLogic),
        ("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic),
        ("SubjectHierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic),
    ):
        logic = cls()
        logic.SetMRMLScene(scene)
        logic.SetMRMLApplicationLogic(app_logic)
        app_logic.SetModuleLogic(name, logic)
        logics[name] = logic
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene, True)
    return HeadlessSlicer(scene=scene, app_logic=app_logic, logics=logics)


def reusable_node(scene, node):
    """``node`` when it is still in ``scene``, else None (the user deleted it, or the scene was closed since).

    Functions that update a node from an earlier call take it through this, so they make a new one instead of
    filling a node that no view shows (or one whose display node is gone).
    """
    return node if node is not None and scene.IsNodePresent(node) else None


def nodes_in_scene(scene, nodes: dict | None) -> dict:
    """A copy of a {key: node} dict from an earlier call without the nodes no longer in ``scene`` (other values kept)."""
    return {key: value for key, value in (nodes or {}).items()
            if not hasattr(value, "IsA") or reusable_node(scene, value) is not None}


# --------------------------------------------------------------------------------------------
# Matrices
# --------------------------------------------------------------------------------------------
def ijk_to_ras_from_lps(ijk_to_lps: np.ndarray) -> np.ndarray:
    """4x4 IJK->LPS matrix -> 4x4 IJK->RAS matrix (each axis column and the origin are flipped)."""
    m = np.asarray(ijk_to_lps, dtype=float)
    out = np.eye(4)
    out[:3, :3] = ras_from_lps(m[:3, :3].T).T
    out[:3, 3] = ras_from_lps(m[:3, 3])
    return out


def ijk_to_lps_from_ras(ijk_to_ras: np.ndarray) -> np.ndarray:
    """4x4 IJK->RAS matrix -> 4x4 IJK->LPS matrix (inverse of :func:`ijk_to_ras_from_lps`)."""
    m = np.asarray(ijk_to_ras, dtype=float)
    out = np.eye(4)
    out[:3, :3] = lps_from_ras(m[:3, :3].T).T
    out[:3, 3] = lps_from_ras(m[:3, 3])
    return out


def _vtk_matrix(array: np.ndarray):
    import vtk

    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(array[r, c]))
    return m


def _np_matrix(vtk_matrix) -> np.ndarray:
    return np.array([[vtk_matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def node_to_world_matrix(node) -> np.ndarray:
    """4x4 matrix from the node's local RAS to world RAS (identity without a parent transform).

    A non-linear parent transform is a ValueError: harden it first (Transforms module).
    """
    import vtk

    parent = node.GetParentTransformNode() if node is not None else None
    if parent is None:
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        raise ValueError(
            f"Node '{node.GetName()}' is under a non-linear transform; harden the transform first "
            "(Data module: right-click > Harden transform)."
        )
    m = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(m)
    return _np_matrix(m)


def volume_ijk_to_ras(volume_node, world: bool = True) -> np.ndarray:
    """4x4 IJK -> RAS matrix of a volume node (including a linear parent transform if ``world``)."""
    import vtk

    m = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    ijk_to_ras = _np_matrix(m)
    return node_to_world_matrix(volume_node) @ ijk_to_ras if world else ijk_to_ras


# --------------------------------------------------------------------------------------------
# Volumes
# --------------------------------------------------------------------------------------------
def _set_image_array(node, data: np.ndarray) -> None:
    """Put a (K, J, I) array into the node's vtkImageData (deep copy, dtype kept; bool -> uint8)."""
    import vtk
    from vtk.util import numpy_support

    data = np.asarray(data)
    if data.dtype == bool:
        data = data.astype(np.uint8)
    if data.ndim != 3:
        raise ValueError(f"Volume data must be 3-D (slices, rows, columns), got shape {data.shape}.")
    k, j, i = data.shape
    image = vtk.vtkImageData()
    image.SetDimensions(i, j, k)
    scalars = numpy_support.numpy_to_vtk(np.ascontiguousarray(data).ravel(), deep=True)
    scalars.SetName("ImageScalars")
    image.GetPointData().SetScalars(scalars)
    node.SetAndObserveImageData(image)


def _image_data(node):
    """The node's vtkImageData; ValueError when it has no voxels."""
    image = node.GetImageData() if node is not None else None
    if image is None or image.GetPointData().GetScalars() is None:
        name = node.GetName() if node is not None else "None"
        raise ValueError(f"Volume node '{name}' has no image data; load or compute the volume first.")
    return image


def _get_image_array(node, grey: bool = False, slice_k: int | None = None) -> np.ndarray:
    """The node's voxels (K, J, I). ``grey``: a colour image (RGB, RGBA: a vector volume, as Slicer loads a colour
    PNG/JPEG) becomes float32 grey, its colour averaged as ``files.read_image_2d`` does (grey + alpha: the grey).
    ``slice_k``: only slice K = ``slice_k`` (shape (1, J, I)), without copying the others."""
    from vtk.util import numpy_support

    image = _image_data(node)
    scalars = image.GetPointData().GetScalars()
    components = scalars.GetNumberOfComponents()
    if components != 1 and not (grey and components in (2, 3, 4)):
        raise ValueError(
            f"Volume '{node.GetName()}' has {components} components per voxel; "
            "a scalar (grey) volume is needed. Convert colour images to grey first."
        )
    i, j, k = image.GetDimensions()
    data = numpy_support.vtk_to_numpy(scalars).reshape(k, j, i, components)
    if slice_k is not None:
        data = data[slice_k:slice_k + 1]
    if components == 1:
        return data[..., 0].copy()
    data = data.astype(np.float32)
    return data[..., 0] if components == 2 else data[..., :3].mean(axis=-1)


def _ensure_display(node, window_level: tuple[float, float] | None = None, color_node_id: str | None = None):
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    if window_level is not None and hasattr(display, "SetWindowLevelMinMax"):
        display.SetAutoWindowLevel(False)
        display.SetWindowLevelMinMax(*window_level)
    if color_node_id:
        display.SetAndObserveColorNodeID(color_node_id)
    return display


def volume_to_node(
    volume,
    scene,
    name: str = "Volume",
    node=None,
    node_class: str = "vtkMRMLScalarVolumeNode",
    window_level: tuple[float, float] | None = None,
):
    """Create (or update ``node``) a volume node from a :class:`volume.Volume` (LPS -> RAS).

    ``node_class`` may be ``vtkMRMLLabelMapVolumeNode`` for label maps. The voxel dtype is kept.
    ``window_level`` = (min, max) display range; ``None`` leaves Slicer's automatic window/level.
    """
    node = reusable_node(scene, node)
    if node is None:
        node = scene.AddNewNodeByClass(node_class, name)
    _set_image_array(node, volume.data)
    node.SetIJKToRASMatrix(_vtk_matrix(ijk_to_ras_from_lps(volume.ijk_to_lps())))
    color = "vtkMRMLColorTableNodeLabels" if node.IsA("vtkMRMLLabelMapVolumeNode") else None
    _ensure_display(node, window_level, color)
    node.Modified()
    return node


def node_to_volume(node):
    """The :class:`volume.Volume` (LPS mm, world frame incl. linear transforms) of a scalar volume node."""
    from .volume import Volume

    if node is None:
        raise ValueError("No volume node given; select a volume.")
    ijk_to_lps = ijk_to_lps_from_ras(volume_ijk_to_ras(node, world=True))
    axes = ijk_to_lps[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    return Volume(_get_image_array(node), spacing, ijk_to_lps[:3, 3], axes / spacing)


# --------------------------------------------------------------------------------------------
# 2-D images as single-slice volumes
# --------------------------------------------------------------------------------------------
def image_ijk_to_ras(pixel_mm: float = 1.0) -> np.ndarray:
    """IJK->RAS of a plain 2-D image as Slicer loads a PNG: LPS identity directions, origin 0.

    Shown in the Red (axial) slice view it appears upright: u to the right, v downwards.
    """
    ijk_to_lps = np.diag([pixel_mm, pixel_mm, 1.0, 1.0])
    return ijk_to_ras_from_lps(ijk_to_lps)


def detector_ijk_to_ras(geometry) -> np.ndarray:
    """IJK->RAS placing a DRR on the C-arm's detector plane in 3D.

    Column i runs along the detector's u axis, row j along v (``pixel_mm`` apart), and k along
    ``e_u x e_v`` (1 mm), so the image sits where the simulated detector is, as SlicerRT's DRRs do.
    """
    e_u, e_v, _ = geometry.axes()
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, 0] = e_u * geometry.pixel_mm
    ijk_to_lps[:3, 1] = e_v * geometry.pixel_mm
    ijk_to_lps[:3, 2] = np.cross(e_u, e_v)
    ijk_to_lps[:3, 3] = geometry.pixel_positions_lps(np.array([0.0]), np.array([0.0]))[0]
    return ijk_to_ras_from_lps(ijk_to_lps)


def image_to_node(
    image: np.ndarray,
    scene,
    name: str = "Image",
    ijk_to_ras: np.ndarray | None = None,
    node=None,
    window_level: tuple[float, float] | None = None,
):
    """A 2-D image (H, W), indexed ``[v, u]``, as a single-slice scalar volume node.

    ``ijk_to_ras`` defaults to :func:`image_ijk_to_ras` (1 mm pixels); use :func:`detector_ijk_to_ras`
    for a DRR. The dtype is kept (uint8 stays uint8).
    """
    from .volume import Volume

    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"Expected a 2-D image (H, W), got shape {image.shape}.")
    m = image_ijk_to_ras() if ijk_to_ras is None else np.asarray(ijk_to_ras, dtype=float)
    ijk_to_lps = ijk_to_lps_from_ras(m)
    axes = ijk_to_lps[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    vol = Volume(image[None], spacing, ijk_to_lps[:3, 3], axes / spacing)
    return volume_to_node(vol, scene, name=name, node=node, window_level=window_level)


def node_to_image(node, k: int | None = None) -> np.ndarray:
    """The (H, W) pixel array of a single-slice volume node (a copy; dtype kept; colour averaged to float32 grey).

    ``k``: the volume's slice K = ``k`` (0-based) instead, e.g. one frame of a multi-frame X-ray (fluoroscopy run).
    """
    image_shape(node, k)
    return _get_image_array(node, grey=True, slice_k=None if k is None else int(k))[0]


def image_shape(node, k: int | None = None) -> tuple[int, int]:
    """(H, W) of ``node_to_image(node, k)`` without copying pixels; the same ValueError for no image data or a missing
    slice."""
    i, j, n_slices = _image_data(node).GetDimensions()
    if k is None and n_slices != 1:
        raise ValueError(f"Volume '{node.GetName()}' has {n_slices} slices; a 2-D X-ray (one slice) is needed.")
    if k is not None and not 0 <= int(k) < n_slices:
        raise ValueError(f"Volume '{node.GetName()}' has {n_slices} slices (K = 0..{n_slices - 1}), no slice K = {k}.")
    return j, i


def uv_to_ras(image_node, uv: np.ndarray, k: float = 0.0) -> np.ndarray:
    """Detector/image pixels (N, 2) as (u, v) -> world RAS points (N, 3) on the image plane (slice K = ``k``: 0 for a
    single-slice image, a frame of a multi-frame X-ray otherwise)."""
    uv = np.atleast_2d(np.asarray(uv, dtype=float))
    if uv.shape[1] != 2:
        raise ValueError(f"Expected (N, 2) pixel coordinates (u, v), got shape {uv.shape}.")
    ijk = np.hstack([uv, np.full((len(uv), 1), float(k)), np.ones((len(uv), 1))])
    return (ijk @ volume_ijk_to_ras(image_node).T)[:, :3]


def ras_to_ijk(image_node, ras: np.ndarray) -> np.ndarray:
    """World RAS points (N, 3) -> continuous voxel indices (N, 3) (i = u, j = v, k = off-plane)."""
    ras = np.atleast_2d(np.asarray(ras, dtype=float))
    h = np.hstack([ras, np.ones((len(ras), 1))])
    return (h @ np.linalg.inv(volume_ijk_to_ras(image_node)).T)[:, :3]


def ras_to_uv(image_node, ras: np.ndarray) -> np.ndarray:
    """World RAS points (N, 3) -> image pixels (N, 2) as (u, v) (projected along the slice normal)."""
    return ras_to_ijk(image_node, ras)[:, :2]


# --------------------------------------------------------------------------------------------
# Markups
# --------------------------------------------------------------------------------------------
def _vtk_points(ras: np.ndarray):
    import vtk
    from vtk.util import numpy_support

    points = vtk.vtkPoints()
    points.SetData(numpy_support.numpy_to_vtk(np.ascontiguousarray(ras, dtype=float), deep=True))
    return points


def set_control_points(node, ras: np.ndarray, labels: list[str] | None = None, locked: bool = True) -> None:
    """Set the node's control points to world RAS points (N, 3), with optional labels.

    With the same number of points they are moved in place (safe while the user interacts with the
    node, as ``slicer.util.updateMarkupsControlPointsFromArray`` does); otherwise they are replaced.
    """
    ras = np.atleast_2d(np.asarray(ras, dtype=float)).reshape(-1, 3)
    if labels is not None and len(labels) != len(ras):
        raise ValueError(f"Got {len(labels)} labels for {len(ras)} points.")
    was_modifying = node.StartModify()
    try:
        if node.GetNumberOfControlPoints() == len(ras):
            for index, point in enumerate(ras):
                node.SetNthControlPointPositionWorld(index, *point)
        else:
            fixed = node.GetFixedNumberOfControlPoints()  # it would block adding/removing points
            node.SetFixedNumberOfControlPoints(False)
            node.RemoveAllControlPoints()
            if len(ras):
                node.SetControlPointPositionsWorld(_vtk_points(ras))
            node.SetFixedNumberOfControlPoints(fixed)
            if labels is None:
                labels = [""] * len(ras)  # no automatic "name-1" labels
        for index in range(len(ras)):
            if labels is not None:
                node.SetNthControlPointLabel(index, labels[index])
            node.SetNthControlPointLocked(index, locked)
        node.SetLocked(locked)
    finally:
        node.EndModify(was_modifying)


def control_points_ras(node) -> np.ndarray:
    """World RAS positions (N, 3) of a markups node's control points."""
    import vtk
    from vtk.util import numpy_support

    points = vtk.vtkPoints()
    node.GetControlPointPositionsWorld(points)
    if points.GetNumberOfPoints() == 0:
        return np.zeros((0, 3))
    return numpy_support.vtk_to_numpy(points.GetData()).astype(float).copy()


def control_point_labels(node) -> list[str]:
    return [node.GetNthControlPointLabel(i) for i in range(node.GetNumberOfControlPoints())]


def style_markups(
    node,
    color=(1.0, 1.0, 0.0),
    line_thickness: float = 0.3,
    glyph_scale: float = 1.0,
    text_scale: float = 3.0,
    point_labels: bool = True,
    node_label: bool = False,
    opacity: float = 1.0,
    line_diameter_mm: float | None = None,
) -> None:
    """Colour and sizes of a markups node, as the Markups module's display controls set them.

    Curve lines are ``line_thickness`` x glyph size, unless ``line_diameter_mm`` is given (needed
    when ``glyph_scale`` is 0, which hides the control point glyphs).
    """
    import slicer

    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    display.SetColor(*color)
    display.SetSelectedColor(*color)
    display.SetActiveColor(*color)
    display.SetGlyphScale(glyph_scale)
    display.SetTextScale(text_scale)
    display.SetPointLabelsVisibility(point_labels)
    display.SetPropertiesLabelVisibility(node_label)
    display.SetOpacity(opacity)
    if line_diameter_mm is not None:
        display.SetCurveLineSizeMode(slicer.vtkMRMLMarkupsDisplayNode.UseLineDiameter)
        display.SetLineDiameter(float(line_diameter_mm))
    else:
        display.SetCurveLineSizeMode(slicer.vtkMRMLMarkupsDisplayNode.UseLineThickness)
        display.SetLineThickness(line_thickness)


def _markups_node(scene, class_name: str, name: str, node=None):
    node = reusable_node(scene, node)
    if node is not None:
        if not node.IsA(class_name):
            raise ValueError(f"Node '{node.GetName()}' is a {node.GetClassName()}, expected {class_name}.")
        return node
    node = scene.AddNewNodeByClass(class_name, name)
    node.CreateDefaultDisplayNodes()
    return node


def points_to_fiducials(
    scene, ras: np.ndarray, labels: list[str] | None = None, name: str = "Points", node=None, locked: bool = True,
    color=COLORS["landmarks"],
):
    """World RAS points (N, 3) as a (locked, labelled) ``vtkMRMLMarkupsFiducialNode``."""
    node = _markups_node(scene, "vtkMRMLMarkupsFiducialNode", name, node)
    set_control_points(node, ras, labels, locked)
    style_markups(node, color, point_labels=labels is not None)
    return node


def curve_to_node(
    scene, ras: np.ndarray, closed: bool = True, name: str = "Curve", node=None, labels: list[str] | None = None,
    locked: bool = True, linear: bool = True, color=COLORS["outline"], glyph_scale: float = 0.0,
    line_diameter_mm: float = 1.0,
):
    """World RAS points (N, 3) as a closed (``vtkMRMLMarkupsClosedCurveNode``) or open curve.

    ``linear`` joins the points by straight segments (exact polygon, used for circles and contours);
    otherwise Slicer's spline. ``glyph_scale`` 0 hides the control point glyphs (a plain outline of
    ``line_diameter_mm`` width).
    """
    class_name = "vtkMRMLMarkupsClosedCurveNode" if closed else "vtkMRMLMarkupsCurveNode"
    node = _markups_node(scene, class_name, name, node)
    if linear:
        node.SetCurveTypeToLinear()
    else:
        node.SetCurveTypeToCardinalSpline()
    set_control_points(node, ras, labels, locked)
    style_markups(node, color, glyph_scale=glyph_scale, point_labels=labels is not None,
                  line_diameter_mm=line_diameter_mm)
    return node


def circle_points_uv(cx: float, cy: float, r: float, n: int = 64) -> np.ndarray:
    """``n`` points (n, 2) evenly spaced on the circle of centre (cx, cy) and radius r (px)."""
    if not (np.isfinite([cx, cy, r]).all() and r > 0):
        raise ValueError(f"A circle needs a finite centre and a radius > 0, got ({cx}, {cy}, {r}).")
    angles = np.linspace(0.0, 2.0 * np.pi, int(n), endpoint=False)
    return np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], axis=1)


def circle_to_markups(
    scene, image_node, circle, n: int = 64, name: str = "Femoral head", curve_node=None, centre_node=None,
    color=COLORS["circle"], k: float = 0.0,
):
    """A circle (cx, cy, r) in px of ``image_node`` (its slice K = ``k``) -> (closed curve node, centre point node).

    There is no circle markup in Slicer: the circle is a locked, linear closed curve of ``n`` points
    and the centre a locked fiducial labelled "<name> centre" whose description holds the radius.
    """
    cx, cy, r = (float(x) for x in circle)
    pixel_mm = _pixel_mm(image_node)
    curve = curve_to_node(
        scene, uv_to_ras(image_node, circle_points_uv(cx, cy, r, n), k), closed=True, name=name, node=curve_node,
        color=color, line_diameter_mm=LINE_PX * pixel_mm,
    )
    radius_mm = r * pixel_mm
    centre = points_to_fiducials(
        scene, uv_to_ras(image_node, [[cx, cy]], k), [f"{name} centre"], name=f"{name} centre", node=centre_node,
        color=color,
    )
    centre.SetNthControlPointDescription(0, f"r = {r:.2f} px ({radius_mm:.2f} mm)")
    for node in (curve, centre):
        node.SetAttribute("DeepMorph.circle_px", f"{cx:.6g} {cy:.6g} {r:.6g}")
    return curve, centre


def circle_from_markups(curve_node, image_node) -> tuple[float, float, float]:
    """(cx, cy, r) px of a circle curve: least-squares circle through its control points."""
    uv = ras_to_uv(image_node, control_points_ras(curve_node))
    if len(uv) < 3:
        raise ValueError(f"Curve '{curve_node.GetName()}' has fewer than 3 points; it is not a circle.")
    a = np.hstack([2.0 * uv, np.ones((len(uv), 1))])
    b = (uv**2).sum(axis=1)
    (cx, cy, c), *_ = np.linalg.lstsq(a, b, rcond=None)
    return float(cx), float(cy), float(np.sqrt(c + cx * cx + cy * cy))


def _pixel_mm(image_node) -> float:
    axes = volume_ijk_to_ras(image_node)[:3, :2]
    return float(np.linalg.norm(axes, axis=0).mean())


def uv_points_to_markups(
    scene, image_node, uv: np.ndarray, labels: list[str] | None = None, name: str = "Landmarks", node=None,
    color=COLORS["landmarks"], k: float = 0.0,
):
    """Named image points (N, 2) px -> a locked fiducial node on the image plane (slice K = ``k``)."""
    return points_to_fiducials(scene, uv_to_ras(image_node, uv, k), labels, name=name, node=node, color=color)


def uv_curve_to_markups(
    scene, image_node, uv: np.ndarray, closed: bool = True, name: str = "Outline", node=None,
    color=COLORS["outline"], locked: bool = True, glyph_scale: float = 0.0, labels: list[str] | None = None,
    k: float = 0.0,
):
    """An image polygon (N, 2) px -> a linear (closed) curve node on the image plane (slice K = ``k``), ``LINE_PX``
    wide."""
    return curve_to_node(
        scene, uv_to_ras(image_node, uv, k), closed=closed, name=name, node=node, color=color, locked=locked,
        glyph_scale=glyph_scale, labels=labels, line_diameter_mm=LINE_PX * _pixel_mm(image_node),
    )


def markups_to_uv(node, image_node) -> np.ndarray:
    """Control points of a markups node -> image pixels (N, 2) of ``image_node``."""
    return ras_to_uv(image_node, control_points_ras(node))


def named_points_lps(node) -> dict[str, np.ndarray]:
    """Labelled control points of a markups node -> {label: (3,) LPS mm} (world frame)."""
    ras = control_points_ras(node)
    return {label: lps_from_ras(p) for label, p in zip(control_point_labels(node), ras)}


def landmarks_to_fiducials(scene, landmarks_lps: dict, name: str = "Landmarks", node=None, color=COLORS["landmarks"]):
    """{name: (3,) LPS mm} -> a locked, labelled fiducial node (RAS)."""
    labels = list(landmarks_lps)
    ras = ras_from_lps(np.array([landmarks_lps[k] for k in labels], dtype=float).reshape(-1, 3))
    return points_to_fiducials(scene, ras, labels, name=name, node=node, color=color)


# --------------------------------------------------------------------------------------------
# Models and segmentations (femur surface)
# --------------------------------------------------------------------------------------------
def _flip_polydata(polydata):
    """Copy of a polydata with x and y negated (LPS <-> RAS); a rotation, so normals stay outward."""
    import vtk

    transform = vtk.vtkTransform()
    transform.Scale(-1.0, -1.0, 1.0)
    flt = vtk.vtkTransformPolyDataFilter()
    flt.SetTransform(transform)
    flt.SetInputData(polydata)
    flt.Update()
    out = vtk.vtkPolyData()
    out.DeepCopy(flt.GetOutput())
    return out


def polydata_to_model_node(scene, polydata_lps, name: str = "Femur", node=None, color=COLORS["femur"], opacity=1.0):
    """A surface mesh in LPS mm -> a model node (RAS)."""
    node = reusable_node(scene, node)
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLModelNode", name)
    node.SetAndObservePolyData(_flip_polydata(polydata_lps))
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    display.SetColor(*color)
    display.SetOpacity(opacity)
    display.SetScalarVisibility(False)  # plain colour even if the mesh carries point scalars
    display.SetVisibility2D(True)
    return node


def _transform_polydata(polydata, matrix: np.ndarray):
    import vtk

    if np.allclose(matrix, np.eye(4)):
        return polydata
    transform = vtk.vtkTransform()
    transform.SetMatrix(_vtk_matrix(matrix))
    flt = vtk.vtkTransformPolyDataFilter()
    flt.SetTransform(transform)
    flt.SetInputData(polydata)
    flt.Update()
    return flt.GetOutput()


def model_node_to_polydata_lps(node):
    """A model node's mesh in world LPS mm (linear parent transforms applied)."""
    polydata = node.GetPolyData()
    if polydata is None or polydata.GetNumberOfPoints() == 0:
        raise ValueError(f"Model '{node.GetName()}' has no surface points.")
    return _flip_polydata(_transform_polydata(polydata, node_to_world_matrix(node)))


def labelmap_to_polydata_lps(node, label_value: int | None = None):
    """Surface (LPS mm) of one label of a label map volume node (largest label value if None).

    Uses ``vtkDiscreteFlyingEdges3D`` followed by a light windowed-sinc smoothing, as Slicer's
    closed-surface conversion does.
    """
    import vtk

    volume = node_to_volume(node)
    labels = np.unique(volume.data)
    labels = labels[labels != 0]
    if labels.size == 0:
        raise ValueError(f"Label map '{node.GetName()}' is empty (all zeros); segment the femur first.")
    value = int(labels.max() if label_value is None else label_value)
    if value not in labels:
        raise ValueError(f"Label {value} not present in '{node.GetName()}' (labels: {labels.tolist()}).")
    image = vtk.vtkImageData()
    k, j, i = volume.data.shape
    image.SetDimensions(i, j, k)
    from vtk.util import numpy_support

    mask = np.ascontiguousarray((volume.data == value).astype(np.uint8))
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(mask.ravel(), deep=True))
    padder = vtk.vtkImageConstantPad()  # close the surface where the label touches the border
    padder.SetInputData(image)
    padder.SetOutputWholeExtent(-1, i, -1, j, -1, k)
    surface = vtk.vtkDiscreteFlyingEdges3D()
    surface.SetInputConnection(padder.GetOutputPort())
    surface.SetValue(0, 1)
    smoother = vtk.vtkWindowedSincPolyDataFilter()
    smoother.SetInputConnection(surface.GetOutputPort())
    smoother.SetNumberOfIterations(15)
    smoother.SetPassBand(0.1)
    smoother.NormalizeCoordinatesOn()
    smoother.Update()
    transform = vtk.vtkTransform()
    transform.SetMatrix(_vtk_matrix(volume.ijk_to_lps()))
    flt = vtk.vtkTransformPolyDataFilter()
    flt.SetTransform(transform)
    flt.SetInputConnection(smoother.GetOutputPort())
    flt.Update()
    out = vtk.vtkPolyData()
    out.DeepCopy(flt.GetOutput())
    return out


def segment_to_polydata_lps(segmentation_node, segment_id: str | None = None):
    """Closed-surface representation (LPS mm) of one segment (the first if ``segment_id`` is None)."""
    import vtk

    segmentation = segmentation_node.GetSegmentation()
    if segmentation.GetNumberOfSegments() == 0:
        raise ValueError(f"Segmentation '{segmentation_node.GetName()}' has no segments.")
    if segment_id is None:
        segment_id = segmentation.GetNthSegmentID(0)
    if segmentation.GetSegment(segment_id) is None:
        raise ValueError(f"Segment '{segment_id}' not found in '{segmentation_node.GetName()}'.")
    segmentation_node.CreateClosedSurfaceRepresentation()
    polydata = vtk.vtkPolyData()
    segmentation_node.GetClosedSurfaceRepresentation(segment_id, polydata)
    if polydata.GetNumberOfPoints() == 0:
        raise ValueError(f"Segment '{segment_id}' of '{segmentation_node.GetName()}' is empty.")
    return _flip_polydata(_transform_polydata(polydata, node_to_world_matrix(segmentation_node)))


def femur_polydata_lps(node, segment_id: str | None = None, label_value: int | None = None):
    """Femur surface (LPS mm) from a model, segmentation or label map volume node."""
    if node is None:
        raise ValueError("No femur given: select a model, segmentation or label map of the femur.")
    if node.IsA("vtkMRMLModelNode"):
        return model_node_to_polydata_lps(node)
    if node.IsA("vtkMRMLSegmentationNode"):
        return segment_to_polydata_lps(node, segment_id)
    if node.IsA("vtkMRMLLabelMapVolumeNode"):
        return labelmap_to_polydata_lps(node, label_value)
    raise ValueError(f"'{node.GetName()}' ({node.GetClassName()}) is not a model, segmentation or label map.")


# --------------------------------------------------------------------------------------------
# Files: storage nodes, scene bundles
# --------------------------------------------------------------------------------------------
def save_node(node, path: str | os.PathLike) -> Path:
    """Write a node with its default storage node (``.nrrd`` volumes, ``.mrk.json`` markups, ``.vtk`` models)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    storage = node.GetStorageNode()
    if storage is None:
        storage = node.CreateDefaultStorageNode()
        node.GetScene().AddNode(storage)
        node.SetAndObserveStorageNodeID(storage.GetID())
    storage.SetFileName(str(path))
    if not storage.WriteData(node):
        raise ValueError(f"Could not write '{node.GetName()}' to {path} ({storage.GetClassName()}).")
    return path


def load_volume(slicer_app: HeadlessSlicer, path: str | os.PathLike, name: str | None = None, labelmap=False):
    """Read a volume file (NRRD, NIfTI, MHA...) through Slicer's volumes logic (archetype reader)."""
    import vtk

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Volume file not found: {path}")
    options = 1 if labelmap else 0
    node = slicer_app.logic("Volumes").AddArchetypeVolume(str(path), name or path.name.split(".")[0], options,
                                                           vtk.vtkStringArray())
    if node is None:
        raise ValueError(f"Slicer could not read {path} as a volume.")
    return node


def load_markups(slicer_app: HeadlessSlicer, path: str | os.PathLike, name: str | None = None,
                 linear_curves: bool = True):
    """Read a ``.mrk.json`` file through Slicer's markups logic; returns the node.

    The ``.mrk.json`` format does not store a curve's interpolation (``.mrml``/``.mrb`` do); DeepMorph's
    curves are polygons, so curves are set to linear unless ``linear_curves`` is False.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Markups file not found: {path}")
    node_id = slicer_app.logic("Markups").LoadMarkups(str(path), name or path.name.split(".")[0])
    if not node_id:
        raise ValueError(f"Slicer could not read {path} as markups (.mrk.json).")
    node = slicer_app.scene.GetNodeByID(node_id)
    if linear_curves and node.IsA("vtkMRMLMarkupsCurveNode"):
        node.SetCurveTypeToLinear()
    return node


def save_scene_bundle(scene, path: str | os.PathLike) -> Path:
    """Write the whole scene as a Slicer data bundle (``.mrb``: scene.mrml + data files)."""
    path = Path(path).resolve()  # Slicer refuses relative bundle paths
    path.parent.mkdir(parents=True, exist_ok=True)
    if not scene.WriteToMRB(str(path)):
        raise ValueError(f"Could not write the scene bundle {path}.")
    return path


def load_scene_bundle(slicer_app: HeadlessSlicer, path: str | os.PathLike, temp_dir: str | os.PathLike) -> None:
    """Open an ``.mrb`` into ``slicer_app``'s scene (unpacked in the existing folder ``temp_dir``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Scene bundle not found: {path}")
    Path(temp_dir).mkdir(parents=True, exist_ok=True)
    if not slicer_app.app_logic.OpenSlicerDataBundle(str(path), str(temp_dir)):
        raise ValueError(f"Slicer could not open the scene bundle {path}.")


# --------------------------------------------------------------------------------------------
# Views (composite nodes exist both headless and in the application)
# --------------------------------------------------------------------------------------------
def align_slice_to_image(slice_node, image_node, k: float = 0.0) -> None:
    """Make a slice view show ``image_node`` face-on and upright: u to the right, v downwards, centred on its slice
    K = ``k`` (a frame of a multi-frame X-ray; 0 for a single-slice image).

    Works for images in any plane (e.g. a DRR on the C-arm's detector in 3D).
    """
    m = volume_ijk_to_ras(image_node)
    i_dir = m[:3, 0] / np.linalg.norm(m[:3, 0])
    j_dir = m[:3, 1] / np.linalg.norm(m[:3, 1])
    normal = np.cross(j_dir, i_dir)  # the slice's y axis = normal x transverse = -j (v up the screen)
    h, w = image_shape(image_node, int(round(k)))
    centre = uv_to_ras(image_node, [[(w - 1) / 2.0, (h - 1) / 2.0]], k)[0]
    slice_node.SetSliceToRASByNTP(*normal, *i_dir, *centre, 0)
    slice_node.UpdateMatrices()


def show_in_slice_views(scene, background=None, foreground=None, foreground_opacity: float | None = None,
                        layouts: tuple[str, ...] | None = None) -> None:
    """Set background/foreground volumes of every slice view (``layouts`` restricts by name, e.g. ("Red",))."""
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
        if layouts is not None and composite.GetLayoutName() not in layouts:
            continue
        if background is not None:
            composite.SetBackgroundVolumeID(background.GetID())
        if foreground is not None:
            composite.SetForegroundVolumeID(foreground.GetID())
        if foreground_opacity is not None:
            composite.SetForegroundOpacity(foreground_opacity)
