"""The DeepMorph module's logic: X-ray node -> confidence map -> circle / femur contour, without Qt.

``fit_image`` works on arrays (CLI, tests); ``fit_xray_node`` / ``show_result`` put the result into
the scene (confidence overlay, circle + centre, contour + named landmarks); ``refit_after_edit`` keeps
a user-edited contour plausible under the PDM. Network, circle and PDM code are imported when used.

Pixel coordinates: u = column, v = row of the X-ray (px); ``pixel_mm`` converts to mm when known.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import os
from pathlib import Path

import numpy as np

from .pipeline import test_time_views_block, with_task_views
from .working_size import at_working_size

TASKS = ("head", "femur")
POLARITIES = ("auto", "bone-dark", "bone-bright")
MODELS_DIR = Path(__file__).resolve().parent.parent / "Resources" / "Models"
# Names of the contour landmarks, as the clinician reads them (keys of the PDM's landmark indices).
LANDMARK_TITLES = {
    "head": "femoral head",
    "neck": "neck",
    "greater_trochanter": "greater trochanter",
    "lesser_trochanter": "lesser trochanter",
    "shaft": "shaft",
}


@dataclasses.dataclass
class FitResult:
    """Outcome of one fit. ``detected`` False is a result ("not detected"), with a ``reason``."""

    task: str
    detected: bool
    reason: str = ""
    circle: tuple[float, float, float] | None = None  # (cx, cy, r) px
    contour: np.ndarray | None = None  # (N, 2) px
    landmarks: dict[str, int] = dataclasses.field(default_factory=dict)  # name -> contour index
    quality: dict[str, float] = dataclasses.field(default_factory=dict)
    point_confidence: np.ndarray | None = None  # (N,) network confidence at each contour point (femur)
    polarity: str = "bone-dark"  # polarity the image was fitted with
    polarity_score: float | None = None  # "auto": polarity.detect_polarity's score (> 0 bone-bright); None if given
    side: str | None = None  # femur side the fits assumed ("left" / "right"); None = either
    image_shape: tuple[int, int] = (0, 0)
    pixel_mm: float | None = None
    model: str = ""
    test_time_views: int | None = None  # views the task network averaged (``inference.views_for``); None = stand-in
    confidence: np.ndarray | None = dataclasses.field(default=None, repr=False)
    fit_scale: float = 1.0  # image px per px of the image the fit ran on (> 1: a large image reduced, working_size)
    frame: int | None = None  # frame fitted of a multi-frame X-ray, 1-based (slice K + 1) as ``fit --frames``
    n_frames: int = 1  # frames of the X-ray (> 1: a fluoroscopy run)

    def landmarks_uv(self) -> dict[str, np.ndarray]:
        if self.contour is None:
            return {}
        return {name: np.asarray(self.contour[index], dtype=float) for name, index in self.landmarks.items()}

    def to_dict(self) -> dict:
        d = {
            "task": self.task, "detected": bool(self.detected), "reason": self.reason, "polarity": self.polarity,
            "polarity_score": self.polarity_score, "side": self.side,
            "image_size_px": [int(self.image_shape[1]), int(self.image_shape[0])], "pixel_mm": self.pixel_mm,
            "model": self.model, "test_time_views": self.test_time_views, "fit_scale": self.fit_scale,
            "quality": {k: float(v) for k, v in self.quality.items()},
            "frame": "image pixels: u = column, v = row, pixel centres at integers",
        }
        if self.frame is not None:  # as ``deepmorph fit``'s provenance: 1-based
            d["xray_frame"], d["xray_frames"] = int(self.frame), int(self.n_frames)
        if self.circle is not None:
            cx, cy, r = (float(x) for x in self.circle)
            d["head_circle"] = {"cx_px": cx, "cy_px": cy, "r_px": r}
            if self.pixel_mm:
                d["head_circle"]["r_mm"] = r * self.pixel_mm
        if self.contour is not None:
            d["contour_px"] = np.asarray(self.contour, dtype=float).round(3).tolist()
            d["landmarks_px"] = {k: v.round(3).tolist() for k, v in self.landmarks_uv().items()}
        return d

    def summary(self) -> str:
        """One or two plain sentences for the GUI and logs."""
        if self.frame is not None:
            return f"Frame {self.frame} of {self.n_frames} (slice K = {self.frame - 1}): {self._summary()}"
        return self._summary()

    def _summary(self) -> str:
        if not self.detected:
            return f"NOT DETECTED ({self.reason or 'no confident outline'})."
        quality = ", ".join(_format_quality(k, v) for k, v in self.quality.items())
        if (self.test_time_views or 1) > 1:
            quality += f" (network maps averaged over {self.test_time_views} flipped views)"
        if self.circle is not None:
            cx, cy, r = self.circle
            mm = f" = {r * self.pixel_mm:.1f} mm" if self.pixel_mm else ""
            return f"Femoral head: radius {r:.1f} px{mm}, centre ({cx:.1f}, {cy:.1f}) px. {quality}".strip()
        return f"Femur contour: {len(self.contour)} points. {quality}".strip()


def _format_quality(key: str, value: float) -> str:
    """"residual_px" 1.234 -> "residual 1.23 px"; "arc_coverage_deg" -> degrees; others plain."""
    for suffix, unit, fmt in (("_px", " px", ".2f"), ("_deg", " deg", ".0f")):
        if key.endswith(suffix):
            return f"{key[: -len(suffix)].replace('_', ' ')} {value:{fmt}}{unit}"
    if key == "n_pixels":
        return f"{value:.0f} outline pixels"
    return f"{key.replace('_', ' ')} {value:.3g}"


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------
def shipped_model_path(task: str) -> Path:
    """The model shipped with the extension for a task (``Resources/Models/<task>.safetensors``)."""
    _check_task(task)
    return MODELS_DIR / f"{task}.safetensors"


_MODEL_CACHE: dict = {}


def load_task_model(task: str, path: str | os.PathLike | None = None):
    """(model, metadata) for a task: the shipped one, or a ``.safetensors`` file (cached per file)."""
    path = Path(path) if path else shipped_model_path(task)
    if not path.is_file():
        raise FileNotFoundError(f"Model file not found: {path}. Choose a .safetensors model or reinstall DeepMorph.")
    from .model_io import load_model

    key = (str(path.resolve()), path.stat().st_mtime_ns)
    if key not in _MODEL_CACHE:
        _MODEL_CACHE[key] = load_model(path)
    model, metadata = _MODEL_CACHE[key]
    model_task = (metadata or {}).get("task")
    if model_task and model_task != task:
        raise ValueError(f"{path.name} is a '{model_task}' model, but the task is '{task}'.")
    return model, metadata


def load_shape_model(path: str | os.PathLike | None = None):
    """The point distribution model (shipped ``pdm.npz`` unless ``path``)."""
    from .pdm import PointDistributionModel

    path = Path(path) if path else MODELS_DIR / "pdm.npz"
    if not path.is_file():
        raise FileNotFoundError(f"Shape model not found: {path}.")
    return PointDistributionModel.load(path)


def contour_landmarks(pdm) -> dict[str, int]:
    """Landmark name -> contour point index, as stored with the PDM (empty if it names none).

    The simulator's internal anchor names (``anchor_*``) are left out: clinicians see the named landmarks.
    """
    for source in (getattr(pdm, "landmarks", None), (getattr(pdm, "metadata", None) or {}).get("landmarks")):
        if isinstance(source, dict) and source:
            return {str(k): int(v) for k, v in source.items() if not str(k).startswith("anchor_")}
    return {}


# --------------------------------------------------------------------------------------------
# Fitting on arrays
# --------------------------------------------------------------------------------------------
def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"Task must be one of {TASKS}, not {task!r}.")


def with_polarity(image: np.ndarray, polarity: str) -> np.ndarray:
    """The image as the networks expect it (bone dark, as a fluoroscope shows it).

    "bone-bright" images (radiographs) are inverted within their own intensity range.
    """
    if polarity not in ("bone-dark", "bone-bright"):
        raise ValueError(f"Polarity must be 'bone-dark' or 'bone-bright' here, not {polarity!r}.")
    image = np.asarray(image, dtype=np.float32)
    if polarity == "bone-bright":
        return (float(image.max()) + float(image.min()) - image).astype(np.float32)
    return image


def _check_image(image) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2 or min(image.shape) < 16:
        raise ValueError(f"Expected a 2-D X-ray of at least 16 x 16 pixels, got shape {image.shape}.")
    from DeepMorphSimulatorLib.files import check_finite

    check_finite(image, "The X-ray")
    return image


def _fit_head(conf: np.ndarray, target: str = "outline") -> FitResult:
    from .pipeline import fit_head_confidence

    fit = fit_head_confidence(conf, target, method="robust")
    quality = {"residual_px": fit.residual_px, "arc_coverage_deg": fit.arc_coverage_deg, "n_pixels": fit.n_pixels}
    quality = {k: float(v) for k, v in quality.items() if v is not None and np.isfinite(v)}
    circle = (float(fit.cx), float(fit.cy), float(fit.r)) if fit.detected else None
    return FitResult("head", bool(fit.detected), fit.reason or "", circle=circle, quality=quality)


def _fit_femur(conf: np.ndarray, pdm, target: str = "outline", head_circle=None, region_conf=None,
               side: str | None = None) -> FitResult:
    from .pipeline import fit_femur_confidence, shaft_axis_indices, side_option

    dome = _head_dome(pdm) if head_circle is not None else None
    # upright prior, as in ``deepmorph fit``; a known side: only that side's shape (pipeline.fit_image)
    options = {"shaft_axis": shaft_axis_indices(getattr(pdm, "landmarks", None)), **side_option(pdm, side)}
    if dome is not None:
        options.update(head_circle=head_circle, head_dome=dome)
    fit = fit_femur_confidence(conf, target, pdm, options, region_conf)
    if isinstance(fit.quality, dict):  # several named measures
        quality = {str(k): float(v) for k, v in fit.quality.items() if np.isscalar(v) and np.isfinite(v)}
    else:
        quality = {"quality": float(fit.quality)} if fit.quality is not None else {}
    if fit.point_confidence is not None:
        quality["mean_point_confidence"] = float(np.mean(fit.point_confidence))
    if (getattr(fit, "info", None) or {}).get("fit_map") == "region":  # the region network's fit won (pipeline.fit_femur_confidence)
        quality["region_fit"] = 1.0
    contour = np.asarray(fit.points, dtype=float) if fit.detected else None
    landmarks = contour_landmarks(pdm) if fit.detected else {}
    point_conf = np.asarray(fit.point_confidence, dtype=float) if fit.detected and fit.point_confidence is not None \
        else None
    return FitResult("femur", bool(fit.detected), fit.reason or "", contour=contour, landmarks=landmarks,
                     quality=quality, point_confidence=point_conf)


def _head_dome(pdm):
    """(first, last) head-dome point indices of the PDM (its ``anchor_neck_*`` landmarks), or None."""
    from .pipeline import head_dome_indices

    return head_dome_indices(getattr(pdm, "landmarks", None))


def _score(result: FitResult) -> float:
    """Higher is better; used to choose the polarity in "auto" mode."""
    if not result.detected:
        return -1.0
    q = result.quality
    if result.task == "head":
        return q.get("arc_coverage_deg", 0.0) / 360.0 - 0.1 * q.get("residual_px", 0.0)
    return q.get("quality", q.get("mean_point_confidence", 0.0))


def _in_image_px(result: FitResult, to_px, image_shape: tuple, resample) -> None:
    """``working_size.at_working_size``'s mapping of a fit made on the reduced image back to the image's px."""
    result.image_shape, result.fit_scale = image_shape, float(to_px.length)
    if result.circle is not None:
        c = to_px.circle({"cx": result.circle[0], "cy": result.circle[1], "r": result.circle[2]})
        result.circle = (c["cx"], c["cy"], c["r"])
    if result.contour is not None:
        result.contour = to_px.xy(result.contour)
    result.quality = {k: (to_px.circle({k: v})[k] if k in ("residual_px", "n_pixels") else v)
                      for k, v in result.quality.items()}
    if result.confidence is not None:
        result.confidence = resample(result.confidence, image_shape)


@with_task_views
@at_working_size(_check_image, _in_image_px)
def fit_image(image: np.ndarray, task: str, model=None, metadata=None, pdm=None, polarity: str = "auto",
              predict=None, pixel_mm: float | None = None, model_name: str = "", refiner=None,
              edge_snap: bool = True, head_anchor=None, region=None, side: str | None = None,
              femur_min_quality: float | None = None, keep_unconfirmed_head: bool = False) -> FitResult:
    """Network confidence map + morphing fit on one X-ray (H, W), resampled to 448 px on its longer side for the fit
    (``working_size``) and the result given in its own px, as ``pipeline.fit_image`` does.

    ``polarity`` "auto": detected as by ``deepmorph fit`` (``polarity.detect_polarity``; when its evidence is weak,
    below ``pipeline.AUTO_FIT_BELOW``, both polarities are fitted and the better fit is kept). ``predict(image) -> conf``
    replaces the network (tests); otherwise ``inference.predict_confidence(model, metadata, image)``.
    ``refiner``: head refinement (ROI) predictor (``pipeline.load_refiner``) applied to each head circle found.
    ``edge_snap``: move each head circle onto the head's edge in the image when it is clear (``edge_snap``).
    ``head_anchor`` (femur): a head-network predictor (``pipeline.NetworkPredictor``) whose edge-snapped circle
    anchors extra PDM starts when the first femur fit is weak (``pipeline.head_anchor_circle``); None = off.
    ``region`` (femur): a femur region-network predictor (``pipeline.load_region_net``) whose fit is the last
    second opinion of a weak femur fit (``pipeline.fit_femur_confidence``); None = off.
    ``side``: "left" / "right" when the femur's side is known, None or "auto" = either (``pipeline.fit_image``:
    the fits then only try that side's shape).
    ``femur_min_quality``: a femur fit with a lower mean confidence at its points is "not detected", contour kept for
    review (None = ``femur_confirm.FEMUR_MIN_QUALITY``, 0 = off); ``keep_unconfirmed_head``: report the head network's
    circle that neither its edge nor a confident femur fit confirms, instead of "not detected" (as ``deepmorph fit``).
    """
    from .pipeline import check_side

    _check_task(task)
    side = check_side(side)
    if polarity not in POLARITIES:
        raise ValueError(f"Polarity must be one of {POLARITIES}, not {polarity!r}.")
    image = _check_image(image)
    real_network = predict is None
    if predict is None:
        from .inference import predict_confidence

        def predict(x):
            return predict_confidence(model, metadata, x)

    if task == "femur" and pdm is None:
        pdm = load_shape_model()
    candidates, score, detected = (polarity,), None, None
    if polarity == "auto":
        from .pipeline import AUTO_FIT_BELOW
        from .polarity import detect_polarity

        used, score = detect_polarity(image)
        detected = (used, score)  # handed on, so the femur check and fallback do not detect again
        other = "bone-bright" if used == "bone-dark" else "bone-dark"
        candidates = (used,) if abs(score) >= AUTO_FIT_BELOW[task] else (used, other)
    results = []
    for pol in candidates:
        conf = np.asarray(predict(with_polarity(image, pol)), dtype=np.float32)
        if conf.shape != image.shape:
            raise ValueError(f"Confidence map shape {conf.shape} differs from the image's {image.shape}.")
        target = (metadata or {}).get("target", "outline") if real_network else "outline"
        if task == "head":
            result = _fit_head(conf, target)
        else:
            from .pipeline import head_anchor_callable, region_confidence

            region_conf = None if region is None else region_confidence(image, pol, region)
            circle = None if head_anchor is None else head_anchor_callable(
                None, image, pol, head_anchor, outline_conf=conf if target == "outline" else None, region=region_conf)
            result = _fit_femur(conf, pdm, target, circle, region_conf, side)
        if task == "head" and result.detected and refiner is not None:
            _refine(result, image, pol, refiner)
        result.polarity, result.polarity_score, result.confidence = pol, score, conf
        results.append(result)
    best = max(results, key=_score)  # first wins ties: the detector's choice
    if task == "femur":
        _confirm_femur(best, femur_min_quality, head_dome=_head_dome(pdm), image_shape=image.shape)
    if task == "head" and best.detected and edge_snap:  # the chosen circle only
        snapped = _snap(best, with_polarity(image, best.polarity), best.confidence)
        if real_network:
            _snap_from_femur(best, image, side, snapped=snapped)
    if task == "head" and not best.detected and best.circle is None and real_network:  # the head network found none
        best = _head_from_femur(image, model, metadata, polarity, best, side, detected)
    if task == "head" and real_network:
        _check_with_femur(best, image, model, metadata, polarity, side, reject_unconfirmed=not keep_unconfirmed_head,
                          detected_polarity=detected)
    best.image_shape, best.pixel_mm, best.model, best.side = image.shape, pixel_mm, model_name, side
    if real_network:
        from .inference import views_for

        best.test_time_views = views_for(metadata)
    return best


def _refine(result: FitResult, image, polarity: str, refiner) -> None:
    """Replace a head circle by the refinement network's (``pipeline.refine_head_circle``) when it finds one."""
    from .pipeline import refine_head_circle

    fit, done = refine_head_circle(image, result.circle, refiner, polarity)
    if fit is None:
        return
    result.circle = (float(fit.cx), float(fit.cy), float(fit.r))
    result.quality = {"residual_px": float(fit.residual_px), "arc_coverage_deg": float(fit.arc_coverage_deg),
                      "n_pixels": float(fit.n_pixels), "refined_iterations": float(done)}


