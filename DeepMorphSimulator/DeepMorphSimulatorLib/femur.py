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


__all__ = ["Femur", "LANDMARK_NAMES", "SHAFT_CUT_MM", "SIDES"]
