"""``deepmorph bench drr``: DRR speed and accuracy, ours vs plastimatch, as one JSON line.

Case: synthetic 512 x 512 x 200 int16 hip CT (0.8 x 0.8 x 1.5 mm), converted once to attenuation (eq. 8),
448 x 448 detector, 0.6 mm pitch, SID 1000 mm, SOD 600 mm, PA beam through the volume centre.

* ``ours_ms``: median of ``--repeats`` renders (after one warm-up) of :func:`drr.line_integrals` on the
  CPU (Joseph's method, the ``auto`` default) with ``--threads`` threads, of the read-only attenuation
  volume from :func:`drr.hu_to_mu`, whose empty-margin box is found once (at the warm-up) and reused.
  ``ours_cold_ms``: the same on a writable copy (the margin scan is repeated on every render);
  ``ours_full_box_ms``: without skipping the empty margins. Renders alternate with plastimatch runs.
* ``plastimatch_ms``: ``plastimatch drr -i exact -P none`` (Siddon's exact ray tracing, no HU
  conversion) on the same attenuation volume (float .mha) and geometry, same thread count; the compute
  time plastimatch prints (``Total time`` minus its image ``I/O time``; volume loading is excluded). Median.
* ``max_rel_err``: our line integrals vs the analytic truth on linear volumes (anisotropic spacing,
  rotated direction matrices, several poses), over rays crossing >= 50 mm.
* ``plastimatch_rel_err``: median |ours - plastimatch| / plastimatch over rays with A >= 1 (about 50 mm of
  water or more). plastimatch reports sum(mu * length) / 10 ("mm to cm"), with its detector columns
  mirrored relative to ours (its panel axes are left-handed with respect to our (u, v, beam)); both are undone.
* ``cuda_ms`` (only when torch sees a CUDA GPU): median render time on the GPU, volume already uploaded.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

HELP = "DRR renderer speed and accuracy vs plastimatch on a synthetic hip CT (one JSON line)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print only the JSON line (default prints it too)")
    parser.add_argument("--repeats", type=int, default=5, help="timed renders per renderer (default %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for both renderers (default %(default)s)")
    parser.add_argument("--no-plastimatch", action="store_true", help="skip the plastimatch comparison")


def run(args: argparse.Namespace) -> int:
    if args.repeats < 1 or args.threads < 1:
        raise ValueError("--repeats and --threads must be >= 1.")
    _set_threads(args.threads)
    from .. import drr
    from ..drr_testing import hip_like_ct
    from ..geometry import CArmGeometry

    log = (lambda *a: None) if args.json else (lambda *a: print("bench drr:", *a, flush=True))
    t_start = time.perf_counter()
    ct = hip_like_ct((200, 512, 512), (0.8, 0.8, 1.5))
    mu = drr.hu_to_mu(ct)  # read-only: its empty-margin box is found once, then reused
    geometry = CArmGeometry(width_px=448, height_px=448, pixel_mm=0.6, sid_mm=1000.0, sod_mm=600.0,
                            isocenter_lps=tuple(float(c) for c in ct.center_lps()))
    result = {"case": "hip CT 512x512x200 int16 0.8x0.8x1.5 mm -> float32 mu, 448x448 px, PA", "threads": args.threads}
    use_plastimatch = not args.no_plastimatch and shutil.which("plastimatch") is not None
    log(f"CT ready in {time.perf_counter() - t_start:.1f} s; timing (ours and plastimatch interleaved)")
    ours = drr.line_integrals(mu, geometry, device="cpu")  # warm-up: compilation, empty-margin box
    ours_times, pl_times, pl_image = [], [], None
    with tempfile.TemporaryDirectory(prefix="deepmorph-bench-drr-") as tmp:
        for _ in range(args.repeats):  # interleaved, so both see the same machine load
            ours_times.append(_time_call(lambda: drr.line_integrals(mu, geometry, device="cpu")))
            if use_plastimatch:
                ms, pl_image = run_plastimatch(mu, geometry, args.threads, tmp)
                pl_times.append(ms)
    result["ours_ms"] = round(1e3 * float(np.median(ours_times)), 1)
    if use_plastimatch:
        result["plastimatch_ms"] = round(float(np.median(pl_times)), 1)
        result["ratio"] = round(result["ours_ms"] / result["plastimatch_ms"], 3)
    # the same render without reusing the empty-margin box (writable copy) and without skipping margins
    writable = mu.with_data(mu.data.copy())
    result["ours_cold_ms"] = round(1e3 * float(np.median(
        [_time_call(lambda: drr.line_integrals(writable, geometry, device="cpu")) for _ in range(3)])), 1)
    result["ours_full_box_ms"] = round(1e3 * float(np.median(
        [_time_call(lambda: drr._integrate(mu, mu.data, geometry, None, "auto", "cpu", crop=False))
         for _ in range(3)])), 1)
    log("accuracy")
    result["max_rel_err"] = float(f"{max_rel_err_linear():.3g}")
    if use_plastimatch:
        substantial = ours >= 1.0
        rel = np.abs(ours - pl_image)[substantial] / np.maximum(pl_image[substantial], 1e-12)
        result["plastimatch_rel_err"] = float(f"{np.median(rel):.3g}")
        result["plastimatch_rel_err_p95"] = float(f"{np.percentile(rel, 95):.3g}")
    elif not args.no_plastimatch:
        result["plastimatch"] = "not found on PATH (apt-get install plastimatch)"
    if drr._cuda_available():
        import torch

        drr.line_integrals(mu, geometry, device="cuda")  # warm-up: upload, kernels
        cuda_times = []
        for _ in range(max(args.repeats, 10)):
            torch.cuda.synchronize()
            cuda_times.append(_time_call(lambda: drr.line_integrals(mu, geometry, device="cuda")))
        result["cuda_ms"] = round(1e3 * float(np.median(cuda_times)), 2)
    result["bench_s"] = round(time.perf_counter() - t_start, 1)
    print(json.dumps(result))
    return 0


def _set_threads(n: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(n)
    import numba

    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


def _time_call(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def max_rel_err_linear(min_length_mm: float = 50.0) -> float:
    """Largest relative error of the default CPU path vs the analytic truth on linear volumes."""
    from .. import drr
    from ..drr_testing import linear_truth, linear_volume, random_rotation
    from ..geometry import CArmGeometry

    rng = np.random.default_rng(7)
    worst = 0.0
    for case in range(3):
        direction = np.eye(3) if case == 0 else random_rotation(rng)
        spacing = rng.uniform(0.7, 2.5, size=3)
        shape = tuple(int(n) for n in rng.integers(60, 110, size=3))
        origin = rng.uniform(-50, 50, size=3)
        gradient = rng.uniform(-0.004, 0.004, size=3)
        vol = linear_volume(shape, spacing, origin, direction, gradient, 1.0)
        for _ in range(3):
            g = CArmGeometry(width_px=96, height_px=80, pixel_mm=2.0,
                             orbital_deg=float(rng.uniform(-90, 90)), angular_deg=float(rng.uniform(-40, 40)),
                             inplane_deg=float(rng.uniform(-180, 180)),
                             isocenter_lps=tuple(vol.center_lps() + rng.uniform(-20, 20, size=3)))
            truth, length = linear_truth(vol, gradient, 1.0, g)
            ours = drr.line_integrals(vol, g, device="cpu")
            mask = length >= min_length_mm
            if mask.any():
                worst = max(worst, float(np.max(np.abs(ours[mask] - truth[mask]) / np.abs(truth[mask]))))
    return worst


def plastimatch_args(geometry, volume_path, out_prefix) -> list[str]:
    """``plastimatch drr`` command line for our geometry (square pixels, detector-centred principal point).

    plastimatch places the source at ``isocenter + sad * nrm`` and its rows along ``-vup``; its columns run
    along ``-(e_u)`` of ours, so its image is our image mirrored left-right (undone by the caller).
    """
    e_u, e_v, beam = geometry.axes()
    fmt = lambda v: " ".join(f"{float(x):.10g}" for x in v)  # noqa: E731
    return [
        "plastimatch", "drr", "-i", "exact", "-P", "none", "-t", "pfm",
        "--sad", f"{geometry.sod_mm:.10g}", "--sid", f"{geometry.sid_mm:.10g}",
        # despite its help text ("row col"), plastimatch 1.9 reads -r and -z as columns first (checked)
        "-r", f"{geometry.width_px} {geometry.height_px}",
        "-z", f"{geometry.width_px * geometry.pixel_mm:.10g} {geometry.height_px * geometry.pixel_mm:.10g}",
        "-n", fmt(-beam), "--vup", fmt(-e_v), "-o", fmt(geometry.isocenter_lps),
        "-O", str(out_prefix), str(volume_path),
    ]


def read_pfm(path) -> np.ndarray:
    """Read a PFM greyscale image as plastimatch writes it (rows top to bottom)."""
    raw = Path(path).read_bytes()
    magic, dims, scale, data = raw.split(b"\n", 3)
    if magic.strip() != b"Pf":
        raise ValueError(f"{path} is not a greyscale PFM file.")
    width, height = (int(x) for x in dims.split())
    dtype = "<f4" if float(scale) < 0 else ">f4"
    return np.frombuffer(data[: 4 * width * height], dtype=dtype).reshape(height, width).astype(np.float32)


def run_plastimatch(mu, geometry, threads: int, workdir) -> tuple[float, np.ndarray]:
    """One plastimatch render: (compute ms, line integrals in our units and pixel order)."""
    from ..volume import write_volume

    workdir = Path(workdir)
    volume_path = workdir / "mu.mha"
    if not volume_path.exists():
        write_volume(mu.with_data(mu.data.astype(np.float32)), volume_path, compress=False)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    proc = subprocess.run(plastimatch_args(geometry, volume_path, workdir / "pl"), capture_output=True, text=True,
                          env=env, check=False)
    total = re.search(r"Total time:\s*([0-9.eE+-]+)", proc.stdout)
    io_time = re.search(r"I/O time:\s*([0-9.eE+-]+)", proc.stdout)
    if proc.returncode != 0 or not total:
        raise RuntimeError(f"plastimatch drr failed ({proc.returncode}): {proc.stdout[-500:]} {proc.stderr[-500:]}")
    ms = 1e3 * (float(total.group(1)) - (float(io_time.group(1)) if io_time else 0.0))
    image = read_pfm(workdir / "pl0000.pfm")[:, ::-1] * 10.0  # mirror columns; cm -> mm
    return ms, np.ascontiguousarray(image)
