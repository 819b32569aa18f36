"""Deep morphing of one X-ray: polarity -> network confidence map -> circle fit (head) or PDM fit (femur).

``fit_image(image, task)`` is what the ``fit``/``evaluate`` commands, the demo and the Slicer module call.
Coordinates are px of the input image: x = u = column, y = v = row, pixel centres at integers, y down.
The confidence predictor is pluggable: anything callable as ``predictor(image float32 (H, W)) -> float32 (H, W)
in [0, 1]`` with an optional attribute ``expected_polarity`` ("bone-dark" | "bone-bright" | "any"); by default
the shipped FusionNet of the task (``DeepMorph/Resources/Models/{head,femur}.safetensors``) is used.
The head task's use of the femur fit (head from the femur's dome, the femur check) is in ``head_femur_check``.
"""
from __future__ import annotations

import contextlib
import functools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from DeepMorphLib.blas_threads import with_serial_blas
from DeepMorphLib.femur_confirm import FEMUR_MIN_QUALITY, confirm_femur
from DeepMorphLib.working_size import at_working_size

TASKS = ("head", "femur")
MODELS_DIR = Path(__file__).resolve().parents[1] / "Resources" / "Models"
TRAIN_HINT = (
    "Train one with our own commands, e.g.\n"
    "  deepmorph dataset --phantom --out data/train --n 2000 --size 256\n"
    "  deepmorph train --task {task} --data data/train --out DeepMorph/Resources/Models/{task}\n"
    "or pass --model PATH to a trained .safetensors file."
)


def default_model_path(task: str) -> Path:
    """Shipped network of ``task``: ``DeepMorph/Resources/Models/<task>.safetensors`` (+ ``<task>.json``)."""
    _check_task(task)
    return MODELS_DIR / f"{task}.safetensors"


def default_refiner_path() -> Path:
    """Shipped head refinement network (ROI model, optional): ``DeepMorph/Resources/Models/head-refine.safetensors``."""
    return MODELS_DIR / "head-refine.safetensors"


def default_region_model_path() -> Path:
    """Shipped femur region network (optional second opinion of the femur fit):
    ``DeepMorph/Resources/Models/femur-region.safetensors``."""
    return MODELS_DIR / "femur-region.safetensors"


def default_dome_circle_path() -> Path:
    """Shipped head-circle model of the femur contour's head dome (``dome_circle.DomeCircleModel``, optional):
    ``DeepMorph/Resources/Models/dome-circle.npz`` (+ ``dome-circle.json``)."""
    return MODELS_DIR / "dome-circle.npz"


def default_pdm_path() -> Path:
    """Shipped point distribution model: ``DeepMorph/Resources/Models/pdm.npz`` (+ ``pdm.json``)."""
    return MODELS_DIR / "pdm.npz"


HEAD_TASK_VIEWS = 1
"""Test-time views of every network the head task runs (its head network and the femur check's femur fits), unless
``--tta`` says otherwise, whatever the models' sidecars say (``tta_views``, which the femur task uses): the head
task's rules were tuned on single-view maps, and 2 views of the femur networks gave it no gain on the tuning sets
(session 36)."""


def test_time_views_block(views: int | None, where: str = "--tta"):
    """``inference.test_time_views(views)`` for every network of a fit or command (``views`` checked, the error
    naming ``where``), or a no-op when ``views`` is None (each model's sidecar); torch is imported only when used."""
    if views is None:
        return contextlib.nullcontext()
    from DeepMorphLib.inference import check_tta, test_time_views

    return test_time_views(check_tta(views, where))


def with_task_views(fit):
    """Decorate ``fit(image, task, ...)`` so that a head fit runs its networks at ``HEAD_TASK_VIEWS`` views
    (``inference.test_time_views``; a number set by an enclosing block, e.g. ``--tta``, is kept)."""

    @functools.wraps(fit)
    def run(image, task, *args, **kwargs):
        if task != "head":
            return fit(image, task, *args, **kwargs)
        from DeepMorphLib.inference import test_time_views

        with test_time_views(HEAD_TASK_VIEWS, unless_set=True):
            return fit(image, task, *args, **kwargs)
    return run


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"task must be 'head' or 'femur', not {task!r}.")


def _resolve_file(path, suffix: str) -> Path:
    p = Path(path)
    if not p.exists() and p.suffix != suffix and p.with_name(p.name + suffix).exists():
        p = p.with_name(p.name + suffix)
    return p


class NetworkPredictor:
    """A trained network + its sidecar metadata as a confidence-map predictor (``inference.predict_confidence``).
    The network runs as an inference copy with its batch norms fused into the convolutions
    (``fusionnet.fuse_for_inference``), made on the first call: ``model`` is taken as trained and frozen."""

    def __init__(self, model, metadata: dict, device: str = "auto", path: str | None = None):
        self.model, self.metadata, self.device, self.path = model, dict(metadata or {}), device, path
        self._inference_model = None
        self.expected_polarity = self.metadata.get("polarity", "bone-dark")
        self.task = self.metadata.get("task")
        self.target = self.metadata.get("target", "outline")  # "outline" band or filled "region" (region.py)
        self.roi = self.metadata.get("roi")  # {"kind": "head", "scale": ...} for a refinement network (roi.py)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        from DeepMorphLib.fusionnet import fuse_for_inference
        from DeepMorphLib.inference import predict_confidence

        if self._inference_model is None:
            self._inference_model = fuse_for_inference(self.model)
        return predict_confidence(self._inference_model, self.metadata, image, device=self.device)

    def describe(self) -> dict:
        from DeepMorphLib.inference import views_for

        keys = ("task", "target", "roi", "input_size", "architecture", "metrics", "created")
        return {"path": self.path, "polarity": self.expected_polarity, "tta_views": views_for(self.metadata),
                **{k: self.metadata[k] for k in keys if k in self.metadata}}


