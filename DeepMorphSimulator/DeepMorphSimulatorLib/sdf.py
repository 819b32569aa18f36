"""Signed distance fields (SDF) for procedural anatomy: primitives, smooth unions, grid evaluation.

Distances are in mm, negative inside. Primitives take points as three float32 arrays ``(x, y, z)`` of any
(broadcastable) shape, given in the primitive's frame, and return the signed distance (exact for spheres,
capsules, round cones and planes; a close bound for ellipsoids). :class:`SDFField` evaluates a shape on a
regular LPS grid and culls every primitive to its bounding box, so a femur or pelvis built from dozens of
primitives costs little more than its few largest parts.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

BIG = np.float32(1e4)  # "far away" (mm): distance used outside a primitive's bounding box

Points = tuple  # (x, y, z) float32 arrays


def smooth_min(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum (smooth union) with blend radius ``k`` mm; ``k <= 0`` is the plain minimum."""
    if k <= 0:
        return np.minimum(a, b)
    h = np.clip(1.0 - np.abs(a - b) / np.float32(k), 0.0, None).astype(np.float32, copy=False)
    return np.minimum(a, b) - (h * h) * np.float32(k / 4.0)


def smooth_max(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Smooth maximum (smooth intersection / subtraction) with blend radius ``k`` mm."""
    return -smooth_min(-a, -b, k)


def _sub(p: Points, c) -> tuple:
    return p[0] - np.float32(c[0]), p[1] - np.float32(c[1]), p[2] - np.float32(c[2])


def _dot(a: tuple, v) -> np.ndarray:
    return a[0] * np.float32(v[0]) + a[1] * np.float32(v[1]) + a[2] * np.float32(v[2])


def sphere(p: Points, center, radius: float) -> np.ndarray:
    x, y, z = _sub(p, center)
    return np.sqrt(x * x + y * y + z * z) - np.float32(radius)


def capsule(p: Points, a, b, radius: float) -> np.ndarray:
    """Segment a-b thickened by ``radius`` mm."""
    a = np.asarray(a, float)
    ba = np.asarray(b, float) - a
    pa = _sub(p, a)
    h = np.clip(_dot(pa, ba / ba.dot(ba)), 0.0, 1.0)
    dx, dy, dz = pa[0] - h * np.float32(ba[0]), pa[1] - h * np.float32(ba[1]), pa[2] - h * np.float32(ba[2])
    return np.sqrt(dx * dx + dy * dy + dz * dz) - np.float32(radius)


def round_cone(p: Points, a, b, ra: float, rb: float) -> np.ndarray:
    """Cone with spherical caps: sphere of radius ``ra`` at ``a`` swept to radius ``rb`` at ``b`` (exact SDF)."""
    a = np.asarray(a, float)
    ba = np.asarray(b, float) - a
    l2 = float(ba.dot(ba))
    rr = float(ra - rb)
    a2 = l2 - rr * rr
    if a2 <= 1e-9:  # one sphere contains the other
        return np.minimum(sphere(p, a, ra), sphere(p, b, rb))
    il2 = np.float32(1.0 / l2)
    pa = _sub(p, a)
    y = _dot(pa, ba)
    z = y - np.float32(l2)
    qx = pa[0] * np.float32(l2) - np.float32(ba[0]) * y
    qy = pa[1] * np.float32(l2) - np.float32(ba[1]) * y
    qz = pa[2] * np.float32(l2) - np.float32(ba[2]) * y
    x2 = qx * qx + qy * qy + qz * qz
    y2 = y * y * np.float32(l2)
    z2 = z * z * np.float32(l2)
    k = np.float32(np.sign(rr) * rr * rr) * x2
    d_mid = (np.sqrt(x2 * np.float32(a2) * il2) + y * np.float32(rr)) * il2 - np.float32(ra)
    d_b = np.sqrt(x2 + z2) * il2 - np.float32(rb)
    d_a = np.sqrt(x2 + y2) * il2 - np.float32(ra)
    out = np.where(np.sign(y) * np.float32(a2) * y2 < k, d_a, d_mid)
    return np.where(np.sign(z) * np.float32(a2) * z2 > k, d_b, out)


def ellipsoid(p: Points, center, axes: np.ndarray, radii) -> np.ndarray:
    """Ellipsoid with semi-axes ``radii`` (mm) along the rows of ``axes`` (3x3, unit vectors); SDF bound."""
    d = _sub(p, center)
    r = np.asarray(radii, float)
    u = [_dot(d, axes[i]) for i in range(3)]
    k0 = np.sqrt(sum((u[i] / np.float32(r[i])) ** 2 for i in range(3)))
    k1 = np.sqrt(sum((u[i] / np.float32(r[i] * r[i])) ** 2 for i in range(3)))
    return k0 * (k0 - 1.0) / np.maximum(k1, np.float32(1e-6))


def halfspace(p: Points, point, normal) -> np.ndarray:
    """Signed distance to the plane through ``point``; the side ``normal`` points to is outside (> 0)."""
    n = np.asarray(normal, float)
    return _dot(_sub(p, point), n / np.linalg.norm(n))


def polygon_2d(u: np.ndarray, v: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Signed distance (mm) of 2-D points (u, v) to a simple polygon ``poly`` (N, 2); negative inside."""
    d2 = None
    inside = np.zeros(np.broadcast(u, v).shape, bool)
    n = len(poly)
    for i in range(n):
        (ax, ay), (bx, by) = poly[i], poly[(i + 1) % n]
        ex, ey = bx - ax, by - ay
        wx, wy = u - np.float32(ax), v - np.float32(ay)
        t = np.clip((wx * np.float32(ex) + wy * np.float32(ey)) / np.float32(ex * ex + ey * ey), 0.0, 1.0)
        dx, dy = wx - t * np.float32(ex), wy - t * np.float32(ey)
        di = dx * dx + dy * dy
        d2 = di if d2 is None else np.minimum(d2, di)
        # crossing-number test (ray towards +u)
        cond = (v >= ay) != (v >= by)
        xint = np.float32(ax) + (v - np.float32(ay)) * np.float32(ex / ey if ey != 0 else 0.0)
        inside ^= cond & (u < xint)
    d = np.sqrt(d2)
    return np.where(inside, -d, d)


def rotation(axis, deg: float) -> np.ndarray:
    """3x3 rotation matrix about ``axis`` by ``deg`` degrees (right-handed)."""
    axis = np.asarray(axis, float)
    axis = axis / np.linalg.norm(axis)
    a = np.deg2rad(deg)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * (k @ k)


class SDFField:
    """A shape's signed distance on a regular axis-aligned LPS grid, built by culled CSG operations.

    The grid has 1-D coordinates ``xs, ys, zs`` (mm, LPS) and arrays indexed ``[k, j, i]`` = (z, y, x).
    Primitives are written in a local frame: ``local = rot @ (world - origin)`` (``rot`` rows are the
    local axes in LPS, possibly with a reflection). Each operation names the primitive's bounding box in
    local coordinates; outside that box (grown by ``k`` + ``margin`` mm) the primitive is treated as far away.
    """

    def __init__(self, xs, ys, zs, origin=(0.0, 0.0, 0.0), rot=None, margin: float = 10.0):
        self.xs = np.asarray(xs, np.float32)
        self.ys = np.asarray(ys, np.float32)
        self.zs = np.asarray(zs, np.float32)
        self.origin = np.asarray(origin, float)
        self.rot = np.eye(3) if rot is None else np.asarray(rot, float)
        self.margin = float(margin)
        shape = (len(self.zs), len(self.ys), len(self.xs))
        self.d = np.full(shape, BIG, np.float32)
        gx = (self.xs - np.float32(self.origin[0]))[None, None, :]
        gy = (self.ys - np.float32(self.origin[1]))[None, :, None]
        gz = (self.zs - np.float32(self.origin[2]))[:, None, None]
        r = self.rot.astype(np.float32)
        self.local = tuple((r[n, 0] * gx + r[n, 1] * gy + r[n, 2] * gz).astype(np.float32) for n in range(3))

    def window(self, lo_local, hi_local, grow: float) -> tuple[slice, slice, slice] | None:
        """Grid index slices (k, j, i) covering the local box [lo, hi] grown by ``grow`` mm; None if empty."""
        lo = np.asarray(lo_local, float) - grow
        hi = np.asarray(hi_local, float) + grow
        corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
        world = corners @ self.rot + self.origin  # rot is orthogonal: inverse = transpose
        wlo, whi = world.min(axis=0), world.max(axis=0)
        sl = []
        for axis_coords, a, b in ((self.zs, wlo[2], whi[2]), (self.ys, wlo[1], whi[1]), (self.xs, wlo[0], whi[0])):
            i0 = int(np.searchsorted(axis_coords, a, side="left"))
            i1 = int(np.searchsorted(axis_coords, b, side="right"))
            if i1 <= i0:
                return None
            sl.append(slice(i0, i1))
        return tuple(sl)

    def _apply(self, fn: Callable, lo, hi, k: float, op: str) -> None:
        w = self.window(lo, hi, k + self.margin)
        if w is None:
            return
        p = tuple(c[w] for c in self.local)
        d = np.asarray(fn(p), np.float32)
        cur = self.d[w]
        if op == "union":
            self.d[w] = smooth_min(cur, d, k)
        elif op == "subtract":
            self.d[w] = smooth_max(cur, -d, k)
        else:
            raise ValueError(op)

    def union(self, fn: Callable, lo, hi, k: float = 0.0) -> None:
        """Smooth union with the primitive ``fn(points_local)`` whose local bounding box is [lo, hi]."""
        self._apply(fn, lo, hi, k, "union")

    def subtract(self, fn: Callable, lo, hi, k: float = 0.0) -> None:
        """Carve the primitive out of the shape (smooth edges with radius ``k`` mm)."""
        self._apply(fn, lo, hi, k, "subtract")

    def intersect_everywhere(self, fn: Callable) -> None:
        """Intersect with a primitive evaluated on the whole grid (e.g. a half-space cut)."""
        self.d = np.maximum(self.d, np.asarray(fn(self.local), np.float32))


def sphere_box(center, radius):
    c = np.asarray(center, float)
    return c - radius, c + radius


def segment_box(a, b, radius):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return np.minimum(a, b) - radius, np.maximum(a, b) + radius
