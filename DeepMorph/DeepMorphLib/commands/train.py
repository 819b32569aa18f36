"""``deepmorph train``: train the head or femur outline network on simulated datasets (resumable)."""
from __future__ import annotations

import os
import shlex
import sys

# Idle OpenMP threads sleep instead of spinning: on a shared, oversubscribed CPU, spinning made 2-thread
# training 4x slower than 1 thread (measured); must be set before torch is imported. Override by setting it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HELP = "train the FusionNet outline segmenter (head|femur) or the polarity classifier on 'deepmorph dataset' folders; resumable"

EXIT_STOPPED = 3  # stopped by --max-minutes; re-running the same command continues
EXIT_SIGNAL = {"SIGINT": 130, "SIGTERM": 143}  # stopped by Ctrl-C / kill, with a checkpoint (as the shell reports them)


def add_arguments(p) -> None:
    from DeepMorphLib.training import TrainConfig as C

    p.add_argument("--task", required=True, choices=("head", "femur", "polarity"),
                   help="which outline to learn, or 'polarity': the bone-dark / bone-bright image classifier "
                        "(whole images: give --crop equal to --size)")
    p.add_argument("--data", required=True, nargs="+", action="extend", metavar="DIR",
                   help="dataset directories: --data A B or --data A --data B")
    p.add_argument("--out", required=True, metavar="MODEL",
                   help="model path without extension: writes MODEL.safetensors + MODEL.json")
    p.add_argument("--work-dir", default="", metavar="DIR",
                   help="checkpoint and metrics.jsonl folder (default: runs/train-<MODEL name>)")
    p.add_argument("--epochs", type=int, default=C.epochs, help="passes over the training split (default %(default)s); may be changed when resuming while the "
                        "epochs already trained keep their learning rate (before the x0.1 decay)")
    p.add_argument("--batch", type=int, default=C.batch, help="images per optimisation step (default %(default)s)")
    p.add_argument("--size", type=int, default=C.size, help="network input side in px (default %(default)s)")
    p.add_argument("--crop", type=int, default=C.crop, help="training crop side in px at that scale (default %(default)s)")
    p.add_argument("--base-channels", type=int, default=C.base_channels,
                   help="FusionNet channels at full resolution, doubling per level (default %(default)s)")
    p.add_argument("--depth", type=int, default=C.depth, help="FusionNet down-samplings (default %(default)s)")
    p.add_argument("--lr", type=float, default=C.lr, help="Adam learning rate, x0.1 after 75%% of the epochs (default %(default)s)")
    p.add_argument("--target", default=C.target, choices=("outline", "region"),
                   help="what the network lights up: the outline band (paper) or, for the head, the filled head "
                        "disk whose rim is then fitted (default %(default)s)")
    p.add_argument("--roi", choices=("head",), default=None,
                   help="train a refinement network on ROIs around the true head (jittered) instead of whole "
                        "images; used after the whole-image head network (default: whole images)")
    p.add_argument("--roi-scale", type=float, default=C.roi_scale, help="ROI side / head radius (default %(default)s)")
    p.add_argument("--roi-jitter", type=float, default=C.roi_jitter,
                   help="largest ROI centre offset from the true centre, in head radii (default %(default)s)")
    p.add_argument("--roi-size-jitter", type=float, default=C.roi_size_jitter,
                   help="ROI side varies by a log-uniform factor in [1/x, x] (default %(default)s)")
    p.add_argument("--roi-source", type=int, default=C.roi_source,
                   help="ROIs are cut from the images resized to this longer side, px (default %(default)s)")
    p.add_argument("--pos-weight", type=float, default=C.pos_weight, help="BCE weight of outline pixels (default %(default)s)")
    p.add_argument("--dice-weight", type=float, default=C.dice_weight, help="weight of the soft-Dice term (default %(default)s)")
    p.add_argument("--invert-prob", type=float, default=0.25,
                   help="probability of polarity inversion in augmentation (default %(default)s)")
    p.add_argument("--display-prob", type=float, default=0.0,
                   help="probability of each display-processing step in augmentation, as clinical X-ray systems "
                        "apply them: unsharp masking and histogram equalisation (default %(default)s: off)")
    p.add_argument("--seed", type=int, default=C.seed, help="initialisation, split, order, augmentation (default %(default)s)")
    p.add_argument("--val-fraction", type=float, default=C.val_fraction,
                   help="fraction of samples held out for per-epoch validation (default %(default)s)")
    p.add_argument("--max-samples", type=int, default=0, help="use only the first N samples (0 = all)")
    p.add_argument("--max-minutes", type=float, default=0.0,
                   help="stop after M minutes with a checkpoint (exit code 3); re-run to continue")
    p.add_argument("--checkpoint-minutes", type=float, default=C.checkpoint_minutes,
                   help="checkpoint interval within an epoch; one is also written at each epoch end (default %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    p.add_argument("--init-from", default="", metavar="MODEL",
                   help="start from this model's weights (same task/architecture) instead of a random init")
    p.add_argument("--restart", action="store_true", help="discard an existing checkpoint in the work dir")
    p.add_argument("--export-checkpoint", action="store_true",
                   help="save the model of the last checkpoint now (a run stopped early) instead of training")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")


