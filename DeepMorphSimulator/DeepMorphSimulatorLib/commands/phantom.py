"""``deepmorph phantom``: write a procedural hip phantom (CT, femur label map, meshes, landmarks)."""
from __future__ import annotations

import time

HELP = "write a procedural hip phantom: ct.nrrd, femur-label.nrrd, femur meshes (.vtp), landmarks.mrk.json"


def add_arguments(parser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="anatomy seed (non-negative integer; default 0)")
    parser.add_argument("--sides", default="right,left", help="femurs to export: right, left or right,left")
    parser.add_argument("--spacing", type=float, default=1.0, metavar="MM", help="isotropic voxel size (default 1)")
    parser.add_argument("--cut-mm", type=float, default=150.0, metavar="MM",
                        help="shaft cut of label/mesh below the head centre (default 150)")


def run(args) -> int:
    from ..files import check_output_path
    from ..phantom import make_phantom, phantom_summary, save_phantom

    check_output_path(args.out, "--out")  # before generating
    if not (50.0 <= args.cut_mm <= 190.0):
        raise ValueError(f"--cut-mm must lie in [50, 190] mm (the CT reaches ~190 mm below the hips), got {args.cut_mm}.")
    t0 = time.perf_counter()
    ph = make_phantom(args.seed, sides=args.sides, spacing_mm=args.spacing, cut_mm=args.cut_mm)
    t1 = time.perf_counter()
    paths = save_phantom(ph, args.out)
    t2 = time.perf_counter()
    print(phantom_summary(ph))
    for name, path in paths.items():
        print(f"  {name}: {path}")
    print(f"generated in {t1 - t0:.1f} s, written in {t2 - t1:.1f} s")
    return 0
