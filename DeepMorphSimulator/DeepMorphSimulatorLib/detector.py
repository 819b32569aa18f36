"""Detector and display effects: from line integrals ``A`` (H, W) to an 8-bit fluoroscopy-like image.

Pipeline (each step switchable; parameters drawn per image by :func:`sample_detector`):

1. primary intensity ``I = exp(-A)`` (eq. 10), focal-spot blur (Gaussian, px);
2. scatter: a wide blur of the primary times a scatter-to-primary ratio, added;
3. quantum noise: photon counts ``N ~ Poisson(n0 * I)``; ``n0`` is set so that the median pixel of the
   central region receives ``counts`` photons (dose level); ``I <- N / n0``;
4. detector/intensifier PSF (Gaussian, px), which also correlates the noise;
5. image-intensifier vignetting (brightness falls off towards the rim);
6. display, windowed on the central region as a C-arm's automatic brightness control does: linear in
   ``I`` (white = ``abc_gain`` x the central median, the direct beam saturates) or logarithmic (``-log I``
   between quantiles); with ``anatomy_saturation`` the bright end also covers the anatomy of the whole
   field (as clinical auto-windowing on the body's histogram does: only that fraction of the least
   attenuating body pixels burns out, never the bone beside the centre), optionally after dynamic range
   compression (the large-scale log signal partly removed, as clinical processing does), then gamma, unsharp
   masking, partial histogram equalisation, spatially coloured (1/f) noise, brightness/contrast;
7. polarity: bone-dark (fluoroscopy, default) or bone-bright (radiograph look); circular collimation
   (black outside a disk) or rectangular shutters; quantisation to uint8.

Everything is a deterministic function of (A, params, rng).
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np
from scipy import ndimage


@dataclasses.dataclass
class DetectorParams:
    """One image's detector/display settings (px are detector pixels)."""

    focal_blur_px: float = 0.0
    scatter_ratio: float = 0.0  # scatter-to-primary ratio (of the field's mean primary)
    scatter_sigma_frac: float = 0.15  # scatter kernel std as a fraction of the image width
    counts: float | None = None  # photons at the median field pixel; None = no quantum noise
    detector_blur_px: float = 0.0
    vignetting: float = 0.0  # relative brightness loss at the disk rim
    display: str = "linear"  # "linear" | "log"
    abc_gain: float = 2.0  # linear display: white = abc_gain x median intensity of the central region
    window_low: float = 0.01  # log display: window from these quantiles of -log I in the central region
    window_high: float = 0.995
    control_ignores_metal: bool = True  # dose/brightness control and windowing look past metal (if known)
    window_margin: float = 0.05  # ... widened by this fraction of its span on both sides
    central_fraction: float = 0.35  # radius of the central (dose-control) region, fraction of the width
    anatomy_saturation: float | None = None  # at most this fraction of the anatomy (A > 0.3, whole field) burns out
    drc_amount: float = 0.0  # dynamic range compression: share of the large-scale log signal removed
    drc_sigma_frac: float = 0.1  # its Gaussian scale as a fraction of the width
    gamma: float = 1.0
    unsharp_amount: float = 0.0
    unsharp_sigma_px: float = 4.0
    equalize: float = 0.0  # blend weight of histogram equalisation
    coloured_noise: float = 0.0  # std of 1/f noise added to the display signal (0-1 scale)
    coloured_beta: float = 1.0  # spectrum ~ 1/f^beta
    contrast: float = 1.0
    brightness: float = 0.0
    polarity: str = "bone-dark"  # "bone-dark" | "bone-bright"
    collimation: str = "none"  # "none" | "circle" | "shutters"
    collimation_center: tuple = (0.5, 0.5)  # fraction of width, height
    collimation_radius: float = 0.5  # circle radius as a fraction of the width; shutters: half-size
    low: float = 20.0  # output grey range
    high: float = 255.0
    outside_value: float = 0.0  # grey level outside the collimated field

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: (round(float(v), 5) if isinstance(v, float) else (list(v) if isinstance(v, tuple) else v)) for k, v in d.items()}


DISPLAY_WINDOWS = ("centre", "anatomy")  # sample_detector(window=...): central region alone / also the whole body


def plain_params() -> DetectorParams:
    """The paper's display (eq. 10, 2.5 % saturated, linear scaling to [20, 255]); no noise, no blur."""
    return DetectorParams()


