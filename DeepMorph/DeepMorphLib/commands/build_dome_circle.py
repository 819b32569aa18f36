"""``deepmorph build-dome-circle``: the head circle of a femur contour's head dome, learned from simulated truth."""
from __future__ import annotations

import json

HELP = "learn the femoral-head circle of a femur contour's head dome from 'deepmorph dataset' directories"


def add_arguments(parser) -> None:
    parser.add_argument("--data", nargs="+", action="extend", required=True, metavar="DIR",
                        help="dataset directories (deepmorph dataset --out): --data A B or --data A --data B")
    parser.add_argument("--out", required=True, help="output path without extension (writes .npz + .json)")
    parser.add_argument("--pdm", default=None, help="PDM whose named head dome (anchor_neck_superior .. "
                        "anchor_neck_inferior) is used (default: the shipped one)")


def run(args) -> int:
    from DeepMorphLib.dome_circle import build_dome_circle_model
    from DeepMorphLib.pipeline import head_dome_indices, load_shape_model

    shape_model = load_shape_model(args.pdm)
    dome = head_dome_indices(shape_model.landmark_indices)
    if dome is None:
        raise ValueError(f"The PDM {shape_model.path or ''} does not name its head dome (anchor_neck_superior, "
                         "anchor_neck_inferior); build it with 'deepmorph build-pdm'.")
    model = build_dome_circle_model(args.data, dome)
    path = model.save(args.out)
    print(json.dumps({"out": str(path), "dome": list(model.dome), "n_shapes": model.metadata["n_shapes"],
                      "ridge_weight": model.metadata["ridge_weight"], "errors_px": model.metadata["errors_px"]}))
    return 0
