"""Femoral head circle from the femur networks' maps alone: a directed circle Hough transform.

The femur *region* network marks the bone, so along its rim the gradient of its confidence points into the femur;
at the head dome that direction points at the head's centre. Every pixel on the femur *outline* network's ridge
(confidence > ``min_outline``) where the region map has a rim votes, weighted by its outline confidence, for the
centres one radius r inwards along that direction, for every r of the range. The best (cx, cy, r) is where most
outline per px of circumference agrees: the femur's one round part. Parallel shaft edges vote for their mid-line,
which is why the radius range must exclude half the shaft width (defaults for 448 x 448 hip crops: head radius
0.09-0.18 of the image width, 40-80 px; simulated and real dev images: 42-77 px).

Points are (x, y) = (column, row) px, as everywhere in DeepMorphLib.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

RADIUS_RANGE = (0.09, 0.18)  # head radius as a fraction of the image width


@dataclass(frozen=True)
class HoughCircle:
    cx: float
    cy: float
    r: float
    score: float  # outline confidence accumulated per px of circumference (~1 for a full, confident ring 1 px wide;
    #               network ridges are a few px wide and score more): for comparing circles of one image


def head_circle_hough(outline: np.ndarray, region: np.ndarray, radius_range=RADIUS_RANGE, min_outline: float = 0.3,
                      min_rim_gradient: float = 0.03, sigma_px: float = 2.0, min_votes: int = 20) -> HoughCircle | None:
    """The best head circle of the femur ``outline`` and ``region`` networks' confidence maps (H, W, in [0, 1],
    same image): ``HoughCircle`` in px, or None when fewer than ``min_votes`` ridge pixels lie on the region's rim.
    ``radius_range``: radii searched, as fractions of the image width. ``min_rim_gradient``: region confidence per
    px (after a Gaussian of ``sigma_px``) for a pixel to count as rim."""
    outline = np.asarray(outline, dtype=np.float32)
    region = np.asarray(region, dtype=np.float32)
    if outline.ndim != 2 or outline.shape != region.shape:
        raise ValueError(f"outline and region maps must be 2-D and of one shape, got {outline.shape} and {region.shape}.")
    height, width = outline.shape
    smooth = ndi.gaussian_filter(region, sigma_px)
    gy, gx = np.gradient(smooth)
    magnitude = np.hypot(gx, gy)
    ys, xs = np.nonzero((outline > min_outline) & (magnitude > min_rim_gradient))
    if len(xs) < min_votes:
        return None
    weight = outline[ys, xs]
    ux, uy = gx[ys, xs] / magnitude[ys, xs], gy[ys, xs] / magnitude[ys, xs]  # into the femur
    radii = np.arange(max(2, int(radius_range[0] * width)), int(radius_range[1] * width) + 1, dtype=np.float64)
    votes = np.zeros((len(radii), height, width), np.float32)
    for k, r in enumerate(radii):
        cx, cy = np.rint(xs + r * ux).astype(np.int64), np.rint(ys + r * uy).astype(np.int64)
        inside = (cx >= 0) & (cx < width) & (cy >= 0) & (cy < height)
        np.add.at(votes[k], (cy[inside], cx[inside]), weight[inside])
    spread = (1.0, 2.0, 2.0)  # sd in (radius, y, x) px: votes of one circle land on neighbouring cells
    votes = ndi.gaussian_filter(votes, spread)
    votes *= ((2.0 * np.pi) ** 1.5 * np.prod(spread)) / (2.0 * np.pi * radii)[:, None, None]  # a full ring: ~1
    k, y, x = np.unravel_index(int(np.argmax(votes)), votes.shape)
    return HoughCircle(float(x), float(y), float(radii[k]), float(votes[k, y, x]))
