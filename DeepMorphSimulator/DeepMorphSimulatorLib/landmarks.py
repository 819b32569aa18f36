"""Slicer markups JSON (``.mrk.json``) for femur landmarks: write and read, LPS mm.

Files follow Slicer's markups schema v1.0.3 (one "Fiducial" point list, ``coordinateSystem`` "LPS", as
Slicer itself writes them) and load in Slicer with drag-and-drop or ``vtkSlicerMarkupsLogic.LoadMarkups``.
Control-point labels are ``<side>_<name>`` (e.g. ``right_head_center``); the head-centre point's
description carries the head radius (``head radius 24.31 mm``), and ``head_apex`` is a point on the head's
surface, so either gives the radius. Reading accepts files in RAS or LPS, labels with or without the side
prefix, any case, and spaces or hyphens instead of underscores.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

SCHEMA = "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/markups-schema-v1.0.3.json#"

DESCRIPTIONS = {
    "head_center": "femoral head centre",
    "head_apex": "point on the femoral head surface along the neck axis",
    "neck_axis_point": "point on the neck axis, mid-neck",
    "neck_superior": "superior neck surface at mid-neck",
    "neck_inferior": "inferior neck surface at mid-neck",
    "greater_trochanter": "tip of the greater trochanter (most proximal point)",
    "lesser_trochanter": "tip of the lesser trochanter",
    "shaft_axis_proximal": "shaft axis at the level of the lesser trochanter",
    "shaft_axis_distal": "shaft axis at the shaft cut (centre of the cut)",
    "shaft_cut_lateral": "lateral rim of the shaft cut",
    "shaft_cut_medial": "medial rim of the shaft cut",
}
_RADIUS_RE = re.compile(r"radius\s*[:=]?\s*([0-9]+(?:\.[0-9]*)?)\s*mm", re.I)


def femur_markups(femurs: dict) -> list[tuple[str, np.ndarray, str]]:
    """Control points (label, LPS position, description) for a dict side -> Femur."""
    points = []
    for side, fem in femurs.items():
        for name, pos in fem.landmarks.items():
            desc = f"{side} {DESCRIPTIONS.get(name, name)}"
            if name == "head_center":
                desc += f"; head radius {fem.head_radius_mm:.3f} mm"
            points.append((f"{side}_{name}", np.asarray(pos, float), desc))
    return points


def markups_dict(points: list, name: str = "F", locked: bool = True) -> dict:
    """Slicer markups JSON document (a dict) with one point list in LPS mm."""
    cps = []
    for i, (label, pos, desc) in enumerate(points):
        cps.append({
            "id": str(i + 1),
            "label": str(label),
            "description": str(desc),
            "associatedNodeID": "",
            "position": [float(x) for x in np.asarray(pos, float).reshape(3)],
            "orientation": [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0],
            "selected": True,
            "locked": bool(locked),
            "visibility": True,
            "positionStatus": "defined",
        })
    return {
        "@schema": SCHEMA,
        "markups": [{
            "type": "Fiducial",
            "name": name,
            "coordinateSystem": "LPS",
            "coordinateUnits": "mm",
            "locked": bool(locked),
            "fixedNumberOfControlPoints": False,
            "labelFormat": "%N-%d",
            "lastUsedControlPointNumber": len(cps),
            "controlPoints": cps,
            "measurements": [],
        }],
    }


def write_markups(path: str | os.PathLike, points: list, name: str = "F") -> None:
    """Write control points [(label, LPS (3,), description)] as a Slicer ``.mrk.json`` (atomic)."""
    from .files import atomic_write_text

    atomic_write_text(path, json.dumps(markups_dict(points, name), indent=2) + "\n")


def read_markups(path: str | os.PathLike) -> list[tuple[str, np.ndarray, str]]:
    """All defined control points of a Slicer markups JSON file as (label, LPS mm (3,), description)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Markups file not found: {path}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a Slicer markups JSON file ({exc}).") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("markups"), list):
        raise ValueError(f"{path} has no 'markups' list: not a Slicer .mrk.json file.")
    points = []
    for m in doc["markups"]:
        system = str(m.get("coordinateSystem", "LPS")).upper()
        if system not in ("LPS", "RAS"):
            raise ValueError(f"{path}: unknown coordinateSystem {system!r} (expected LPS or RAS).")
        units = m.get("coordinateUnits", "mm")
        scale = 0.001 if (units == "um" or (isinstance(units, list) and units and units[0] == "um")) else 1.0
        for cp in m.get("controlPoints", []) or []:
            if cp.get("positionStatus", "defined") != "defined" or "position" not in cp:
                continue
            pos = np.asarray(cp["position"], float).reshape(3) * scale
            if system == "RAS":
                pos = pos * np.array([-1.0, -1.0, 1.0])
            points.append((str(cp.get("label", "")), pos, str(cp.get("description", ""))))
    return points


def _normalise(label: str) -> str:
    return re.sub(r"[\s\-]+", "_", label.strip().lower())


def side_and_name(label: str) -> tuple[str | None, str]:
    """A landmark label as ``femur_landmarks_from_markups`` reads it: any case, spaces or hyphens for underscores, a
    ``right_`` / ``left_`` prefix the side: "Right Head-Center" -> ("right", "head_center"), "head_center" ->
    (None, "head_center")."""
    key = _normalise(label)
    prefix, _, rest = key.partition("_")
    return (prefix, rest) if prefix in ("right", "left") and rest else (None, key)


def femur_landmarks_from_markups(path: str | os.PathLike, side: str | None = None) -> tuple[dict, float | None]:
    """Landmarks (name -> LPS (3,)) and head radius (mm or None) of one femur from a markups file.

    Labels ``<side>_<name>`` are matched for the requested side; unprefixed labels (``head_center``) are
    taken for any side. Raises ValueError when the file has landmarks only for the other side.
    """
    points = read_markups(path)
    found, other, radius = {}, set(), None
    prefixes = {_normalise(label).partition("_")[0] for label, _, _ in points}
    if side is None and {"right", "left"} <= prefixes:
        raise ValueError(f"{path} holds landmarks of both femurs (right_..., left_...); choose one with "
                         "--side left|right.")
    for label, pos, desc in points:
        prefix, key = side_and_name(label)
        if prefix is not None and side is not None and prefix != side:
            other.add(prefix)
            continue
        found[key] = pos
        if key == "head_center":
            m = _RADIUS_RE.search(desc)
            if m:
                radius = float(m.group(1))
    if not found and other:
        raise ValueError(f"{path} has landmarks only for the {'/'.join(sorted(other))} femur, not the {side} one; "
                         f"pick the side that is in the file (or add '{side}_head_center').")
    if "head_apex" in found and "head_center" in found and radius is None:
        radius = float(np.linalg.norm(found["head_apex"] - found["head_center"]))
    return found, radius