def canonical_command(args) -> str:
    """The full command line (every option spelled out, defaults included) that reproduces this run."""
    skip = {"command", "benchmark", "_run", "restart", "export_checkpoint", "no_progress", "max_minutes", "threads", "device",
            "checkpoint_minutes", "work_dir"}
    parts = ["deepmorph", "train"]
    for key, value in vars(args).items():
        if key in skip or value is None or (key.startswith("roi_") and not getattr(args, "roi", None)):
            continue
        flag = "--" + key.replace("_", "-")
        for v in value if isinstance(value, list) else [value]:
            parts += [flag, shlex.quote(str(v))]
    return " ".join(parts)


def augment_settings(args) -> dict:
    """The augmentation of the run: ``--invert-prob`` and ``--display-prob`` for the segmenters; for the polarity
    classifier no occlusions (a painted dark square is a metal cue of one polarity) and no plain inversion (it
    inverts half of the images itself, flipping their labels)."""
    from DeepMorphLib.augment import AugmentConfig

    if args.task == "polarity":
        return AugmentConfig(invert_prob=0.0, occlusion_prob=0.0).to_dict()
    if not 0.0 <= args.display_prob <= 1.0:
        raise ValueError(f"--display-prob must be within [0, 1], got {args.display_prob}.")
    return AugmentConfig(invert_prob=args.invert_prob, unsharp_prob=args.display_prob,
                         equalize_prob=args.display_prob).to_dict()


def run(args) -> int:
    from DeepMorphLib.training import TrainConfig, export_checkpoint, train

    cfg = TrainConfig(
        task=args.task, data=list(args.data), out=args.out, work_dir=args.work_dir, epochs=args.epochs,
        batch=args.batch, size=args.size, crop=min(args.crop, args.size), base_channels=args.base_channels,
        depth=args.depth, lr=args.lr, pos_weight=args.pos_weight, target=args.target, dice_weight=args.dice_weight,
        seed=args.seed, init_from=args.init_from, roi=args.roi or "", roi_scale=args.roi_scale,
        roi_jitter=args.roi_jitter, roi_size_jitter=args.roi_size_jitter, roi_source=args.roi_source,
        val_fraction=args.val_fraction, max_samples=args.max_samples,
        augment=augment_settings(args), max_minutes=args.max_minutes,
        checkpoint_minutes=args.checkpoint_minutes, threads=args.threads, device=args.device,
        command=canonical_command(args),
    )
    if args.export_checkpoint:
        export_checkpoint(cfg, log=lambda msg: print(msg, file=sys.stderr, flush=True))
        return 0
    result = train(cfg, restart=args.restart, progress=not args.no_progress,
                   log=lambda msg: print(msg, file=sys.stderr, flush=True))
    if result["status"] != "finished":
        return EXIT_SIGNAL.get(result.get("signal"), EXIT_STOPPED)
    hist = result["history"][-1] if result["history"] else {}
    print(f"model: {result['model']}  final: " + ", ".join(f"{k} {v:.4f}" for k, v in hist.items()
                                                           if k in ("train_loss", "val_loss", "val_dice", "val_accuracy")))
    return 0
