"""Batched training augmentation (torch, CPU or CUDA), deterministic given a ``torch.Generator``.

The paper's set — random rotation up to 360 degrees, reflection, additive spatially coloured noise, gamma,
random square occlusions — plus appearance randomisation for real images: zoom/shift, contrast/brightness
with saturation, Gaussian blur, rectangular (tool-like) occlusions and polarity inversion (bone-dark <->
bone-bright). Geometric transforms are applied identically to the image and its target masks through one
``grid_sample`` call; appearance transforms touch the image only (targets stay where the bone is, also
under an occlusion, as in the paper).

Images are (B, 1, H, W) float in [0, 1] (bone dark = low values, as the simulator renders them); masks are
(B, K, H, W) float in [0, 1] (soft targets after resizing). Every random number is drawn on the CPU from
the given generator, in a fixed order, so a batch is reproducible on any device.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random transforms (px are pixels of the network input, angles in degrees)."""

    rotation_deg: float = 180.0            # uniform in [-r, r] (180 = any in-plane rotation)
    reflect_prob: float = 0.5              # mirror left-right before rotating
    zoom_range: tuple = (0.8, 1.25)        # log-uniform magnification of the content
    shift_fraction: float = 0.12           # uniform shift up to this fraction of the side, each axis
    fill_black_prob: float = 0.5           # area outside the rotated image: black, else a random grey
    gamma_range: tuple = (0.6, 1.7)        # log-uniform exponent of I -> I**gamma
    occlusion_prob: float = 0.5            # probability of each of the `max_occlusions` slots
    max_occlusions: int = 3
    occlusion_size: tuple = (0.04, 0.25)   # long side as a fraction of the output side
    occlusion_aspect: tuple = (0.25, 1.0)  # short/long side ratio (1 = the paper's squares)
    occlusion_dark_prob: float = 0.7       # metal-like (value in [0, 0.25]) else any grey in [0, 1]
    contrast_range: tuple = (0.7, 1.4)     # log-uniform slope about the image mean, then clip to [0, 1]
    brightness_range: tuple = (-0.12, 0.12)
    blur_prob: float = 0.3
    blur_sigma: tuple = (0.3, 1.5)         # px
    noise_prob: float = 0.8
    noise_std: tuple = (0.0, 0.08)         # additive noise std (image units, image in [0, 1])
    noise_sigma: tuple = (0.0, 3.0)        # px: correlation length of the coloured noise (0 = white)
    invert_prob: float = 0.0               # polarity inversion I -> 1 - I
    # display processing as clinical X-ray systems apply it (off by default; drawn only when on, so the random
    # sequence of a configuration without it is unchanged):
    unsharp_prob: float = 0.0              # unsharp masking I + a (I - blur(I)): edge enhancement
    unsharp_sigma: tuple = (0.02, 0.08)    # its blur sigma, as a fraction of the image side
    unsharp_amount: tuple = (0.3, 1.5)     # its amount a
    equalize_prob: float = 0.0             # blend with the image's histogram-equalised version
    equalize_blend: tuple = (0.3, 1.0)     # weight of the equalised image

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "AugmentConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"Unknown augmentation settings {sorted(unknown)}; known: {sorted(known)}.")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


NO_AUGMENTATION = AugmentConfig(rotation_deg=0.0, reflect_prob=0.0, zoom_range=(1.0, 1.0), shift_fraction=0.0,
                                gamma_range=(1.0, 1.0), occlusion_prob=0.0, contrast_range=(1.0, 1.0),
                                brightness_range=(0.0, 0.0), blur_prob=0.0, noise_prob=0.0, invert_prob=0.0)


