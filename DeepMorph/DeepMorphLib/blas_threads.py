"""One BLAS thread inside a fit.

The morphing stage's linear algebra runs on small arrays (a few hundred contour points, 10-20 shape modes), where
a multi-threaded BLAS (numpy's and scipy's OpenBLAS start one thread per core) costs more in hand-overs than it
saves, and far more when another process shares the cores: its idle threads spin for the CPU the fit needs.
Measured on the 2-core development VM with a second job running: one shape-constrained CPD call
(``shape_cpd.fit_pdm_cpd``) 200-500 ms with 2 BLAS threads, 30 ms with 1. The results are the same bit for bit
(matrix products split their output, not their sums, across threads).

``serial_blas()`` limits the BLAS libraries loaded in this process (OpenBLAS, MKL, BLIS: ``threadpoolctl``) to one
thread while it is open and restores them afterwards, so Slicer's own setting is left as it was; torch's OpenMP
pool (the networks) is not touched.
"""
from __future__ import annotations

import functools

_CONTROLLER = None


def serial_blas():
    """Context manager: numpy/scipy BLAS calls use one thread inside it (nested use is fine)."""
    global _CONTROLLER
    if _CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = ThreadpoolController()  # finds the BLAS libraries loaded so far (numpy's and scipy's)
    return _CONTROLLER.limit(limits=1, user_api="blas")


def with_serial_blas(func):
    """Decorate ``func`` to run inside ``serial_blas()``."""

    @functools.wraps(func)
    def run(*args, **kwargs):
        with serial_blas():
            return func(*args, **kwargs)
    return run


def set_compute_threads(n: int) -> None:
    """Threads for this process's torch (networks) and numba (compiled fit kernels) pools: ``n`` (numba: at most
    the pool it was started with)."""
    import torch

    torch.set_num_threads(n)
    try:
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    except ImportError:  # pragma: no cover - numba is a dependency
        pass