def _snap(result: FitResult, bone_dark_image, conf) -> bool:
    """Edge-snap the head circle in place; True when the snap applied."""
    from .edge_snap import snap_circle

    snap = snap_circle(bone_dark_image, result.circle, conf, nested=True)  # as pipeline._snap_head
    result.quality = {**result.quality, "edge_support": float(snap.support), "snapped": float(snap.applied)}
    if snap.applied:
        result.circle = (snap.cx, snap.cy, snap.r)
    return bool(snap.applied)


def _snap_from_femur(result: FitResult, image, side: str | None = None, snapped: bool = False) -> None:
    """The pipeline's checks after the edge snap: when the head network's circle could not be snapped, the second
    snap attempt from the head dome of the shipped femur network's PDM fit
    (``head_femur_check.snap_from_femur_dome``); when it was (``snapped``), the check that it lies on the femur
    (``head_femur_check.snapped_on_femur``). As there, a diffuse blob that nothing confirms, or a circle off the
    femur that no later search replaces, is reported as not detected."""
    from . import head_femur_check, pipeline

    probe = pipeline.FitResult(task="head", image_shape=tuple(image.shape), detected=True, reason="",
                               polarity=result.polarity, polarity_score=None, polarity_mode="given",
                               confidence=result.confidence, side=side)
    probe.circle = dict(zip(("cx", "cy", "r"), (float(v) for v in result.circle)), snapped=snapped)
    try:
        if not snapped:
            head_femur_check.snap_from_femur_dome(probe, image, result.polarity, "auto", 0.5)
        elif head_femur_check.SNAPPED_MUST_BE_ON_FEMUR:
            head_femur_check.snapped_on_femur(probe, image, result.polarity, "auto", 0.5)
    except FileNotFoundError:  # no shipped femur network / PDM
        return
    source = probe.circle.get("source")
    if source in ("femur-dome", "femur-dome-fit", "femur-dome-unanchored", "femur-hough"):
        result.circle = (probe.circle["cx"], probe.circle["cy"], probe.circle["r"])
        snapped = source != "femur-dome-fit"
        found_by = {"from_femur_hough": 1.0} if source == "femur-hough" else {"from_femur_dome": 1.0}
        result.quality = {**result.quality, **found_by, "snapped_from_femur_dome": float(snapped),
                          **({"edge_support": float(probe.circle["edge_support"])} if snapped else {})}
    checks = {k: float(probe.circle[k]) for k in ("ring_contrast", "on_femur") if k in probe.circle}
    result.quality = {**result.quality, **checks}
    if not probe.detected:  # a diffuse blob or a circle off the femur: not found (the circle stays for review)
        result.detected, result.reason = False, probe.reason