def _uniform(g: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _log_uniform(g: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return torch.exp(_uniform(g, n, math.log(lo), math.log(hi)))


def _bernoulli(g: torch.Generator, n: int, p: float) -> torch.Tensor:
    return torch.rand(n, generator=g) < p


def random_affine(images: torch.Tensor, masks: torch.Tensor, g: torch.Generator, cfg: AugmentConfig,
                  out_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate/reflect/zoom/shift image and masks identically; output (out_size, out_size) px at the input's
    pixel scale (times the zoom), i.e. ``out_size`` < H takes a random crop around the (shifted) centre."""
    b, _, h, w = images.shape
    out_h, out_w = (out_size, out_size) if out_size else (h, w)
    angle = torch.deg2rad(_uniform(g, b, -cfg.rotation_deg, cfg.rotation_deg))
    flip = torch.where(_bernoulli(g, b, cfg.reflect_prob), -1.0, 1.0)
    zoom = _log_uniform(g, b, *cfg.zoom_range)
    shift = _uniform(g, 2 * b, -cfg.shift_fraction, cfg.shift_fraction).view(b, 2) * 2.0
    fill = torch.where(_bernoulli(g, b, cfg.fill_black_prob), 0.0, torch.rand(b, generator=g))
    # theta maps output normalised coords to input normalised coords (align_corners=False):
    # in_px = R * diag(flip, 1) * out_px / zoom, converted with each side's half-size.
    cos, sin = torch.cos(angle), torch.sin(angle)
    sx, sy = out_w / w / zoom, out_h / h / zoom
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = cos * flip * sx
    theta[:, 0, 1] = -sin * sy * (h / w)
    theta[:, 1, 0] = sin * flip * sx * (w / h)
    theta[:, 1, 1] = cos * sy
    theta[:, :, 2] = shift
    dev = images.device
    grid = F.affine_grid(theta.to(dev), [b, 1, out_h, out_w], align_corners=False)
    stack = torch.cat([images, torch.ones_like(images), masks], dim=1)
    out = F.grid_sample(stack, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    valid = out[:, 1:2]
    img = out[:, 0:1] + (1.0 - valid) * fill.to(dev).view(b, 1, 1, 1)
    return img, out[:, 2:]


def gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """(B, 2*radius+1) normalised 1-D Gaussian kernels; sigma ~ 0 gives a delta."""
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=sigma.device)
    k = torch.exp(-0.5 * (x[None, :] / sigma.clamp_min(1e-3)[:, None]) ** 2)
    return k / k.sum(dim=1, keepdim=True)


def blur_per_sample(x: torch.Tensor, sigma: torch.Tensor, padding_mode: str = "reflect") -> torch.Tensor:
    """Separable Gaussian blur of (B, 1, H, W) with a different sigma (px) per sample (grouped conv)."""
    b, _, h, w = x.shape
    radius = int(math.ceil(3.0 * float(sigma.max()))) if len(sigma) else 0
    radius = min(radius, (min(h, w) - 1) // 2)
    if radius < 1:
        return x
    k = gaussian_kernels(sigma.to(x.device), radius)
    y = x.reshape(1, b, h, w)
    y = F.pad(y, (radius, radius, 0, 0), mode=padding_mode)
    y = F.conv2d(y, k.view(b, 1, 1, -1), groups=b)
    y = F.pad(y, (0, 0, radius, radius), mode=padding_mode)
    y = F.conv2d(y, k.view(b, 1, -1, 1), groups=b)
    return y.view(b, 1, h, w)


def coloured_noise(shape: tuple, sigma: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Unit-std Gaussian noise (B, 1, H, W) low-pass filtered with a per-sample Gaussian of ``sigma`` px."""
    white = torch.randn(shape, generator=g)
    noise = blur_per_sample(white, sigma, padding_mode="circular")
    std = noise.flatten(1).std(dim=1).clamp_min(1e-6)
    return noise / std.view(-1, 1, 1, 1)


def occlusion_layer(b: int, h: int, w: int, g: torch.Generator, cfg: AugmentConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Random axis-aligned rectangles: (alpha (B,1,H,W) in [0,1], value (B,1,H,W)) to blend over the image."""
    n = cfg.max_occlusions
    alpha = torch.zeros(b, 1, h, w)
    value = torch.zeros(b, 1, h, w)
    if n < 1 or cfg.occlusion_prob <= 0:
        return alpha, value
    present = _bernoulli(g, b * n, cfg.occlusion_prob).view(b, n)
    cx = _uniform(g, b * n, 0.0, w).view(b, n)
    cy = _uniform(g, b * n, 0.0, h).view(b, n)
    long_side = _uniform(g, b * n, *cfg.occlusion_size).view(b, n) * min(h, w)
    aspect = _uniform(g, b * n, *cfg.occlusion_aspect).view(b, n)
    portrait = _bernoulli(g, b * n, 0.5).view(b, n)
    half_w = torch.where(portrait, long_side * aspect, long_side) / 2
    half_h = torch.where(portrait, long_side, long_side * aspect) / 2
    dark = _bernoulli(g, b * n, cfg.occlusion_dark_prob).view(b, n)
    val = torch.where(dark, _uniform(g, b * n, 0.0, 0.25).view(b, n), torch.rand(b, n, generator=g))
    opacity = _uniform(g, b * n, 0.6, 1.0).view(b, n)
    xs = torch.arange(w, dtype=torch.float32).view(1, 1, w)
    ys = torch.arange(h, dtype=torch.float32).view(1, h, 1)
    for j in range(n):  # later rectangles are drawn over earlier ones
        inside = ((xs - cx[:, j, None, None]).abs() <= half_w[:, j, None, None]) & \
                 ((ys - cy[:, j, None, None]).abs() <= half_h[:, j, None, None]) & present[:, j, None, None]
        a = inside.float() * opacity[:, j, None, None]
        value[:, 0] = value[:, 0] * (1 - a) + val[:, j, None, None] * a
        alpha[:, 0] = alpha[:, 0] + a * (1 - alpha[:, 0])
    value = torch.where(alpha > 0, value / alpha.clamp_min(1e-6), value)
    return alpha, value


def random_appearance(images: torch.Tensor, g: torch.Generator, cfg: AugmentConfig) -> torch.Tensor:
    """Gamma, occlusions, contrast/brightness (+saturation), blur, coloured noise, polarity; image only."""
    b, _, h, w = images.shape
    dev = images.device
    gamma = _log_uniform(g, b, *cfg.gamma_range).to(dev).view(b, 1, 1, 1)
    x = images.clamp(0.0, 1.0) ** gamma
    alpha, value = occlusion_layer(b, h, w, g, cfg)
    x = x * (1 - alpha.to(dev)) + value.to(dev) * alpha.to(dev)
    contrast = _log_uniform(g, b, *cfg.contrast_range).to(dev).view(b, 1, 1, 1)
    brightness = _uniform(g, b, *cfg.brightness_range).to(dev).view(b, 1, 1, 1)
    mean = x.mean(dim=(2, 3), keepdim=True)
    x = ((x - mean) * contrast + mean + brightness).clamp(0.0, 1.0)
    blur_sigma = torch.where(_bernoulli(g, b, cfg.blur_prob), _uniform(g, b, *cfg.blur_sigma), torch.zeros(b))
    if bool((blur_sigma > 0).any()):
        x = blur_per_sample(x, blur_sigma)
    noise_on = _bernoulli(g, b, cfg.noise_prob)
    noise_std = torch.where(noise_on, _uniform(g, b, *cfg.noise_std), torch.zeros(b))
    noise_sigma = _uniform(g, b, *cfg.noise_sigma)
    if bool(noise_on.any()):
        noise = coloured_noise((b, 1, h, w), noise_sigma, g)
        x = x + noise.to(dev) * noise_std.to(dev).view(b, 1, 1, 1)
    x = display_processing(x.clamp(0.0, 1.0), g, cfg)
    invert = _bernoulli(g, b, cfg.invert_prob).to(dev).view(b, 1, 1, 1)
    x = torch.where(invert, 1.0 - x, x)
    return x.clamp(0.0, 1.0)


def equalize(x: torch.Tensor) -> torch.Tensor:
    """Per-image histogram equalisation of (B, 1, H, W) images: each pixel -> its rank / (H W - 1) (ties broken
    by position), a uniform grey histogram."""
    b, c, h, w = x.shape
    flat = x.reshape(b, -1)
    ranks = torch.empty_like(flat)
    order = torch.argsort(flat, dim=1, stable=True)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=x.device, dtype=x.dtype).expand(b, -1).contiguous())
    return (ranks / max(flat.shape[1] - 1, 1)).reshape(b, c, h, w)


def display_processing(x: torch.Tensor, g: torch.Generator, cfg: AugmentConfig) -> torch.Tensor:
    """Unsharp masking and histogram equalisation of images in [0, 1] (``cfg.unsharp_*``, ``cfg.equalize_*``); a
    step whose probability is 0 draws no random numbers."""
    b, _, h, w = x.shape
    dev = x.device
    if cfg.unsharp_prob > 0:
        on = _bernoulli(g, b, cfg.unsharp_prob)
        sigma = _log_uniform(g, b, *cfg.unsharp_sigma) * min(h, w)
        amount = torch.where(on, _uniform(g, b, *cfg.unsharp_amount), torch.zeros(b))
        if bool(on.any()):
            blurred = blur_per_sample(x, torch.where(on, sigma, torch.zeros(b)))
            x = (x + amount.to(dev).view(b, 1, 1, 1) * (x - blurred)).clamp(0.0, 1.0)
    if cfg.equalize_prob > 0:
        on = _bernoulli(g, b, cfg.equalize_prob)
        t = torch.where(on, _uniform(g, b, *cfg.equalize_blend), torch.zeros(b)).to(dev).view(b, 1, 1, 1)
        if bool(on.any()):
            x = x * (1 - t) + equalize(x) * t
    return x


def augment_batch(images: torch.Tensor, masks: torch.Tensor, g: torch.Generator, cfg: AugmentConfig,
                  out_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Geometric transform of image+masks, then appearance of the image. Returns (images, masks) of side
    ``out_size`` (default: the input size). Same generator state -> same result."""
    if images.ndim != 4 or images.shape[1] != 1 or masks.ndim != 4 or masks.shape[0] != images.shape[0] \
            or masks.shape[2:] != images.shape[2:]:
        raise ValueError(f"augment_batch expects images (B,1,H,W) and masks (B,K,H,W), got {tuple(images.shape)} "
                         f"and {tuple(masks.shape)}.")
    img, msk = random_affine(images, masks, g, cfg, out_size)
    return random_appearance(img, g, cfg), msk
