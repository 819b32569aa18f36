"""Digitally reconstructed radiographs (DRRs): the X-ray model of the paper's Appendix A.1.

1. CT numbers to linear attenuation (eq. 8): ``mu = (HU + 1024) / 1024 * mu_water`` with HU clipped to
   [-1024, 3071], so air is 0 and the densest 12-bit value 4 * mu_water.
2. One ray from the focal spot (``geometry.source_lps``) to the centre of every detector pixel
   (``geometry.pixel_positions_lps()``), all in LPS mm, mapped into the volume's continuous voxel index
   space with ``Volume.lps_to_ijk()`` (origin, anisotropic spacing and any direction matrix honoured).
3. Each ray is clipped to the volume's **voxel-centre box** (index coordinates ``0 .. n-1`` on every axis,
   i.e. half a voxel inside the outer faces of the boundary voxels; trilinear interpolation is defined
   there without extrapolation) and to the source-detector segment. Nothing outside contributes.
4. Line integral ``A = sum_i mu_i dx_i`` (eq. 9) of the trilinearly interpolated attenuation, in
   (1/mm) * mm, i.e. dimensionless.
5. Display (eq. 10): ``I = exp(-A)``; the brightest 2.5 % of pixels saturate at the highest grey value and
   intensities scale linearly to [20, 255], so bone (high A) is dark.

Line integral methods (``method=``): ``"trilinear"`` is the paper's sampler (trilinear samples every
``step_mm``, default 0.5 mm, i.e. 2000 samples per 1000 mm); ``"joseph"`` takes one bilinear sample per
voxel plane crossed along the ray's major index axis, combined with the trapezoid rule and exact partial end
segments. Both are exact for volumes linear in position; Joseph is the fast default (``"auto"``).

Devices (``device=``): ``"cpu"`` = numba kernels, parallel over detector tiles; ``"cuda"`` / ``"cuda:N"``
= torch on the GPU; ``"torch-cpu"`` = the torch path on the CPU (tests, machines without numba);
``"auto"`` = CUDA when present, else ``"cpu"``.

Empty margins are skipped: rays are integrated over the box outside which the interpolated volume is
exactly 0 (see :func:`support_box`), which gives the same integrals. Read-only volumes (as returned by
:func:`hu_to_mu`) keep that box, and on a GPU their uploaded copy, cached while the array lives.

For many renders of one CT, convert once with :func:`hu_to_mu` and call :func:`line_integrals` per pose:
:func:`render_drr` converts the HU volume on every call.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import weakref

import numpy as np

from .geometry import CArmGeometry
from .volume import Volume

#: Linear attenuation coefficient of water, 1/mm, at an effective beam energy of about 70 keV
#: (NIST XCOM: mass attenuation 0.193 cm^2/g at 70 keV -> 0.0193 /mm; rounded). Typical C-arm spectra
#: (70-120 kVp) have effective energies of 50-70 keV, i.e. 0.019-0.023 /mm.
MU_WATER_PER_MM = 0.02
HU_MIN = -1024.0
HU_MAX = 3071.0
METHODS = ("auto", "joseph", "trilinear")
DEFAULT_STEP_MM = 0.5


@dataclasses.dataclass
class DRR:
    """A rendered DRR: ``image`` uint8 (H, W) for display/training, ``line_integrals`` float32 (H, W) A."""

    image: np.ndarray
    line_integrals: np.ndarray
    geometry: CArmGeometry


def hu_to_mu(hu, mu_water: float = MU_WATER_PER_MM):
    """Eq. 8: CT numbers (HU) -> linear attenuation (1/mm), float32; HU clipped to [-1024, 3071].

    Accepts an array or a :class:`Volume` (returns a Volume with the same frame). The result is
    read-only, which lets repeated renders of it reuse derived data (its empty-margin box, a GPU copy);
    take ``.copy()`` to edit it.
    """
    _check_mu_water(mu_water)
    if isinstance(hu, Volume):
        return hu.with_data(hu_to_mu(hu.data, mu_water))
    arr = np.asarray(hu)
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"CT numbers must be real numbers (HU), got dtype {arr.dtype}.")
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
        raise ValueError("The CT contains NaN/infinite values; replace them (e.g. with -1024 HU, air) first.")
    mu = np.clip(arr, HU_MIN, HU_MAX).astype(np.float32)
    mu += np.float32(-HU_MIN)
    mu *= np.float32(mu_water / -HU_MIN)
    mu.flags.writeable = False
    return mu


def line_integrals(
    mu: Volume,
    geometry: CArmGeometry,
    step_mm: float | None = None,
    method: str = "auto",
    device="auto",
) -> np.ndarray:
    """Line integrals A (dimensionless: 1/mm * mm) of attenuation ``mu`` (1/mm) for every detector pixel.

    Returns float32 (H, W), indexed ``[v, u]``. ``step_mm`` (default 0.5) is the sampling step of
    ``method="trilinear"``; Joseph's method ignores it (one sample per voxel plane). Raises ValueError
    when no ray meets the volume, for invalid volumes (NaN voxels, < 2 voxels along an axis) or options.
    """
    return _integrate(mu, mu.data if isinstance(mu, Volume) else None, geometry, step_mm, method, device)


def render_drr(
    ct_hu: Volume,
    geometry: CArmGeometry,
    mu_water: float = MU_WATER_PER_MM,
    step_mm: float = DEFAULT_STEP_MM,
    method: str = "auto",
    device="auto",
) -> DRR:
    """Render the paper's DRR of a CT in HU: eq. 8 -> line integrals (eq. 9) -> display image (eq. 10).

    Converts the whole CT to attenuation on every call; to render many poses of one CT, call
    :func:`hu_to_mu` once, then :func:`line_integrals` and :func:`to_display` per pose.
    """
    if not isinstance(ct_hu, Volume):
        raise ValueError(_NOT_A_VOLUME.format(type(ct_hu).__name__))
    mu = hu_to_mu(ct_hu.data, mu_water)
    A = _integrate(ct_hu, mu, geometry, step_mm, method, device)
    return DRR(image=to_display(A), line_integrals=A, geometry=geometry)


def to_display(A: np.ndarray, saturate_fraction: float = 0.025, low: int = 20, high: int = 255) -> np.ndarray:
    """Eq. 10 and the paper's display mapping: uint8 (H, W), bone dark.

    ``I = exp(-A)``; the ``saturate_fraction`` brightest pixels (lowest A; more only where values tie)
    become ``high``; the rest scale linearly in I from ``low`` (largest A) towards ``high``. Monotonic
    (non-increasing) in A.
    """
    A = np.asarray(A, dtype=np.float64)
    if A.ndim != 2 or A.size == 0:
        raise ValueError(f"Line integrals must be a non-empty 2-D array (H, W), got shape {A.shape}.")
    if not np.all(np.isfinite(A)):
        raise ValueError("Line integrals contain NaN/infinite values.")
    if not 0.0 <= saturate_fraction < 1.0:
        raise ValueError(f"saturate_fraction must lie in [0, 1), got {saturate_fraction}.")
    if not (0 <= low < high <= 255):
        raise ValueError(f"Need 0 <= low < high <= 255, got low={low}, high={high}.")
    intensity = np.exp(-A)
    flat = intensity.ravel()
    k = int(round(saturate_fraction * flat.size))
    i_sat = flat.max() if k == 0 else np.partition(flat, flat.size - k)[flat.size - k]
    i_min = flat.min()
    out = np.full(intensity.shape, high, dtype=np.uint8)
    if i_sat > i_min:
        x = (intensity - i_min) / (i_sat - i_min)
        below = x < 1.0
        # floor keeps every unsaturated pixel strictly below `high`; x = 0 (largest A) maps to `low`
        out[below] = (low + np.floor((high - low) * x[below])).astype(np.uint8)
    return out


# --- internals ------------------------------------------------------------------------------------

_NOT_A_VOLUME = (
    "Expected a Volume (voxel array with spacing, origin and direction), got {}. Wrap arrays as "
    "Volume(data[k, j, i], spacing, origin, direction) or read files with read_volume()."
)


def _check_mu_water(mu_water: float) -> None:
    if not (np.isfinite(mu_water) and mu_water > 0):
        raise ValueError(
            f"mu_water must be a positive attenuation in 1/mm (default {MU_WATER_PER_MM}), got {mu_water}."
        )


@dataclasses.dataclass(frozen=True)
class RaySetup:
    """All rays of one (volume, geometry) pair, affine in the pixel (u, v), in the index space of a crop.

    Pixel (u, v)'s ray runs from ``src`` to ``q0 + u qu + v qv`` (continuous voxel index relative to the
    crop's first voxel ``crop_lo``); its length in mm is ``|p0 + u pu + v pv|`` (LPS source-to-pixel).
    ``box`` = (lo xyz, hi xyz) is the whole volume's voxel-centre box in the same index space.
    """

    src: np.ndarray
    q0: np.ndarray
    qu: np.ndarray
    qv: np.ndarray
    p0: np.ndarray
    pu: np.ndarray
    pv: np.ndarray
    crop_lo: np.ndarray  # int64 (i, j, k) of the crop's first voxel
    dims: np.ndarray  # int64 crop size (I, J, K)
    box: np.ndarray  # float64 (6,)
    height: int
    width: int


def ray_setup(volume: Volume, geometry: CArmGeometry, crop=None) -> RaySetup:
    """Affine description of all rays, from ``geometry.pixel_positions_lps`` and ``geometry.source_lps``.

    ``crop`` = (lo, hi) inclusive voxel index bounds (i, j, k) of the sub-box to integrate; default: all.
    """
    shape = np.array(volume.shape_ijk, dtype=np.int64)
    lo, hi = (np.zeros(3, np.int64), shape - 1) if crop is None else (np.asarray(c, np.int64) for c in crop)
    m = volume.lps_to_ijk()
    lin, off = m[:3, :3], m[:3, 3] - lo
    src = np.asarray(geometry.source_lps, dtype=float)
    p00, p10, p01 = geometry.pixel_positions_lps(np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, 1.0]))
    du, dv = p10 - p00, p01 - p00
    return RaySetup(
        src=lin @ src + off,
        q0=lin @ p00 + off,
        qu=lin @ du,
        qv=lin @ dv,
        p0=p00 - src,
        pu=du,
        pv=dv,
        crop_lo=lo,
        dims=hi - lo + 1,
        box=np.concatenate([-lo, shape - 1 - lo]).astype(np.float64),
        height=int(geometry.height_px),
        width=int(geometry.width_px),
    )


def support_box(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive index bounds (i, j, k) outside which the trilinear interpolant of ``data`` is exactly 0.

    The nonzero voxels' bounding box grown by one voxel (clamped to the volume): integrating over it gives
    the same line integrals as over the whole volume, faster when the volume has empty (0) margins, e.g.
    air of -1024 HU or padding. All-zero volumes keep the whole box. The scan reads the empty margins;
    for read-only arrays (such as :func:`hu_to_mu` returns) its result is remembered while the array lives.
    """
    from . import drr_numba

    cached = _box_cache.get(id(data))
    if cached is not None and cached[0]() is data:
        return cached[1]
    shape = np.array(data.shape[::-1], dtype=np.int64)
    i0, j0, k0, i1, j1, k1 = drr_numba.nonzero_box(_read_only(data))
    if i0 < 0:
        box = (np.zeros(3, np.int64), shape - 1)
    else:
        lo = np.maximum(np.array([i0, j0, k0]) - 1, 0)
        hi = np.minimum(np.array([i1, j1, k1]) + 1, shape - 1)
        lo = np.where(hi - lo < 1, np.maximum(hi - 1, 0), lo)  # keep >= 2 voxels per axis
        hi = np.where(hi - lo < 1, lo + 1, hi)
        box = (lo.astype(np.int64), hi.astype(np.int64))
    if _owns_readonly(data):
        key = id(data)
        _box_cache[key] = (weakref.ref(data, lambda _r, k=key: _box_cache.pop(k, None)), box)
    return box