def _confirm_femur(result: FitResult, min_quality: float | None = None, head_dome=None, image_shape=None) -> None:
    """``femur_confirm.confirm_femur`` for this module's results: a fit with a mean confidence at its points below
    ``femur_confirm.FEMUR_MIN_QUALITY``, one that is mostly extrapolated, or (with ``head_dome`` and ``image_shape``) an
    implausibly sized head, is "not detected", its contour kept (shown as "Femur contour (unconfirmed)")."""
    from .femur_confirm import FEMUR_MIN_QUALITY, femur_confirmation_reason

    limit = FEMUR_MIN_QUALITY if min_quality is None else min_quality
    reason = femur_confirmation_reason(result.quality.get("quality"), result.contour, limit, head_dome, image_shape,
                                       result.point_confidence)
    if result.detected and reason:
        result.detected, result.reason = False, reason


def _check_with_femur(result: FitResult, image, model, metadata, polarity: str, side: str | None,
                      reject_unconfirmed: bool = True, detected_polarity: tuple | None = None) -> None:
    """The pipeline's femur check (``head_femur_check.check_with_femur_fit``): a head circle that its own edge does
    not clearly confirm, or none, is replaced by the circle at the head dome of a confident whole femur fit that puts
    the head elsewhere; ``reject_unconfirmed``: the head network's circle that nothing confirms is "not detected"."""
    from . import head_femur_check, pipeline

    q = result.quality
    from_femur = any(k in q for k in ("from_femur_dome", "from_femur_hough"))
    if result.detected and not from_femur and q.get("edge_support", 0.0) >= head_femur_check.FEMUR_CHECK_EDGE:
        return
    probe = pipeline.FitResult(task="head", image_shape=tuple(image.shape), detected=result.detected,
                               reason=result.reason, polarity=result.polarity, polarity_score=None,
                               polarity_mode="given", confidence=result.confidence, side=side)
    if result.circle is not None:
        probe.circle = dict(zip(("cx", "cy", "r"), (float(v) for v in result.circle)))
        snapped = q.get("snapped", 0.0) > 0 or q.get("snapped_from_femur_dome", 0.0) > 0
        probe.circle.update(snapped=snapped, **({"source": "femur-helpers"} if from_femur else {}))
    try:
        head_femur_check.check_with_femur_fit(probe, image, polarity, "auto", 0.5, side,
                                              pipeline.NetworkPredictor(model, metadata), detected_polarity,
                                              reject_unconfirmed=reject_unconfirmed)
    except FileNotFoundError:  # no shipped femur network / PDM
        return
    if result.detected and not probe.detected:  # the head network's circle, confirmed by nothing
        result.detected, result.reason = False, probe.reason
        return
    if probe.circle.get("source") == "femur-fit":
        c = probe.circle
        result.circle, result.detected, result.reason = (c["cx"], c["cy"], c["r"]), True, probe.reason
        result.quality = {**result.quality, "from_femur_fit": 1.0, "snapped_from_femur_fit": float(c["snapped"]),
                          "edge_support": float(c["edge_support"])}


