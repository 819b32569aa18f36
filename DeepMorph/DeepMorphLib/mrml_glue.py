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
    image_to_node,
    load_markups,
    load_scene_bundle,
    load_volume,
    markups_to_uv,
    node_to_image,
    nodes_in_scene,
    points_to_fiducials,
    reusable_node,
    ras_to_uv,
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


def confidence_to_node(scene, confidence: np.ndarray, image_node, node=None, name: str = "Confidence"):
    """A confidence map (H, W) in [0, 1] on the grid of ``image_node``, coloured with the overlay table."""
    conf = np.asarray(confidence, dtype=np.float32)
    image_shape = node_to_image(image_node).shape
    if conf.shape != image_shape:
        raise ValueError(f"Confidence map shape {conf.shape} differs from the image's {image_shape}.")
    if not np.all(np.isfinite(conf)):
        raise ValueError("The confidence map contains NaN/infinite values.")
    node = image_to_node(conf, scene, name, volume_ijk_to_ras(image_node), node=node, window_level=(0.0, 1.0))
    display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID(confidence_color_node(scene).GetID())
    display.SetInterpolate(False)
    return node


def contour_to_markups(
    scene, image_node, points_uv: np.ndarray, landmarks: dict[str, int] | None = None, name: str = "Femur contour",
    curve_node=None, landmarks_node=None, closed: bool = False, editable: bool = False, color=COLORS["outline"],
    point_confidence=None,
):
    """A fitted contour (N, 2) px -> curve node (+ a fiducial node with the named landmarks).

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
        locked=not editable, glyph_scale=1.0 if editable else 0.0,
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
        lm_node = uv_points_to_markups(scene, image_node, uv, names, name=f"{name} landmarks", node=landmarks_node)
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


def update_landmarks_from_contour(curve_node, landmarks_node, image_node, landmarks: dict[str, int]) -> None:
    """Move named landmark points to their contour points after the contour changed."""
    uv = markups_to_uv(curve_node, image_node)
    names = list(landmarks)
    set_control_points(landmarks_node, uv_to_ras(image_node, uv[[int(landmarks[k]) for k in names]]), names)
