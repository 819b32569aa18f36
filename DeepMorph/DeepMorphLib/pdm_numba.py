"""Compiled (numba) form of ``PointDistributionModel.fit_shape``'s Gauss-Newton loop.

The loop solves a (modes + 4)-variable problem a few times per call, and the ASM search and the shape-constrained
CPD call it hundreds of times per image: in numpy each call spends most of its ~1 ms in Python overhead. The
arithmetic is the same as ``pdm.PointDistributionModel._gauss_newton`` + ``pdm.box_least_squares`` (a test checks
that both agree to 1e-9 px); ``AVAILABLE`` is False when numba is not installed and the numpy code runs instead.
"""
from __future__ import annotations

import numpy as np

try:
    import numba

    AVAILABLE = True
except ImportError:  # pragma: no cover - numba is a dependency, but the numpy path must keep working
    AVAILABLE = False


if AVAILABLE:

    @numba.njit(cache=True)
    def _solve(a, b):  # pragma: no cover - compiled
        return np.linalg.solve(np.ascontiguousarray(a), np.ascontiguousarray(b))

    @numba.njit(cache=True)
    def box_least_squares(hess, g, lim, max_rounds=50):  # pragma: no cover - compiled
        """As ``pdm.box_least_squares`` (``lim`` = +inf for unbounded variables)."""
        b = _solve(hess, g)
        if np.all(np.abs(b) <= lim):
            return b
        n = b.shape[0]
        at = np.zeros(n)
        lim_f = np.where(np.isfinite(lim), lim, 0.0)
        for _ in range(max_rounds):
            violated = False
            for i in range(n):
                if at[i] == 0.0 and abs(b[i]) > lim[i]:
                    at[i] = np.sign(b[i])
                    violated = True
            if not violated:
                grad = hess @ b - g
                best, arg = -1.0, -1
                for i in range(n):
                    if (at[i] > 0 and grad[i] > 1e-12) or (at[i] < 0 and grad[i] < -1e-12):
                        if abs(grad[i]) > best:
                            best, arg = abs(grad[i]), i
                if arg < 0:
                    return b
                at[arg] = 0.0
            b = at * lim_f
            free = np.nonzero(at == 0.0)[0]
            bound = np.nonzero(at != 0.0)[0]
            if free.shape[0]:
                rhs = g[free].copy()
                if bound.shape[0]:
                    rhs -= hess[free][:, bound] @ b[bound]
                b[free] = _solve(hess[free][:, free], rhs)
        return np.minimum(np.maximum(b, -lim), lim)

    @numba.njit(cache=True)
    def gauss_newton(target, w, lim, mean, modes, prior, b, scale, rot, trans, max_iterations,
                     tol_px):  # pragma: no cover - compiled
        """As ``PointDistributionModel._gauss_newton``: returns (points (N, 2), b, scale, rot (2, 2), trans (2,),
        iterations). ``lim`` (M + 4,) box of (b, similarity increments), +inf where unbounded; ``prior`` (M + 4,)
        the regularisation on the diagonal."""
        n, m = mean.shape[0], modes.shape[1]
        design = np.zeros((2 * n, m + 4))
        design[:, :m] = modes
        for i in range(n):
            design[2 * i, m + 2] = 1.0
            design[2 * i + 1, m + 3] = 1.0
        w2 = np.empty(2 * n)
        for i in range(n):
            w2[2 * i] = w[i]
            w2[2 * i + 1] = w[i]
        mean_flat = mean.ravel()
        wsum = w.sum()
        x = mean + (modes @ b).reshape(n, 2)
        prev = scale * (x @ rot.T) + trans
        rot = rot.copy()
        it = 0
        for it in range(1, max_iterations + 1):
            r = ((target - trans) @ rot).ravel() / scale - mean_flat
            for i in range(n):
                design[2 * i, m] = x[i, 0]
                design[2 * i + 1, m] = x[i, 1]
                design[2 * i, m + 1] = -x[i, 1]
                design[2 * i + 1, m + 1] = x[i, 0]
            wd = design * w2.reshape(-1, 1)
            wdt = np.ascontiguousarray(wd.T)
            hess = wdt @ design
            for k in range(m + 4):
                hess[k, k] = hess[k, k] * (1.0 + 1e-12) + prior[k]
            b = box_least_squares(hess, wdt @ r, lim)[:m].copy()
            x = mean + (modes @ b).reshape(n, 2)
            # exact weighted 2-D similarity x -> target for this b (closed-form Umeyama, proper rotation)
            mu_s = (w @ x) / wsum
            mu_d = (w @ target) / wsum
            sxx = sxy = var = 0.0
            for i in range(n):
                ax, ay = (x[i, 0] - mu_s[0]) * w[i], (x[i, 1] - mu_s[1]) * w[i]
                dx, dy = target[i, 0] - mu_d[0], target[i, 1] - mu_d[1]
                sxx += ax * dx + ay * dy
                sxy += ax * dy - ay * dx
                var += ax * (x[i, 0] - mu_s[0]) + ay * (x[i, 1] - mu_s[1])
            corr = np.hypot(sxx, sxy)
            c, s = (sxx / corr, sxy / corr) if corr > 0 else (1.0, 0.0)
            rot[0, 0], rot[0, 1], rot[1, 0], rot[1, 1] = c, -s, s, c
            if var > 0 and corr > 0:
                scale = corr / var
            trans = mu_d - scale * (rot @ mu_s)
            cur = scale * (x @ rot.T) + trans
            moved = np.max(np.abs(cur - prev))
            prev = cur
            if moved < tol_px:
                break
        return prev, b, scale, rot, trans, it
