"""Femoral-head circle from the head dome of a femur contour, learned from simulated ground truth.

The circle through a contour's head-dome points (``anchor_neck_superior`` .. ``anchor_neck_inferior``) is not the
head: the dome runs down both sides of the neck, so that circle is too large and sits towards the neck (on the
ground-truth points of the tuning images tune3-448 8.5 px off, radius +4.0 px). ``DomeCircleModel`` instead maps the
dome points into a normalised frame (similarity fit onto the mean dome, mirror allowed, so left and right femurs
alike), predicts the head circle there by ridge regression on the aligned point coordinates, and maps it back.
Both are learned from ``deepmorph dataset`` samples, whose ``points`` and ``head_circle`` come from the same
projected femur mesh (``build_dome_circle_model``; ``deepmorph build-dome-circle``).

Coordinates: px, (x, y) = (u, v) = (column, row) of the image; the model frame has the mean dome centred at 0 with
RMS radius 1. Files: ``<stem>.npz`` (arrays, no pickles) + ``<stem>.json`` (sidecar: dome indices, data, errors).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FORMAT = "deepmorph-dome-circle"
FORMAT_VERSION = 1
RIDGE_CANDIDATES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)  # ridge weights tried (model-frame units, RMS radius 1)
VALIDATION_FRACTION = 0.2  # share of the shapes (every 5th) that picks the ridge weight


@dataclass
class DomeCircleModel:
    """Head circle (cx, cy, r) px from the head-dome points of a femur contour (``circle``)."""

    dome: tuple  # (first, last) contour point indices of the head dome, inclusive
    mean_dome: np.ndarray  # (K, 2) mean dome that contours are aligned onto, model frame
    point_mean: np.ndarray  # (K, 2) mean of the aligned training domes, model frame
    circle_mean: np.ndarray  # (3,) mean head circle (cx, cy, r), model frame
    weights: np.ndarray  # (2K, 3) ridge coefficients: aligned points - point_mean -> circle - circle_mean
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        self.dome = (int(self.dome[0]), int(self.dome[1]))
        self.mean_dome = np.asarray(self.mean_dome, dtype=np.float64)
        self.point_mean = np.asarray(self.point_mean, dtype=np.float64)
        self.circle_mean = np.asarray(self.circle_mean, dtype=np.float64)
        self.weights = np.asarray(self.weights, dtype=np.float64)
        k = self.dome[1] - self.dome[0] + 1
        if k < 4 or self.mean_dome.shape != (k, 2) or self.point_mean.shape != (k, 2) \
                or self.circle_mean.shape != (3,) or self.weights.shape != (2 * k, 3):
            raise ValueError(f"Inconsistent dome-circle model: dome {self.dome} ({k} points), mean_dome "
                             f"{self.mean_dome.shape}, circle_mean {self.circle_mean.shape}, "
                             f"weights {self.weights.shape}.")

    @property
    def n_dome(self) -> int:
        return self.dome[1] - self.dome[0] + 1

    def dome_points(self, contour) -> np.ndarray:
        """The head-dome points (K, 2) of a whole femur contour (N, 2) px in the PDM's point order."""
        contour = np.asarray(contour, dtype=np.float64)
        if contour.ndim != 2 or contour.shape[1] != 2 or len(contour) <= self.dome[1]:
            raise ValueError(f"A femur contour of at least {self.dome[1] + 1} (x, y) points is needed for the head "
                             f"dome (points {self.dome[0]}..{self.dome[1]}), got shape {contour.shape}.")
        return contour[self.dome[0]: self.dome[1] + 1]

    def circle(self, contour) -> tuple[float, float, float]:
        """Head circle (cx, cy, r) px of a femur contour (N, 2) px (either side, any pose and scale)."""
        return self.circle_of_dome(self.dome_points(contour))

    def circle_of_dome(self, dome) -> tuple[float, float, float]:
        """Head circle (cx, cy, r) px from the head-dome points (K, 2) px alone (``dome_points``)."""
        from .similarity import fit_similarity

        dome = np.asarray(dome, dtype=np.float64)
        if dome.shape != (self.n_dome, 2):
            raise ValueError(f"The head dome needs {self.n_dome} (x, y) points, got shape {dome.shape}.")
        if not np.all(np.isfinite(dome)):
            raise ValueError("The head-dome points of the contour are not all finite.")
        to_model = fit_similarity(dome, self.mean_dome, allow_reflection=True)
        aligned = to_model.apply(dome)
        cx, cy, r = self.circle_mean + (aligned - self.point_mean).ravel() @ self.weights
        (x, y), = to_model.inverse().apply(np.array([[cx, cy]]))
        return float(x), float(y), float(r / to_model.scale)

    def sidecar(self) -> dict:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "dome": list(self.dome),
                "frame": "model frame: mean dome centred at 0, RMS radius 1; image px (x, y) = (column, row)",
                "build": self.metadata}

    def save(self, path) -> Path:
        """Write ``<stem>.npz`` and ``<stem>.json`` atomically; returns the npz path."""
        import io

        from DeepMorphSimulatorLib.files import atomic_write_bytes, atomic_write_json

        npz, sidecar = _paths(path)
        buf = io.BytesIO()
        np.savez(buf, mean_dome=self.mean_dome, point_mean=self.point_mean, circle_mean=self.circle_mean,
                 weights=self.weights, dome=np.asarray(self.dome))
        atomic_write_bytes(npz, buf.getvalue())
        atomic_write_json(sidecar, self.sidecar())
        return npz

    @classmethod
    def load(cls, path) -> "DomeCircleModel":
        """Read a model written by ``save`` (``.npz``, ``.json`` or the common stem)."""
        npz, sidecar = _paths(path)
        if not npz.is_file():
            raise FileNotFoundError(f"Dome-circle model not found: {npz}. Build one with 'deepmorph build-dome-circle "
                                    "--data DIR --out PATH'.")
        meta = json.loads(sidecar.read_text(encoding="utf-8")) if sidecar.is_file() else {}
        if meta and meta.get("format") != FORMAT:
            raise ValueError(f"{sidecar} is not a DeepMorph dome-circle sidecar (format {meta.get('format')!r}).")
        if int(meta.get("format_version", 0)) > FORMAT_VERSION:
            raise ValueError(f"{sidecar} has format version {meta['format_version']}; update DeepMorph.")
        try:
            with np.load(npz, allow_pickle=False) as data:
                arrays = {k: data[k] for k in ("mean_dome", "point_mean", "circle_mean", "weights", "dome")}
        except (KeyError, ValueError, OSError) as exc:
            raise ValueError(f"{npz} is not a valid dome-circle model file ({exc}).") from None
        return cls(tuple(arrays["dome"]), arrays["mean_dome"], arrays["point_mean"], arrays["circle_mean"],
                   arrays["weights"], metadata=meta.get("build", {}))


