"""Build the femur PDM from simulated ground truth (a ``deepmorph dataset`` directory).

Each sample's JSON holds ``points`` (N, 2) px: corresponding contour points whose index has the same
anatomical meaning in every image (``anchor_indices``: shaft_cut_lateral, greater_trochanter, neck_superior,
head_apex, neck_inferior, lesser_trochanter, shaft_cut_medial). The points are projected whether or not they
fall on the detector (``visible`` only says what the image shows), so every sample whose anchors come in
contour order is used. The points on the artificial shaft cut (after ``shaft_cut_medial``) are dropped: the
model is the open outline from the lateral to the medial shaft, as the bone shows it in an image. Left femurs are mirrored (x -> -x) so the model describes a right femur; fitting
tries the reflected model for left femurs (see ``PointDistributionModel.reflect``).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .pdm import PointDistributionModel

# Clinician-facing names -> anchor name in the simulator's ground truth
LANDMARK_ALIASES = {
    "head": "head_apex",
    "neck": "neck_superior",
    "greater_trochanter": "greater_trochanter",
    "lesser_trochanter": "lesser_trochanter",
    "shaft": "shaft_cut_lateral",
}


def iter_samples(data_dirs):
    """(data_dir, sample JSON path, its ground truth dict) of every sample of ``deepmorph dataset`` directories, in
    order; ValueError for a directory without samples or a damaged sample JSON (named)."""
    for data_dir in data_dirs:
        samples = sorted(Path(data_dir, "samples").glob("[0-9]*.json"))
        if not samples:
            raise ValueError(f"No samples found in {data_dir}/samples; run 'deepmorph dataset' first.")
        for path in samples:
            try:
                meta = json.loads(path.read_bytes())
            except ValueError:
                meta = None
            if not isinstance(meta, dict):
                raise ValueError(f"{path} is not a valid sample JSON (damaged?); re-run 'deepmorph dataset' with the "
                                 "same arguments on that folder to render it again.")
            yield data_dir, path, meta


def collect_shapes(data_dirs, max_shapes: int | None = None) -> tuple[np.ndarray, dict, list[str]]:
    """(K, N, 2) right-femur shapes, the anchor indices and the sample names used."""
    shapes, names, anchors = [], [], None
    for data_dir, path, meta in iter_samples(data_dirs):
        points = np.asarray(meta.get("points") or [], dtype=float)
        if points.ndim != 2 or len(points) < 3 or not np.all(np.isfinite(points)) \
                or not meta.get("anchors_in_order", True):
            continue
        if anchors is None:
            anchors = dict(meta.get("anchor_indices") or {})
        if "shaft_cut_medial" in anchors:
            points = points[: anchors["shaft_cut_medial"] + 1]
        if shapes and len(points) != len(shapes[0]):
            raise ValueError(f"{path}: {len(points)} points, other samples have {len(shapes[0])}.")
        if meta.get("side") == "left":
            points = points * np.array([-1.0, 1.0])
        shapes.append(points)
        names.append(f"{Path(data_dir).name}/{path.stem}")
        if max_shapes and len(shapes) >= max_shapes:
            break
    if len(shapes) < 10:
        raise ValueError(f"Only {len(shapes)} samples have corresponding femur points in anatomical order; a PDM needs >= 10.")
    return np.stack(shapes), anchors or {}, names


def build_pdm(data_dirs, variance_kept: float = 0.98, max_shapes: int | None = None) -> PointDistributionModel:
    shapes, anchors, names = collect_shapes(data_dirs, max_shapes)
    landmarks = {alias: anchors[a] for alias, a in LANDMARK_ALIASES.items() if a in anchors}
    landmarks.update({f"anchor_{k}": v for k, v in anchors.items()})
    return PointDistributionModel.fit(
        shapes,
        variance_kept=variance_kept,
        landmarks=landmarks,
        closed=False,
        metadata={
            "source": "deepmorph dataset ground truth (projected phantom femur meshes)",
            "data": [str(d) for d in data_dirs],
            "side": "right (left femurs mirrored)",
        },
    )
