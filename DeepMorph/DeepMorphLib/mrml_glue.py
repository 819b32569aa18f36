"""MRML glue for fitting results: confidence overlays, circle and contour markups, slice alignment.

Builds on :mod:`DeepMorphSimulatorLib.mrml_glue` (volumes, (u, v) px <-> RAS, curves, storage),
whose names are re-exported here so the DeepMorph module needs one import. ``slicer``/``vtk`` are
imported inside functions: the Lib imports without Slicer.

Pixel coordinates are the X-ray image's (u = column, v = row, px, pixel centres at integers).
"""
from __future__ import annotations

import numpy as np

from DeepMorphSimulatorLib.mrml_glue import (  # noqa: F401  (re-exported)
    COLORS,
    HeadlessSlicer,
    align_slice_to_image,
    circle_from_markups,
    circle_points_uv,
    circle_to_markups,
    control_point_labels,
    control_points_ras,
    create_headless_slicer,
    curve_to_node,
    image_ijk_to_ras,
    image_shape,
    image_to_node,
    load_markups,
    load_scene_bundle,
    load_volume,
    markups_to_uv,
    node_to_image,
    nodes_in_scene,
    points_to_fiducials,
    ras_to_ijk,
    ras_to_uv,
    reusable_node,
    save_node,
    save_scene_bundle,
    set_control_points,
    show_in_slice_views,
    style_markups,
    uv_curve_to_markups,
    uv_points_to_markups,
    uv_to_ras,
    volume_ijk_to_ras,
)

FRAMES_ATTRIBUTE = "DeepMorph.frames"  # on an X-ray volume: its slices are this many frames of one view

CONFIDENCE_COLOR_NODE_NAME = "DeepMorph confidence"


def confidence_color_node(scene):
    """Get or create the overlay colour table: transparent at 0, through red to opaque yellow from 0.67."""
    node = scene.GetFirstNodeByName(CONFIDENCE_COLOR_NODE_NAME)
    if node is not None and node.IsA("vtkMRMLColorTableNode"):
        return node
    node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", CONFIDENCE_COLOR_NODE_NAME)
    node.SetTypeToUser()
    node.SetNumberOfColors(256)
    for index in range(256):
        t = index / 255.0
        r, g, b = 1.0, min(1.0, 1.5 * t), 0.0
        alpha = float(np.clip((t - 0.05) / 0.45, 0.0, 1.0))  # below ~0.05 invisible, fully opaque from 0.5
        node.SetColor(index, f"{t:.3f}", r, g, b, alpha)
    node.SetAttribute("Category", "DeepMorph")
    node.SetHideFromEditors(False)
    return node


def confidence_to_node(scene, confidence: np.ndarray, image_node, node=None, name: str = "Confidence", k: int = 0):
    """A confidence map (H, W) in [0, 1] on the grid of ``image_node`` (its slice K = ``k``: the frame fitted of a
    multi-frame X-ray), coloured with the overlay table."""
    conf = np.asarray(confidence, dtype=np.float32)
    shape = image_shape(image_node, k)
    if conf.shape != shape:
        raise ValueError(f"Confidence map shape {conf.shape} differs from the image's {shape}.")
    if not np.all(np.isfinite(conf)):
        raise ValueError("The confidence map contains NaN/infinite values.")
    ijk_to_ras = volume_ijk_to_ras(image_node)
    ijk_to_ras[:3, 3] += k * ijk_to_ras[:3, 2]  # a single slice where slice k of the image is
    node = image_to_node(conf, scene, name, ijk_to_ras, node=node, window_level=(0.0, 1.0))
    display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID(confidence_color_node(scene).GetID())
    display.SetInterpolate(False)
    return node


