"""Stand-ins for tests of the fit/evaluate plumbing: a confidence predictor that knows the ground truth, simple
circle/PDM fitters used only when the real ones (``circle_fit``, ``asm_fit``) are not importable, and a
real-format image folder (``images/`` + ``annotations/*.json`` as in the dev set's README)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from synthetic_hip import make_hip


def _key(image) -> str:
    return hashlib.sha1(np.round(np.asarray(image, np.float64)).astype(np.int64).tobytes()).hexdigest()


def _outline_distance_map(shape, polygon):
    """px distance of every pixel to the closed polygon (rasterised outline + distance transform)."""
    from PIL import Image, ImageDraw
    from scipy import ndimage as ndi

    h, w = shape
    canvas = Image.new("L", (w, h), 0)
    pts = [tuple(map(float, p)) for p in polygon]
    ImageDraw.Draw(canvas).line(pts + pts[:1], fill=255, width=1)
    return ndi.distance_transform_edt(np.asarray(canvas) == 0)


class TruthPredictor:
    """Confidence map drawn from the ground truth of images it was told about, found by their pixels.

    Only the bone-dark version of each image is registered, so a call with an image the pipeline forgot to
    bring into bone-dark polarity fails loudly."""

    expected_polarity = "bone-dark"

    def __init__(self, task: str):
        self.task, self.maps, self.calls = task, {}, 0

    def register(self, image_bone_dark, truth: dict) -> None:
        img = np.asarray(image_bone_dark)
        if self.task == "head":
            cx, cy, r = truth["head_circle"]
            yy, xx = np.mgrid[0:img.shape[0], 0:img.shape[1]]
            d = np.hypot(xx - cx, yy - cy) - r
        else:
            d = _outline_distance_map(img.shape, truth["femur_outline"])
        self.maps[_key(img)] = np.exp(-(d**2) / (2 * 1.2**2)).astype(np.float32)

    def __call__(self, image):
        self.calls += 1
        key = _key(image)
        if key not in self.maps:
            raise AssertionError("predictor got an image it does not know (wrong polarity handling?)")
        return self.maps[key]

    def describe(self):
        return {"name": "TruthPredictor (test stand-in)", "polarity": self.expected_polarity}


@dataclass
class _Shape:
    points: np.ndarray
    detected: bool = True
    quality: float = 0.9
    reason: str = ""
    point_confidence: np.ndarray = field(default_factory=lambda: np.ones(0))


class StandInPDM:
    """Shape 'model' for the femur stand-in fit: 40 points picked along the confident pixels."""

    landmark_indices = {"greater_trochanter": 10, "shaft": [30, 31], "neck_superior": 15, "neck_inferior": 25}


def standin_fit_pdm(conf, pdm, **kw):
    """Stand-in for ``asm_fit.fit_pdm_to_confidence``: confident pixels ordered by angle, subsampled."""
    yy, xx = np.nonzero(np.asarray(conf) > 0.6)
    if len(xx) < 40:
        return _Shape(np.zeros((0, 2)), detected=False, quality=0.0, reason="no outline found")
    c = np.array([xx.mean(), yy.mean()])
    order = np.argsort(np.arctan2(yy - c[1], xx - c[0]))
    pts = np.c_[xx, yy][order][:: max(1, len(xx) // 40)][:40].astype(float)
    return _Shape(pts, point_confidence=np.ones(len(pts)))


def use_standins(monkeypatch, predictor):
    """Route the pipeline to ``predictor`` and, where the real fitters are missing, to the stand-ins."""
    from DeepMorphLib import pipeline

    monkeypatch.setattr(pipeline, "load_predictor", lambda task, model=None, device="auto": predictor)
    monkeypatch.setattr(pipeline, "load_shape_model", lambda pdm=None: pipeline.ShapeModel(
        StandInPDM(), StandInPDM.landmark_indices, "stand-in"))
    monkeypatch.setattr(pipeline, "_fit_pdm", standin_fit_pdm)  # a real PDM needs the shipped pdm.npz


def make_real_folder(root: Path, predictors: dict) -> list[dict]:
    """Three hips in the dev-set format under ``root`` (images/ + annotations/), registered with the
    ``predictors`` ({task: TruthPredictor}). Returns the annotations."""
    from DeepMorphSimulatorLib.files import write_png

    specs = [  # (seed, polarity, side, maturity, modality)
        (11, "bone-bright", "left", "mature", "radiograph"),
        (12, "bone-bright", "right", "immature", "radiograph"),
        (13, "bone-dark", "right", "mature", "fluoroscopy"),
    ]
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    anns = []
    for seed, polarity, side, maturity, modality in specs:
        image, truth = make_hip(seed, polarity, side, "circle-black" if modality == "fluoroscopy" else None)
        image = np.round(image).astype(np.uint8)
        name = f"hip_{seed}_{side[0].upper()}"
        write_png(root / "images" / f"{name}.png", image)
        dark = image.astype(np.float64)
        if polarity == "bone-bright":
            dark = dark.max() + dark.min() - dark
        for p in predictors.values():
            p.register(dark, truth)
        ann = {"image": f"images/{name}.png", "modality": modality, "polarity": polarity, "side": side,
               "maturity": maturity, "head_circle_kind": "synthetic", "head_circle": truth["head_circle"],
               "femur_outline": truth["femur_outline"], "eval_max_y": min(447.0, truth["eval_max_y"])}
        (root / "annotations" / f"{name}.json").write_text(json.dumps(ann))
        anns.append(ann)
    return anns
