"""``deepmorph build-pdm``: femur point distribution model from simulated ground truth."""
from __future__ import annotations

import json

HELP = "build the femur PDM from the corresponding contour points of 'deepmorph dataset' directories"


def add_arguments(parser) -> None:
    parser.add_argument("--data", nargs="+", action="extend", required=True, metavar="DIR",
                        help="dataset directories (deepmorph dataset --out): --data A B or --data A --data B")
    parser.add_argument("--out", required=True, help="output path without extension (writes .npz + .json)")
    parser.add_argument("--variance", type=float, default=0.98, help="fraction of shape variance kept (default 0.98)")
    parser.add_argument("--max-shapes", type=int, default=None, help="use at most this many shapes")


def run(args) -> int:
    from DeepMorphLib.pdm_build import build_pdm

    if args.max_shapes is not None and args.max_shapes < 10:
        raise ValueError(f"--max-shapes must be >= 10 (a PDM needs at least 10 shapes), got {args.max_shapes}.")
    pdm = build_pdm(args.data, variance_kept=args.variance, max_shapes=args.max_shapes)
    path = pdm.save(args.out)
    print(json.dumps({"out": str(path), "n_shapes": pdm.metadata.get("n_shapes"), "n_points": pdm.n_points,
                      "n_modes": pdm.n_modes, "variance_kept": round(pdm.variance_kept, 4)}))
    return 0
