"""``deepmorph bench pipeline``: one 448 x 448 X-ray through polarity detection + network + fit on the CPU.

Prints one JSON line with ``pipeline_ms`` = the slower task's median total time (ms) per image over
``--repeats`` runs after a warm-up, on ``--threads`` CPU threads (default 2), plus the per-stage medians.
The image is a DRR of phantom 0 rendered by the simulator (bone-dark) unless ``--image`` is given.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from DeepMorphLib.commands import add_tta_argument

HELP = "time one 448x448 image through network + fit on the CPU (2 threads); prints pipeline_ms"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", choices=("head", "femur", "both"), default="both", help="default: both")
    parser.add_argument("--image", help="X-ray to use (default: a DRR of phantom 0, 448 x 448)")
    parser.add_argument("--model", help="network for a single --task (default: shipped)")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per task (default 10)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch/numba (default 2)")
    parser.add_argument("--polarity", default="auto", choices=("auto", "bone-dark", "bone-bright"))
    add_tta_argument(parser)
    parser.add_argument("--json", action="store_true", help="(always one JSON line; kept for symmetry)")


def bench_image(size: int = 448) -> np.ndarray:
    """A bone-dark DRR (float32, size x size) of phantom seed 0 centred near its right femoral head."""
    from DeepMorphSimulatorLib.drr import render_drr
    from DeepMorphSimulatorLib.geometry import CArmGeometry
    from DeepMorphSimulatorLib.phantom import make_phantom

    ph = make_phantom(0, sides=("right",), spacing_mm=1.5)
    centre = np.asarray(ph.femurs["right"].landmarks["head_center"], dtype=float) + np.array([0.0, 0.0, -25.0])
    geometry = CArmGeometry(width_px=size, height_px=size, pixel_mm=0.5, isocenter_lps=tuple(centre))
    return render_drr(ph.ct, geometry).image.astype(np.float32)


def run(args) -> int:
    from DeepMorphLib import pipeline
    from DeepMorphLib.blas_threads import set_compute_threads

    if args.repeats < 1 or args.threads < 1:
        raise ValueError("--repeats and --threads must be at least 1.")
    if args.model and args.task == "both":
        raise ValueError("--model needs a single --task (head or femur).")
    set_compute_threads(args.threads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if args.image:
        from DeepMorphSimulatorLib.files import read_image_2d

        image, source = read_image_2d(args.image), args.image
    else:
        image, source = bench_image(), "DRR of phantom 0"
    tasks = ("head", "femur") if args.task == "both" else (args.task,)
    out = {"threads": args.threads, "device": "cpu", "image": source, "image_size": list(image.shape),
           "repeats": args.repeats, "polarity": args.polarity}
    totals = {}
    for task in tasks:
        predictor = pipeline.load_predictor(task, args.model, device="cpu")
        shape_model = pipeline.load_shape_model() if task == "femur" else None
        anchor = pipeline.load_head_anchor(None, device="cpu") if task == "femur" else None  # as `fit` does
        region = pipeline.load_region_net(None, device="cpu") if task == "femur" else None
        fit = lambda: pipeline.fit_image(image, task, pdm=shape_model, polarity=args.polarity,  # noqa: E731
                                         predictor=predictor, head_anchor=anchor or False, region=region or False)
        first = fit()  # warm-up: JIT compilation, allocations
        runs = [fit().timings_ms for _ in range(args.repeats)]
        for key in ("polarity_ms", "network_ms", "fit_ms", "total_ms"):
            out[f"{task}_{key}"] = round(float(np.median([r[key] for r in runs])), 1)
        out[f"{task}_detected"] = bool(first.detected)
        out[f"{task}_tta_views"] = first.model.get("tta_views")
        totals[task] = out[f"{task}_total_ms"]
    out["pipeline_ms"] = max(totals.values())
    print(json.dumps(out))
    sys.stdout.flush()
    return 0
