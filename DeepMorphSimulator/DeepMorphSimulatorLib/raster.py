"""2-D rasterisation on the detector: projected triangles -> coverage, outer contour, bands along curves.

Pixel convention as everywhere: (u, v) = (column, row), pixel centres at integers, arrays ``[v, u]``.
Triangles are scan-converted at 3 x 3 sub-samples per pixel (offsets -1/3, 0, +1/3 px; the middle one is
the pixel centre): the union of all triangles gives a per-pixel coverage in ninths and the pixel-centre
mask. The outer contour is the 0.5 iso-line of the coverage (marching squares, linear interpolation),
which locates a straight edge to about 0.1 px.
"""
from __future__ import annotations

import numba
import numpy as np

SUB = 3  # sub-samples per pixel and axis
CENTRE_BIT = 4  # sub-sample (1, 1) = the pixel centre


@numba.njit(cache=True)
def _raster_bits(tri, height, width):
    """tri: (M, 3, 2) float64 (u, v) in canvas pixels. Returns uint16 (height, width) sub-sample bits."""
    bits = np.zeros((height, width), np.uint16)
    eps = 1e-9
    for t in range(tri.shape[0]):
        ax, ay = tri[t, 0, 0], tri[t, 0, 1]
        bx, by = tri[t, 1, 0], tri[t, 1, 1]
        cx, cy = tri[t, 2, 0], tri[t, 2, 1]
        area = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
        if abs(area) < 1e-12:
            continue
        sgn = 1.0 if area > 0 else -1.0
        umin = min(ax, bx, cx)
        umax = max(ax, bx, cx)
        vmin = min(ay, by, cy)
        vmax = max(ay, by, cy)
        # sub-sample grid: position = n / 3 for integer n (pixel centre: n divisible by 3)
        n0 = max(int(np.ceil(umin * SUB - 1e-9)), -1)
        n1 = min(int(np.floor(umax * SUB + 1e-9)), width * SUB - 2)
        m0 = max(int(np.ceil(vmin * SUB - 1e-9)), -1)
        m1 = min(int(np.floor(vmax * SUB + 1e-9)), height * SUB - 2)
        for m in range(m0, m1 + 1):
            py = m / SUB
            for n in range(n0, n1 + 1):
                px = n / SUB
                w0 = ((bx - ax) * (py - ay) - (by - ay) * (px - ax)) * sgn
                w1 = ((cx - bx) * (py - by) - (cy - by) * (px - bx)) * sgn
                w2 = ((ax - cx) * (py - cy) - (ay - cy) * (px - cx)) * sgn
                if w0 >= -eps and w1 >= -eps and w2 >= -eps:
                    # pixel index and sub-sample within it (sub offsets -1, 0, +1 thirds)
                    pu = (n + 1) // SUB
                    pv = (m + 1) // SUB
                    su = n + 1 - pu * SUB
                    sv = m + 1 - pv * SUB
                    if 0 <= pu < width and 0 <= pv < height:
                        bits[pv, pu] |= np.uint16(1 << (sv * SUB + su))
    return bits


@numba.njit(cache=True)
def _popcount9(bits):
    out = np.zeros(bits.shape, np.float32)
    for v in range(bits.shape[0]):
        for u in range(bits.shape[1]):
            b = bits[v, u]
            c = 0
            while b:
                c += b & 1
                b >>= 1
            out[v, u] = c / 9.0
    return out


def rasterize(triangles_uv: np.ndarray, origin_uv: tuple[int, int], shape: tuple[int, int]):
    """Rasterise projected triangles (M, 3, 2) (u, v) onto a canvas whose pixel (0, 0) is detector pixel
    ``origin_uv`` and whose size is ``shape`` = (height, width).

    Returns (coverage float32 in [0, 1], centre bool): fraction of the 9 sub-samples inside the union of
    triangles, and whether the pixel centre is inside.
    """
    tri = np.ascontiguousarray(triangles_uv, np.float64) - np.asarray(origin_uv, float)
    bits = _raster_bits(tri, int(shape[0]), int(shape[1]))
    centre = (bits & np.uint16(1 << CENTRE_BIT)) != 0
    return _popcount9(bits), centre


def iso_contours(image: np.ndarray, level: float, origin_uv=(0.0, 0.0)) -> list[np.ndarray]:
    """Closed iso-lines of ``image`` [v, u] at ``level`` as (N, 2) (u, v) polygons (no repeated end point).

    Uses vtkFlyingEdges2D (marching squares with linear interpolation) and vtkStripper. The image should
    be below ``level`` along its border, so every line closes.
    """
    import vtk
    from vtk.util.numpy_support import numpy_to_vtk, vtk_to_numpy

    h, w = image.shape
    img = vtk.vtkImageData()
    img.SetDimensions(w, h, 1)
    img.SetOrigin(float(origin_uv[0]), float(origin_uv[1]), 0.0)
    img.SetSpacing(1.0, 1.0, 1.0)
    img.GetPointData().SetScalars(numpy_to_vtk(np.ascontiguousarray(image, np.float32).ravel(), deep=True))
    fe = vtk.vtkFlyingEdges2D()
    fe.SetInputData(img)
    fe.SetValue(0, float(level))
    fe.Update()
    st = vtk.vtkStripper()
    st.SetInputConnection(fe.GetOutputPort())
    st.JoinContiguousSegmentsOn()
    st.SetMaximumLength(1 << 30)
    st.Update()
    out = st.GetOutput()
    if out.GetNumberOfPoints() == 0:
        return []
    pts = vtk_to_numpy(out.GetPoints().GetData())[:, :2].astype(np.float64)
    lines = out.GetLines()
    conn = vtk_to_numpy(lines.GetConnectivityArray())
    offs = vtk_to_numpy(lines.GetOffsetsArray())
    polys = []
    for a, b in zip(offs[:-1], offs[1:]):
        ids = conn[a:b]
        if len(ids) >= 4 and ids[0] == ids[-1]:
            polys.append(pts[ids[:-1]])
        elif len(ids) >= 3:
            polys.append(pts[ids])  # open piece (touches the border): keep as is
    return polys