def load_predictor(task: str, model=None, device: str = "auto"):
    """Predictor for ``task`` from ``model``: None (the shipped model), a path to a ``.safetensors`` file
    (extension optional), a ``(network, metadata)`` pair, or a ready predictor (returned as it is)."""
    _check_task(task)
    if model is not None and not isinstance(model, (str, Path, tuple)):
        return model  # already a predictor
    if isinstance(model, tuple):
        return NetworkPredictor(model[0], model[1], device=device)
    path = default_model_path(task) if model is None else _resolve_file(model, ".safetensors")
    if not path.is_file():
        where = "No shipped" if model is None else "No"
        raise FileNotFoundError(f"{where} {task} model at {path}. " + TRAIN_HINT.format(task=task))
    if path.resolve().parent == MODELS_DIR.resolve():  # shipped models load once per process (asked per image)
        stat = path.stat()
        return _load_shipped(task, str(path), stat.st_mtime_ns, stat.st_size, device)
    return _load_network(task, path, device)


def _load_network(task: str, path: Path, device: str) -> "NetworkPredictor":
    from DeepMorphLib.model_io import load_model

    net, metadata = load_model(path, task=task)
    return NetworkPredictor(net, metadata, device=device, path=str(path))


@functools.lru_cache(maxsize=8)
def _load_shipped(task: str, path: str, mtime_ns: int, size: int, device: str) -> "NetworkPredictor":
    """``_load_network`` cached on the file's identity (path, modification time, size): a replaced file reloads."""
    return _load_network(task, Path(path), device)


def _optional_network(spec, task: str, default_path: Path, device: str):
    """The optional network ``spec`` names: None (the shipped one at ``default_path`` when present, else none), False
    or "none" (none), a path to a ``.safetensors`` file, or a ready predictor (returned as it is); None for none."""
    if spec is False or (isinstance(spec, str) and spec.lower() == "none"):
        return None
    if spec is None and not default_path.is_file():
        return None
    return load_predictor(task, default_path if spec is None else spec, device)


def load_refiner(refine=None, device: str = "auto"):
    """Head refinement predictor (a ``--roi head`` network) from ``refine`` (see ``_optional_network``; the shipped
    one is ``default_refiner_path``). Returns None for "no refinement"."""
    pred = _optional_network(refine, "head", default_refiner_path(), device)
    loaded = refine is None or isinstance(refine, (str, Path, tuple))  # a ready predictor is taken as it is
    if pred is not None and loaded and (pred.roi or {}).get("kind") != "head":
        raise ValueError(f"{pred.path or 'The model'} is a whole-image head network, not a head refinement (ROI) network; "
                         "train one with 'deepmorph train --task head --target region --roi head ...' or pass "
                         "--refine-model none.")
    return pred


def refine_head_circle(image, circle, refiner, polarity: str, threshold: float = 0.5, min_points: int = 20,
                       method: str = "algebraic", iterations: int = 2):
    """Refine a head circle (cx, cy, r) px of ``image`` (H, W; shown with ``polarity``) with a ROI network:
    cut the ROI (``roi.head_roi``: ``scale`` radii wide) around the estimate, run the refiner on it, fit the
    circle to the rim of its most confident region (``fit_head_confidence`` "region"), map it back to image
    px; repeat around the new estimate up to ``iterations`` times (stops when it moves < 0.5 px). Returns
    (CircleFit, iterations done); (None, 0) when the refiner finds no head region in the first ROI."""
    import torch

    from DeepMorphLib.circle_fit import fit_circle_points, map_radius_range
    from DeepMorphLib.polarity import apply_polarity
    from DeepMorphLib.region import boundary_points
    from DeepMorphLib.roi import crop_rois, head_roi, to_source

    scale = float((getattr(refiner, "roi", None) or {}).get("scale", 4.0))
    size = int(getattr(refiner, "metadata", {}).get("input_size", 128))
    img = np.asarray(apply_polarity(image, polarity, getattr(refiner, "expected_polarity", "bone-dark")), np.float32)
    src = torch.from_numpy(np.ascontiguousarray(img))[None, None]
    fill = float(np.percentile(img, 1.0))
    r_lo, r_hi = map_radius_range(img.shape)
    cx, cy, r = (float(v) for v in circle)
    best, done = None, 0
    for _ in range(iterations):
        center, side = head_roi(cx, cy, float(np.clip(r, r_lo, r_hi)), scale)
        patch = crop_rois(src, center[None], [side], size, fill)[0, 0].numpy()
        conf = np.asarray(refiner(patch), np.float32)
        rim = boundary_points(conf, level=threshold)
        if len(rim) < min_points:
            break
        cf = fit_circle_points(to_source(rim, center, side, size), method=method)
        if not cf.detected:
            break
        moved = float(np.hypot(cf.cx - cx, cf.cy - cy))
        best, done = cf, done + 1
        cx, cy, r = cf.cx, cf.cy, cf.r
        if moved < 0.5:
            break
    return best, done


def load_head_anchor(head_anchor=None, device: str = "auto"):
    """Head network that anchors the femur fit (``fit_image(head_anchor=...)``) from ``head_anchor`` (see
    ``_optional_network``; the shipped one is the shipped head network). Returns a predictor or None."""
    return _optional_network(head_anchor, "head", default_model_path("head"), device)


def load_region_net(region=None, device: str = "auto"):
    """Femur region network (``--target region``) whose fit is the femur task's last second opinion
    (``fit_image(region=...)``) from ``region`` (see ``_optional_network``; the shipped one is
    ``default_region_model_path``). Returns a predictor or None."""
    pred = _optional_network(region, "femur", default_region_model_path(), device)
    if pred is not None and getattr(pred, "target", "region") != "region":
        raise ValueError(f"{getattr(pred, 'path', None) or 'The model'} is a femur outline network, not a region "
                         "network; train one with 'deepmorph train --task femur --target region ...' or pass "
                         "--region-model none.")
    return pred


@dataclass
class ShapeModel:
    """A PDM plus the indices of its named landmarks (name -> point index or list of indices)."""

    pdm: object
    landmark_indices: dict
    path: str | None = None


