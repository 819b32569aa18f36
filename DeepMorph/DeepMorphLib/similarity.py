"""2-D similarity transforms (scale, rotation or reflection, translation) between point sets in pixels.

Convention used by the whole morphing stage: points are ``(N, 2)`` float arrays of ``(x, y) = (u, v)``
detector pixels, and a transform maps ``p -> scale * R @ p + t`` (row form ``p @ R.T * scale + t``), where
``R`` is a 2x2 orthogonal matrix with ``det(R) = +1`` (rotation) or ``-1`` (rotation after a mirror).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def as_points(xy, name: str = "points", min_points: int = 0) -> np.ndarray:
    """Validate and return ``xy`` as a float64 ``(N, 2)`` array of finite values."""
    arr = np.asarray(xy, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name} must be an (N, 2) array of (x, y) pixel coordinates, got shape {arr.shape}.")
    if arr.shape[0] < min_points:
        raise ValueError(f"{name} needs at least {min_points} points, got {arr.shape[0]}.")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite coordinates; remove or fill them first.")
    return arr


def rotation_matrix(angle_deg: float, reflect: bool = False) -> np.ndarray:
    """2x2 rotation by ``angle_deg`` (counter-clockwise in an x-right, y-up frame; clockwise on screen
    where y points down), applied after mirroring x (``x -> -x``) when ``reflect``."""
    a = np.deg2rad(angle_deg)
    c, s = np.cos(a), np.sin(a)
    rot = np.array([[c, -s], [s, c]])
    return rot @ np.diag([-1.0, 1.0]) if reflect else rot


@dataclass(frozen=True)
class Similarity:
    """``p -> scale * rotation @ p + translation`` for (x, y) points; ``rotation`` may include a mirror."""

    scale: float = 1.0
    rotation: np.ndarray = field(default_factory=lambda: np.eye(2))
    translation: np.ndarray = field(default_factory=lambda: np.zeros(2))

    def __post_init__(self):
        rot = np.asarray(self.rotation, dtype=np.float64).reshape(2, 2)
        object.__setattr__(self, "rotation", rot)
        object.__setattr__(self, "translation", np.asarray(self.translation, dtype=np.float64).reshape(2))
        object.__setattr__(self, "scale", float(self.scale))
        if not np.isfinite(self.scale) or self.scale <= 0:
            raise ValueError(f"Similarity scale must be a positive finite number, got {self.scale}.")

    @classmethod
    def identity(cls) -> "Similarity":
        return cls()

    @classmethod
    def from_params(cls, scale=1.0, angle_deg=0.0, translation=(0.0, 0.0), reflect=False) -> "Similarity":
        return cls(scale, rotation_matrix(angle_deg, reflect), np.asarray(translation, dtype=np.float64))

    @property
    def reflected(self) -> bool:
        """True when the transform mirrors (det of the rotation part is -1)."""
        return bool(np.linalg.det(self.rotation) < 0)

    @property
    def angle_deg(self) -> float:
        """Rotation angle in degrees (of ``R`` or, for a mirror, of ``R @ diag(-1, 1)``)."""
        rot = self.rotation @ np.diag([-1.0, 1.0]) if self.reflected else self.rotation
        return float(np.rad2deg(np.arctan2(rot[1, 0], rot[0, 0])))

    @property
    def matrix(self) -> np.ndarray:
        """3x3 homogeneous matrix acting on column vectors (x, y, 1)."""
        m = np.eye(3)
        m[:2, :2] = self.scale * self.rotation
        m[:2, 2] = self.translation
        return m

    def apply(self, xy) -> np.ndarray:
        xy = np.asarray(xy, dtype=np.float64)
        return self.scale * (xy @ self.rotation.T) + self.translation

    __call__ = apply

    def inverse(self) -> "Similarity":
        rot_t = self.rotation.T
        return Similarity(1.0 / self.scale, rot_t, -(rot_t @ self.translation) / self.scale)

    def compose(self, inner: "Similarity") -> "Similarity":
        """The transform ``self(inner(p))``."""
        return Similarity(
            self.scale * inner.scale,
            self.rotation @ inner.rotation,
            self.scale * (self.rotation @ inner.translation) + self.translation,
        )

    def to_dict(self) -> dict:
        return {
            "scale": self.scale,
            "rotation": self.rotation.tolist(),
            "translation": self.translation.tolist(),
            "angle_deg": self.angle_deg,
            "reflected": self.reflected,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Similarity":
        return cls(d["scale"], np.asarray(d["rotation"]), np.asarray(d["translation"]))


def fit_similarity(src, dst, weights=None, allow_reflection: bool = False, allow_scale: bool = True) -> Similarity:
    """Weighted least-squares similarity mapping ``src`` onto ``dst`` (Umeyama 1991, 2-D closed form).

    Minimises ``sum_i w_i |s R src_i + t - dst_i|^2``; ``src``/``dst`` are matched ``(N, 2)`` arrays
    (px), ``weights`` ``(N,)`` non-negative. ``allow_reflection`` lets ``R`` be a mirror (det -1) when that
    fits better.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2:
        raise ValueError(f"fit_similarity needs two matching (N, 2) arrays, got {src.shape} and {dst.shape}.")
    if weights is None:
        w = np.full(len(src), 1.0)
    else:
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.shape[0] != src.shape[0] or np.any(w < 0) or not np.all(np.isfinite(w)):
            raise ValueError("weights must be one finite, non-negative value per point.")
    wsum = float(w.sum())
    if wsum <= 0:
        raise ValueError("fit_similarity needs some positive weights.")
    mu_s = w @ src / wsum
    mu_d = w @ dst / wsum
    a = src - mu_s
    b = dst - mu_d
    wa = a * w[:, None]
    sxx, sxy = float(np.sum(wa * b)), float(np.sum(wa[:, 0] * b[:, 1] - wa[:, 1] * b[:, 0]))
    var_s = float(np.sum(wa * a))
    best = (np.hypot(sxx, sxy), np.arctan2(sxy, sxx), False)
    if allow_reflection:  # mirror x of src first: (x, y) -> (-x, y)
        mxx = float(np.sum(-wa[:, 0] * b[:, 0] + wa[:, 1] * b[:, 1]))
        mxy = float(np.sum(-wa[:, 0] * b[:, 1] - wa[:, 1] * b[:, 0]))
        if np.hypot(mxx, mxy) > best[0]:
            best = (np.hypot(mxx, mxy), np.arctan2(mxy, mxx), True)
    corr, angle, mirror = best
    c, s_ = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s_], [s_, c]])
    if mirror:
        rot = rot @ np.diag([-1.0, 1.0])
    scale = corr / var_s if (allow_scale and var_s > 0 and corr > 0) else 1.0
    return Similarity(scale, rot, mu_d - scale * (rot @ mu_s))