def sample_detector(rng: np.random.Generator, p_bone_bright: float = 0.25, geometry=None,
                    window: str = "centre") -> DetectorParams:
    """Random realistic detector/display settings. ``geometry`` (CArmGeometry) scales the focal-spot blur.

    ``window``: "centre" (the display window follows the central region alone, as before; draws unchanged) or
    "anatomy" (``anatomy_saturation`` 0-3 % and display contrast <= 1.1, so the femur outline does not burn out).

    Ranges: focal spot 0.3-1.0 mm (penumbra = spot * (M - 1)), scatter-to-primary 0-0.3 (anti-scatter grid), dose 300-10000
    photons per pixel behind the patient (at this pixel size), detector PSF 0.3-1.2 px, vignetting 0-35 %, gamma 0.7-1.4.
    """
    if window not in DISPLAY_WINDOWS:
        raise ValueError(f"window must be one of {', '.join(DISPLAY_WINDOWS)}, got {window!r}.")
    p = DetectorParams()
    pixel_mm = 0.6
    mag = 1.5
    if geometry is not None:
        pixel_mm, mag = float(geometry.pixel_mm), float(geometry.magnification)
    p.polarity = "bone-bright" if rng.uniform() < p_bone_bright else "bone-dark"
    radiograph = p.polarity == "bone-bright"  # radiograph look: log display, softer contrast, more dose
    spot_mm = rng.uniform(0.3, 1.0)
    p.focal_blur_px = float(spot_mm * (mag - 1.0) / pixel_mm / 2.355)  # FWHM -> sigma
    p.scatter_ratio = float(rng.uniform(0.0, 0.3))  # with an anti-scatter grid
    p.scatter_sigma_frac = float(rng.uniform(0.08, 0.25))
    dose = (1000.0, 30000.0) if radiograph else (300.0, 10000.0)
    p.counts = float(np.exp(rng.uniform(*np.log(dose)))) if rng.uniform() < 0.9 else None
    p.detector_blur_px = float(rng.uniform(0.3, 1.2))
    p.display = "log" if rng.uniform() < (0.85 if radiograph else 0.4) else "linear"
    if radiograph:  # radiograph processing flattens the soft tissue strongly so bone stands out
        p.drc_amount = float(rng.uniform(0.5, 0.9))
        p.drc_sigma_frac = float(rng.uniform(0.04, 0.1))
    elif rng.uniform() < 0.6:
        p.drc_amount = float(rng.uniform(0.2, 0.8))
        p.drc_sigma_frac = float(rng.uniform(0.05, 0.15))
    p.abc_gain = float(rng.uniform(1.4, 3.5))
    p.window_low = float(rng.uniform(0.0, 0.12))
    p.window_high = float(rng.uniform(0.9, 1.0))
    p.control_ignores_metal = bool(rng.uniform() < 0.75)
    p.window_margin = float(rng.uniform(0.1, 0.4) if radiograph else rng.uniform(0.0, 0.25))
    p.central_fraction = float(rng.uniform(0.3, 0.5))
    p.gamma = float(np.exp(rng.uniform(np.log(0.7), np.log(1.4))))
    if rng.uniform() < 0.5:
        p.unsharp_amount = float(rng.uniform(0.2, 1.5))
        p.unsharp_sigma_px = float(rng.uniform(2.0, 12.0))
    p.equalize = float(rng.uniform(0.0, 0.7)) if rng.uniform() < 0.4 else 0.0
    p.coloured_noise = float(rng.uniform(0.0, 0.04))
    p.coloured_beta = float(rng.uniform(0.5, 2.0))
    anatomy = window == "anatomy"
    # display contrast > 1 clips both ends (up to 1.25 burnt out 7 of 34 such femur outlines): <= 1.1 with "anatomy"
    p.contrast = float(rng.uniform(0.8, 1.1) if radiograph or anatomy else rng.uniform(0.8, 1.25))
    p.brightness = float(rng.uniform(-0.25, -0.05) if radiograph else rng.uniform(-0.08, 0.08))
    u = rng.uniform()
    p.vignetting = float(rng.uniform(0.0, 0.2))  # heel effect / lens fall-off
    if not radiograph and u < 0.6 or radiograph and u < 0.15:
        p.collimation = "circle"  # image intensifier
        p.collimation_radius = float(rng.uniform(0.45, 0.62))
        p.vignetting = float(rng.uniform(0.0, 0.35))
    elif u < 0.75:
        p.collimation = "shutters"
        p.collimation_radius = float(rng.uniform(0.38, 0.5))
    p.collimation_center = (float(0.5 + rng.normal(0, 0.03)), float(0.5 + rng.normal(0, 0.03)))
    p.low = float(rng.uniform(0.0, 25.0))
    p.high = float(rng.uniform(190.0, 250.0) if radiograph else rng.uniform(225.0, 255.0))
    p.outside_value = 0.0 if (not radiograph or rng.uniform() < 0.5) else float(rng.uniform(200, 255))
    # Windowed on the central region alone, 20 of 200 simulated hips lost > 10 % of the femur outline in the field
    # to burn-out (the lateral trochanter and thigh); on the 38 real dev radiographs none did. Drawn last: the
    # settings above stay as they were for a given seed.
    if anatomy:
        p.anatomy_saturation = float(rng.uniform(0.0, 0.03))
    return p


