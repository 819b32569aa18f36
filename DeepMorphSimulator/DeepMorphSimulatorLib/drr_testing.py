"""Synthetic volumes with known DRRs, shared by the DRR tests and ``deepmorph bench drr``.

* :func:`linear_volume` / :func:`linear_truth`: voxel values ``offset + gradient . x`` (x in LPS mm).
  Trilinear interpolation reproduces a linear function exactly, so the integral along a ray's segment
  inside the voxel-centre box is ``length * value(midpoint)``: an analytic truth for every pixel.
* :func:`hip_like_ct`: an int16 CT in HU with hip-sized content (body ellipse with a fat rim, femoral heads,
  necks, trochanters and shafts, iliac wings, pubic and ischial rami, sacrum) and a dense bead on the
  patient's right, superior and anterior, to check image orientation at a glance.
"""
from __future__ import annotations

import numpy as np

from .geometry import CArmGeometry
from .volume import Volume


def linear_volume(shape_kji, spacing, origin, direction, gradient, offset) -> Volume:
    """float32 Volume whose voxel at LPS position x holds ``offset + gradient . x`` (gradient per mm)."""
    vol = Volume(np.zeros(shape_kji, np.float32), spacing, origin, direction)
    k, j, i = np.meshgrid(*(np.arange(n, dtype=float) for n in shape_kji), indexing="ij")
    lps = vol.index_to_lps(np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1))
    values = offset + lps @ np.asarray(gradient, dtype=float)
    return vol.with_data(values.reshape(shape_kji).astype(np.float32))


def box_segments(volume: Volume, geometry: CArmGeometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every pixel's ray: entry and exit points (H, W, 3) LPS of the voxel-centre box, and length (mm).

    Computed independently of the renderers (dense numpy, float64). Missing rays have length 0.
    """
    src = np.asarray(geometry.source_lps, dtype=float)
    pix = geometry.pixel_positions_lps()
    m = volume.lps_to_ijk()
    s = m[:3, :3] @ src + m[:3, 3]
    d = pix @ m[:3, :3].T + m[:3, 3] - s  # (H, W, 3) index-space directions
    hi = np.array(volume.shape_ijk, dtype=float) - 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        ta = (0.0 - s) / d
        tb = (hi - s) / d
    flat = np.abs(d) < 1e-12
    inside = (s >= 0) & (s <= hi)
    lo_t = np.where(flat, np.where(inside, -np.inf, np.inf), np.minimum(ta, tb))
    hi_t = np.where(flat, np.where(inside, np.inf, -np.inf), np.maximum(ta, tb))
    t0 = np.clip(lo_t.max(axis=-1), 0.0, None)
    t1 = np.clip(hi_t.min(axis=-1), None, 1.0)
    t1 = np.maximum(t1, t0)
    ray = pix - src
    entry = src + t0[..., None] * ray
    exit_ = src + t1[..., None] * ray
    return entry, exit_, (t1 - t0) * np.linalg.norm(ray, axis=-1)


def linear_truth(volume: Volume, gradient, offset, geometry: CArmGeometry) -> tuple[np.ndarray, np.ndarray]:
    """Exact line integrals (H, W) of :func:`linear_volume` values, and each ray's length in the box (mm)."""
    entry, exit_, length = box_segments(volume, geometry)
    mid = 0.5 * (entry + exit_)
    return length * (offset + mid @ np.asarray(gradient, dtype=float)), length


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A random proper rotation matrix (3x3)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _segment_distance(px, py, pz, a, b):
    """Distance (mm) of points (broadcast arrays) to the segment a-b (3-vectors, mm)."""
    a = np.asarray(a, dtype=float)
    ab = np.asarray(b, dtype=float) - a
    t = ((px - a[0]) * ab[0] + (py - a[1]) * ab[1] + (pz - a[2]) * ab[2]) / float(ab @ ab)
    t = np.clip(t, 0.0, 1.0)
    return np.sqrt((px - a[0] - t * ab[0]) ** 2 + (py - a[1] - t * ab[1]) ** 2 + (pz - a[2] - t * ab[2]) ** 2)


def _hip_bones():
    bones = []
    for side in (-1.0, 1.0):  # -1: patient's right (x < 0 in LPS)
        head = (side * 90.0, 0.0, 0.0)
        bones += [
            ("ball", head, 24.0),
            ("rod", head, (side * 125.0, 5.0, -35.0), 15.0),  # neck
            ("ball", (side * 128.0, 8.0, -35.0), 20.0),  # greater trochanter
            ("rod", (side * 122.0, 5.0, -45.0), (side * 110.0, 0.0, -260.0), 14.0),  # shaft
            ("rod", (side * 85.0, 10.0, 30.0), (side * 130.0, 30.0, 120.0), 22.0),  # iliac wing
            ("rod", (side * 75.0, -15.0, -20.0), (side * 10.0, -60.0, -35.0), 10.0),  # pubic ramus
            ("rod", (side * 85.0, 20.0, -15.0), (side * 40.0, 35.0, -60.0), 10.0),  # ischium
        ]
    bones.append(("rod", (0.0, 60.0, 10.0), (0.0, 75.0, 110.0), 32.0))  # sacrum
    return bones


def hip_like_ct(shape_kji=(200, 512, 512), spacing=(0.8, 0.8, 1.5), marker: bool = True) -> Volume:
    """Synthetic pelvis CT (int16 HU, air -1024), centred on the LPS origin, identity direction.

    Soft tissue 40 HU, fat rim -100 HU, cancellous bone 250 HU inside a 3 mm cortex of 1200 HU; with
    ``marker``, a 16 mm steel-like bead (3000 HU) at LPS (-120, -80, 110): patient's right, anterior, cranial.
    """
    n_k, n_j, n_i = shape_kji
    sx, sy, sz = (float(s) for s in spacing)
    x = ((np.arange(n_i) - (n_i - 1) / 2) * sx).astype(np.float32)
    y = ((np.arange(n_j) - (n_j - 1) / 2) * sy).astype(np.float32)
    X, Y = np.meshgrid(x, y, indexing="xy")  # (J, I)
    ellipse = (X / 170.0) ** 2 + (Y / 115.0) ** 2
    body = ellipse <= 1.0
    fat = body & (ellipse > 0.85)
    bones = _hip_bones()
    out = np.empty((n_k, n_j, n_i), np.int16)
    for k in range(n_k):
        z = (k - (n_k - 1) / 2) * sz
        sl = np.full((n_j, n_i), -1024, np.int16)
        sl[body] = 40
        sl[fat] = -100
        for kind, a, *rest in bones:
            if kind == "ball":
                r = rest[0]
                if abs(z - a[2]) >= r:
                    continue
                dist = np.sqrt((X - a[0]) ** 2 + (Y - a[1]) ** 2 + (z - a[2]) ** 2)
            else:
                b, r = rest
                if z < min(a[2], b[2]) - r or z > max(a[2], b[2]) + r:
                    continue
                dist = _segment_distance(X, Y, np.float32(z), a, b)
            sl[dist < r] = 250
            sl[(dist < r) & (dist > r - 3.0)] = 1200
        if marker and abs(z - 110.0) < 8.0:
            sl[(X + 120.0) ** 2 + (Y + 80.0) ** 2 + (z - 110.0) ** 2 < 64.0] = 3000
        out[k] = sl
    origin = -(np.array([n_i, n_j, n_k], dtype=float) - 1) / 2 * np.array([sx, sy, sz])
    return Volume(out, np.array([sx, sy, sz]), origin, np.eye(3))