def _head_from_femur(image, model, metadata, polarity: str, not_found: FitResult, side: str | None = None,
                     detected_polarity: tuple | None = None) -> FitResult:
    """The pipeline's fallback (``pipeline.fit_image``): head circle from the femur network + PDM head dome."""
    from .pipeline import fit_image as pipeline_fit

    r = pipeline_fit(image, "head", model=(model, metadata), polarity=polarity, side=side,
                     detected_polarity=detected_polarity)
    if not r.detected or not r.circle:
        return not_found
    circle = (r.circle["cx"], r.circle["cy"], r.circle["r"])
    quality = {k: float(r.circle[k]) for k in ("residual_px", "arc_coverage_deg", "n_pixels") if k in r.circle}
    result = FitResult("head", True, r.reason, circle=circle, quality=quality)
    result.polarity, result.confidence = r.polarity, r.confidence
    return result


# --------------------------------------------------------------------------------------------
# MRML
# --------------------------------------------------------------------------------------------
def fit_xray_node(scene, xray_node, task: str, model_path=None, polarity: str = "auto", nodes: dict | None = None,
                  predict=None, pdm=None, editable: bool = True, refine_model=None,
                  side: str | None = None, femur_min_quality: float | None = None,
                  keep_unconfirmed_head: bool = False, test_time_views: int | None = None,
                  k: int | None = None) -> tuple[FitResult, dict]:
    """Fit the X-ray volume node and show the result in the scene; returns (result, nodes).

    A multi-frame X-ray (a fluoroscopy run: ``mrml_glue.xray_frames``) is fitted on its frame in slice K = ``k``
    (0-based; None = the first), the results placed on that frame's plane and ``result.frame`` = ``k`` + 1; any other
    volume of several slices is refused (ValueError).

    ``side``: the femur's side when known ("left" / "right"; None or "auto" = either); ``femur_min_quality`` and
    ``keep_unconfirmed_head``: the confirmation rules; see ``fit_image``.
    ``test_time_views``: 1, 2, 4 or 8 flipped/transposed views that every network of the fit averages (as
    ``deepmorph fit --tta``); None = each model's sidecar ``tta_views`` (1 for the shipped ones; the head task 1).

    ``refine_model``: head refinement network (``pipeline.load_refiner``: None = the shipped one when present,
    "none" = off); not used with a stand-in ``predict``."""
    from . import mrml_glue as glue

    if xray_node is None:
        raise ValueError("Select an X-ray image (a single-slice volume) first.")
    views = test_time_views_block(test_time_views, "test_time_views")
    n_frames = glue.xray_frames(xray_node)
    k = None if n_frames == 1 else int(k or 0)
    image = glue.node_to_image(xray_node, k)
    model = metadata = None
    if predict is None:
        model, metadata = load_task_model(task, model_path)
    name = Path(model_path).name if model_path else f"shipped {task} model"
    refiner = None
    if task == "head" and predict is None and str(refine_model).lower() != "none":
        from .pipeline import default_refiner_path, load_refiner

        path = Path(refine_model) if refine_model else default_refiner_path()
        if refine_model or path.is_file():  # cached per file, like the task model
            refiner = load_refiner(load_task_model("head", path))
    anchor = region = None
    if task == "femur" and predict is None:
        from .pipeline import NetworkPredictor, default_model_path, default_region_model_path

        if default_model_path("head").is_file():  # the shipped head network anchors weak femur fits
            anchor = NetworkPredictor(*load_task_model("head", None))
        if default_region_model_path().is_file():  # and the shipped region network gives a last second opinion
            region = NetworkPredictor(*load_task_model("femur", default_region_model_path()))
    with views:
        result = fit_image(image, task, model, metadata, pdm=pdm, polarity=polarity, predict=predict,
                           pixel_mm=image_pixel_mm(xray_node), model_name=name, refiner=refiner, head_anchor=anchor,
                           region=region, side=side, femur_min_quality=femur_min_quality,
                           keep_unconfirmed_head=keep_unconfirmed_head)
    if k is not None:
        result.frame, result.n_frames = k + 1, n_frames
        xray_node.SetAttribute(glue.FRAMES_ATTRIBUTE, str(n_frames))  # a saved scene's volume has no DICOM file
    return result, show_result(scene, xray_node, result, nodes, editable=editable)