def polygon_area(poly: np.ndarray) -> float:
    """Signed area (px^2) of a closed polygon (N, 2) (u, v); > 0 when clockwise as displayed (v down)."""
    u, v = poly[:, 0], poly[:, 1]
    return 0.5 * float(np.dot(u, np.roll(v, -1)) - np.dot(np.roll(u, -1), v))


@numba.njit(cache=True)
def _band(seg, height, width, half):
    out = np.zeros((height, width), np.uint8)
    h2 = half * half
    for s in range(seg.shape[0]):
        ax, ay, bx, by = seg[s, 0], seg[s, 1], seg[s, 2], seg[s, 3]
        u0 = max(int(np.ceil(min(ax, bx) - half)), 0)
        u1 = min(int(np.floor(max(ax, bx) + half)), width - 1)
        v0 = max(int(np.ceil(min(ay, by) - half)), 0)
        v1 = min(int(np.floor(max(ay, by) + half)), height - 1)
        ex, ey = bx - ax, by - ay
        l2 = ex * ex + ey * ey
        for v in range(v0, v1 + 1):
            for u in range(u0, u1 + 1):
                t = 0.0
                if l2 > 0:
                    t = ((u - ax) * ex + (v - ay) * ey) / l2
                    t = min(max(t, 0.0), 1.0)
                dx, dy = u - ax - t * ex, v - ay - t * ey
                if dx * dx + dy * dy <= h2:
                    out[v, u] = 1
    return out


def band_mask(polylines: list[np.ndarray], shape: tuple[int, int], width_px: float, closed: bool = False) -> np.ndarray:
    """uint8 {0, 1} mask (height, width) of pixel centres within ``width_px / 2`` of the polylines (u, v)."""
    segs = []
    for pl in polylines:
        pl = np.asarray(pl, float)
        if len(pl) == 0:
            continue
        if len(pl) == 1:
            segs.append(np.hstack([pl, pl]))
            continue
        a, b = pl[:-1], pl[1:]
        segs.append(np.hstack([a, b]))
        if closed:
            segs.append(np.hstack([pl[-1:], pl[:1]]))
    if not segs:
        return np.zeros(shape, np.uint8)
    return _band(np.ascontiguousarray(np.vstack(segs), np.float64), int(shape[0]), int(shape[1]), 0.5 * float(width_px))


@numba.njit(cache=True)
def _closest(poly, pts):
    n = poly.shape[0]
    s_out = np.empty(pts.shape[0])
    d_out = np.empty(pts.shape[0])
    cum = np.empty(n)
    acc = 0.0
    for i in range(n):
        cum[i] = acc
        j = (i + 1) % n
        acc += np.hypot(poly[j, 0] - poly[i, 0], poly[j, 1] - poly[i, 1])
    for k in range(pts.shape[0]):
        px, py = pts[k, 0], pts[k, 1]
        best, best_s = np.inf, 0.0
        for i in range(n):
            j = (i + 1) % n
            ax, ay = poly[i, 0], poly[i, 1]
            ex, ey = poly[j, 0] - ax, poly[j, 1] - ay
            l2 = ex * ex + ey * ey
            t = 0.0
            if l2 > 0:
                t = ((px - ax) * ex + (py - ay) * ey) / l2
                t = min(max(t, 0.0), 1.0)
            dx, dy = ax + t * ex - px, ay + t * ey - py
            d = dx * dx + dy * dy
            if d < best:
                best = d
                best_s = cum[i] + t * np.sqrt(l2)
        s_out[k] = best_s
        d_out[k] = np.sqrt(best)
    return s_out, d_out


def closest_on_polygon(poly: np.ndarray, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For points (K, 2): arc-length position (from vertex 0, px) and distance of their closest point on the
    closed polygon (N, 2)."""
    return _closest(np.ascontiguousarray(poly, np.float64), np.ascontiguousarray(np.atleast_2d(pts), np.float64))


def point_at_arclength(poly: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Points (K, 2) at arc-length positions ``s`` (px, wrapped) along the closed polygon (N, 2)."""
    closed = np.vstack([poly, poly[:1]])
    seglen = np.linalg.norm(np.diff(closed, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seglen)])
    total = cum[-1]
    s = np.mod(np.asarray(s, float), total)
    return np.stack([np.interp(s, cum, closed[:, 0]), np.interp(s, cum, closed[:, 1])], axis=1)


def polyline_between(poly: np.ndarray, s0: float, s1: float) -> np.ndarray:
    """The part of the closed polygon from arc length s0 forward to s1 (wrapping), with exact end points."""
    closed = np.vstack([poly, poly[:1]])
    seglen = np.linalg.norm(np.diff(closed, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seglen)])
    total = cum[-1]
    span = float(s1 - s0)
    length = min(span, total) if 0 < span <= total * (1 + 1e-12) else float(np.mod(span, total))
    s0 = float(np.mod(s0, total))
    inner = cum[1:-1]
    rel = np.mod(inner - s0, total)
    keep = np.nonzero((rel > 0) & (rel < length))[0]
    order = keep[np.argsort(rel[keep])]
    mid = closed[1:-1][order]
    ends = point_at_arclength(poly, np.array([s0, s0 + length]))
    return np.vstack([ends[:1], mid, ends[1:]])
