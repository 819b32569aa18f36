"""CPU ray casting kernels (numba, parallel over detector tiles) behind :func:`drr.line_integrals`.

All kernels work in *continuous voxel index space* (i, j, k) of a sub-box ("crop") of the volume: voxel
centres sit at integers, the crop's first voxel is index (0, 0, 0) and lies at element ``base`` of the
flat C-order array of ``data[k, j, i]``; ``strides`` are the full array's element strides ``(1, I, I*J)``.
A ray of detector pixel (u, v) runs from ``src`` to ``q0 + u*qu + v*qv`` (index space); its physical
length (mm) is ``|p0 + u*pu + v*pv|`` (the LPS source-to-pixel vector).

Rays are integrated over their part inside the crop's voxel-centre box ``[0, dims-1]`` and the
source-detector segment. The crop is the whole volume, or a box outside which the trilinear interpolant is
zero (see :func:`nonzero_box`), so the integral is the same. ``box`` (lo xyz, hi xyz, crop index space)
is the whole volume's voxel-centre box: ``hit`` flags the rays that meet it. Crop sizes are >= 2 voxels.

``joseph``: one bilinear sample per voxel plane crossed along the ray's major index axis, combined by
the trapezoid rule, with the two partial end segments closed by trilinear samples at the clip points.
Exact for volumes that are linear in position (and for constants).
``trilinear``: the paper's sampler, trilinear samples at the midpoints of equal steps <= ``step_mm``.
"""
from __future__ import annotations

import math

import numba
import numpy as np

_JIT = dict(nogil=True, cache=True, fastmath=True, error_model="numpy")
BLOCK = 64  # rays per tile row: the lanes of one plane sweep
TILE_V = 8  # detector rows per tile


@numba.njit(**_JIT)
def _clip(s, d, lo, hi):
    """Parameter interval [t0, t1] of ``s + t d`` (3-tuples) inside the box [lo, hi] and t in [0, 1].

    ``t1 <= t0`` means the ray misses the box.
    """
    t0 = 0.0
    t1 = 1.0
    for ax in range(3):
        if abs(d[ax]) < 1e-12:
            if s[ax] < lo[ax] or s[ax] > hi[ax]:
                return 1.0, 0.0
        else:
            ta = (lo[ax] - s[ax]) / d[ax]
            tb = (hi[ax] - s[ax]) / d[ax]
            if ta > tb:
                ta, tb = tb, ta
            t0 = max(t0, ta)
            t1 = min(t1, tb)
    return t0, t1


@numba.njit(**_JIT)
def _trilinear(vol, base, x, y, z, dims, strides):
    """Trilinear interpolation at crop index (x, y, z), clamped to the crop's voxel-centre box."""
    nx, ny, nz = dims[0], dims[1], dims[2]
    sy_, sz_ = strides[1], strides[2]
    x = min(max(x, 0.0), nx - 1.0)
    y = min(max(y, 0.0), ny - 1.0)
    z = min(max(z, 0.0), nz - 1.0)
    ix = min(int(x), nx - 2)
    iy = min(int(y), ny - 2)
    iz = min(int(z), nz - 2)
    fx = x - ix
    fy = y - iy
    fz = z - iz
    b = base + iz * sz_ + iy * sy_ + ix
    c00 = vol[b] + fx * (vol[b + 1] - vol[b])
    c10 = vol[b + sy_] + fx * (vol[b + sy_ + 1] - vol[b + sy_])
    c01 = vol[b + sz_] + fx * (vol[b + sz_ + 1] - vol[b + sz_])
    c11 = vol[b + sz_ + sy_] + fx * (vol[b + sz_ + sy_ + 1] - vol[b + sz_ + sy_])
    c0 = c00 + fy * (c10 - c00)
    c1 = c01 + fy * (c11 - c01)
    return c0 + fz * (c1 - c0)