def image_pixel_mm(xray_node) -> float | None:
    """The image's pixel spacing (mm), or None when unknown (PNG/JPEG load with 1 mm, taken as unknown).

    For a radiograph this is the spacing at the detector, not at the patient (divide by magnification).
    """
    from . import mrml_glue as glue

    spacing = float(np.linalg.norm(glue.volume_ijk_to_ras(xray_node)[:3, :2], axis=0).mean())
    return None if abs(spacing - 1.0) < 1e-9 else spacing


MARKUP_KEYS = ("head_circle", "head_centre", "unconfirmed_circle", "unconfirmed_centre", "contour", "landmarks",
               "unconfirmed_contour")
RESULT_ATTRIBUTE = "DeepMorph.result"  # a result node's key (MARKUP_KEYS or "confidence"), saved with the scene
XRAY_REFERENCE = "DeepMorph.xray"  # node reference role: a result node -> the X-ray it was fitted on
UNCONFIRMED_COLOR = (1.0, 0.45, 0.0)  # a circle / contour found but not confirmed ("not detected", for review): orange


def show_result(scene, xray_node, result: FitResult, nodes: dict | None = None, editable: bool = True) -> dict:
    """Confidence overlay + markups of a result; nodes from an earlier call are reused (unless deleted since), stale
    ones hidden."""
    from . import mrml_glue as glue

    nodes = glue.nodes_in_scene(scene, nodes)
    k = 0 if result.frame is None else result.frame - 1  # slice K of the frame fitted: the results lie on its plane
    if result.confidence is not None:
        name = f"{xray_node.GetName()} confidence"
        nodes["confidence"] = glue.confidence_to_node(scene, result.confidence, xray_node, node=nodes.get("confidence"),
                                                      name=name, k=k)
        nodes["confidence"].SetName(name)  # a node reused from another X-ray's fit is named after this one
    show_circle = result.detected and result.circle is not None
    show_unconfirmed = not result.detected and result.circle is not None  # rejected, kept for the reviewer
    show_contour = result.detected and result.contour is not None
    show_unconfirmed_contour = not result.detected and result.contour is not None  # locked: for review only
    if show_circle:
        nodes["head_circle"], nodes["head_centre"] = glue.circle_to_markups(
            scene, xray_node, result.circle, name="Femoral head", curve_node=nodes.get("head_circle"),
            centre_node=nodes.get("head_centre"), k=k,
        )
    if show_unconfirmed:
        nodes["unconfirmed_circle"], nodes["unconfirmed_centre"] = glue.circle_to_markups(
            scene, xray_node, result.circle, name="Femoral head (unconfirmed)",
            curve_node=nodes.get("unconfirmed_circle"), centre_node=nodes.get("unconfirmed_centre"),
            color=UNCONFIRMED_COLOR, k=k,
        )
    if show_contour:
        named = {LANDMARK_TITLES.get(k, k): i for k, i in result.landmarks.items()}
        nodes["contour"], nodes["landmarks"] = glue.contour_to_markups(
            scene, xray_node, result.contour, named, name="Femur contour", curve_node=nodes.get("contour"),
            landmarks_node=nodes.get("landmarks"), editable=editable, point_confidence=result.point_confidence, k=k,
        )
    if show_unconfirmed_contour:
        nodes["unconfirmed_contour"], _ = glue.contour_to_markups(
            scene, xray_node, result.contour, None, name="Femur contour (unconfirmed)",
            curve_node=nodes.get("unconfirmed_contour"), editable=False, color=UNCONFIRMED_COLOR, k=k,
        )
        nodes["unconfirmed_contour"].SetAttribute("DeepMorph.role", "unconfirmed contour")
    visible = {"head_circle": show_circle, "head_centre": show_circle, "unconfirmed_circle": show_unconfirmed,
               "unconfirmed_centre": show_unconfirmed, "contour": show_contour,
               "landmarks": show_contour and bool(result.landmarks), "unconfirmed_contour": show_unconfirmed_contour}
    for key in MARKUP_KEYS:
        if nodes.get(key) is not None:
            nodes[key].GetDisplayNode().SetVisibility(visible[key])
    for key, node in nodes.items():
        node.SetAttribute(RESULT_ATTRIBUTE, key)
        node.SetNodeReferenceID(XRAY_REFERENCE, xray_node.GetID())
    return nodes


