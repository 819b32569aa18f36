"""Femoral head circle from the femur networks' maps alone: a directed circle Hough transform.

The femur *region* network marks the bone, so along its rim the gradient of its confidence points into the femur;
at the head dome that direction points at the head's centre. Every pixel on the femur *outline* network's ridge
(confidence > ``min_outline``) where the region map has a rim votes, weighted by its outline confidence, for the
centres one radius r inwards along that direction, for every r of the range. The best (cx, cy, r) is where most
outline per px of circumference agrees, from many directions (``arc_coverage``): the femur's one round part. The
two parallel edges of the shaft also agree on their mid-line at half the shaft width, but from two directions only.
Radius range for 448 x 448 hip crops: 0.09-0.18 of the image width, 40-80 px (simulated tuning and real dev images:
42-77 px).

Points are (x, y) = (column, row) px, as everywhere in DeepMorphLib.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

RADIUS_RANGE = (0.09, 0.18)  # head radius as a fraction of the image width
CELL_PX = 2  # centre resolution of the vote accumulator, px


@dataclass(frozen=True)
class HoughCircle:
    cx: float
    cy: float
    r: float
    score: float  # outline confidence accumulated per px of circumference (~1 for a full, confident ring 1 px wide;
    #               network ridges are a few px wide and score more): for comparing circles of one image
    coverage: float = 1.0  # fraction of directions around the centre with a voting pixel on the circle (arc_coverage)


def head_circle_hough(outline: np.ndarray, region: np.ndarray, radius_range=RADIUS_RANGE, min_outline: float = 0.3,
                      min_rim_gradient: float = 0.03, sigma_px: float = 2.0, min_votes: int = 20,
                      n_candidates: int = 8, coverage_bins: int = 24) -> HoughCircle | None:
    """The best head circle of the femur ``outline`` and ``region`` networks' confidence maps (H, W, in [0, 1],
    same image): ``HoughCircle`` in px, or None when fewer than ``min_votes`` ridge pixels lie on the region's rim.
    ``radius_range``: radii searched, as fractions of the image width. ``min_rim_gradient``: region confidence per
    px (after a Gaussian of ``sigma_px``) for a pixel to count as rim. Of the ``n_candidates`` strongest peaks the
    one with the highest score x ``arc_coverage`` wins (the shaft's parallel edges vote for its mid-line, as strongly
    as a head dome at half the shaft width, but from two directions only)."""
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
    # centres are accumulated in cells of CELL_PX x CELL_PX px (4x fewer than pixels: the edge snap refines them)
    rows, cols = -(-height // CELL_PX), -(-width // CELL_PX)
    cx = np.floor((xs[None] + radii[:, None] * ux[None] + 0.5) / CELL_PX).astype(np.int64)  # (radius, pixel)
    cy = np.floor((ys[None] + radii[:, None] * uy[None] + 0.5) / CELL_PX).astype(np.int64)
    inside = (cx >= 0) & (cx < cols) & (cy >= 0) & (cy < rows)
    cell = (np.arange(len(radii))[:, None] * rows + cy) * cols + cx
    votes = np.bincount(cell[inside], np.broadcast_to(weight, cell.shape)[inside], minlength=len(radii) * rows * cols)
    votes = votes.reshape(len(radii), rows, cols).astype(np.float32)
    spread = (1.0, 2.0 / CELL_PX, 2.0 / CELL_PX)  # sd in (radius px, cells, cells): one circle's votes spread a little
    votes = ndi.gaussian_filter(votes, spread)
    votes *= ((2.0 * np.pi) ** 1.5 * np.prod(spread)) / (2.0 * np.pi * radii)[:, None, None]  # a full ring: ~1
    peaks = (votes == ndi.maximum_filter(votes, size=(5, 5, 5))) & (votes > 0)
    peaks[[0, -1]] = False  # a "peak" at either end of the radius range is no maximum in r (the shaft's is at the low end)
    order = np.argsort(votes[peaks])[::-1][:n_candidates]
    best = None
    for k, cy_cell, cx_cell in np.argwhere(peaks)[order]:
        r = radii[k]
        x, y = (cx_cell + 0.5) * CELL_PX - 0.5, (cy_cell + 0.5) * CELL_PX - 0.5  # the cell's centre, px
        coverage = arc_coverage(xs, ys, ux, uy, x, y, r, n_bins=coverage_bins)
        circle = HoughCircle(float(x), float(y), float(r), float(votes[k, cy_cell, cx_cell]), coverage)
        if best is None or circle.score * circle.coverage > best.score * best.coverage:
            best = circle
    return best


def arc_coverage(xs, ys, ux, uy, cx: float, cy: float, r: float, tolerance_px: float = 2.0, n_bins: int = 24) -> float:
    """Fraction of ``n_bins`` directions around (cx, cy) in which a voting pixel (xs, ys; inward unit direction
    ux, uy) lies on the circle of radius ``r`` (within ``tolerance_px``) and points at the centre: a head dome
    covers half the circle or more, the two parallel edges of the shaft two narrow directions."""
    dx, dy = cx - xs, cy - ys
    dist = np.hypot(dx, dy)
    on = (np.abs(dist - r) <= tolerance_px) & ((ux * dx + uy * dy) > 0.9 * np.maximum(dist, 1e-9))
    if not np.any(on):
        return 0.0
    angle = np.arctan2(-dy[on], -dx[on])  # direction from the centre to the pixel
    bins = np.floor((angle + np.pi) / (2 * np.pi) * n_bins).astype(np.int64) % n_bins
    return float(len(np.unique(bins))) / n_bins
