"""Random C-arm poses for intra-operative hip views around one femur's landmarks.

All positions are LPS mm, angles degrees (conventions of geometry.py). A pose is drawn as:

* view: AP (orbital within +-``orbital_deg``, cranio-caudal within +-``angular_deg``), or with probability
  ``p_lateral`` a lateral-ish view (orbital 40-70 degrees to either side, larger tilt);
* magnification SID/SOD in ``magnification`` with SID in ``sid_mm``; the field of view at the isocentre
  (``fov_mm``) sets the pixel pitch for the requested detector size, so images are rendered at the target
  size directly;
* isocentre at a random point of the proximal femur (head, neck, trochanteric region, upper shaft) plus
  jitter; with probability ``p_partial`` a larger shift so the femur is only partly in view;
* in-plane rotation: small (normal, ``inplane_sigma_deg``) or, with ``p_inplane_any``, uniform +-180;
* an optional ``accept`` test redraws poses that, e.g., look past the ends of the scanned volume.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .geometry import CArmGeometry


@dataclasses.dataclass(frozen=True)
class PoseSampler:
    """Ranges for :func:`sample_pose` (mm, degrees)."""

    fov_mm: tuple = (150.0, 230.0)  # field of view (detector width) at the isocentre
    sid_mm: tuple = (950.0, 1050.0)  # source-to-detector distance
    magnification: tuple = (1.15, 1.7)  # SID / SOD at the isocentre
    orbital_deg: float = 30.0  # AP views: orbital (LAO/RAO) within +-
    angular_deg: float = 20.0  # AP views: cranio-caudal tilt within +-
    p_lateral: float = 0.12  # share of lateral-ish views
    lateral_orbital_deg: tuple = (40.0, 70.0)
    inplane_sigma_deg: float = 12.0
    p_inplane_any: float = 0.1
    jitter_fraction: float = 0.12  # isocentre jitter (std, per axis) as a fraction of the field of view
    p_partial: float = 0.12  # share of views with the femur only partly in view

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


def _landmark(landmarks: dict, name: str) -> np.ndarray:
    if name not in landmarks:
        raise ValueError(f"Pose sampling needs the landmark '{name}' (LPS mm); it is missing from the landmarks.")
    return np.asarray(landmarks[name], dtype=float).reshape(3)


def _targets(landmarks: dict) -> tuple[list[np.ndarray], list[float]]:
    """Candidate isocentre points on the proximal femur with their probabilities."""
    head = _landmark(landmarks, "head_center")
    pts, w = [head], [0.35]
    if "neck_axis_point" in landmarks:
        pts.append(0.5 * (head + _landmark(landmarks, "neck_axis_point")))
        w.append(0.25)
    if "greater_trochanter" in landmarks:
        pts.append(0.5 * (head + _landmark(landmarks, "greater_trochanter")))
        w.append(0.2)
    if "lesser_trochanter" in landmarks:
        pts.append(0.5 * (head + _landmark(landmarks, "lesser_trochanter")))
        w.append(0.2)
    w = np.asarray(w) / np.sum(w)
    return pts, list(w)


def sample_pose(
    rng: np.random.Generator,
    landmarks: dict,
    size_px: int | tuple[int, int],
    sampler: PoseSampler = PoseSampler(),
    accept=None,
    max_tries: int = 12,
) -> CArmGeometry:
    """Draw one C-arm pose looking at the femur whose landmarks (name -> LPS mm) are given.

    ``size_px``: detector size (width = height, or (width, height)). The head centre is kept inside
    the central 80 % of the image, except for the 'partly in view' share (``sampler.p_partial``).
    ``accept(geometry) -> bool`` may reject poses (e.g. views beyond the scanned range of the CT); whole
    poses are redrawn up to ``max_tries`` times, then the last one is kept.
    """
    geometry = None
    for _ in range(max(1, int(max_tries))):
        geometry = _draw_pose(rng, landmarks, size_px, sampler)
        if accept is None or accept(geometry):
            break
    return geometry


def _draw_pose(rng, landmarks, size_px, sampler) -> CArmGeometry:
    width, height = (int(size_px), int(size_px)) if np.isscalar(size_px) else (int(size_px[0]), int(size_px[1]))
    head = _landmark(landmarks, "head_center")
    pts, w = _targets(landmarks)
    sid = rng.uniform(*sampler.sid_mm)
    mag = rng.uniform(*sampler.magnification)
    fov = rng.uniform(*sampler.fov_mm)
    pixel_mm = fov * mag / width
    if rng.uniform() < sampler.p_lateral:
        orbital = rng.choice([-1.0, 1.0]) * rng.uniform(*sampler.lateral_orbital_deg)
        angular = rng.uniform(-1.25, 1.25) * sampler.angular_deg
    else:
        orbital = rng.uniform(-1.0, 1.0) * sampler.orbital_deg
        angular = rng.uniform(-1.0, 1.0) * sampler.angular_deg
    if rng.uniform() < sampler.p_inplane_any:
        inplane = rng.uniform(-180.0, 180.0)
    else:
        inplane = rng.normal(0.0, sampler.inplane_sigma_deg)
    partial = rng.uniform() < sampler.p_partial
    base = pts[int(rng.choice(len(pts), p=w))]
    sigma = fov * (0.3 if partial else sampler.jitter_fraction)
    geometry = None
    for _ in range(20):
        iso = base + rng.normal(0.0, sigma, 3)
        geometry = CArmGeometry(
            sid_mm=float(sid),
            sod_mm=float(sid / mag),
            width_px=width,
            height_px=height,
            pixel_mm=float(pixel_mm),
            orbital_deg=float(orbital),
            angular_deg=float(angular),
            inplane_deg=float(inplane),
            isocenter_lps=tuple(float(x) for x in iso),
        )
        if partial:
            break
        u, v = geometry.project(head[None])[0]
        if 0.1 * width <= u <= 0.9 * width and 0.1 * height <= v <= 0.9 * height:
            break
    return geometry