def result_nodes(scene, xray_node) -> dict:
    """The result nodes that ``show_result`` made for ``xray_node`` in ``scene`` ({key: node}), e.g. in a scene saved
    with a fit and opened again: pass them as ``nodes`` so that a new fit updates them instead of adding a second set."""
    found = {}
    if xray_node is None:
        return found
    for class_name in ("vtkMRMLMarkupsNode", "vtkMRMLScalarVolumeNode"):
        for index in range(scene.GetNumberOfNodesByClass(class_name)):
            node = scene.GetNthNodeByClass(index, class_name)
            key = node.GetAttribute(RESULT_ATTRIBUTE)
            if key in (*MARKUP_KEYS, "confidence") and node.GetNodeReferenceID(XRAY_REFERENCE) == xray_node.GetID():
                found.setdefault(key, node)
    return found


def first_xray_node(scene):
    """The scene's first volume that can be an X-ray (grey or colour), for the module's input at startup: not a label
    map and not one of DeepMorph's own result nodes (``RESULT_ATTRIBUTE``, e.g. a confidence map); None if none."""
    for class_name in ("vtkMRMLScalarVolumeNode", "vtkMRMLVectorVolumeNode"):
        for index in range(scene.GetNumberOfNodesByClass(class_name)):
            node = scene.GetNthNodeByClass(index, class_name)
            if not node.IsA("vtkMRMLLabelMapVolumeNode") and node.GetAttribute(RESULT_ATTRIBUTE) is None:
                return node
    return None