def contour_to_markups(
    scene, image_node, points_uv: np.ndarray, landmarks: dict[str, int] | None = None, name: str = "Femur contour",
    curve_node=None, landmarks_node=None, closed: bool = False, editable: bool = False, color=COLORS["outline"],
    point_confidence=None, k: int = 0,
):
    """A fitted contour (N, 2) px of ``image_node``'s slice K = ``k`` -> curve node (+ a fiducial node with the named
    landmarks).

    ``landmarks`` maps names (e.g. "head", "greater trochanter") to contour point indices. With
    ``editable`` the curve is unlocked and shows small handles so the user can drag points.
    ``point_confidence`` (N,): the network's confidence at each point, written into the control points'
    descriptions; ``overlay.extrapolated_points`` (the shape model's extrapolation, where the network sees no
    outline) are described as extrapolated and listed in the curve's ``DeepMorph.extrapolated`` attribute
    (comma-separated point indices, empty when none).
    """
    points_uv = np.asarray(points_uv, dtype=float)
    curve = uv_curve_to_markups(
        scene, image_node, points_uv, closed=closed, name=name, node=curve_node, color=color,
        locked=not editable, glyph_scale=1.0 if editable else 0.0, k=k,
    )
    curve.SetAttribute("DeepMorph.role", "contour")
    curve.SetFixedNumberOfControlPoints(True)  # the points correspond to the shape model's: drag, never add/delete
    if point_confidence is not None:
        _describe_support(curve, np.asarray(point_confidence, dtype=float), len(points_uv))
    elif curve.GetAttribute("DeepMorph.extrapolated") is not None:  # a reused node: no stale descriptions
        for i in range(curve.GetNumberOfControlPoints()):
            curve.SetNthControlPointDescription(i, "")
        curve.RemoveAttribute("DeepMorph.extrapolated")
    lm_node = None
    if landmarks:
        bad = {k: i for k, i in landmarks.items() if not 0 <= int(i) < len(points_uv)}
        if bad:
            raise ValueError(f"Landmark indices outside the contour (0..{len(points_uv) - 1}): {bad}")
        names = list(landmarks)
        uv = points_uv[[int(landmarks[k]) for k in names]]
        lm_node = uv_points_to_markups(scene, image_node, uv, names, name=f"{name} landmarks", node=landmarks_node,
                                       k=k)
        for index, key in enumerate(names):
            lm_node.SetNthControlPointDescription(index, f"contour point {int(landmarks[key])}")
    return curve, lm_node


def _describe_support(curve, point_confidence: np.ndarray, n: int) -> None:
    """Control point descriptions and the ``DeepMorph.extrapolated`` attribute from the points' network confidence."""
    from DeepMorphLib.overlay import extrapolated_points

    if point_confidence.shape != (n,):
        raise ValueError(f"point_confidence must hold one value per contour point ({n}), got {point_confidence.shape}.")
    low = extrapolated_points(point_confidence)
    for i, (c, extrapolated) in enumerate(zip(point_confidence, low)):
        curve.SetNthControlPointDescription(
            i, f"extrapolated by the shape model (network confidence {c:.2f})" if extrapolated
            else f"network confidence {c:.2f}")
    curve.SetAttribute("DeepMorph.extrapolated", ",".join(str(i) for i in np.flatnonzero(low)))


EDITED_DESCRIPTION = "edited by hand"
FOLLOWED_DESCRIPTION = "moved by the shape model after an edit"


def describe_edit(curve, edited, followed) -> None:
    """After the user's edit, the descriptions of the points it moved: ``edited`` (point indices the user dragged,
    also taken off ``DeepMorph.extrapolated``) and ``followed`` (those the shape model re-fit moved) no longer give
    the network's confidence, which was measured where they were fitted."""
    edited = {int(i) for i in edited}
    for i in sorted(edited):
        curve.SetNthControlPointDescription(i, EDITED_DESCRIPTION)
    for i in sorted({int(i) for i in followed} - edited):
        curve.SetNthControlPointDescription(i, FOLLOWED_DESCRIPTION)
    listed = curve.GetAttribute("DeepMorph.extrapolated")
    if listed:
        kept = [i for i in listed.split(",") if int(i) not in edited]
        curve.SetAttribute("DeepMorph.extrapolated", ",".join(kept))


def update_landmarks_from_contour(curve_node, landmarks_node, landmarks: dict[str, int]) -> None:
    """Move named landmark points onto their contour points (in RAS, on the contour's plane) after the contour
    changed."""
    names = list(landmarks)
    set_control_points(landmarks_node, control_points_ras(curve_node)[[int(landmarks[k]) for k in names]], names)


