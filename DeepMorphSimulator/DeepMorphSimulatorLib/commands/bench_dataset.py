"""``deepmorph bench dataset``: training-set generation speed (256 x 256, implants on, 2 workers)."""
from __future__ import annotations

import json
import tempfile
import time

HELP = "dataset generation speed: samples/s for 256x256 samples with implants, 2 workers"


def add_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON line (the default output anyway)")
    parser.add_argument("--n", type=int, default=96, help="samples to generate (default 96)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--size", type=int, default=256, help="image size in px (default 256)")
    parser.add_argument("--group", type=int, default=48, help="samples per phantom (default 48)")
    parser.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    from ..dataset import DatasetSettings, generate

    import os
    import resource

    settings = DatasetSettings(source="phantom", size=args.size, implants=1.0, seed=args.seed, group=args.group)
    load_before = os.getloadavg()[0]
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    self0 = resource.getrusage(resource.RUSAGE_SELF)
    with tempfile.TemporaryDirectory(prefix="deepmorph-bench-dataset-") as tmp:
        t0 = time.perf_counter()
        generate(settings, tmp, args.n, workers=args.workers, progress=False)
        wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime) + (
        self1.ru_utime + self1.ru_stime - self0.ru_utime - self0.ru_stime)
    print(json.dumps({
        "samples_per_s": round(args.n / wall, 3),
        "cpu_s_per_sample": round(cpu / args.n, 4),
        "samples_per_s_if_cores_free": round(min(args.workers, os.cpu_count() or 1) * args.n / cpu, 3) if cpu > 0 else None,
        "load_average_before": round(load_before, 2),
        "n": args.n,
        "size": args.size,
        "workers": args.workers,
        "implants": 1.0,
        "group": args.group,
        "seconds": round(wall, 2),
        "goal_samples_per_s": 5.0,
        "note": "wall time including worker start-up and phantom generation (one phantom per group)",
    }))
    return 0