def refit_after_edit(curve_node, xray_node, pdm, fixed_indices, constrained_fit=None) -> np.ndarray:
    """Re-fit an edited contour under the PDM: the points the user moved stay, the rest follow.

    Returns the new contour (N, 2) px, also written back into ``curve_node`` (labels kept; the descriptions of the
    points moved say "edited by hand" or "moved by the shape model after an edit": ``mrml_glue.describe_edit``).
    """
    from . import mrml_glue as glue

    if constrained_fit is None:
        from .shape_edit import constrained_fit
    uv = glue.markups_to_uv(curve_node, xray_node)
    fixed = sorted({int(i) for i in fixed_indices if 0 <= int(i) < len(uv)})
    if not fixed:
        return uv
    shape = np.asarray(constrained_fit(pdm, uv, fixed, uv[fixed]), dtype=float)
    if shape.shape != uv.shape:
        raise ValueError(f"The constrained fit returned shape {shape.shape}, expected {uv.shape}.")
    labels = glue.control_point_labels(curve_node)
    k = float(np.median(glue.ras_to_ijk(xray_node, glue.control_points_ras(curve_node))[:, 2]))  # its frame's slice
    glue.set_control_points(curve_node, glue.uv_to_ras(xray_node, shape, k), labels, locked=curve_node.GetLocked())
    glue.describe_edit(curve_node, fixed, np.flatnonzero(np.hypot(*(shape - uv).T) > 1e-3))
    return shape