@numba.njit(**_JIT)
def _sweep(vol, base, n, m0, m1, b0, sb, c0, sc, mf, ml, st_a, st_b, st_c, nb, nc, off, scratch, acc, f_first,
           f_last):
    """Sum bilinear samples over planes m0..m1 of the major axis for ``n`` rays at once (lanes).

    Lane l samples plane m at minor coordinates ``(b0 + (m - m0) sb, c0 + (m - m0) sc)`` and counts
    only planes ``mf[l] <= m <= ml[l]``; its samples on those two planes are also stored in
    ``f_first``/``f_last``. Three passes per plane keep the arithmetic vectorisable (no gathers needed):
    positions -> 4 scalar loads per lane -> interpolate and accumulate.
    """
    fb = scratch[0]
    fc = scratch[1]
    v00 = scratch[2]
    v01 = scratch[3]
    v10 = scratch[4]
    v11 = scratch[5]
    for l in range(n):
        acc[l] = 0.0
    # planes where every lane counts (the bulk) need no masks
    cm0 = m0
    cm1 = m1
    for l in range(n):
        cm0 = max(cm0, mf[l])
        cm1 = min(cm1, ml[l])
    bhi = np.float32(nb - 1)
    chi = np.float32(nc - 1)
    nbm2 = np.int32(nb - 2)
    ncm2 = np.int32(nc - 2)
    sb32 = np.int32(st_b)
    sc32 = np.int32(st_c)
    ub = np.uint64(st_b)
    uc = np.uint64(st_c)
    ubc = np.uint64(st_b + st_c)
    for m in range(m0, m1 + 1):
        fm = np.float32(m - m0)
        plane = np.uint64(base + m * st_a)
        for l in range(n):
            bq = min(max(b0[l] + fm * sb[l], np.float32(0.0)), bhi)
            cq = min(max(c0[l] + fm * sc[l], np.float32(0.0)), chi)
            ib = min(np.int32(bq), nbm2)
            ic = min(np.int32(cq), ncm2)
            fb[l] = bq - np.float32(ib)
            fc[l] = cq - np.float32(ic)
            off[l] = np.int32(ib * sb32 + ic * sc32)  # < 2**31: volumes up to 2 G voxels
        for l in range(n):
            i0 = plane + np.uint64(off[l])
            v00[l] = vol[i0]
            v01[l] = vol[i0 + ub]
            v10[l] = vol[i0 + uc]
            v11[l] = vol[i0 + ubc]
        if cm0 < m < cm1:
            for l in range(n):
                r0 = v00[l] + fb[l] * (v01[l] - v00[l])
                r1 = v10[l] + fb[l] * (v11[l] - v10[l])
                acc[l] += r0 + fc[l] * (r1 - r0)
        else:
            for l in range(n):
                r0 = v00[l] + fb[l] * (v01[l] - v00[l])
                r1 = v10[l] + fb[l] * (v11[l] - v10[l])
                val = r0 + fc[l] * (r1 - r0)
                if mf[l] <= m <= ml[l]:
                    acc[l] += val
                if m == mf[l]:
                    f_first[l] = val
                if m == ml[l]:
                    f_last[l] = val


@numba.njit(**_JIT)
def _ray(v, u, src, q0, qu, qv, p0, pu, pv):
    """Index-space direction (source -> pixel centre) and physical length (mm) of pixel (u, v)'s ray."""
    dx = q0[0] + u * qu[0] + v * qv[0] - src[0]
    dy = q0[1] + u * qu[1] + v * qv[1] - src[1]
    dz = q0[2] + u * qu[2] + v * qv[2] - src[2]
    ex = p0[0] + u * pu[0] + v * pv[0]
    ey = p0[1] + u * pu[1] + v * pv[1]
    ez = p0[2] + u * pu[2] + v * pv[2]
    return dx, dy, dz, math.sqrt(ex * ex + ey * ey + ez * ez)


@numba.njit(**_JIT)
def _axis_layout(a, dims, strides):
    """(n_a, n_b, n_c, stride_a, stride_b, stride_c) for major axis a (0 = i, 1 = j, 2 = k)."""
    if a == 0:
        return dims[0], dims[1], dims[2], strides[0], strides[1], strides[2]
    if a == 1:
        return dims[1], dims[0], dims[2], strides[1], strides[0], strides[2]
    return dims[2], dims[0], dims[1], strides[2], strides[0], strides[1]


@numba.njit(**_JIT)
def _hit_and_clip(src, d, dims, box):
    """(hit, t0, t1): does the ray meet the whole volume's box; its interval inside the crop box."""
    h0, h1 = _clip((src[0], src[1], src[2]), d, (box[0], box[1], box[2]), (box[3], box[4], box[5]))
    if h1 - h0 <= 1e-12:
        return False, 1.0, 0.0
    t0, t1 = _clip((src[0], src[1], src[2]), d, (0.0, 0.0, 0.0), (dims[0] - 1.0, dims[1] - 1.0, dims[2] - 1.0))
    return True, t0, t1