# --- building blocks ----------------------------------------------------------------------------
def quantum_noise(intensity: np.ndarray, n0: float, rng: np.random.Generator, exact_below: float = 50.0) -> np.ndarray:
    """Photon counts ``N ~ Poisson(n0 * I)`` returned as ``N / n0`` (mean ``I``, variance ``I / n0``).

    Pixels expecting more than ``exact_below`` photons use the normal approximation N(lam, lam) (the
    same mean and variance, much faster); the rest are drawn exactly from the Poisson distribution.
    """
    if not n0 > 0:
        raise ValueError(f"Photon count scale n0 must be > 0, got {n0}.")
    lam = np.clip(np.asarray(intensity, dtype=np.float64) * n0, 0.0, 1e12)
    counts = lam + np.sqrt(lam) * rng.standard_normal(lam.shape)
    low = lam < exact_below
    if low.any():
        counts[low] = rng.poisson(lam[low])
    return np.maximum(counts, 0.0) / n0


def coloured_noise(shape: tuple[int, int], rng: np.random.Generator, beta: float = 1.0) -> np.ndarray:
    """Zero-mean, unit-std Gaussian noise with power spectrum ~ 1/f^beta (f in cycles/px)."""
    h, w = shape
    from scipy import fft

    white = rng.standard_normal((h, w), dtype=np.float32)
    fy = fft.fftfreq(h).astype(np.float32)[:, None]
    fx = fft.rfftfreq(w).astype(np.float32)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    f[0, 0] = 1.0
    amp = f ** np.float32(-beta / 2.0)
    amp[0, 0] = 0.0
    out = fft.irfft2(fft.rfft2(white) * amp, s=(h, w))
    std = out.std()
    return out / std if std > 0 else out