def pdm_landmark_indices(pdm, path: str | Path | None = None) -> dict:
    """Named landmark indices of a PDM: its ``landmark_indices``/``landmarks`` attribute, else the sidecar
    JSON next to ``path`` (keys ``landmark_indices`` or ``landmarks``); {} when none is given."""
    for attr in ("landmark_indices", "landmarks"):
        value = getattr(pdm, attr, None)
        if isinstance(value, dict) and value:
            return dict(value)
    if path is not None:
        sidecar = Path(path).with_suffix(".json")
        if sidecar.is_file():
            meta = json.loads(sidecar.read_text())
            for key in ("landmark_indices", "landmarks"):
                if isinstance(meta.get(key), dict):
                    return dict(meta[key])
    return {}


def load_shape_model(pdm=None) -> ShapeModel:
    """The femur PDM from ``pdm``: None (shipped ``pdm.npz``), a path to an ``.npz``, a
    ``PointDistributionModel`` or a ``ShapeModel``."""
    if isinstance(pdm, ShapeModel):
        return pdm
    if pdm is not None and not isinstance(pdm, (str, Path)):
        return ShapeModel(pdm, pdm_landmark_indices(pdm))
    path = default_pdm_path() if pdm is None else _resolve_file(pdm, ".npz")
    if not path.is_file():
        raise FileNotFoundError(
            f"No {'shipped ' if pdm is None else ''}point distribution model at {path}. Build one with "
            "'deepmorph build-pdm --out DeepMorph/Resources/Models/pdm' or pass --pdm PATH.npz.")
    from DeepMorphLib.pdm import PointDistributionModel

    model = PointDistributionModel.load(path)
    return ShapeModel(model, pdm_landmark_indices(model, path), str(path))


