"""``deepmorph demo``: the whole of DeepMorph in one command, on a built-in phantom (see ``DeepMorphLib.demo``)."""
from __future__ import annotations

HELP = "simulate X-rays of a built-in phantom, fit both tasks, write overlays, a Slicer scene and report.html"


def add_arguments(parser) -> None:
    from DeepMorphLib.demo import DEFAULT_SEED, DEFAULT_SIZE

    parser.add_argument("--out", required=True, help="output folder (created; files in it are overwritten)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"phantom and noise seed (default {DEFAULT_SEED})")
    parser.add_argument("--n-images", type=int, default=4, help="number of simulated X-rays (default 4)")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help=f"image width = height in px (default {DEFAULT_SIZE})")
    parser.add_argument("--models", metavar="DIR",
                        help="folder with head.safetensors, femur.safetensors and pdm.npz (default: the shipped models)")
    parser.add_argument("--quick", action="store_true", help="2 images of 256 px (a fast check)")
    parser.add_argument("--phantom-spacing", type=float, default=None,
                        help="phantom CT voxel size in mm (default 1.5; 2.5 with --quick)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads for the networks (default 0 = torch's default)")
    parser.add_argument("--no-screenshot", action="store_true",
                        help="skip the picture of the first image as Slicer's slice view draws it (offscreen OpenGL)")
    parser.add_argument("--device", default="auto", help="network device: auto (CUDA when present), cpu, cuda")


def run(args) -> int:
    from DeepMorphLib.demo import run_demo
    from DeepMorphSimulatorLib.files import check_output_path

    check_output_path(args.out, "--out")  # before simulating
    run_demo(args.out, seed=args.seed, n_images=args.n_images, size=args.size, models=args.models, quick=args.quick,
             phantom_spacing_mm=args.phantom_spacing, device=args.device, threads=args.threads or None,
             screenshots=not args.no_screenshot,
             command=command_line(args), log=lambda s: print(s, flush=True))
    return 0


def command_line(args) -> str:
    """The command as a user would type it (for the report)."""
    import shlex

    parts = ["deepmorph", "demo", "--out", args.out]
    if args.quick:
        parts.append("--quick")
    else:
        parts += ["--n-images", str(args.n_images), "--size", str(args.size)]
    parts += ["--seed", str(args.seed)]
    for flag, value in (("--models", args.models), ("--phantom-spacing", args.phantom_spacing),
                        ("--threads", args.threads or None)):
        if value is not None:
            parts += [flag, str(value)]
    if args.device != "auto":
        parts += ["--device", args.device]
    if args.no_screenshot:
        parts.append("--no-screenshot")
    return " ".join(shlex.quote(p) for p in parts)