def _paths(path) -> tuple[Path, Path]:
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in (".npz", ".json") else p
    return stem.with_name(stem.name + ".npz"), stem.with_name(stem.name + ".json")


def collect_dome_circles(data_dirs, dome) -> tuple[np.ndarray, np.ndarray]:
    """Head-dome points (S, K, 2) px and head circles (S, 3) px of the samples of ``deepmorph dataset`` directories
    that have both (points in anatomical order, a head circle); ``dome``: (first, last) point indices. Left femurs
    are mirrored (x -> -x), as for the PDM (``pdm_build``), so all describe a right femur."""
    from .pdm_build import iter_samples

    i0, i1 = int(dome[0]), int(dome[1])
    domes, circles = [], []
    for _, _, meta in iter_samples(data_dirs):
        points = np.asarray(meta.get("points") or [], dtype=float)
        circle = meta.get("head_circle")
        if circle is None or points.ndim != 2 or len(points) <= i1 or not meta.get("anchors_in_order", True):
            continue
        dome_points = points[i0: i1 + 1]
        circle = np.asarray(circle, dtype=float)
        if np.all(np.isfinite(dome_points)) and np.all(np.isfinite(circle)):
            if meta.get("side") == "left":
                dome_points, circle = dome_points * [-1.0, 1.0], circle * [-1.0, 1.0, 1.0]
            domes.append(dome_points)
            circles.append(circle)
    if len(domes) < 20:
        raise ValueError(f"Only {len(domes)} samples have femur points and a head circle; at least 20 are needed.")
    return np.stack(domes), np.stack(circles)