def refit_edited_nodes(nodes: dict, xray_node, pdm, fixed_indices, result: FitResult | None = None) -> np.ndarray:
    """``refit_after_edit`` on ``nodes["contour"]``, then ``nodes["landmarks"]`` moved onto their contour points (named
    by ``result``, or without it, e.g. in a reopened scene, by their "contour point N" descriptions)."""
    from . import mrml_glue as glue

    shape = refit_after_edit(nodes["contour"], xray_node, pdm, fixed_indices)
    landmarks = nodes.get("landmarks")
    if landmarks is not None:
        named = ({LANDMARK_TITLES.get(k, k): i for k, i in result.landmarks.items()} if result is not None
                 else glue.landmark_contour_indices(landmarks))
        glue.update_landmarks_from_contour(nodes["contour"], landmarks, named)
    return shape


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------
def result_csv(result: FitResult) -> str:
    """CSV text: one row per quantity (name, value, unit), then contour points if any."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["quantity", "value", "unit"])
    w.writerow(["task", result.task, ""])
    w.writerow(["detected", int(result.detected), ""])
    if not result.detected:
        w.writerow(["reason", result.reason, ""])
    w.writerow(["polarity", result.polarity, ""])
    if result.circle is not None:
        for key, value in zip(("centre_u", "centre_v", "radius"), result.circle):
            w.writerow([key, f"{value:.3f}", "px"])
        if result.pixel_mm:
            w.writerow(["radius", f"{result.circle[2] * result.pixel_mm:.3f}", "mm"])
    for key, value in result.quality.items():
        w.writerow([key, f"{value:.4g}", "px" if key.endswith("_px") else ("deg" if key.endswith("_deg") else "")])
    if result.contour is not None:
        names = {i: n for n, i in result.landmarks.items()}
        w.writerow([])
        w.writerow(["point", "u_px", "v_px", "landmark"])
        for i, (u, v) in enumerate(np.asarray(result.contour, dtype=float)):
            w.writerow([i, f"{u:.3f}", f"{v:.3f}", names.get(i, "")])
    return buf.getvalue()


def export_result(result: FitResult, path_without_ext: str | os.PathLike) -> dict[str, Path]:
    """Write ``<path>.json`` and ``<path>.csv`` (atomic); returns the paths."""
    from DeepMorphSimulatorLib.files import atomic_write_json, atomic_write_text

    base = Path(path_without_ext)
    paths = {"json": base.with_name(base.name + ".json"), "csv": base.with_name(base.name + ".csv")}
    atomic_write_json(paths["json"], result.to_dict())
    atomic_write_text(paths["csv"], result_csv(result))
    return paths
