"""Fits run on the image resampled to ``WORKING_SIZE_PX`` on its longer side.

The networks see 128-256 px anyway, and every pixel setting of the morphing stage (search ranges, edge-snap rims,
polish, the femur confirmation) was tuned on 448 x 448 images, as the paper's are. A larger image (a 1024 px
fluoroscopy frame, a 3000 px radiograph crop) is reduced with an anti-aliasing bilinear filter, a smaller one
enlarged (bilinear), fitted, and the result mapped back, so the fit costs the same at any input size and gives
about the same answer as on the 448 px image. Measured on the first 60 tune3 images reduced to 224 px and fitted
as they were before / enlarged (in px of 448): head rmse_mean 8.27 -> 1.44 (median 1.21 -> 0.70; 448 px: 4.64,
0.65), femur median 1.58 -> 1.21 (320 px: 1.42 -> 1.09; 448 px: 1.15).

Coordinates: pixel centres at integers in both images; the reduction maps areas, so image x = (x_w + 0.5) * s_x - 0.5
with s_x = image width / working width (likewise y), and lengths scale by the mean of s_x and s_y.
"""
from __future__ import annotations

import functools
import time

import numpy as np

WORKING_SIZE_PX = 448


def working_shape(shape: tuple) -> tuple[int, int]:
    """(H, W) the fit runs at for an image of ``shape`` (H, W): its longer side scaled to ``WORKING_SIZE_PX``,
    keeping the aspect ratio (the same shape when it already is)."""
    h, w = int(shape[0]), int(shape[1])
    f = WORKING_SIZE_PX / max(h, w)
    return max(1, round(h * f)), max(1, round(w * f))


def resample(image: np.ndarray, shape: tuple) -> np.ndarray:
    """``image`` (H, W) float resampled to ``shape`` (H', W') (float32): bilinear, anti-aliased when reducing
    (Pillow's resampling, pixel areas aligned)."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32), mode="F")
    out = img.resize((int(shape[1]), int(shape[0])), Image.Resampling.BILINEAR)
    return np.array(out, dtype=np.float32)  # a writable copy


class ToImagePx:
    """Maps working-image px to image px (module docstring)."""

    def __init__(self, image_shape: tuple, work_shape: tuple):
        self.sy = image_shape[0] / work_shape[0]
        self.sx = image_shape[1] / work_shape[1]
        self.length = 0.5 * (self.sx + self.sy)  # px per working px, for radii and distances

    def xy(self, points):
        """(..., 2) points (x, y) -> image px (float64 array)."""
        p = np.asarray(points, dtype=np.float64)
        return np.stack([(p[..., 0] + 0.5) * self.sx - 0.5, (p[..., 1] + 0.5) * self.sy - 0.5], axis=-1)

    def circle(self, circle: dict) -> dict:
        """A circle dict (``cx``, ``cy``, ``r`` px and optional ``residual_px``, ``n_pixels``) in image px; nested
        circle dicts (e.g. ``unsnapped``, ``coarse``) too; other keys are kept."""
        out = {k: (self.circle(v) if isinstance(v, dict) else v) for k, v in circle.items()}
        if "cx" in out and "cy" in out:
            out["cx"], out["cy"] = (float(v) for v in self.xy([out["cx"], out["cy"]]))
        for key in ("r", "residual_px"):
            if out.get(key) is not None:
                out[key] = float(out[key]) * self.length
        if out.get("n_pixels") is not None:
            out["n_pixels"] = float(out["n_pixels"]) * self.sx * self.sy
        return out


def at_working_size(prepare, to_image_px):
    """Decorate ``fit(image, task, ...)`` to run on the image reduced to ``working_shape`` and give its result in
    the image's px: ``prepare(image)`` checks the input and returns it as float (H, W) (the fit's own check, so bad
    input is reported as before); ``to_image_px(result, ToImagePx, image_shape, resample)`` maps the result back.
    The result's ``timings_ms`` gets ``resample_ms`` (both ways) added to ``total_ms``."""

    def decorate(fit):
        @functools.wraps(fit)
        def run(image, task, *args, **kwargs):
            t = time.perf_counter()
            img = prepare(image)
            work = working_shape(img.shape)
            if work == tuple(img.shape):
                return fit(img, task, *args, **kwargs)
            small = resample(img, work)
            t_fit = time.perf_counter()
            result = fit(small, task, *args, **kwargs)
            t_back = time.perf_counter()
            to_image_px(result, ToImagePx(img.shape, work), tuple(img.shape), resample)
            timings = dict(getattr(result, "timings_ms", None) or {})
            resample_ms = 1000 * ((t_fit - t) + (time.perf_counter() - t_back))
            timings["resample_ms"] = resample_ms
            if "total_ms" in timings:
                timings["total_ms"] += resample_ms
            if hasattr(result, "timings_ms"):
                result.timings_ms = timings
            return result
        return run
    return decorate
