"""``deepmorph dataset``: generate (or resume) a training set of simulated fluoroscopy images with targets."""
from __future__ import annotations

import json

HELP = "generate a resumable training set (DRR + implants + detector effects + ground-truth masks)"


def add_arguments(parser) -> None:
    parser.add_argument("--out", required=True, help="output folder (created; an existing dataset is resumed)")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--phantom", action="store_true", help="render built-in random hip phantoms (new anatomy per --group samples)")
    src.add_argument("--ct", help="your CT (NRRD, NIfTI, MHA or DICOM folder); needs --mesh")
    parser.add_argument("--mesh", help="femur surface mesh (.vtp/.vtk/.stl/.ply/.obj, LPS mm) or femur label map, with --ct")
    parser.add_argument("--mesh-space", choices=("LPS", "RAS"),
                        help="coordinate system of the mesh file (default LPS, as Slicer writes since 4.11)")
    parser.add_argument("--landmarks", help="Slicer markups JSON with the femur landmarks (head_center, ...); missing ones are estimated from the mesh")
    parser.add_argument("--side", choices=("right", "left"), help="side of the femur in --mesh (default: from its anatomy; checked when given)")
    parser.add_argument("--n", type=int, required=True, help="number of samples (a re-run may raise it to extend the set)")
    parser.add_argument("--size", type=int, default=256, help="image width = height in px (default 256)")
    parser.add_argument("--implants", type=float, default=0.5, help="probability of an implant per sample, 0-1 (default 0.5; tools at half of it)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1); never changes the output")
    parser.add_argument("--seed", type=int, default=0, help="master seed (default 0)")
    parser.add_argument("--group", type=int, default=48, help="samples per phantom with --phantom (default 48)")
    parser.add_argument("--phantom-spacing", type=float, default=1.5, help="phantom voxel size in mm (default 1.5)")
    parser.add_argument("--detector", choices=("realistic", "plain"), default="realistic",
                        help="realistic: noise, blur, collimation, display variety; plain: the paper's display")
    parser.add_argument("--display-window", choices=("centre", "anatomy"), default="centre",  # detector.DISPLAY_WINDOWS
                        help="display window of the realistic detector: 'centre' (default; as a C-arm's brightness "
                        "control, the lateral trochanter can burn out) or 'anatomy' (the bright end also covers the "
                        "whole body, 0-3 %% of it burns out; display contrast <= 1.1)")
    parser.add_argument("--targets", choices=("annotated", "all"), default="annotated",  # dataset.TARGETS
                        help="head/femur target masks of the sample's annotated femur only (default; as the shipped "
                        "networks were trained) or of every femur in view ('all': a wide view's other hip is marked too)")
    parser.add_argument("--p-bone-bright", type=float, default=0.25, help="share of bone-bright (radiograph-like) images")
    parser.add_argument("--n-points", type=int, default=64, help="corresponding contour points per sample (default 64)")
    parser.add_argument("--band-px", type=float, default=2.0, help="outline target band width in px (default 2)")
    parser.add_argument("--device", default="auto", help="DRR device: auto (CUDA when present), cpu, cuda (default auto)")
    parser.add_argument("--contact-sheet", metavar="PNG", help="also write a PNG grid of the first 24 samples with their ground truth")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def settings_from_args(args):
    from ..dataset import DatasetSettings

    if args.phantom and (args.mesh or args.landmarks or args.mesh_space):
        raise ValueError("--mesh/--mesh-space/--landmarks belong to --ct; with --phantom the femur comes from the "
                         "phantom.")
    return DatasetSettings(
        source="phantom" if args.phantom else "ct",
        ct=args.ct,
        mesh=args.mesh,
        mesh_space=args.mesh_space,
        landmarks=args.landmarks,
        side=args.side,
        size=args.size,
        implants=args.implants,
        seed=args.seed,
        group=args.group,
        phantom_spacing_mm=args.phantom_spacing,
        detector=args.detector,
        p_bone_bright=args.p_bone_bright,
        display_window=args.display_window,
        targets=args.targets,
        n_points=args.n_points,
        band_px=args.band_px,
        device=args.device,
    )


def run(args) -> int:
    from ..dataset import generate
    from ..files import check_output_path

    if args.contact_sheet:
        check_output_path(args.contact_sheet, "--contact-sheet", folder=False)  # before generating
    stats = generate(settings_from_args(args), args.out, args.n, workers=args.workers, progress=not args.quiet)
    if args.contact_sheet:
        from ..dataset import contact_sheet
        from ..files import write_png

        write_png(args.contact_sheet, contact_sheet(args.out, range(min(24, args.n))))
    print(json.dumps({"out": str(args.out), **{k: round(v, 3) if isinstance(v, float) else v for k, v in stats.items()}}))
    return 0