@dataclass
class FitResult:
    """Outcome of ``fit_image`` for one image; "not detected" is a result (``detected`` False + ``reason``)."""

    task: str
    image_shape: tuple
    detected: bool
    reason: str
    polarity: str  # polarity of the input image as used ("bone-dark" | "bone-bright")
    polarity_score: float | None  # detector score (> 0 bone-bright); None when the polarity was given
    polarity_mode: str  # "given", "auto" (detector) or "auto-fit" (weak detector score: better of both fits)
    circle: dict | None = None  # head: cx, cy, r (px), n_pixels, residual_px, arc_coverage_deg
    contour: np.ndarray | None = None  # femur: (N, 2) fitted PDM points (x, y) px
    contour_closed: bool = False  # the PDM outline is open (lateral shaft -> head -> medial shaft) unless True
    reflected: bool | None = None  # femur: the mirrored PDM fitted (the model describes a right femur)
    side: str | None = None  # femur side the fits assumed ("left" / "right"); None = either (both were tried)
    point_confidence: np.ndarray | None = None  # femur: (N,) confidence at each contour point
    head_anchor: dict | None = None  # femur: head circle (cx, cy, r px) the PDM fit was offered as an anchor
    fit_start: str | None = None  # femur: which start won ("0": CPD, "shape-cpd", "head-anchor k", ...)
    fit_map: str | None = None  # femur: the map the contour was fitted to ("outline" or "region" network)
    landmarks: dict = field(default_factory=dict)  # name -> [x, y] px
    quality: float | None = None
    timings_ms: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)
    source: str | None = None
    confidence: np.ndarray | None = field(default=None, repr=False)  # (H, W) float32 in [0, 1]
    fit_scale: float = 1.0  # image px per px of the image the fit ran on (> 1: a large image reduced, working_size)

    def to_dict(self) -> dict:
        """JSON-ready dict (no confidence map; arrays as lists; NaN -> None)."""
        def clean(v):
            if isinstance(v, np.ndarray):
                return clean(v.tolist())
            if isinstance(v, dict):
                return {str(k): clean(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [clean(x) for x in v]
            if isinstance(v, (np.floating, float)):
                return float(v) if np.isfinite(v) else None
            if isinstance(v, np.integer):
                return int(v)
            if isinstance(v, np.bool_):
                return bool(v)
            return v

        keys = ("source", "task", "image_shape", "detected", "reason", "polarity", "polarity_score",
                "polarity_mode", "side", "circle", "contour", "contour_closed", "reflected", "point_confidence",
                "head_anchor", "fit_start", "fit_map", "landmarks",
                "quality", "fit_scale", "timings_ms", "model")
        return {k: clean(getattr(self, k)) for k in keys}


def _as_image(image) -> np.ndarray:
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3 and img.shape[-1] in (3, 4):
        img = img[..., :3].mean(axis=-1)
    if img.ndim != 2:
        raise ValueError(f"fit_image expects a 2-D grey image (H, W), got shape {img.shape}.")
    if min(img.shape) < 16:
        raise ValueError(f"Image of {img.shape[1]}x{img.shape[0]} px is too small to fit (at least 16x16).")
    from DeepMorphSimulatorLib.files import check_finite

    check_finite(img, "Image")
    return img


def _resize_to(conf: np.ndarray, shape: tuple) -> np.ndarray:
    conf = np.asarray(conf, dtype=np.float32)
    if conf.shape == tuple(shape):
        return conf
    from scipy import ndimage as ndi

    return ndi.zoom(conf, (shape[0] / conf.shape[0], shape[1] / conf.shape[1]), order=1).astype(np.float32)


def fit_head_confidence(conf, target: str = "outline", threshold: float = 0.5, min_pixels: int = 100,
                        method: str = "algebraic"):
    """Circle fit (``circle_fit.CircleFit``) to a head network's confidence map (H, W) in [0, 1].

    ``target`` "outline": the circle through the pixels above ``threshold`` (the paper). "region": the circle
    through the sub-pixel rim (iso-line at ``threshold``) of the most confident region; fewer than
    ``min_pixels`` rim points is "not detected"."""
    from DeepMorphLib.circle_fit import CircleFit, fit_circle, fit_circle_points, map_radius_range
    from DeepMorphLib.region import boundary_points, check_target

    if check_target(target) == "outline":
        return fit_circle(conf, threshold=threshold, min_pixels=min_pixels, method=method)
    rim = boundary_points(conf, level=threshold)
    if len(rim) < min_pixels:
        return CircleFit(False, n_pixels=len(rim), method=method,
                         reason=f"the head region's rim has only {len(rim)} points (fewer than min_pixels="
                                f"{min_pixels}); femoral head not detected")
    kw = {"radius_range": map_radius_range(np.shape(conf))} if method == "robust" else {}
    return fit_circle_points(rim, method=method, **kw)


def femur_fit_map(conf, target: str = "outline", threshold: float = 0.5) -> np.ndarray:
    """The map the PDM fit works on: an outline network's confidence as it is, a region network's edges
    (``region.edge_rim_map``: a ridge where the confidence drops steeply from inside to outside; ``threshold`` is
    not needed for it)."""
    from DeepMorphLib.region import check_target, edge_rim_map

    return conf if check_target(target) == "outline" else edge_rim_map(conf)


def _fit_pdm(conf, pdm, **kw):
    from DeepMorphLib.asm_fit import fit_pdm_to_confidence

    return fit_pdm_to_confidence(conf, pdm, **kw)


REGION_POLISH_PX = 5.0  # px: a region fit's points move onto the outline network's ridge within this distance
FINAL_POLISH_PX = 5.0  # px: the kept outline fit's PDM points move onto the outline ridge within this distance. Fits
#                        are compared after asm_fit's 3 px polish: polished by 5 px before the comparison, wrong fits
#                        snap onto nearby ridges and win more often (simulated tuning images, training seeds: mean
#                        point-to-curve 5.19 -> 6.37 px); polished by 3 / 4 / 5 / 6 px after it (fits chosen without
#                        polish): median 1.91 / 1.78 / 1.77 / 1.80 px, mean 5.81 / 5.76 / 5.74 / 5.73 px


def fit_femur_confidence(conf, target: str, pdm, options: dict | None = None, region_conf=None,
                         threshold: float = 0.5):
    """``second_opinion_fit`` (the PDM fit with a region network's second opinion), then, for an outline network's
    map, the fit's unseen points extrapolated from its seen ones under a stronger prior (``EXTRAPOLATE_UNSEEN``,
    ``_extrapolate_unseen``). The femur task and the Slicer logic both fit through here."""
    fit = second_opinion_fit(conf, target, pdm, options, region_conf, threshold)
    return _extrapolate_unseen(conf, fit, pdm) if target == "outline" and EXTRAPOLATE_UNSEEN else fit


def second_opinion_fit(conf, target: str, pdm, options: dict | None = None, region_conf=None,
                       threshold: float = 0.5):
    """PDM fit (``asm_fit.ShapeFit``) to a femur network's confidence ``conf`` (H, W; the map of ``femur_fit_map``),
    with a last second opinion from a region network.

    ``region_conf``: None, or a callable returning a femur *region* network's confidence (H, W) for the same
    image, called only when ``conf`` is an outline network's and its fit is not convincing (not detected, or
    mean confidence over its points inside the image, ``asm_fit.in_view_confidence``, below
    ``options["second_opinion_below"]``, default 0.7, as for the other second opinions).
    The PDM is then also fitted to the region map's edges (``region.edge_rim_map``: the region network marks
    the whole bone, so it is not drawn to pelvis and implant edges the way the outline network is) and the fit
    with the higher mean confidence wins; a winning region fit is polished onto the outline network's ridge
    (``REGION_POLISH_PX``: the region's edge is smooth, the outline ridge sharp). ``info["fit_map"]`` says which
    map the kept fit comes from when it is the region's ("region"). On 160 simulated tuning images (training seeds)
    the point-to-curve error went from 8.86 to 6.00 px mean (median 2.20 to 2.15)."""
    options = dict(options or {})
    final_polish_px = float(options.pop("final_polish_px", FINAL_POLISH_PX))
    first = _fit_pdm(femur_fit_map(conf, target, threshold), pdm, **options)
    below = float(options.get("second_opinion_below", 0.7))

    def score(fit, quality=None):  # as asm_fit compares fits: mean confidence (or ``quality``) less the upright penalty
        quality = fit.quality if quality is None else quality
        if options.get("shaft_axis") is None:
            return quality
        from DeepMorphLib.asm_fit import UPRIGHT_MAX_DEG, UPRIGHT_WEIGHT, upright_penalty, upright_prior

        prior = upright_prior(options["shaft_axis"], options.get("upright_max_deg", UPRIGHT_MAX_DEG),
                              options.get("upright_weight", UPRIGHT_WEIGHT))
        return quality - upright_penalty(fit.points, prior)

    if target != "outline":
        return first
    keep_first = lambda: _final_polish(conf, first, pdm, final_polish_px, options, threshold)  # noqa: E731
    if region_conf is None:
        return keep_first()
    from DeepMorphLib.asm_fit import in_view_confidence

    if first.detected and score(first, in_view_confidence(conf, first.points)) >= below:
        return keep_first()
    region = region_conf()
    if region is None:
        return keep_first()
    second = _fit_pdm(femur_fit_map(region, "region", threshold), pdm, **options)
    if isinstance(getattr(first, "info", None), dict):
        first.info["region_quality"] = float(second.quality) if second.detected else None
    if not second.detected or (first.detected and score(second) <= score(first)):
        return keep_first()
    import dataclasses

    from DeepMorphLib.asm_fit import polish_points

    points = polish_points(conf, second.points, bool(getattr(pdm, "closed", False)), REGION_POLISH_PX,
                           float(options.get("step_px", 0.5)), threshold)
    return dataclasses.replace(second, points=points,
                               info={**second.info, "fit_map": "region", "outline_quality": float(first.quality)})


EXTRAPOLATE_UNSEEN = True  # the femur fit's unseen points from its seen ones under a stronger prior
#   (``asm_fit.extrapolate_unseen``, ``asm_fit.UNSEEN_REGULARIZATION``)


def _extrapolate_unseen(conf, fit, pdm):
    """``fit`` (a detected ``asm_fit.ShapeFit``) with its unseen points extrapolated (``asm_fit.extrapolate_unseen``).
    Its point confidences and quality stay those of the fit as found: they say what the network supports (the
    confirmation, ``femur_confirm``, and the dashed extrapolated parts of the overlay go by them), and a moved
    unseen point stays unseen even where it happens to land on another ridge. Unchanged without a transform
    (other fitters) or when nothing moved."""
    if not fit.detected or getattr(fit, "transform", None) is None or getattr(fit, "b", None) is None:
        return fit
    import dataclasses

    from DeepMorphLib.asm_fit import extrapolate_unseen

    model = pdm.reflect() if fit.reflected else pdm
    points, n = extrapolate_unseen(conf, model, fit.points, fit.transform, fit.b)
    if n == 0:
        return fit
    return dataclasses.replace(fit, points=points, info={**(fit.info or {}), "unseen_extrapolated": n})


def _final_polish(conf, fit, pdm, reach_px: float, options: dict, threshold: float):
    """``fit`` (an ``asm_fit.ShapeFit`` on the outline map ``conf``) with its PDM points (``model_points``) polished
    onto the confident ridge within ``reach_px`` instead of asm_fit's reach (``polish_px``, default
    ``asm_fit.POLISH_PX``); 0 = the PDM points themselves. Its point confidences, quality and support follow.
    Unchanged when not detected or the reach is the same."""
    model_points = getattr(fit, "model_points", None)  # fits without it (other fitters) stay as they are
    if not fit.detected or model_points is None:
        return fit
    import dataclasses

    from DeepMorphLib.asm_fit import POLISH_PX, polish_points, sample_bilinear

    if reach_px == float(options.get("polish_px", POLISH_PX)):
        return fit

    points = np.asarray(model_points, dtype=np.float64)
    if reach_px > 0:
        points = polish_points(conf, points, bool(getattr(pdm, "closed", False)), reach_px,
                               float(options.get("step_px", 0.5)), threshold)
    point_conf = sample_bilinear(conf, points)
    return dataclasses.replace(fit, points=points, point_confidence=point_conf, quality=float(point_conf.mean()),
                               support=float(np.mean(point_conf > threshold)))


def region_confidence(img, polarity: str, region_net, timings: dict | None = None):
    """A callable for ``fit_femur_confidence``: ``region_net``'s confidence on ``img`` (shown with ``polarity``),
    resized to the image; its time is added to ``timings["network_ms"]``. None when there is no region network."""
    from DeepMorphLib.polarity import apply_polarity

    if region_net is None:
        return None

    @functools.lru_cache(maxsize=1)  # the head anchor and the region fit may both ask: the network runs once
    def region():
        t = time.perf_counter()
        out = _resize_to(region_net(apply_polarity(img, polarity, getattr(region_net, "expected_polarity",
                                                                             "bone-dark"))), img.shape)
        if timings is not None:
            timings["network_ms"] = timings.get("network_ms", 0.0) + 1000 * (time.perf_counter() - t)
        return out

    return region


def _landmarks(points: np.ndarray, indices: dict) -> dict:
    """name -> [x, y] px of the named PDM points (internal ``anchor_*`` names are left out)."""
    out = {}
    for name, idx in indices.items():
        if str(name).startswith("anchor_"):
            continue
        idx = np.atleast_1d(np.asarray(idx, dtype=int))
        if idx.size and np.all((idx >= 0) & (idx < len(points))):
            out[name] = points[idx].mean(axis=0).tolist()
    return out


# |polarity detector score| below which both polarities are fitted and the better fit wins ("auto-fit"), per task.
# With the ridge score alone (before the polarity classifier), the fits' comparison chose worse than the detector's
# sign: femur polarity right on 195 / 200 tune3 and 153 / 160 tune2 images with auto-fit below 0.12, 199 and 159
# with it only below 0.01 (p2c_mean 4.29 -> 4.27 and 3.49 -> 3.48 px); the head circle's fit score picked the wrong
# polarity 10 times on the first tuning set (rmse_mean 3.50 px with auto-fit below 0.12, 3.11 below 0.01).
AUTO_FIT_BELOW = {"head": 0.01, "femur": 0.01}
SIDES = ("left", "right")


def check_side(side) -> str | None:
    """``side`` as ``fit_image`` takes it: "left", "right", or None / "auto" (unknown: either side)."""
    if side in (None, "auto"):
        return None
    if side not in SIDES:
        raise ValueError(f"side must be 'left', 'right' or 'auto' (unknown), got {side!r}.")
    return side


def side_option(pdm, side: str | None) -> dict:
    """``asm_fit`` keyword for a known side: {"reflection": bool} (``pdm.reflection_for``); {} when it is unknown."""
    return {} if side is None else {"reflection": pdm.reflection_for(side)}


def _in_image_px(result: FitResult, to_px, image_shape: tuple, resample) -> None:
    """``working_size.at_working_size``'s mapping of a fit made on the reduced image back to the image's px."""
    result.image_shape, result.fit_scale = image_shape, float(to_px.length)
    if result.circle:
        result.circle = to_px.circle(result.circle)
    if result.head_anchor:
        result.head_anchor = to_px.circle(result.head_anchor)
    if result.contour is not None:
        result.contour = to_px.xy(result.contour)
    result.landmarks = {name: to_px.xy(xy).tolist() for name, xy in result.landmarks.items()}
    if result.confidence is not None:
        result.confidence = resample(result.confidence, image_shape)


@with_task_views
@with_serial_blas
@at_working_size(_as_image, _in_image_px)
def fit_image(image, task: str, model=None, pdm=None, polarity: str = "auto", *, predictor=None,
              device: str = "auto", threshold: float = 0.5, min_pixels: int = 100,
              circle_method: str = "algebraic", fit_options: dict | None = None, source: str | None = None,
              head_fallback: bool = True, refine=None, edge_snap: bool = True, head_anchor=None,
              region=None, side: str | None = None, femur_check: bool = True,
              detected_polarity: tuple | None = None, femur_min_quality: float | None = None,
              keep_unconfirmed_head: bool = False) -> FitResult:
    """Find the femoral head (``task="head"``: circle) or the proximal femur (``"femur"``: PDM contour with
    named landmarks) in ``image`` (float (H, W), any grey range, either polarity). The image is fitted resampled to
    ``working_size.WORKING_SIZE_PX`` (448 px) on its longer side and the result given in its own px (``fit_scale``:
    image px per fitted px; the confidence map resampled to the image).

    ``model``/``predictor``: see ``load_predictor`` (None = shipped model). ``pdm``: see ``load_shape_model``.
    ``polarity``: "auto" (detected, ``polarity.detect_polarity``), "bone-dark" or "bone-bright"; the image is
    inverted when it differs from the network's expectation (sidecar key ``polarity``, default bone-dark).
    When the detector's evidence is weak (|score| < ``AUTO_FIT_BELOW[task]``) both polarities go through
    the network and the better fit (``fit_score``) is kept (``polarity_mode`` "auto-fit").
    ``threshold``/``min_pixels``/``circle_method``: circle fit settings (paper: 100 px minimum).
    ``fit_options``: extra keyword arguments of ``asm_fit.fit_pdm_to_confidence``.
    ``head_fallback``: when the head network finds too few outline pixels, fit the circle to the head dome of
    the femur network's confidence instead, located by the PDM fit (``circle["source"] = "femur-contour"``);
    and when the head network's circle cannot be edge-snapped (its blob is off, often by more than a radius),
    try the snap again from the head dome of the femur fit (``circle["source"] = "femur-dome"``); a circle that
    was snapped must lie on the femur (``head_femur_check.snapped_on_femur``), else the head is looked for from
    the femur fit and maps.
    ``refine``: head refinement network (see ``load_refiner``; None = the shipped one when present and the
    head network is the shipped one too, False = off): the circle found on the whole image is refined on a ROI
    around it (``refine_head_circle``; ``circle["refined"]`` = iterations done, ``circle["coarse"]`` = before).
    ``edge_snap``: finally move the head circle onto the head's own edge in the image when that edge is clear
    (``edge_snap.snap_circle``; ``circle["snapped"]``, ``circle["edge_support"]``, ``circle["unsnapped"]``).
    ``head_anchor`` (femur): head network whose circle (edge-snapped) anchors extra PDM starts when the first
    fit is not convincing (``asm_fit`` "second opinions"): None = the shipped head network when the femur
    network is the shipped one too, False = off, or a path / predictor (``load_predictor``). The circle used
    is reported as ``head_anchor``.
    ``region`` (femur): femur region network whose fit is the last second opinion (``fit_femur_confidence``;
    ``fit_map`` says which map the contour comes from): None = the shipped one when present and the femur
    network is the shipped one too, False = off, or a path / predictor (``load_region_net``).
    ``femur_check`` (head): a head circle that no clear edge of its own confirms (``head_femur_check``:
    ``needs_femur_check``) is checked against the whole femur fit (``check_with_femur_fit``) and replaced when a
    confident fit puts the head elsewhere; the head network's own circle that nothing confirms is then "not
    detected" unless ``keep_unconfirmed_head``.
    ``side``: the femur's side when known ("left" / "right"; None or "auto" = unknown). Images are taken to be
    shown in the radiological convention (patient's right on the image's left, not mirrored; any in-plane
    rotation): a left femur is then the mirror image of a right one, so every PDM fit (the femur task's, and
    the head task's fits that confirm or replace the head circle) only tries the model of that side (a fit is
    never the other side's mirrored shape; a wide view of both hips can still be fitted on the wrong hip).
    ``femur_min_quality`` (femur): a fit whose quality (mean confidence at its points) is below this is reported not
    detected, its contour kept for review (``femur_confirm.confirm_femur``; None = ``FEMUR_MIN_QUALITY``, 0 = off).
    ``detected_polarity``: (polarity, score) that ``polarity.detect_polarity`` already gave for this very image, used
    instead of detecting again when ``polarity`` is "auto" (the head task's femur check passes its own).
    Raises ValueError for unusable input and FileNotFoundError for a missing model; never for "not found".
    """
    from DeepMorphLib import head_femur_check
    from DeepMorphLib.polarity import POLARITIES, apply_polarity, resolve_polarity

    _check_task(task)
    side = check_side(side)
    t_start = time.perf_counter()
    img = _as_image(image)
    timings = {}
    t = time.perf_counter()
    if polarity == "auto" and detected_polarity is not None:
        used, score = detected_polarity
    else:
        used, score = resolve_polarity(img, polarity)
    timings["polarity_ms"] = 1000 * (time.perf_counter() - t)
    pred = predictor if predictor is not None else load_predictor(task, model, device)
    default_net = predictor is None and model is None
    refiner = None
    if task == "head":
        refiner = load_refiner(refine if refine is not None or default_net else False, device)
    shape_model = load_shape_model(pdm) if task == "femur" else None
    anchor_net = region_net = None
    if task == "femur" and (head_anchor is not None or default_net):
        anchor_net = load_head_anchor(head_anchor, device)
    if task == "femur" and (region is not None or default_net):
        region_net = load_region_net(region, device)
    expected = getattr(pred, "expected_polarity", "bone-dark")
    confident = score is None or abs(score) >= AUTO_FIT_BELOW[task]
    mode = "given" if polarity != "auto" else "auto" if confident or expected == "any" else "auto-fit"
    candidates = [used] if mode != "auto-fit" else [used] + [p for p in POLARITIES if p != used]
    results = []
    for cand in candidates:  # "auto-fit": weak detector evidence, so the fits of both polarities compete
        t = time.perf_counter()
        conf = _resize_to(pred(apply_polarity(img, cand, expected)), img.shape)
        network_ms = 1000 * (time.perf_counter() - t)
        result = FitResult(task=task, image_shape=tuple(img.shape), detected=False, reason="", polarity=cand,
                           polarity_score=score, polarity_mode=mode, confidence=conf, source=source, side=side,
                           model=pred.describe() if hasattr(pred, "describe") else {"name": type(pred).__name__})
        t = time.perf_counter()
        target = getattr(pred, "target", "outline")
        if task == "head":
            _fill_head(result, fit_head_confidence(conf, target, threshold, min_pixels, circle_method))
            if not result.detected and head_fallback and isinstance(pred, NetworkPredictor):
                try:  # needs the shipped femur network and PDM
                    head_femur_check.head_from_femur_contour(result, img, cand, device, threshold, min_pixels)
                except FileNotFoundError:
                    pass
            if result.detected and refiner is not None:
                _refine_head(result, img, cand, refiner, threshold, circle_method)
        else:
            options = {"shaft_axis": shaft_axis_indices(shape_model.landmark_indices),
                       **side_option(shape_model.pdm, side), **(fit_options or {})}
            dome = _head_dome(shape_model)
            extra = {}
            region = region_confidence(img, cand, region_net, extra)
            if anchor_net is not None and dome is not None and "head_circle" not in options:
                options.update(head_circle=head_anchor_callable(result, img, cand, anchor_net, threshold, min_pixels,
                                                                circle_method, conf if target == "outline" else None,
                                                                region), head_dome=dome)
            sf = fit_femur_confidence(conf, target, shape_model.pdm, options, region, threshold)
            _fill_femur(result, sf, shape_model)
            result.fit_map = (getattr(sf, "info", None) or {}).get("fit_map", target) if result.detected else None
            if result.fit_map == "region" and hasattr(region_net, "describe"):
                result.model = {**result.model, "region": region_net.describe().get("path")}
            network_ms += extra.get("network_ms", 0.0)
            t -= extra.get("network_ms", 0.0) / 1000  # the region network's time counts as network time
        result.timings_ms = {"network_ms": network_ms, "fit_ms": 1000 * (time.perf_counter() - t)}
        results.append(result)
    best = max(results, key=fit_score)  # first wins ties: the detector's choice
    if task == "femur":
        confirm_femur(best, FEMUR_MIN_QUALITY if femur_min_quality is None else femur_min_quality, _head_dome(shape_model))
    timings["network_ms"] = sum(r.timings_ms["network_ms"] for r in results)
    timings["fit_ms"] = sum(r.timings_ms["fit_ms"] for r in results)
    if task == "head" and best.detected and edge_snap:  # the chosen circle only
        t = time.perf_counter()
        _snap_head(best, img, best.polarity, best.confidence)
        if head_fallback and isinstance(pred, NetworkPredictor):
            try:  # needs the shipped femur network and PDM
                if not best.circle.get("snapped"):
                    head_femur_check.snap_from_femur_dome(best, img, best.polarity, device, threshold)
                elif head_femur_check.SNAPPED_MUST_BE_ON_FEMUR:
                    head_femur_check.snapped_on_femur(best, img, best.polarity, device, threshold)
            except FileNotFoundError:
                pass
        timings["fit_ms"] += 1000 * (time.perf_counter() - t)
    if task == "head" and femur_check and head_fallback and isinstance(pred, NetworkPredictor) \
            and head_femur_check.needs_femur_check(best):
        t = time.perf_counter()
        try:  # needs the shipped femur networks and PDM
            head_femur_check.check_with_femur_fit(best, img, polarity, device, threshold, side, pred, (used, score),
                                  reject_unconfirmed=not keep_unconfirmed_head)
        except FileNotFoundError:
            pass
        timings["femur_check_ms"] = 1000 * (time.perf_counter() - t)
    timings["total_ms"] = 1000 * (time.perf_counter() - t_start)
    best.timings_ms = timings
    return best


def fit_score(result: FitResult) -> float:
    """How convincing a fit is (higher is better; -1 when not detected): head = arc coverage (fraction of
    360 deg) discounted by the residual (px); femur = the fit's quality (mean confidence at its points)."""
    if not result.detected:
        return -1.0
    if result.task == "head":
        c = result.circle or {}
        coverage = min(1.0, c.get("arc_coverage_deg", 360.0) / 360.0)
        return coverage * float(np.exp(-c.get("residual_px", 0.0) / 3.0))
    return float(result.quality or 0.0)


HEAD_ARC = ("anchor_neck_superior", "anchor_neck_inferior")  # PDM landmarks bounding the head dome


def head_dome_indices(landmarks: dict):
    """(first, last) PDM point indices of the head dome from a PDM's named landmarks (``HEAD_ARC``), or None
    when they are not named."""
    if not all(k in (landmarks or {}) for k in HEAD_ARC):
        return None
    return int(np.atleast_1d(landmarks[HEAD_ARC[0]])[0]), int(np.atleast_1d(landmarks[HEAD_ARC[1]])[0])


SHAFT_AXIS = ("anchor_head_apex", "anchor_shaft_cut_lateral", "anchor_shaft_cut_medial")


def shaft_axis_indices(landmarks: dict):
    """(head apex, shaft-cut point, shaft-cut point) point indices from a PDM's named landmarks (``SHAFT_AXIS``)
    for ``asm_fit``'s upright prior, or None (no prior) when they are not named."""
    if not all(k in (landmarks or {}) for k in SHAFT_AXIS):
        return None
    return tuple(int(np.atleast_1d(landmarks[k])[0]) for k in SHAFT_AXIS)


def _head_dome(shape_model: ShapeModel):
    return head_dome_indices(shape_model.landmark_indices)




def head_anchor_circle(img, polarity: str, head_net, threshold: float = 0.5, min_pixels: int = 100,
                       method: str = "algebraic") -> dict | None:
    """The head network's circle on ``img`` (H, W; shown with ``polarity``), edge-snapped (rim offset
    ``ANCHOR_RIM_OFFSET_SIGMAS``): a dict (cx, cy, r px, fit details, ``snapped``), or None when the head network
    finds no head. ``head_net``: a predictor."""
    from DeepMorphLib.polarity import apply_polarity

    conf = _resize_to(head_net(apply_polarity(img, polarity, getattr(head_net, "expected_polarity", "bone-dark"))),
                      img.shape)
    probe = FitResult(task="head", image_shape=tuple(img.shape), detected=False, reason="", polarity=polarity,
                      polarity_score=None, polarity_mode="given")
    _fill_head(probe, fit_head_confidence(conf, getattr(head_net, "target", "outline"), threshold, min_pixels, method))
    if not probe.detected:
        return None
    _snap_head(probe, img, polarity, conf, ANCHOR_RIM_OFFSET_SIGMAS)
    return dict(probe.circle)


ANCHOR_RIM_OFFSET_SIGMAS = 0.75  # edge snap rim offset of the circle that anchors the femur fit: the anchored starts
#   were tuned with this (``edge_snap.HOMOGENEOUS_RIM_OFFSET_SIGMAS``); with the head's 0.25, 28 of the 160 tune2 femur
#   fits changed and p2c_mean went 5.17 -> 5.47 px (000029: 11.7 -> 48.6 px), real dev 21.2 -> 21.3 px


def head_anchor_callable(result: FitResult | None, img, polarity: str, head_net, threshold: float = 0.5,
                         min_pixels: int = 100, method: str = "algebraic", outline_conf=None, region=None):
    """A callable for ``asm_fit`` (called only when the femur fit needs a second opinion): ``head_anchor_circle``
    as (cx, cy, r) px, recorded in ``result.head_anchor`` (``result`` None: not recorded); None when no head is
    found. When the head network's circle is not edge-confirmed and the femur maps are at hand (``outline_conf``:
    the femur outline network's map; ``region``: a callable giving the region network's), a well supported circle
    of the femur maps (``head_search``, support >= ``MIN_HOUGH_SUPPORT``) anchors instead (``head_anchor["source"]``
    "femur-hough"; simulated tuning images: femur p2c_mean 6.32 -> 5.20 px; real dev set 23.4 -> 19.8 px)."""
    @functools.lru_cache(maxsize=1)  # the outline and the region fit may both ask: the head network runs once
    def circle():
        found = head_anchor_circle(img, polarity, head_net, threshold, min_pixels, method)
        if (found is None or not found.get("snapped")) and outline_conf is not None and region is not None:
            from DeepMorphLib.head_search import head_circle_hough

            region_conf = region()
            hough = None if region_conf is None else head_circle_hough(outline_conf, region_conf)
            if hough is not None and hough.score * hough.coverage >= MIN_HOUGH_SUPPORT:
                found = {"cx": hough.cx, "cy": hough.cy, "r": hough.r, "source": "femur-hough",
                         "replaced": None if found is None else {k: found[k] for k in ("cx", "cy", "r")}}
        if found is None:
            return None
        if result is not None:
            result.head_anchor = found
        return found["cx"], found["cy"], found["r"]

    return circle


MIN_HOUGH_SUPPORT = 0.4  # head_search score x arc coverage of a Hough head circle (simulated tuning images: the
#                          circles within 5 px of the head scored >= 0.47, those further off <= 0.40 but one 8 px off)




def _refine_head(result: FitResult, img, polarity: str, refiner, threshold: float, method: str) -> None:
    coarse = {k: result.circle[k] for k in ("cx", "cy", "r")}
    source = result.circle.get("source")
    cf, done = refine_head_circle(img, (coarse["cx"], coarse["cy"], coarse["r"]), refiner, polarity,
                                  threshold=threshold, method=method)
    if cf is not None:
        _fill_head(result, cf)
        if source:
            result.circle["source"] = source
    result.circle.update(refined=done, coarse=coarse)
    if hasattr(refiner, "describe"):
        result.model = {**result.model, "refiner": refiner.describe().get("path")}


def _snap_head(result: FitResult, img, polarity: str, conf, rim_offset_sigmas: float | None = None) -> None:
    from DeepMorphLib.edge_snap import RIM_OFFSET_SIGMAS, snap_circle
    from DeepMorphLib.polarity import apply_polarity

    before = {k: result.circle[k] for k in ("cx", "cy", "r")}
    snap = snap_circle(apply_polarity(img, polarity, "bone-dark"), (before["cx"], before["cy"], before["r"]), conf,
                       rim_offset_sigmas=RIM_OFFSET_SIGMAS if rim_offset_sigmas is None else rim_offset_sigmas,
                       nested=True)  # the head network's circle: its blob may cover the acetabular ring
    result.circle.update(snapped=snap.applied, edge_support=snap.support)
    if snap.applied:
        result.circle.update(cx=snap.cx, cy=snap.cy, r=snap.r, unsnapped=before)
        result.landmarks = {"head_center": [snap.cx, snap.cy]}


def _fill_head(result: FitResult, cf) -> None:
    result.detected = bool(cf.detected)
    result.reason = str(getattr(cf, "reason", "") or ("" if cf.detected else "not detected"))
    if result.detected:
        result.circle = {k: float(getattr(cf, k)) for k in ("cx", "cy", "r")}
        for k in ("n_pixels", "residual_px", "arc_coverage_deg"):
            if getattr(cf, k, None) is not None:
                result.circle[k] = float(getattr(cf, k))
        result.landmarks = {"head_center": [result.circle["cx"], result.circle["cy"]]}
        q = getattr(cf, "quality", None)
        if q is None and getattr(cf, "arc_coverage_deg", None) is not None:
            q = min(1.0, float(cf.arc_coverage_deg) / 360.0)
        result.quality = None if q is None else float(q)


def _fill_femur(result: FitResult, sf, shape_model: ShapeModel) -> None:
    result.detected = bool(sf.detected)
    result.reason = str(getattr(sf, "reason", "") or ("" if sf.detected else "not detected"))
    result.quality = None if getattr(sf, "quality", None) is None else float(sf.quality)
    result.model = {**result.model, "pdm": shape_model.path}
    if result.detected and getattr(sf, "points", None) is not None:
        pts = np.asarray(sf.points, dtype=np.float64).reshape(-1, 2)
        result.contour = pts
        result.contour_closed = bool(getattr(shape_model.pdm, "closed", False))
        result.reflected = None if getattr(sf, "reflected", None) is None else bool(sf.reflected)
        start = (getattr(sf, "info", None) or {}).get("start_used")
        result.fit_start = None if start is None else str(start)
        if getattr(sf, "point_confidence", None) is not None:
            result.point_confidence = np.asarray(sf.point_confidence, dtype=np.float64)
        result.landmarks = _landmarks(pts, shape_model.landmark_indices)
