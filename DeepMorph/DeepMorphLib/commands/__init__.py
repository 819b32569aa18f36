"""``deepmorph`` subcommands: one module each, with ``add_arguments(parser)`` and ``run(args)``."""
from __future__ import annotations


def add_tta_argument(parser) -> None:
    """``--tta N``: views averaged per network call (``inference.test_time_views``; ``cli.main`` applies it)."""
    parser.add_argument("--tta", type=int, default=None, choices=(1, 2, 4, 8), metavar="N",
                        help="test-time augmentation: average every network's confidence over N flipped/transposed "
                             "views of the image (1, 2, 4 or 8; costs ~N x the network time; default: each model's "
                             "sidecar 'tta_views', 1 for the shipped models; the head task runs at 1)")


def add_head_fit_arguments(parser) -> None:
    """Options of the head circle fit shared by ``fit`` and ``evaluate``."""
    parser.add_argument("--no-edge-snap", action="store_true",
                        help="head: keep the network's circle; by default it is moved onto the head's edge in the "
                             "image when that edge is clear")
    parser.add_argument("--no-femur-check", action="store_true",
                        help="head: skip the femur check (by default a circle that its own edge does not clearly "
                             "confirm is compared with the femur fit, whose head dome wins when that fit is confident)")
    parser.add_argument("--keep-unconfirmed-head", action="store_true",
                        help="head: report the head network's circle even when neither its own edge nor a confident "
                             "femur fit confirms it, or when it is only weakly snapped and off the femur (by default "
                             "it is 'not detected', the circle kept for review, unless the femur fit gives the head)")
    parser.add_argument("--refine-model", default=None, metavar="MODEL", type=_model_or_none,
                        help="head: refinement (ROI) network applied around the first circle (default: the shipped "
                             "one when present; 'none' = off)")
    parser.add_argument("--circle-method", default="algebraic", choices=("algebraic", "geometric", "robust"),
                        help="head: circle fit (default algebraic, as in the paper; robust: RANSAC + outlier "
                             "rejection, for partly hidden outlines)")


def add_femur_fit_arguments(parser) -> None:
    """Options of the femur PDM fit shared by ``fit`` and ``evaluate``."""
    parser.add_argument("--head-anchor", default=None, metavar="MODEL", type=_model_or_none,
                        help="femur: head network whose (edge-snapped) circle anchors extra PDM starts when the first "
                             "fit is not convincing (default: the shipped head network; 'none' = off)")
    parser.add_argument("--region-model", default=None, metavar="MODEL", type=_model_or_none,
                        help="femur: region network whose fit is the last second opinion, polished onto the outline "
                             "network's ridge (default: the shipped one when present; 'none' = off)")
    parser.add_argument("--second-opinion-below", type=_fraction, default=0.7, metavar="Q",
                        help="femur: try the second-opinion fits (shape-constrained CPD, head-anchored starts, the "
                             "region network) when "
                             "the first fit's mean confidence is below Q (default 0.7; 0 = never)")
    parser.add_argument("--upright-max-deg", type=_degrees_or_none, default=60.0, metavar="DEG",
                        help="femur: upright prior - fits whose shaft points more than DEG degrees away from image "
                             "down lose when fits are compared (default 60; 'none' = off, for images shown rotated)")
    parser.add_argument("--polish-px", type=_non_negative, default=None, metavar="PX",
                        help="femur: finally move each point of the kept fit along its normal onto the confident outline "
                             "ridge within PX px (default 5; 0 = the shape model's points; fits are compared after a "
                             "3 px polish)")
    parser.add_argument("--coverage-weight", type=_non_negative, default=None, metavar="W",
                        help="femur: when the second opinions are compared, each fit's mean confidence gets W x the "
                             "fraction of the outline pixels within 3 px of it (default 0.25; 0 = mean confidence alone)")
    parser.add_argument("--femur-min-quality", type=_fraction, default=None, metavar="Q",
                        help="femur: a fit whose mean confidence at its points is below Q is reported not detected "
                             "(its contour kept for review, drawn dashed orange; default 0.35; 0 = report every fit)")


def _number(text: str, wanted: str, within) -> float:
    """``text`` as a float for which ``within(value)`` holds (nan never does), else argparse's error naming ``wanted``."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value == value and within(value)):
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
    return value


def _degrees_or_none(text: str) -> float | None:
    if text.strip().lower() == "none":
        return None
    return _number(text, "a number of degrees >= 0 or 'none'", lambda v: v >= 0)


def _non_negative(text: str) -> float:
    return _number(text, "a number >= 0", lambda v: v >= 0)


def _fraction(text: str) -> float:
    """A number in [0, 1] (a confidence)."""
    return _number(text, "a number between 0 and 1", lambda v: 0 <= v <= 1)


def open_fraction(text: str) -> float:
    """A number strictly between 0 and 1 (a threshold)."""
    return _number(text, "a number between 0 and 1 (both excluded)", lambda v: 0 < v < 1)


def positive_int(text: str) -> int:
    """A whole number >= 1."""
    value = _number(text, "a whole number >= 1", lambda v: v >= 1 and v == int(v) and "." not in text)
    return int(value)


def _model_or_none(text: str) -> str:
    """A network option's value: 'none', or a model file that exists (the .safetensors extension optional)."""
    import argparse
    from pathlib import Path

    path = Path(text)
    if text.strip().lower() != "none" and not (path.is_file() or path.with_name(path.name + ".safetensors").is_file()):
        raise argparse.ArgumentTypeError(f"no model file {text}; give a trained .safetensors file, or 'none' for none")
    return text


def femur_fit_options(args) -> dict:
    """``fit_options`` of ``pipeline.fit_image`` from the options of ``add_femur_fit_arguments``."""
    options = {"second_opinion_below": args.second_opinion_below, "upright_max_deg": args.upright_max_deg}
    if getattr(args, "polish_px", None) is not None:
        options["final_polish_px"] = args.polish_px
    if getattr(args, "coverage_weight", None) is not None:
        options["coverage_weight"] = args.coverage_weight
    return options
