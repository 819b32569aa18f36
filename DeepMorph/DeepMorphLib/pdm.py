"""Point distribution model (PDM, paper section 3, eqs. 5-6) of corresponding 2-D contour points.

Shapes are ``(N, 2)`` arrays of (x, y) px; the shape vector is ``x = [x1, y1, ..., xN, yN]`` (row-major
flattening). ``PointDistributionModel.fit(shapes)`` aligns the training shapes by generalised Procrustes
analysis (similarity: scale, rotation, translation; no mirror) and keeps the principal modes explaining
``variance_kept`` (default 98 %) of the aligned variance.

Model frame: the mean shape is centred at (0, 0) and scaled to the average RMS radius of the training
shapes, so model coordinates are "typical px" and the similarity to an image is near scale 1. Eigenvalues
``variances`` are px^2 in that frame. A shape in an image is ``T(mean + P b)`` with ``T`` a ``Similarity``.

Left/right: ``reflect()`` mirrors the model (x -> -x). Point ``i`` keeps its anatomical meaning, so the
point order and landmark indices are unchanged; only the winding of the contour flips (a clockwise
outline becomes counter-clockwise). Code that needs normals should not rely on the winding.
"""
from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .similarity import Similarity, as_points, fit_similarity

FORMAT = "deepmorph-pdm"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ShapeParams:
    """A PDM instance in an image: ``points = transform(mean + P b)`` (N, 2) px."""

    points: np.ndarray
    b: np.ndarray  # (n_modes,) mode weights, px in the model frame
    transform: Similarity  # model frame -> image px
    iterations: int = 0
    rms_px: float = float("nan")  # weighted RMS distance to the target shape, px