_box_cache: dict = {}


def _owns_readonly(data: np.ndarray) -> bool:
    """True when neither ``data`` nor any array it views can be written (safe to cache derived data)."""
    arr = data
    while isinstance(arr, np.ndarray):
        if arr.flags.writeable:
            return False
        arr = arr.base
    return True


def resolve_device(device) -> str:
    """'cpu' (numba), 'torch-cpu', or a torch CUDA device string."""
    if device is None or device == "auto":
        return "cuda" if _cuda_available() else "cpu"
    if type(device).__module__.startswith("torch"):  # a torch.device
        device = str(device)
        return "torch-cpu" if device == "cpu" else device
    if device in ("cpu", "torch-cpu"):
        return device
    if isinstance(device, str) and (device == "cuda" or device.startswith("cuda:") and device[5:].isdigit()):
        if not _cuda_available():
            raise ValueError("CUDA is not available on this machine; use --device cpu or auto.")
        return device
    raise ValueError(f"Unknown device {device!r}; use auto, cpu, torch-cpu, cuda or cuda:N.")


def _cuda_available() -> bool:
    # Avoid importing torch (seconds) on machines that plainly have no NVIDIA driver.
    if "torch" not in sys.modules and sys.platform.startswith("linux") and not os.path.exists("/proc/driver/nvidia"):
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _resolve_method(method: str, step_mm: float | None) -> tuple[str, float]:
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(repr(m) for m in METHODS)}, not {method!r}.")
    step = DEFAULT_STEP_MM if step_mm is None else float(step_mm)
    if not (np.isfinite(step) and step > 0):
        raise ValueError(f"step_mm must be a positive length in mm (default {DEFAULT_STEP_MM}), got {step_mm}.")
    return ("joseph" if method == "auto" else method), step