def _align(domes, circles, mean_dome):
    """Dome points and head circles mapped into the frame of ``mean_dome`` (similarity, mirror allowed)."""
    from .similarity import fit_similarity

    aligned, model_circles = [], []
    for dome, (cx, cy, r) in zip(domes, circles):
        t = fit_similarity(dome, mean_dome, allow_reflection=True)
        aligned.append(t.apply(dome))
        model_circles.append([*t.apply(np.array([[cx, cy]]))[0], r * t.scale])
    return np.stack(aligned), np.asarray(model_circles)


def _ridge(x, y, weight):
    x0, y0 = x.mean(axis=0), y.mean(axis=0)
    xc = x - x0
    coef = np.linalg.solve(xc.T @ xc + weight * len(x) * np.eye(x.shape[1]), xc.T @ (y - y0))
    return x0, y0, coef


def fit_dome_circle_model(domes, circles, dome, metadata: dict | None = None) -> DomeCircleModel:
    """Learn a ``DomeCircleModel`` from head-dome points (S, K, 2) px and head circles (S, 3) px: the mean dome
    (generalised Procrustes of the right-femur domes, RMS radius 1), then ridge regression of the aligned circle on
    the aligned points, its weight (``RIDGE_CANDIDATES``) chosen on every 5th shape. ``metadata["errors_px"]``: the
    error (||[cx, cy, r] - truth||, px of the input) of the model on its own shapes and of the circle through the
    dome points, for comparison."""
    from .circle_fit import fit_circle_points
    from .pdm import generalized_procrustes

    domes, circles = np.asarray(domes, dtype=float), np.asarray(circles, dtype=float)
    k = int(dome[1]) - int(dome[0]) + 1
    if domes.ndim != 3 or domes.shape[1:] != (k, 2) or circles.shape != (len(domes), 3) or len(domes) < 20:
        raise ValueError(f"Need >= 20 head domes of {k} (x, y) points (dome {tuple(dome)}) and as many (cx, cy, r) "
                         f"circles; got domes {domes.shape}, circles {circles.shape}.")
    _, mean_dome, _ = generalized_procrustes(domes)  # one side (collect_dome_circles mirrors left femurs)
    mean_dome = mean_dome / np.sqrt(np.mean(np.sum(mean_dome ** 2, axis=1)))
    aligned, model_circles = _align(domes, circles, mean_dome)
    x = (aligned - mean_dome).reshape(len(aligned), -1)
    val = np.arange(len(x)) % int(round(1 / VALIDATION_FRACTION)) == 0
    best = None
    for weight in RIDGE_CANDIDATES:
        x0, y0, coef = _ridge(x[~val], model_circles[~val], weight)
        err = float(np.mean(np.linalg.norm((x[val] - x0) @ coef + y0 - model_circles[val], axis=1)))
        if best is None or err < best[1]:
            best = (weight, err)
    weight = best[0]
    x0, y0, coef = _ridge(x, model_circles, weight)
    model = DomeCircleModel(dome, mean_dome, mean_dome + x0.reshape(-1, 2), y0, coef, metadata=dict(metadata or {}))
    own = np.array([np.linalg.norm(np.subtract(model.circle_of_dome(d), c)) for d, c in zip(domes, circles)])
    dome_fit = []
    for d, c in zip(domes, circles):
        cf = fit_circle_points(d, method="algebraic", min_points=3)
        dome_fit.append(np.linalg.norm(np.subtract((cf.cx, cf.cy, cf.r), c)) if cf.detected else np.nan)
    model.metadata.update(n_shapes=int(len(domes)), ridge_weight=weight, ridge_candidates=list(RIDGE_CANDIDATES),
                          validation_error_mean_frame=round(best[1], 6), errors_px={
                              "model_mean": round(float(np.mean(own)), 4),
                              "model_median": round(float(np.median(own)), 4),
                              "dome_circle_mean": round(float(np.nanmean(dome_fit)), 4),
                              "dome_circle_median": round(float(np.nanmedian(dome_fit)), 4)})
    return model


def build_dome_circle_model(data_dirs, dome) -> DomeCircleModel:
    """``fit_dome_circle_model`` on the samples of ``deepmorph dataset`` directories (``collect_dome_circles``)."""
    domes, circles = collect_dome_circles(data_dirs, dome)
    return fit_dome_circle_model(domes, circles, dome, metadata={
        "source": "deepmorph dataset ground truth (projected phantom femur meshes: points and head sphere)",
        "data": [str(d) for d in data_dirs]})
