"""Directed circle Hough on the femur networks' maps (head_search): known circles in synthetic maps."""
import numpy as np
import pytest

from DeepMorphLib.head_search import head_circle_hough
from DeepMorphLib.region import disk_mask


def _ring(shape, cx, cy, r, sigma=1.5):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    d = np.hypot(xx - cx, yy - cy) - r
    return np.exp(-d**2 / (2 * sigma**2)).astype(np.float32)


def femur_maps(head=(231.4, 187.6, 57.3), shape=(448, 448)):
    """Head disk + a shaft 80 px wide going down to the image border, as the region network marks a femur, and its
    outline (the region's boundary) as the outline network draws it."""
    cx, cy, r = head
    region = disk_mask(shape, cx, cy, r).astype(np.float32)
    region[int(cy + 0.6 * r):, int(cx - 40): int(cx + 40)] = 1.0
    from scipy import ndimage as ndi

    edge = region.astype(bool) ^ ndi.binary_erosion(region.astype(bool))
    outline = np.clip(ndi.gaussian_filter(edge.astype(np.float32), 1.2) * 4.0, 0.0, 1.0)
    return outline, region


def test_finds_the_head_of_a_femur_shaped_region():
    head = (231.4, 187.6, 57.3)
    outline, region = femur_maps(head)
    c = head_circle_hough(outline, region)
    assert np.hypot(c.cx - head[0], c.cy - head[1]) < 1.5 and abs(c.r - head[2]) < 1.5


def test_half_a_ring_scores_half_as_much_and_still_finds_the_circle():
    head = (220.0, 230.0, 60.0)
    region = disk_mask((448, 448), *head).astype(np.float32)
    full = _ring((448, 448), *head)
    half = full.copy()
    half[230:] = 0.0  # only the upper half of the outline is lit
    c_full, c_half = head_circle_hough(full, region), head_circle_hough(half, region)
    assert c_half.score == pytest.approx(c_full.score / 2, rel=0.2)
    assert np.hypot(c_half.cx - 220.0, c_half.cy - 230.0) < 1.5 and abs(c_half.r - 60.0) < 1.5


def test_radii_outside_the_range_are_not_found_and_empty_maps_give_none():
    region = disk_mask((448, 448), 220.0, 230.0, 20.0).astype(np.float32)  # 20 px < 0.09 * 448
    c = head_circle_hough(_ring((448, 448), 220.0, 230.0, 20.0), region)
    assert c is None or abs(c.r - 20.0) > 15.0
    assert head_circle_hough(np.zeros((448, 448), np.float32), region) is None


def test_bad_maps_are_refused():
    with pytest.raises(ValueError, match="one shape"):
        head_circle_hough(np.zeros((10, 10)), np.zeros((12, 10)))


def test_the_head_wins_over_the_mid_line_of_a_wide_shaft(monkeypatch):
    """A shaft 100 px wide (half width inside the radius range) votes for its whole mid-line at r = 50 from two
    directions only; the head dome above it from half a circle (arc_coverage) and wins."""
    from DeepMorphLib import head_search

    head = (224.0, 120.0, 60.0)
    region = disk_mask((448, 448), *head).astype(np.float32)
    region[150:, 174:274] = 1.0  # shaft, 100 px wide, to the image border
    from scipy import ndimage as ndi

    edge = region.astype(bool) ^ ndi.binary_erosion(region.astype(bool))
    outline = np.clip(ndi.gaussian_filter(edge.astype(np.float32), 1.2) * 4.0, 0.0, 1.0)
    c = head_circle_hough(outline, region)
    assert np.hypot(c.cx - head[0], c.cy - head[1]) < 2.0 and abs(c.r - head[2]) < 2.0 and c.coverage > 0.5
    xs = np.array([174.0, 274.0]); ys = np.array([300.0, 300.0])
    assert head_search.arc_coverage(xs, ys, np.array([1.0, -1.0]), np.array([0.0, 0.0]), 224.0, 300.0, 50.0) == 2 / 24
