"""Regions of interest: square crops around a first estimate, for a coarse -> fine cascade of networks.

A ROI is a centre ``(cx, cy)`` px and a ``side`` px in the source image (x = column, y = row, pixel centres at
integers, y down). ``crop_rois`` resamples it to an (S, S) patch whose pixel (i, j) has its centre at
``x = cx + (j + 0.5 - S/2) * side / S``, ``y = cy + (i + 0.5 - S/2) * side / S``; ``to_source``/``to_crop``
convert points between the two frames. Patches smaller than the ROI are taken from an antialiased,
downscaled copy of the image (so a patch looks the same whatever the source resolution); pixels outside the
image get a fill value.

Head ROIs (``head_roi``) are ``scale`` (default 4) head radii wide, centred on the circle estimate: the
refinement network sees the whole head, half the patch wide, and some neck and acetabulum around it.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_HEAD_SCALE = 4.0  # ROI side / head radius


def _as_rows(values, shape: tuple, name: str) -> torch.Tensor:
    t = values.detach().float().cpu() if torch.is_tensor(values) else torch.as_tensor(np.asarray(values, np.float32))
    t = t.reshape(shape)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"ROI {name} must be finite, got {t.tolist()}.")
    return t


def crop_rois(images: torch.Tensor, centers, sides, out_size: int, fill=None) -> torch.Tensor:
    """Patches (B, C, S, S) of ``images`` (B, C, H, W) float around ``centers`` (B, 2) px with ``sides`` (B,) px.

    ``fill`` (B,) or scalar: value outside the image (default 0). Bilinear; each ROI wider than ``out_size``
    is sampled from the image downscaled (antialiased) by side / S first.
    """
    if images.ndim != 4:
        raise ValueError(f"crop_rois expects images (B, C, H, W), got shape {tuple(images.shape)}.")
    b, c = images.shape[:2]
    centers = _as_rows(centers, (b, 2), "centres")
    sides = _as_rows(sides, (b,), "sides")
    if bool((sides <= 0).any()):
        raise ValueError(f"ROI sides must be positive px, got {sides.tolist()}.")
    fill_t = torch.zeros(b) if fill is None else torch.as_tensor(fill, dtype=torch.float32).expand(b).clone()
    t = (torch.arange(out_size, dtype=torch.float32) + 0.5 - out_size / 2) / out_size  # units of the side
    out = []
    for k in range(b):
        img = images[k:k + 1].float()
        cx, cy, side = float(centers[k, 0]), float(centers[k, 1]), float(sides[k])
        factor = side / out_size
        if factor > 1.05:  # antialias: shrink the source so the patch samples it at about one px per px
            h, w = img.shape[-2:]
            nh, nw = max(2, round(h / factor)), max(2, round(w / factor))
            img = F.interpolate(img, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
            sx, sy = nw / w, nh / h  # pixel centre x maps to (x + 0.5) * s - 0.5
            cx, cy, side_x, side_y = (cx + 0.5) * sx - 0.5, (cy + 0.5) * sy - 0.5, side * sx, side * sy
        else:
            side_x = side_y = side
        h, w = img.shape[-2:]
        xs = cx + t * side_x
        ys = cy + t * side_y
        gx = (2 * xs + 1) / w - 1  # align_corners=False normalised coordinates
        gy = (2 * ys + 1) / h - 1
        grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)[None].to(img.device)
        stack = torch.cat([img, torch.ones_like(img[:, :1])], dim=1)
        patch = F.grid_sample(stack, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        valid = patch[:, -1:]
        out.append(patch[:, :-1] + (1 - valid) * float(fill_t[k]))
    return torch.cat(out, dim=0).to(images.dtype if images.is_floating_point() else torch.float32)


def to_source(points, center, side: float, out_size: int) -> np.ndarray:
    """Patch px (N, 2) (x, y) -> source image px."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return np.asarray(center, dtype=np.float64) + (p + 0.5 - out_size / 2) * (side / out_size)


def to_crop(points, center, side: float, out_size: int) -> np.ndarray:
    """Source image px (N, 2) (x, y) -> patch px (inverse of ``to_source``)."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return (p - np.asarray(center, dtype=np.float64)) * (out_size / side) - 0.5 + out_size / 2


def head_roi(cx: float, cy: float, r: float, scale: float = DEFAULT_HEAD_SCALE) -> tuple[np.ndarray, float]:
    """(centre (2,), side px) of the ROI around a head circle estimate (cx, cy, r) px."""
    if not (np.isfinite([cx, cy, r]).all() and r > 0):
        raise ValueError(f"A head ROI needs a finite centre and a positive radius, got ({cx}, {cy}, {r}).")
    return np.array([cx, cy], dtype=np.float64), float(scale * r)