def landmark_contour_indices(landmarks_node) -> dict[str, int]:
    """{label: contour point index} of a landmarks node made by :func:`contour_to_markups` (each point's description
    "contour point N"), e.g. read back from a saved scene; points described otherwise are left out."""
    import re

    found = {}
    for i in range(landmarks_node.GetNumberOfControlPoints()):
        match = re.fullmatch(r"contour point (\d+)", landmarks_node.GetNthControlPointDescription(i))
        if match:
            found[landmarks_node.GetNthControlPointLabel(i)] = int(match.group(1))
    return found


def fit_slice_view_to_image(slice_logic, image_node, k: int = 0) -> None:
    """Show ``image_node`` face-on and upright in a slice view, filling it (``FitSliceToBackground``), on its slice
    K = ``k`` (the frame fitted of a multi-frame X-ray), where fitting the view to the whole volume would centre it."""
    align_slice_to_image(slice_logic.GetSliceNode(), image_node, k)
    slice_logic.FitSliceToBackground()
    slice_logic.GetSliceNode().JumpSliceByOffsetting(*uv_to_ras(image_node, [[0.0, 0.0]], k)[0])


def slice_count(volume_node) -> int:
    """Number of slices along K of a volume node (1 for a 2-D image)."""
    image = volume_node.GetImageData()
    return image.GetDimensions()[2] if image is not None else 1


def xray_frames(volume_node) -> int:
    """Frames of an X-ray volume: 1 for a 2-D image, N for the N slices (along K) of a multi-frame X-ray (a
    fluoroscopy run), which Slicer loads as a volume of N slices.

    Its slices are frames of one view when Slicer's DICOM module lists one DICOM instance (file) for all of them
    (``DICOM.instanceUIDs``), when its file (loaded with Add Data) is a multi-frame DICOM file (NumberOfFrames
    (0028,0008) = N, as ``deepmorph fit`` reads it), or when an earlier fit said so (``FRAMES_ATTRIBUTE``, kept in saved
    scenes). Any other volume of several slices (a CT, a series of DICOM files) is a ValueError.
    """
    n = slice_count(volume_node)
    if n == 1:
        return 1
    uids = (volume_node.GetAttribute("DICOM.instanceUIDs") or "").split()
    if len(uids) == 1 or volume_node.GetAttribute(FRAMES_ATTRIBUTE) == str(n) or _file_frames(volume_node) == n:
        return n
    raise ValueError(
        f"Volume '{volume_node.GetName()}' has {n} slices and is not a multi-frame X-ray (a fluoroscopy run in one "
        f"DICOM file){f': its slices are {len(uids)} DICOM files' if len(uids) > 1 else ''}; a 2-D X-ray is needed.")


def _file_frames(volume_node) -> int:
    """NumberOfFrames of the volume's file when it is one DICOM file, else 0."""
    storage = volume_node.GetStorageNode()
    path = storage.GetFileName() if storage is not None else None
    if not path or storage.GetNumberOfFileNames() > 1:
        return 0
    from .xray_file import frame_count

    try:
        return frame_count(path)
    except (OSError, ValueError):  # the file moved or is unreadable: not known to be frames
        return 0


def shown_slice_k(slice_node, volume_node) -> int | None:
    """The K index (0-based) of the volume slice that a slice view shows face-on (its plane is the volume's IJ plane
    and it passes through that slice), or None when it shows another plane or is outside the volume."""
    m = volume_ijk_to_ras(volume_node)
    normal = np.cross(m[:3, 0], m[:3, 1])
    slice_to_ras = slice_node.GetSliceToRAS()
    view_normal = np.array([slice_to_ras.GetElement(r, 2) for r in range(3)])
    if abs(abs(normal @ view_normal) / (np.linalg.norm(normal) * np.linalg.norm(view_normal)) - 1.0) > 1e-4:
        return None
    k = ras_to_ijk(volume_node, [[slice_to_ras.GetElement(r, 3) for r in range(3)]])[0, 2]
    index = int(np.floor(k + 0.5))
    return index if 0 <= index < slice_count(volume_node) else None