@numba.njit(parallel=True, **_JIT)
def joseph(vol, base, dims, strides, box, src, q0, qu, qv, p0, pu, pv, out, hit):
    """Joseph's method for every pixel: ``out[v, u]`` = integral of the volume along the ray (value * mm).

    ``hit[v, u]`` = 1 where the ray meets the volume's box, else 0. Work is split into tiles of ``BLOCK``
    x ``TILE_V`` pixels; in each detector row of a tile the rays sharing a major axis sweep the voxel
    planes together (neighbouring rays read neighbouring voxels: cache friendly).
    """
    height, width = out.shape
    nbu = (width + BLOCK - 1) // BLOCK
    nbv = (height + TILE_V - 1) // TILE_V
    for tile in numba.prange(nbu * nbv):
        _joseph_tile(vol, base, dims, strides, box, src, q0, qu, qv, p0, pu, pv, out, hit,
                     (tile % nbu) * BLOCK, (tile // nbu) * TILE_V)


@numba.njit(**_JIT)
def _joseph_tile(vol, base, dims, strides, box, src, q0, qu, qv, p0, pu, pv, out, hit, ub, vb):
    """One tile of :func:`joseph`: pixels u in [ub, ub + BLOCK), v in [vb, vb + TILE_V)."""
    height, width = out.shape
    n_u = min(BLOCK, width - ub)
    axis = np.empty(BLOCK, np.int64)
    mfirst = np.empty(BLOCK, np.int64)
    mlast = np.empty(BLOCK, np.int64)
    ray = np.empty((10, BLOCK), np.float64)  # b, c on the first plane; slopes; step; d0, d1; f_lo, f_hi; sum
    lanes = np.empty(BLOCK, np.int64)
    b0 = np.empty(BLOCK, np.float32)
    sb = np.empty(BLOCK, np.float32)
    c0 = np.empty(BLOCK, np.float32)
    sc = np.empty(BLOCK, np.float32)
    mf = np.empty(BLOCK, np.int64)
    ml = np.empty(BLOCK, np.int64)
    acc = np.empty(BLOCK, np.float32)
    f_first = np.empty(BLOCK, np.float32)
    f_last = np.empty(BLOCK, np.float32)
    v_first = np.empty(BLOCK, np.float64)
    v_last = np.empty(BLOCK, np.float64)
    off = np.empty(BLOCK, np.int32)
    scratch = np.empty((6, BLOCK), np.float32)
    for v in range(vb, min(vb + TILE_V, height)):
        for l in range(n_u):
            u = ub + l
            axis[l] = -1
            dx, dy, dz, length = _ray(v, u, src, q0, qu, qv, p0, pu, pv)
            is_hit, t0, t1 = _hit_and_clip(src, (dx, dy, dz), dims, box)
            hit[v, u] = 1 if is_hit else 0
            out[v, u] = 0.0
            if t1 - t0 <= 1e-12:
                continue
            ax, ay, az = abs(dx), abs(dy), abs(dz)
            if ax >= ay and ax >= az:
                a, da, db, dc, sa, s_b, s_c = 0, dx, dy, dz, src[0], src[1], src[2]
            elif ay >= az:
                a, da, db, dc, sa, s_b, s_c = 1, dy, dx, dz, src[1], src[0], src[2]
            else:
                a, da, db, dc, sa, s_b, s_c = 2, dz, dx, dy, src[2], src[0], src[1]
            na, nb, nc, st_a, st_b, st_c = _axis_layout(a, dims, strides)
            a0 = sa + t0 * da
            a1 = sa + t1 * da
            lo = min(a0, a1)
            hi = max(a0, a1)
            step = length / abs(da)  # mm between consecutive planes
            m_first = max(int(math.ceil(lo - 1e-9)), 0)
            m_last = min(int(math.floor(hi + 1e-9)), na - 1)
            d0 = min(max(m_first - lo, 0.0), 1.0) * step
            d1 = min(max(hi - m_last, 0.0), 1.0) * step
            t_lo = t0 if a0 <= a1 else t1
            t_hi = t1 if a0 <= a1 else t0
            f_lo = 0.0
            f_hi = 0.0
            if d0 > 0.0 or m_first > m_last:
                f_lo = _trilinear(vol, base, src[0] + t_lo * dx, src[1] + t_lo * dy, src[2] + t_lo * dz,
                                  dims, strides)
            if d1 > 0.0 or m_first > m_last:
                f_hi = _trilinear(vol, base, src[0] + t_hi * dx, src[1] + t_hi * dy, src[2] + t_hi * dz,
                                  dims, strides)
            if m_first > m_last:  # the segment crosses no voxel plane: trapezoid over it
                out[v, u] = 0.5 * (f_lo + f_hi) * (t1 - t0) * length
                continue
            axis[l] = a
            mfirst[l] = m_first
            mlast[l] = m_last
            t_m = (m_first - sa) / da  # ray parameter on the first plane
            ray[0, l] = s_b + t_m * db
            ray[1, l] = s_c + t_m * dc
            ray[2, l] = db / da
            ray[3, l] = dc / da
            ray[4, l] = step
            ray[5, l] = d0
            ray[6, l] = d1
            ray[7, l] = f_lo
            ray[8, l] = f_hi
        for a in range(3):
            n = 0
            for l in range(n_u):
                if axis[l] == a:
                    lanes[n] = l
                    n += 1
            if n == 0:
                continue
            m0 = mfirst[lanes[0]]
            m1 = mlast[lanes[0]]
            for k in range(n):
                m0 = min(m0, mfirst[lanes[k]])
                m1 = max(m1, mlast[lanes[k]])
            for k in range(n):
                l = lanes[k]
                b0[k] = ray[0, l] + (m0 - mfirst[l]) * ray[2, l]
                c0[k] = ray[1, l] + (m0 - mfirst[l]) * ray[3, l]
                sb[k] = ray[2, l]
                sc[k] = ray[3, l]
                mf[k] = mfirst[l]
                ml[k] = mlast[l]
            na, nb, nc, st_a, st_b, st_c = _axis_layout(a, dims, strides)
            _sweep(vol, base, n, m0, m1, b0, sb, c0, sc, mf, ml, st_a, st_b, st_c, nb, nc, off, scratch, acc,
                   f_first, f_last)
            for k in range(n):
                l = lanes[k]
                ray[9, l] = acc[k]
                v_first[l] = f_first[k]
                v_last[l] = f_last[k]
        for l in range(n_u):
            if axis[l] < 0:
                continue
            step = ray[4, l]
            d0 = ray[5, l]
            d1 = ray[6, l]
            # trapezoid rule between planes + the two partial end segments
            out[v, ub + l] = (
                step * ray[9, l]
                - 0.5 * (step - d0) * v_first[l]
                - 0.5 * (step - d1) * v_last[l]
                + 0.5 * d0 * ray[7, l]
                + 0.5 * d1 * ray[8, l]
            )


@numba.njit(parallel=True, **_JIT)
def trilinear(vol, base, dims, strides, box, src, q0, qu, qv, p0, pu, pv, step_mm, out, hit):
    """The paper's sampler: trilinear samples at the midpoints of equal steps (<= step_mm) per ray."""
    height, width = out.shape
    for v in numba.prange(height):
        for u in range(width):
            dx, dy, dz, length = _ray(v, u, src, q0, qu, qv, p0, pu, pv)
            is_hit, t0, t1 = _hit_and_clip(src, (dx, dy, dz), dims, box)
            hit[v, u] = 1 if is_hit else 0
            out[v, u] = 0.0
            if t1 - t0 <= 1e-12:
                continue
            seg = (t1 - t0) * length
            n = max(int(math.ceil(seg / step_mm - 1e-9)), 1)
            h = (t1 - t0) / n
            acc = 0.0
            for q in range(n):
                t = t0 + (q + 0.5) * h
                acc += _trilinear(vol, base, src[0] + t * dx, src[1] + t * dy, src[2] + t * dz, dims, strides)
            out[v, u] = acc * (seg / n)


@numba.njit(**_JIT)
def _row_empty(row):
    """True when the 1-D array has no nonzero value (vectorised in chunks, early exit between chunks)."""
    n = row.shape[0]
    for start in range(0, n, 128):
        biggest = abs(row[start])
        for i in range(start + 1, min(start + 128, n)):
            biggest = max(biggest, abs(row[i]))
        if biggest != 0:
            return False
    return True


@numba.njit(parallel=True, **_JIT)
def nonzero_box(vol):
    """Smallest index box (i0, j0, k0, i1, j1, k1), inclusive, holding every nonzero voxel of ``vol[k, j, i]``.

    Scans each slice inwards from its edges and stops at the first nonzero voxel, so volumes without
    empty margins cost almost nothing. Returns all -1 for an all-zero volume.
    """
    nk, nj, ni = vol.shape
    per_slice = np.full((nk, 4), -1, np.int64)  # j0, j1, i0, i1
    for k in numba.prange(nk):
        j0 = 0
        while j0 < nj and _row_empty(vol[k, j0]):
            j0 += 1
        if j0 == nj:
            continue
        j1 = nj - 1
        while _row_empty(vol[k, j1]):
            j1 -= 1
        i0 = ni
        i1 = -1
        for j in range(j0, j1 + 1):
            for i in range(0, i0):
                if vol[k, j, i] != 0:
                    i0 = i
                    break
            for i in range(ni - 1, i1, -1):
                if vol[k, j, i] != 0:
                    i1 = i
                    break
        per_slice[k, 0] = j0
        per_slice[k, 1] = j1
        per_slice[k, 2] = i0
        per_slice[k, 3] = i1
    k0, k1 = -1, -1
    j0, j1, i0, i1 = nj, -1, ni, -1
    for k in range(nk):
        if per_slice[k, 0] < 0:
            continue
        if k0 < 0:
            k0 = k
        k1 = k
        j0 = min(j0, per_slice[k, 0])
        j1 = max(j1, per_slice[k, 1])
        i0 = min(i0, per_slice[k, 2])
        i1 = max(i1, per_slice[k, 3])
    if k0 < 0:
        return -1, -1, -1, -1, -1, -1
    return i0, j0, k0, i1, j1, k1
