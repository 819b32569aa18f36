"""Compiled (numba) per-voxel kernels of the phantom: upsampling smooth fields and compositing bone.

Smooth fields (soft-tissue HU, signed distances, cortical thickness) are computed by numpy on coarse grids
(2-4 mm) and interpolated trilinearly onto the CT grid here, one pass per structure, so a 1 mm phantom
costs a few passes over its ~35 M voxels. Noise comes from a small counter-based hash of (seed, voxel
index), so results do not depend on the thread count or on the order of evaluation.
"""
from __future__ import annotations

import numba
import numpy as np

_SQRT6 = np.sqrt(6.0)


@numba.njit(cache=True, inline="always")
def _hash_uniform(seed, n):
    """Uniform float in [0, 1) from a 64-bit mix of (seed, n) (splitmix64 finaliser)."""
    z = (np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(n) * np.uint64(0xBF58476D1CE4E5B9)) & np.uint64(
        0xFFFFFFFFFFFFFFFF
    )
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@numba.njit(cache=True, inline="always")
def _noise(seed, n):
    """Zero-mean, unit-variance triangular noise (sum of two hashed uniforms)."""
    return (_hash_uniform(seed, 2 * n) + _hash_uniform(seed, 2 * n + 1) - 1.0) * _SQRT6


@numba.njit(cache=True)
def _axis_table(n_coarse, f, n_fine):
    idx = np.empty(n_fine, np.int64)
    w = np.empty(n_fine, np.float32)
    for k in range(n_fine):
        c = k // f
        t = (k - c * f) / f
        if c >= n_coarse - 1:
            c = n_coarse - 2
            t = 1.0
        idx[k] = c
        w[k] = t
    return idx, w


@numba.njit(cache=True, inline="always")
def _row(a, k0, tk, j0, tj, row):
    """Bilinear (k, j) interpolation of every coarse column i into ``row``."""
    for i in range(a.shape[2]):
        row[i] = (a[k0, j0, i] * (1 - tj) + a[k0, j0 + 1, i] * tj) * (1 - tk) + (
            a[k0 + 1, j0, i] * (1 - tj) + a[k0 + 1, j0 + 1, i] * tj
        ) * tk


@numba.njit(cache=True)
def upsample_with_noise(coarse, f, out, noise_sd, seed):
    """out[k, j, i] = trilinear(coarse at (k, j, i) / f) + noise_sd * noise; out shape f * (n - 1) + 1."""
    nk, nj, ni = coarse.shape
    ko, jo, io = out.shape
    kidx, kw = _axis_table(nk, f, ko)
    jidx, jw = _axis_table(nj, f, jo)
    iidx, iw = _axis_table(ni, f, io)
    for k in range(ko):
        row = np.empty(ni, np.float32)
        for j in range(jo):
            _row(coarse, kidx[k], kw[k], jidx[j], jw[j], row)
            base = (k * jo + j) * io
            for i in range(io):
                c, t = iidx[i], iw[i]
                v = row[c] * (1 - t) + row[c + 1] * t
                if noise_sd > 0:
                    v += noise_sd * _noise(seed, base + i)
                out[k, j, i] = v


@numba.njit(cache=True)
def composite_bone(ct, label, k_start, j_start, i_start, d_c, t_c, hu_c, f, spacing, hu_cortex, texture_sd,
                   plane, label_value, seed):
    """Blend one bone into ``ct`` (float32, HU) over the fine window starting at (k, j, i)_start.

    ``d_c``: signed distance (mm, < 0 inside), ``t_c``: cortical thickness (mm), ``hu_c``: interior HU,
    all on the coarse grid (fine index = start + f * coarse index). Voxels with d < spacing get partial
    volume ``clip(0.5 - d / spacing, 0, 1)``; cortex where depth < t (0.7 mm soft edge); interior plus
    texture noise of ``texture_sd`` HU. ``label`` gets ``label_value`` (if > 0) where d < 0 and the
    plane value ``plane[0] + plane[1] * i + plane[2] * j + plane[3] * k`` (fine indices) is < 0.
    """
    nk, nj, ni = d_c.shape
    ko, jo, io = f * (nk - 1) + 1, f * (nj - 1) + 1, f * (ni - 1) + 1
    kidx, kw = _axis_table(nk, f, ko)
    jidx, jw = _axis_table(nj, f, jo)
    iidx, iw = _axis_table(ni, f, io)
    K, J, I = ct.shape
    for k in range(ko):
        kk = k_start + k
        if kk < 0 or kk >= K:
            continue
        row_d = np.empty(ni, np.float32)
        row_t = np.empty(ni, np.float32)
        row_h = np.empty(ni, np.float32)
        for j in range(jo):
            jj = j_start + j
            if jj < 0 or jj >= J:
                continue
            _row(d_c, kidx[k], kw[k], jidx[j], jw[j], row_d)
            any_bone = False
            for i in range(ni):
                if row_d[i] < spacing + 2.0 * f * spacing:
                    any_bone = True
                    break
            if not any_bone:
                continue
            _row(t_c, kidx[k], kw[k], jidx[j], jw[j], row_t)
            _row(hu_c, kidx[k], kw[k], jidx[j], jw[j], row_h)
            for i in range(io):
                ii = i_start + i
                if ii < 0 or ii >= I:
                    continue
                c, s = iidx[i], iw[i]
                d = row_d[c] * (1 - s) + row_d[c + 1] * s
                if d >= spacing:
                    continue
                t = row_t[c] * (1 - s) + row_t[c + 1] * s
                interior = row_h[c] * (1 - s) + row_h[c + 1] * s
                interior += texture_sd * _noise(seed, (kk * J + jj) * I + ii)
                wc = (t + d) / 0.7 + 0.5  # depth = -d
                if wc < 0.0:
                    wc = 0.0
                elif wc > 1.0:
                    wc = 1.0
                hu = interior * (1.0 - wc) + hu_cortex * wc
                cover = 0.5 - d / spacing
                if cover > 1.0:
                    cover = 1.0
                ct[kk, jj, ii] = ct[kk, jj, ii] * (1.0 - cover) + hu * cover
                if label_value > 0 and d < 0.0:
                    if plane[0] + plane[1] * ii + plane[2] * jj + plane[3] * kk < 0.0:
                        label[kk, jj, ii] = label_value