class PointDistributionModel:
    """Mean shape, modes and variances of corresponding 2-D points (see module docstring)."""

    def __init__(self, mean, modes, variances, total_variance=None, landmarks=None, closed=False, metadata=None):
        self.mean = as_points(mean, "mean", min_points=3)
        n = self.mean.shape[0]
        modes = np.asarray(modes, dtype=np.float64)
        variances = np.asarray(variances, dtype=np.float64).reshape(-1)
        if modes.ndim != 2 or modes.shape[0] != 2 * n or modes.shape[1] != variances.shape[0]:
            raise ValueError(
                f"PDM modes must be (2N, M) = ({2 * n}, {variances.shape[0]}) for {n} points and "
                f"{variances.shape[0]} variances, got {modes.shape}."
            )
        if np.any(variances <= 0) or not np.all(np.isfinite(variances)):
            raise ValueError("PDM variances must be positive and finite.")
        self.modes = modes
        self.variances = variances
        self.total_variance = float(variances.sum() if total_variance is None else total_variance)
        self.landmarks = {str(k): int(v) for k, v in (landmarks or {}).items()}
        for name, idx in self.landmarks.items():
            if not 0 <= idx < n:
                raise ValueError(f"Landmark {name!r} index {idx} is outside 0..{n - 1}.")
        self.closed = bool(closed)
        self.metadata = dict(metadata or {})

    # ------------------------------------------------------------------ properties
    @property
    def n_points(self) -> int:
        return self.mean.shape[0]

    @property
    def n_modes(self) -> int:
        return self.modes.shape[1]

    @property
    def variance_kept(self) -> float:
        """Fraction of the aligned training variance explained by the kept modes."""
        return float(self.variances.sum() / self.total_variance) if self.total_variance > 0 else 1.0

    def limits(self, clip: float = 3.0) -> np.ndarray:
        """``clip * sqrt(lambda_i)`` per mode (px)."""
        return clip * np.sqrt(self.variances)

    def clip_b(self, b, clip: float | None = 3.0) -> np.ndarray:
        b = np.asarray(b, dtype=np.float64).reshape(self.n_modes)
        if clip is None:
            return b.copy()
        lim = self.limits(clip)
        return np.clip(b, -lim, lim)

    def shape_from_b(self, b=None) -> np.ndarray:
        """Model-frame shape ``mean + P b`` (N, 2)."""
        if b is None:
            return self.mean.copy()
        return self.mean + (self.modes @ np.asarray(b, dtype=np.float64)).reshape(-1, 2)

    def instance(self, b=None, transform: Similarity | None = None) -> np.ndarray:
        """Image-frame shape ``T(mean + P b)`` (N, 2) px."""
        x = self.shape_from_b(b)
        return x if transform is None else transform.apply(x)

    # ------------------------------------------------------------------ building
    @classmethod
    def fit(
        cls,
        shapes,
        variance_kept: float = 0.98,
        max_modes: int | None = None,
        landmarks: dict[str, int] | None = None,
        closed: bool = False,
        metadata: dict | None = None,
        max_iterations: int = 100,
        tol: float = 1e-10,
    ) -> "PointDistributionModel":
        """Build a PDM from corresponding shapes ``(K, N, 2)`` px (generalised Procrustes + PCA).

        Keeps the fewest modes explaining at least ``variance_kept`` (0-1] of the aligned variance (at most
        ``max_modes``); ``variance_kept=1`` keeps every mode with non-zero variance.
        """
        shapes = np.asarray(shapes, dtype=np.float64)
        if shapes.ndim != 3 or shapes.shape[2] != 2:
            raise ValueError(f"PDM training shapes must be (K, N, 2) corresponding points, got {shapes.shape}.")
        k, n, _ = shapes.shape
        if k < 2 or n < 3:
            raise ValueError(f"A PDM needs at least 2 shapes of at least 3 points, got {k} shapes of {n} points.")
        if not np.all(np.isfinite(shapes)):
            raise ValueError("PDM training shapes contain NaN/inf; drop shapes with missing points first.")
        if not 0 < variance_kept <= 1:
            raise ValueError(f"variance_kept must be in (0, 1], got {variance_kept}.")
        aligned, mean, iters = generalized_procrustes(shapes, max_iterations, tol)
        data = aligned.reshape(k, 2 * n)
        centred = data - mean.reshape(1, -1)
        _, sv, vt = np.linalg.svd(centred, full_matrices=False)
        var = sv**2 / (k - 1)
        total = float(var.sum())
        keep = var > max(total, 1e-300) * 1e-12
        var, vt = var[keep], vt[keep]
        if len(var) == 0:
            raise ValueError("All training shapes are identical after alignment; a PDM needs shape variation.")
        cum = np.cumsum(var) / total
        m = int(np.searchsorted(cum, variance_kept - 1e-12) + 1) if variance_kept < 1 else len(var)
        m = min(m, len(var), max_modes or len(var))
        modes = vt[:m].T.copy()
        # deterministic sign: largest |component| of each mode positive
        signs = np.sign(modes[np.argmax(np.abs(modes), axis=0), np.arange(m)])
        modes *= np.where(signs == 0, 1.0, signs)
        meta = {
            "n_shapes": int(k),
            "procrustes_iterations": int(iters),
            "variance_target": float(variance_kept),
            "alignment": "generalised Procrustes, similarity (scale, rotation, translation), no reflection",
        }
        meta.update(metadata or {})
        return cls(mean, modes, var[:m], total_variance=total, landmarks=landmarks, closed=closed, metadata=meta)

    # ------------------------------------------------------------------ fitting
    def fit_shape(
        self,
        target,
        weights=None,
        clip: float | None = 3.0,
        init: Similarity | None = None,
        b0=None,
        regularization: float = 0.0,
        max_iterations: int = 50,
        tol_px: float = 1e-6,
    ) -> ShapeParams:
        """Closest model instance ``T(mean + P b)`` to ``target`` (N, 2) px, with ``|b_i| <= clip sqrt(lambda_i)``.

        Minimises ``sum_n w_n |target_n - T(mean + P b)_n|^2 + regularization * sum_i b_i^2 / lambda_i``
        (model-frame px^2) by Gauss-Newton steps on (b, similarity) jointly, each a box-constrained linear
        least-squares solve, followed by an exact weighted similarity refit. ``clip=None`` disables the
        clipping. Zero weights mark missing points. ``init`` (model -> image, proper rotation) and ``b0``
        set the start.
        """
        target = as_points(target, "target shape")
        if target.shape[0] != self.n_points:
            raise ValueError(f"The shape has {target.shape[0]} points but the PDM has {self.n_points}.")
        w = np.ones(self.n_points) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.shape[0] != self.n_points or np.any(w < 0) or not np.all(np.isfinite(w)):
            raise ValueError("weights must be one finite, non-negative value per point.")
        if np.count_nonzero(w) < 2:
            raise ValueError("fit_shape needs at least 2 points with positive weight.")
        lim = None if clip is None else self.limits(clip)
        b = np.zeros(self.n_modes) if b0 is None else self.clip_b(b0, clip)
        if init is None:
            init = fit_similarity(self.shape_from_b(b), target, w)
        points, b, transform, it = self._gauss_newton(target, w, lim, init, b, regularization, max_iterations, tol_px)
        res = np.sum((points - target) ** 2, axis=1)
        rms = float(np.sqrt(np.sum(w * res) / np.sum(w)))
        return ShapeParams(points, b, transform, int(it), rms)

    def _gauss_newton(self, target, w, lim_b, transform, b, regularization, max_iterations, tol_px,
                      compiled: bool = True):
        """The fit loop of ``fit_shape`` (it runs in every ASM iteration): compiled (``pdm_numba``) when numba is
        available and ``compiled``, else lean numpy."""
        from . import pdm_numba

        m, n = self.n_modes, self.n_points
        # box of (b, similarity increments), +inf where unbounded; regularisation on the diagonal
        lim = np.full(m + 4, np.inf) if lim_b is None else np.concatenate([lim_b, np.full(4, np.inf)])
        prior = np.zeros(m + 4)
        prior[:m] = regularization / self.variances
        if compiled and pdm_numba.AVAILABLE:
            f64 = lambda a: np.ascontiguousarray(a, dtype=np.float64)  # noqa: E731
            points, b, scale, rot, trans, it = pdm_numba.gauss_newton(
                f64(target), f64(w), lim, f64(self.mean), f64(self.modes), prior, f64(b), float(transform.scale),
                f64(transform.rotation), f64(transform.translation), int(max_iterations), float(tol_px))
            return points, b, Similarity(scale, rot, trans), it
        w2 = np.repeat(w, 2)[:, None]
        design = np.empty((2 * n, m + 4))  # [P, x, x_perp, e_x, e_y]
        design[:, :m] = self.modes
        design[0::2, m + 2], design[1::2, m + 2] = 1.0, 0.0
        design[0::2, m + 3], design[1::2, m + 3] = 0.0, 1.0
        mean_flat = self.mean.reshape(-1)
        wsum = w.sum()
        x = self.shape_from_b(b)
        scale, rot, trans = transform.scale, transform.rotation, transform.translation
        prev = scale * (x @ rot.T) + trans
        it = 0
        for it in range(1, max_iterations + 1):
            # target in the model frame ~ mean + P b' + a x + c x_perp + t (similarity linearised at T)
            r = ((target - trans) @ rot).reshape(-1) / scale - mean_flat
            design[:, m] = x.reshape(-1)
            design[0::2, m + 1] = -x[:, 1]
            design[1::2, m + 1] = x[:, 0]
            wd = design * w2
            hess = wd.T @ design
            hess[np.diag_indices(m + 4)] *= 1.0 + 1e-12
            hess[np.diag_indices(m + 4)] += prior
            b = box_least_squares(hess, wd.T @ r, lim)[:m]
            x = self.mean + (self.modes @ b).reshape(n, 2)
            # exact weighted 2-D similarity x -> target for this b (closed-form Umeyama, proper rotation)
            mu_s = w @ x / wsum
            mu_d = w @ target / wsum
            a = (x - mu_s) * w[:, None]
            d = target - mu_d
            sxx = float(np.vdot(a, d))
            sxy = float(a[:, 0] @ d[:, 1] - a[:, 1] @ d[:, 0])
            var = float(np.vdot(a, x - mu_s))
            corr = float(np.hypot(sxx, sxy))
            c, s_ = sxx / corr if corr > 0 else 1.0, sxy / corr if corr > 0 else 0.0
            rot = np.array([[c, -s_], [s_, c]])
            if var > 0 and corr > 0:
                scale = corr / var
            trans = mu_d - scale * (rot @ mu_s)
            cur = scale * (x @ rot.T) + trans
            moved = float(np.max(np.abs(cur - prev)))
            prev = cur
            if moved < tol_px:
                break
        return prev, b, Similarity(scale, rot, trans), it

    def project(self, shape, clip: float | None = 3.0, weights=None) -> np.ndarray:
        """Regularise an image-frame shape (N, 2) px: similarity to the model frame, ``b = P^T (x - mean)``
        with each ``b_i`` clipped to ``+-clip sqrt(lambda_i)``, back to the image frame (iterated to a fixed
        point). Returns the plausible shape (N, 2) px; see ``fit_shape`` for b and the transform."""
        return self.fit_shape(shape, weights=weights, clip=clip).points

    @property
    def side(self) -> str | None:
        """The femur side the model describes, "right" or "left" (from its build metadata, e.g. "right (left
        femurs mirrored)"), None when it does not say."""
        words = str(self.metadata.get("side") or "").split()
        return words[0] if words and words[0] in ("right", "left") else None

    def reflection_for(self, side: str | None) -> bool | None:
        """Whether a ``side`` ("left"/"right") femur needs the mirrored model (``reflect()``) in an image shown in
        the radiological convention (patient's right on the image's left, not flipped; in-plane rotations keep
        the mirror sense); None for an unknown side. Raises ValueError when the model does not say its side."""
        if side is None:
            return None
        if side not in ("left", "right"):
            raise ValueError(f"side must be 'left' or 'right', got {side!r}.")
        if self.side is None:
            raise ValueError("This shape model does not say which femur side it describes (build metadata 'side'); "
                             "rebuild it with 'deepmorph build-pdm' or leave the side unknown.")
        return side != self.side

    # ------------------------------------------------------------------ variants, I/O
    def reflect(self) -> "PointDistributionModel":
        """The mirrored model (x -> -x) for the other side; same point order and landmarks."""
        mirror = np.tile([-1.0, 1.0], self.n_points)
        meta = dict(self.metadata)
        if self.side is not None:
            meta["side"] = "left" if self.side == "right" else "right"
        meta["reflected"] = not bool(meta.get("reflected", False))
        return PointDistributionModel(
            self.mean * np.array([-1.0, 1.0]),
            self.modes * mirror[:, None],
            self.variances,
            total_variance=self.total_variance,
            landmarks=self.landmarks,
            closed=self.closed,
            metadata=meta,
        )

    def sidecar(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "n_points": self.n_points,
            "n_modes": self.n_modes,
            "variance_kept": self.variance_kept,
            "total_variance_px2": self.total_variance,
            "closed": self.closed,
            "landmarks": self.landmarks,
            "point_layout": "x = [x1, y1, ..., xN, yN]; mean (N, 2), modes (2N, M), variances (M,) px^2",
            "frame": "model frame: mean centred at 0, scaled to the mean RMS radius of the training shapes (px)",
            "build": self.metadata,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``<stem>.npz`` (arrays, no pickles) and ``<stem>.json`` (sidecar); returns the npz path."""
        import io

        from DeepMorphSimulatorLib.files import atomic_write_bytes, atomic_write_json

        npz, sidecar = _paths(path)
        buf = io.BytesIO()
        np.savez(
            buf,
            mean=self.mean,
            modes=self.modes,
            variances=self.variances,
            total_variance=np.array(self.total_variance),
        )
        atomic_write_bytes(npz, buf.getvalue())
        atomic_write_json(sidecar, self.sidecar())
        return npz

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PointDistributionModel":
        """Read a model written by ``save`` (``.npz``, ``.json`` or the common stem)."""
        npz, sidecar = _paths(path)
        if not npz.is_file() and Path(path).is_file():  # e.g. a .txt: not one of ours
            npz = Path(path)
        if not npz.is_file():
            raise FileNotFoundError(f"PDM file not found: {npz}")
        if not zipfile.is_zipfile(npz):
            raise ValueError(f"{npz} is not a PDM .npz file (not a NumPy .npz archive); give the .npz that "
                             "'deepmorph build-pdm' writes.")
        meta = {}
        if sidecar.is_file():
            meta = json.loads(sidecar.read_text(encoding="utf-8"))
            if meta.get("format") != FORMAT:
                raise ValueError(f"{sidecar} is not a DeepMorph PDM sidecar (format {meta.get('format')!r}).")
            if int(meta.get("format_version", 0)) > FORMAT_VERSION:
                raise ValueError(f"{sidecar} has PDM format version {meta['format_version']}; update DeepMorph.")
        try:
            with np.load(npz, allow_pickle=False) as data:
                arrays = {k: data[k] for k in ("mean", "modes", "variances", "total_variance")}
        except (KeyError, ValueError, OSError) as exc:
            raise ValueError(f"{npz} is not a valid PDM file ({exc}).") from None
        model = cls(
            arrays["mean"],
            arrays["modes"],
            arrays["variances"],
            total_variance=float(arrays["total_variance"]),
            landmarks=meta.get("landmarks"),
            closed=meta.get("closed", False),
            metadata=meta.get("build", {}),
        )
        if meta and (meta.get("n_points") != model.n_points or meta.get("n_modes") != model.n_modes):
            raise ValueError(f"{sidecar} does not match {npz} (n_points/n_modes differ); re-save the model.")
        return model

    def __repr__(self) -> str:
        return (
            f"PointDistributionModel(n_points={self.n_points}, n_modes={self.n_modes}, "
            f"variance_kept={self.variance_kept:.3f})"
        )


def _paths(path) -> tuple[Path, Path]:
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in (".npz", ".json") else p
    return stem.with_name(stem.name + ".npz"), stem.with_name(stem.name + ".json")


def generalized_procrustes(shapes: np.ndarray, max_iterations: int = 100, tol: float = 1e-10):
    """Align shapes (K, N, 2) to their common mean by similarity transforms.

    Returns ``(aligned (K, N, 2), mean (N, 2), iterations)``; the mean is centred at 0, its orientation is
    that of the first shape, and its RMS radius (and so the aligned shapes' scale) is the average RMS radius
    of the input shapes in px.
    """
    centred = shapes - shapes.mean(axis=1, keepdims=True)
    sizes = np.sqrt(np.mean(np.sum(centred**2, axis=2), axis=1))
    if np.any(sizes <= 0):
        raise ValueError("A training shape has all its points at one place.")
    size = float(sizes.mean())
    ref = centred[0] / sizes[0] * size
    mean = ref
    aligned = centred
    it = 0
    for it in range(1, max_iterations + 1):
        aligned = np.stack([fit_similarity(s, mean).apply(s) for s in centred])
        new = aligned.mean(axis=0)
        new = fit_similarity(new, ref).apply(new)  # keep orientation/scale fixed to the reference
        new = new - new.mean(axis=0)
        new *= size / np.sqrt(np.mean(np.sum(new**2, axis=1)))
        change = float(np.sqrt(np.mean(np.sum((new - mean) ** 2, axis=1))))
        mean = new
        if change < tol * size:
            break
    aligned = np.stack([fit_similarity(s, mean).apply(s) for s in centred])
    return aligned, aligned.mean(axis=0), it


def box_least_squares(hess: np.ndarray, g: np.ndarray, lim: np.ndarray | None, b0=None, max_rounds: int = 50) -> np.ndarray:
    """Minimise ``0.5 b^T H b - g^T b`` subject to ``|b_i| <= lim_i`` (H symmetric positive definite).

    Active-set method: variables that leave their box are fixed at the bound, the others re-solved; bound
    variables whose gradient points back inside are released, until the KKT conditions hold. ``b0`` is
    accepted for API symmetry (the unconstrained solve is the start).
    """
    b = np.linalg.solve(hess, g)
    if lim is None or (np.abs(b) <= lim).all():
        return b
    n = len(b)
    at = np.zeros(n)  # -1 / +1 at the lower / upper bound, 0 free
    lim_f = np.where(np.isfinite(lim), lim, 0.0)
    for _ in range(max_rounds):
        free = at == 0
        viol = free & (np.abs(b) > lim)
        if np.any(viol):
            at[viol] = np.sign(b[viol])
        else:
            grad = hess @ b - g
            release = ((at > 0) & (grad > 1e-12)) | ((at < 0) & (grad < -1e-12))
            if not np.any(release):
                return b
            at[np.argmax(np.where(release, np.abs(grad), -1.0))] = 0.0
        free = at == 0
        b = at * lim_f
        if np.any(free):
            rhs = g[free] - hess[np.ix_(free, ~free)] @ b[~free]
            b[free] = np.linalg.solve(hess[np.ix_(free, free)], rhs)
    return np.clip(b, -lim, lim)