@functools.lru_cache(maxsize=8)
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column coordinates (px) as float32 arrays of shape (h, 1) and (1, w)."""
    return np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]


def field_mask(shape: tuple[int, int], params: DetectorParams, soft_px: float = 1.0) -> np.ndarray:
    """Weight in [0, 1] of the exposed field (1 inside the collimator, 0 outside, soft edge)."""
    h, w = shape
    if params.collimation == "none":
        return np.ones(shape)
    cx = params.collimation_center[0] * (w - 1)
    cy = params.collimation_center[1] * (h - 1)
    v, u = _grid(h, w)
    if params.collimation == "circle":
        r = params.collimation_radius * w
        dist = r - np.hypot(u - cx, v - cy)
    elif params.collimation == "shutters":
        half = params.collimation_radius * w
        dist = np.minimum(half - np.abs(u - cx), half * 1.1 - np.abs(v - cy))
    else:
        raise ValueError(f"Unknown collimation {params.collimation!r}; use 'none', 'circle' or 'shutters'.")
    return np.clip(0.5 + dist / (2 * soft_px), 0.0, 1.0)


def central_region(shape: tuple[int, int], params: DetectorParams) -> np.ndarray:
    """Disk around the field centre used for dose and brightness control (bool (H, W))."""
    h, w = shape
    v, u = _grid(h, w)
    cx = params.collimation_center[0] * (w - 1)
    cy = params.collimation_center[1] * (h - 1)
    return (u - cx) ** 2 + (v - cy) ** 2 <= (params.central_fraction * w) ** 2


BODY_MIN_A = 0.3  # line integral below which a pixel is direct beam, not body


def _control_pixels(a: np.ndarray, inside: np.ndarray, params: DetectorParams, metal=None) -> np.ndarray:
    """Pixels that drive dose and brightness control: central region, direct beam (A < BODY_MIN_A) excluded,
    metal (a bool mask, when given and ``params.control_ignores_metal``) excluded."""
    centre = inside & central_region(a.shape, params)
    if metal is not None and params.control_ignores_metal:
        no_metal = centre & ~metal
        if no_metal.sum() >= max(16, 0.2 * centre.sum()):
            centre = no_metal
    body = centre & (a > BODY_MIN_A)
    if body.sum() >= max(16, 0.05 * centre.sum()):
        return body
    return centre if centre.sum() >= 16 else inside


LINEAR_MAX_GAIN = 4.0  # linear display with anatomy_saturation: white at most this x the central median intensity


def _anatomy_pixels(a: np.ndarray, inside: np.ndarray, params: DetectorParams, metal=None) -> np.ndarray | None:
    """Body pixels of the whole exposed field (A > BODY_MIN_A; metal left out as in ``_control_pixels``), or None."""
    body = inside & (a > BODY_MIN_A)
    if metal is not None and params.control_ignores_metal:
        body &= ~metal
    return body if body.sum() >= 16 else None


def _equalize(s: np.ndarray, inside: np.ndarray, bins: int = 1024) -> np.ndarray:
    """Histogram equalisation of ``s`` in [0, 1] with the histogram of the exposed field."""
    hist, edges = np.histogram(s[inside], bins=bins, range=(0.0, 1.0))
    if hist.sum() < 2:
        return s
    cdf = np.concatenate([[0.0], np.cumsum(hist) / hist.sum()])
    return np.interp(s, edges, cdf)


def _wide_blur(img: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur with a large sigma via a downsampled grid (cheap; scatter is smooth)."""
    f = max(1, int(sigma_px // 4))
    if f == 1:
        return ndimage.gaussian_filter(img, sigma_px, mode="nearest")
    h, w = img.shape
    hs, ws = -(-h // f), -(-w // f)
    pad = np.pad(img, ((0, hs * f - h), (0, ws * f - w)), mode="edge")
    small = pad.reshape(hs, f, ws, f).mean(axis=(1, 3))
    small = ndimage.gaussian_filter(small, sigma_px / f, mode="nearest")
    big = np.repeat(np.repeat(small, f, axis=0), f, axis=1)[:h, :w]
    return ndimage.uniform_filter(big, f, mode="nearest")  # removes the blocks of the nearest upsampling


# --- main entry -----------------------------------------------------------------------------------
def apply_detector(line_integrals: np.ndarray, params: DetectorParams, rng: np.random.Generator, metal=None) -> np.ndarray:
    """Turn line integrals A (H, W, dimensionless) into a uint8 image with the given effects.

    ``metal``: optional bool (H, W) mask of pixels behind metal; systems with metal-aware dose and
    brightness control (``params.control_ignores_metal``) leave them out of their statistics.
    """
    a = np.asarray(line_integrals, dtype=np.float32)
    if a.ndim != 2:
        raise ValueError(f"Line integrals must be a 2-D array (H, W), got shape {a.shape}.")
    if not np.all(np.isfinite(a)):
        raise ValueError("Line integrals contain NaN/infinite values.")
    if params.anatomy_saturation is not None and not 0.0 <= params.anatomy_saturation < 1.0:
        raise ValueError(f"anatomy_saturation is a fraction of the body in [0, 1), got {params.anatomy_saturation}; "
                         "use None to window on the central region alone.")
    field = field_mask(a.shape, params)
    inside = field > 0.5
    if not inside.any():
        inside = np.ones(a.shape, bool)
    # 1-2: primary, focal spot blur, scatter (intensities relative to the unattenuated beam)
    i = np.exp(-np.clip(a, 0.0, 60.0))
    if params.focal_blur_px > 0.05:
        i = ndimage.gaussian_filter(i, params.focal_blur_px, mode="nearest")
    if params.scatter_ratio > 0:  # scatter arises in the patient: weight the primary by (1 - I)
        i = i + params.scatter_ratio * _wide_blur(i * (1.0 - i), params.scatter_sigma_frac * a.shape[1])
    # 3: quantum noise at a dose level
    if params.counts:
        ref = float(np.median(i[_control_pixels(a, inside, params, metal)]))
        n0 = params.counts / max(ref, 1e-30)
        i = quantum_noise(i, n0, rng).astype(np.float32)
        i = np.maximum(i, np.float32(0.5 / n0))  # a pixel never reads below half a photon (log stays finite)
    # 4-5: detector PSF, vignetting
    if params.detector_blur_px > 0.05:
        i = ndimage.gaussian_filter(i, params.detector_blur_px, mode="nearest")
    if params.vignetting > 0:
        h, w = a.shape
        v, u = _grid(h, w)
        r = np.hypot(u - (w - 1) / 2, v - (h - 1) / 2) / (0.5 * np.hypot(w, h) / np.sqrt(2))
        i = i * (1.0 - params.vignetting * np.clip(r, 0, 1.5) ** 2)
    i = np.maximum(i, np.float32(1e-30))
    # 6: display transform; s in [0, 1], bone dark (large attenuation -> small s). Like a C-arm's
    # automatic brightness control, the window follows the anatomy in the central region (direct
    # beam beside the body saturates), not the whole field.
    centre = _control_pixels(a, inside, params, metal)
    if params.drc_amount > 0:  # clinical dynamic range compression: flatten the large-scale signal
        lg = -np.log(i)
        ref, top = (float(x) for x in np.quantile(lg[centre], [0.5, 0.99]))
        smooth = _wide_blur(np.minimum(lg, top), params.drc_sigma_frac * a.shape[1])  # metal clipped: small halos
        lg = lg - params.drc_amount * (smooth - ref)
        i = np.exp(-lg)
    anatomy = None if params.anatomy_saturation is None else _anatomy_pixels(a, inside, params, metal)
    if params.display == "log":
        lg = -np.log(i)
        lo, hi, q10, q90 = np.quantile(lg[centre], [params.window_low, params.window_high, 0.1, 0.9])
        hi = min(hi, q90 + 1.5 * (q90 - q10))  # metal is an outlier: it saturates instead of squashing the window
        span = max(hi - lo, 1e-6)
        lo, hi = lo - params.window_margin * span, hi + params.window_margin * span
        if anatomy is not None:  # the bright end reaches down to the anatomy's least attenuating pixels
            lo = min(lo, float(np.quantile(lg[anatomy], params.anatomy_saturation)))
        s = 1.0 - (lg - lo) / (hi - lo)
    elif params.display == "linear":
        median = max(float(np.median(i[centre])), 1e-30)
        white = params.abc_gain * median
        if anatomy is not None:  # a linear display cannot span the whole body: at most LINEAR_MAX_GAIN x the median
            body_white = float(np.quantile(i[anatomy], 1.0 - params.anatomy_saturation))
            white = max(white, min(body_white, LINEAR_MAX_GAIN * median))
        s = i / white
    else:
        raise ValueError(f"Unknown display {params.display!r}; use 'linear' or 'log'.")
    s = np.clip(s, 0.0, 1.0)
    if params.gamma != 1.0:
        s = s**params.gamma
    if params.unsharp_amount > 0:
        s = s + params.unsharp_amount * (s - ndimage.gaussian_filter(s, params.unsharp_sigma_px, mode="nearest"))
    if params.equalize > 0:
        s = (1 - params.equalize) * s + params.equalize * _equalize(s, inside)
    if params.coloured_noise > 0:
        s = s + params.coloured_noise * coloured_noise(a.shape, rng, params.coloured_beta)
    # 7: polarity, brightness/contrast as displayed, grey range, collimation, quantisation
    if params.polarity == "bone-bright":
        s = 1.0 - s
    elif params.polarity != "bone-dark":
        raise ValueError(f"Unknown polarity {params.polarity!r}; use 'bone-dark' or 'bone-bright'.")
    s = (s - 0.5) * params.contrast + 0.5 + params.brightness
    s = np.clip(s, 0.0, 1.0)
    g = params.low + (params.high - params.low) * s
    g = field * g + (1.0 - field) * params.outside_value
    return np.clip(np.rint(g), 0, 255).astype(np.uint8)
