"""The fit runs numpy/scipy's BLAS on one thread and gives the caller's setting back afterwards."""
import numpy as np
import pytest

threadpoolctl = pytest.importorskip("threadpoolctl")

from DeepMorphLib import pipeline  # noqa: E402
from DeepMorphLib.blas_threads import serial_blas  # noqa: E402


def blas_threads() -> list[int]:
    return [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]


class DiskHead:
    """Stand-in head network: a filled disk at (60, 70), radius 20 px; records the BLAS threads it runs under."""

    expected_polarity = "bone-dark"
    target = "region"

    def __init__(self):
        self.seen = []

    def __call__(self, image):  # drawn in the px of a 128 px image, whatever size the fit runs at
        self.seen.append(blas_threads())
        s = np.shape(image)[0] / 128.0
        yy, xx = np.mgrid[:np.shape(image)[0], :np.shape(image)[1]]
        return ((xx + 0.5 - 60.5 * s) ** 2 + (yy + 0.5 - 70.5 * s) ** 2 <= (20.0 * s) ** 2).astype(np.float32)


def test_serial_blas_limits_every_blas_library_and_restores_it():
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        assert blas_threads() and all(n == 2 for n in blas_threads())
        with serial_blas():
            assert all(n == 1 for n in blas_threads())
            with serial_blas():  # nested (fit_image inside a batch that already limits)
                assert all(n == 1 for n in blas_threads())
            assert all(n == 1 for n in blas_threads())
        assert all(n == 2 for n in blas_threads())


def test_fit_image_runs_on_one_blas_thread_and_gives_the_setting_back():
    net = DiskHead()
    image = np.random.default_rng(0).normal(100.0, 5.0, (128, 128)).astype(np.float32)
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        res = pipeline.fit_image(image, "head", predictor=net, polarity="bone-dark", refine=False, edge_snap=False,
                                 femur_check=False, keep_unconfirmed_head=True, head_fallback=False)
        assert all(n == 2 for n in blas_threads())
    assert net.seen and all(n == 1 for seen in net.seen for n in seen)
    assert res.detected and abs(res.circle["cx"] - 60) < 1 and abs(res.circle["cy"] - 70) < 1