def _integrate(volume, data, geometry, step_mm, method, device, crop=True) -> np.ndarray:
    """Integrate ``data`` (voxels in ``volume``'s frame) along every ray of ``geometry``."""
    if not isinstance(volume, Volume):
        raise ValueError(_NOT_A_VOLUME.format(type(volume).__name__))
    if not isinstance(geometry, CArmGeometry):
        raise ValueError(f"Expected a CArmGeometry, got {type(geometry).__name__}.")
    volume_shape_ok(volume)
    method, step = _resolve_method(method, step_mm)
    dev = resolve_device(device)
    if dev == "cpu":
        data = _as_float32(data)
        rays = ray_setup(volume, geometry, support_box(data) if crop else None)
        out, n_hit = _integrate_numba(data, rays, method, step)
    else:
        from . import drr_torch

        out, n_hit = drr_torch.integrate(volume, data, geometry, method, step, dev, crop)
    if n_hit == 0:
        lo, hi = volume.corners_lps().min(axis=0), volume.corners_lps().max(axis=0)
        raise ValueError(
            "No X-ray of this C-arm geometry passes through the volume (all rays miss it). The volume spans LPS "
            f"x {lo[0]:.1f}..{hi[0]:.1f}, y {lo[1]:.1f}..{hi[1]:.1f}, z {lo[2]:.1f}..{hi[2]:.1f} mm; the isocenter is "
            f"{[round(float(c), 1) for c in geometry.isocenter_lps]} mm. Move the isocenter into the volume "
            "(e.g. the volume centre) or change the pose."
        )
    if not np.all(np.isfinite(out)):
        raise ValueError("The volume contains NaN/infinite voxels on the rays; replace them (e.g. with 0) first.")
    return out


def volume_shape_ok(volume: Volume) -> None:
    """Cheap checks (no pass over the voxels) every render repeats: dimensions, spacing, direction."""
    if volume.data.ndim != 3 or volume.data.size == 0:
        volume.validate()
    if min(volume.data.shape) < 2:
        raise ValueError(
            f"The volume needs at least 2 voxels along every axis to be ray traced (shape (k, j, i) = "
            f"{volume.data.shape}); rays are clipped to the box spanned by voxel centres, which is flat here."
        )
    if not np.all(np.isfinite(volume.spacing)) or np.any(volume.spacing <= 0):
        raise ValueError(f"Voxel spacing must be positive mm values, got {volume.spacing.tolist()}.")
    if abs(abs(np.linalg.det(volume.direction)) - 1.0) > 1e-3:
        raise ValueError("The volume's direction matrix must be orthonormal (|det| = 1).")


def _read_only(arr: np.ndarray) -> np.ndarray:
    """A read-only view, so numba compiles (and caches) one specialisation per kernel, not two."""
    if arr.flags.writeable:
        arr = arr.view()
        arr.flags.writeable = False
    return arr


def _as_float32(data: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(data, dtype=np.float32)


def _integrate_numba(data: np.ndarray, rays: RaySetup, method: str, step: float) -> tuple[np.ndarray, int]:
    from . import drr_numba

    flat = _read_only(data.reshape(-1))
    strides = np.array([1, data.shape[2], data.shape[1] * data.shape[2]], dtype=np.int64)
    base = int(rays.crop_lo @ strides)
    out = np.empty((rays.height, rays.width), dtype=np.float32)
    hit = np.empty((rays.height, rays.width), dtype=np.uint8)
    args = (flat, base, rays.dims, strides, rays.box, rays.src, rays.q0, rays.qu, rays.qv, rays.p0, rays.pu, rays.pv)
    if method == "joseph":
        drr_numba.joseph(*args, out, hit)
    else:
        drr_numba.trilinear(*args, float(step), out, hit)
    return out, int(np.count_nonzero(hit))
