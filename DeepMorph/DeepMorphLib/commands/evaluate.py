"""``deepmorph evaluate``: accuracy of network + fit on real images, a dataset folder or a fresh held-out set.

Sources (one of):
- ``--real DIR``: real X-rays in the dev-set format (``DIR/images/*``, ``DIR/annotations/*.json`` with
  ``image``, ``head_circle``, ``femur_outline``, ``eval_max_y``, ``maturity``, ``modality``, ``polarity``),
  scored by the rules of ``scoring`` (= the dev set's README), overall and ``by_maturity``/``by_modality``;
- ``--data DIR``: a ``deepmorph dataset`` folder (``samples/000000.png`` + ``.json``);
- neither: a fresh held-out set generated in a temporary folder with seeds disjoint from training
  (training uses seeds < 1_000_000; evaluation uses ``HELDOUT_SEED_BASE + --seed``).
``--json`` prints exactly one JSON line on stdout; ``--report DIR`` writes an overlay PNG per image (fit vs
ground truth), ``results.json``, ``results.csv`` and ``report.html``.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from DeepMorphLib.commands import (add_femur_fit_arguments, add_head_fit_arguments, add_tta_argument,
                                   femur_fit_options)

HELP = "accuracy of network + fit on real images (--real), a dataset (--data) or a fresh held-out set"
HELDOUT_SEED_BASE = 9_000_000  # evaluation seeds; training seeds stay below TRAINING_SEED_LIMIT
TRAINING_SEED_LIMIT = 1_000_000
HEAD_KEYS_REAL = ("rmse_mean", "rmse_median", "center_err_mean", "detection_rate", "n")
FEMUR_KEYS_REAL = ("p2c_mean", "p2c_median", "detection_rate", "n", "n_scored")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, choices=("head", "femur"))
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--real", metavar="DIR", help="real images: DIR/images + DIR/annotations/*.json")
    src.add_argument("--data", metavar="DIR", help="a 'deepmorph dataset' folder")
    parser.add_argument("--implants", action="store_true",
                        help="held-out set with implants and tools in view (ignored with --real/--data)")
    parser.add_argument("--n", type=int, default=None,
                        help="number of images (held-out default 200; --real/--data: the first N, default all)")
    parser.add_argument("--seed", type=int, default=0,
                        help=f"held-out set seed; generated with seed {HELDOUT_SEED_BASE:_} + SEED (default 0)")
    parser.add_argument("--views-per-phantom", type=int, default=None, metavar="K",
                        help="held-out set: images per phantom anatomy (default: the dataset generator's --group); "
                             "fewer views per phantom = more anatomies in the set (ignored with --real/--data)")
    parser.add_argument("--model", help="network .safetensors (default: the shipped model of the task)")
    parser.add_argument("--pdm", help="point distribution model .npz for --task femur (default: shipped)")
    parser.add_argument("--polarity", default="auto", choices=("auto", "bone-dark", "bone-bright"),
                        help="how bone is shown (default: detected per image)")
    parser.add_argument("--side", default="auto", choices=("auto", "annotated", "left", "right"),
                        help="femur side given to the fits: auto = unknown, both sides tried (default); annotated = "
                             "each image's recorded side, as a clinician would enter it; or the same side for all")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    add_tta_argument(parser)
    add_head_fit_arguments(parser)
    add_femur_fit_arguments(parser)
    parser.add_argument("--workers", type=int, default=1, help="processes generating the held-out set (default 1)")
    parser.add_argument("--report", metavar="DIR", help="write overlays, results.json/.csv and report.html here")
    parser.add_argument("--json", action="store_true", help="print one JSON line (machine-readable)")


# ---------------------------------------------------------------------------------------------- samples
def iter_real(root: Path, n: int | None = None):
    """Samples of a real-image folder: dicts with id, path, annotation, truth (head_circle, femur_outline, eval_max_y)
    and meta (maturity, modality, side, polarity); for an annotation that cannot be read: id, path (the annotation)
    and error."""
    ann_dir = root / "annotations"
    if not ann_dir.is_dir():
        raise FileNotFoundError(f"{root} has no annotations/ folder; --real expects DIR/images + "
                                "DIR/annotations/*.json.")
    files = sorted(ann_dir.glob("*.json"))
    if not files:
        raise ValueError(f"No annotation files in {ann_dir}.")
    for f in files[:n]:
        try:
            ann = _read_json(f)
            truth = check_truth({k: ann.get(k) for k in ("head_circle", "femur_outline", "eval_max_y")})
        except ValueError as exc:
            yield {"id": f.stem, "path": f, "error": f"{exc}; fix or remove this annotation"}
            continue
        path = root / ann["image"] if isinstance(ann.get("image"), str) else root / "images" / f"{f.stem}.png"
        yield {"id": f.stem, "path": path, "annotation": f, "truth": truth,
               "meta": {k: ann.get(k) for k in ("maturity", "modality", "side", "polarity")}}


def iter_dataset(root: Path, n: int | None = None):
    """Samples of a ``deepmorph dataset`` folder (truth: head_circle, contour; meta: polarity, side, implants); for a
    sample JSON that cannot be read: id, path (the JSON) and error."""
    samples = root / "samples"
    if not samples.is_dir():
        raise FileNotFoundError(f"{root} has no samples/ folder; --data expects a 'deepmorph dataset' output.")
    files = sorted(p for p in samples.glob("*.json") if p.stem.isdigit())
    if not files:
        raise ValueError(f"No samples in {samples}.")
    for f in files[:n]:
        try:
            meta = _read_json(f)
            check_truth({k: meta.get(k) for k in ("head_circle", "contour")})
        except ValueError as exc:
            yield {"id": f.stem, "path": f, "error": f"{exc}; re-run 'deepmorph dataset' with the same arguments "
                                                     "to render this sample again"}
            continue
        yield {"id": f.stem, "path": f.with_suffix(".png"),
               "truth": {"head_circle": meta.get("head_circle"), "contour": meta.get("contour"),
                         "detector": meta.get("detector"), "other_femurs": meta.get("other_femurs") or []},
               "meta": {"polarity": meta.get("polarity"), "side": meta.get("side"),
                        "implants": bool(meta.get("implants")), "modality": "simulated",
                        "phantom": (meta.get("source") or {}).get("phantom_seed")}}


def _read_json(path: Path) -> dict:
    """A JSON object from ``path`` (ValueError saying what is wrong with it)."""
    try:
        data = json.loads(path.read_bytes())
    except ValueError as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"holds a JSON {type(data).__name__}, not an object")
    return data


TRUTH_FORMS = {  # ground truth fields: the form they must have (None = absent)
    "head_circle": ("[cx, cy, r]", lambda a: a.shape == (3,)),
    "femur_outline": ("[[x, y], ...]", lambda a: a.ndim == 2 and a.shape[1] == 2),
    "contour": ("[[x, y], ...]", lambda a: a.ndim == 2 and a.shape[1] == 2),
    "eval_max_y": ("a number", lambda a: a.ndim == 0),
}


def check_truth(truth: dict) -> dict:
    """``truth`` as it is; ValueError naming the first field (of ``TRUTH_FORMS``) whose value has the wrong form."""
    for key, value in truth.items():
        if value is None or value == []:
            continue
        form, ok = TRUTH_FORMS[key]
        try:
            arr = np.asarray(value, dtype=float)
        except (TypeError, ValueError):
            arr = None
        if arr is None or not ok(arr) or not np.isfinite(arr).all():
            raise ValueError(f'"{key}" must be {form}, got {json.dumps(value)[:60]}')
    return truth


def _default_views_per_phantom() -> int:
    """The dataset generator's images per phantom (``DatasetSettings.group``)."""
    from DeepMorphSimulatorLib.dataset import DatasetSettings

    return DatasetSettings.group


def heldout_settings(seed: int, implants: bool, size: int = 448, views_per_phantom: int | None = None):
    """Dataset settings of the held-out set: the generator's defaults (as for training) except the image
    size (448 px, as the paper reports), the master seed ``HELDOUT_SEED_BASE + seed``, implants in every
    image (``implants``) or in none, and ``views_per_phantom`` images per phantom when given (the generator's
    ``group``; None = its default). Samples and phantoms derive from the master seed, so sets generated with
    master seeds < TRAINING_SEED_LIMIT (training) share no random stream with these."""
    from DeepMorphSimulatorLib.dataset import DatasetSettings

    if seed < 0 or HELDOUT_SEED_BASE + seed < TRAINING_SEED_LIMIT:
        raise ValueError(f"--seed must be >= 0, got {seed}.")
    if views_per_phantom is not None and int(views_per_phantom) < 1:
        raise ValueError(f"--views-per-phantom must be >= 1, got {views_per_phantom}.")
    group = {} if views_per_phantom is None else {"group": int(views_per_phantom)}
    return DatasetSettings(size=size, seed=HELDOUT_SEED_BASE + seed, implants=1.0 if implants else 0.0, **group)


def generate_heldout(out_dir: Path, n: int, seed: int, implants: bool, workers: int = 1,
                     views_per_phantom: int | None = None) -> Path:
    """Write a fresh held-out set of ``n`` samples (448 x 448) to ``out_dir`` with the dataset generator."""
    try:
        from DeepMorphSimulatorLib import dataset
    except ModuleNotFoundError as exc:
        raise ValueError("The dataset generator is not available in this version; evaluate a folder instead "
                         "(--data DIR from 'deepmorph dataset', or --real DIR).") from exc
    settings = heldout_settings(seed, implants, views_per_phantom=views_per_phantom)
    dataset.generate(settings, out_dir, n, workers=workers, progress=sys.stderr.isatty())
    return Path(out_dir)


# ---------------------------------------------------------------------------------------------- scoring
def scorable_femurs(sample: dict, side_option: str = "auto") -> list[tuple[str, dict]]:
    """(label, truth) of the femurs a fit of ``sample`` may be scored against: "annotated" (the sample's own
    truth) and, on simulated images that show both hips (``other_femurs`` of the dataset), "other" for each
    other femur in view; with a side given (``--side annotated|left|right``) only the femurs of that side."""
    truth, own = sample["truth"], sample["meta"].get("side")
    femurs = [("annotated", truth)] + [("other", {"head_circle": o.get("head_circle"), "contour": o.get("contour"),
                                                  "detector": truth.get("detector"), "side": o.get("side")})
                                       for o in truth.get("other_femurs") or []]
    if side_option == "annotated":
        return femurs[:1]
    if side_option in ("left", "right"):
        return [(k, t) for k, t in femurs if (own if k == "annotated" else t.get("side")) == side_option]
    return femurs


def score_sample(task: str, sample: dict, res, real: bool, shape: tuple, side_option: str = "auto",
                 landmark_indices: dict | None = None) -> dict | None:
    """Per-image record (None when the sample has no ground truth for the task). On simulated images that show
    both hips a fit is scored against the femur it found (the nearest of ``scorable_femurs``): ``scored_femur``
    says which, and ``rmse_annotated`` / ``p2c_annotated`` hold the error against the annotated femur alone."""
    if not real and sample["truth"].get("other_femurs"):
        return _score_nearest_femur(task, sample, res, shape, side_option, landmark_indices)
    from DeepMorphLib import scoring

    truth, h, w = sample["truth"], shape[0], shape[1]
    rec = {"id": sample["id"], **{k: v for k, v in sample["meta"].items()},
           "polarity_true": sample["meta"].get("polarity"), "polarity_used": res.polarity,
           "polarity_score": res.polarity_score, "side_used": res.side, "detected": bool(res.detected),
           "reason": res.reason,
           "ms": res.timings_ms.get("total_ms")}
    rec.pop("polarity", None)
    if task == "head":
        if truth.get("head_circle") is None:
            return None
        rec["head_in_view"] = scoring.head_in_view(truth["head_circle"], w, h, _field(truth.get("detector"), (h, w)))
        if res.detected:
            c = res.circle
            rec.update(scoring.head_errors((c["cx"], c["cy"], c["r"]), truth["head_circle"]))
            rec.update(cx=c["cx"], cy=c["cy"], r=c["r"])
        c = res.circle or {}
        rec.update(head_source=c.get("source"), snapped=c.get("snapped"), edge_support=c.get("edge_support"))
        return rec
    outline = truth.get("femur_outline") if real else truth.get("contour")
    if not outline:
        return None
    rec["p2c"] = None
    rec["reflected"] = res.reflected
    rec["quality"] = res.quality  # the fit's mean confidence at its points
    if res.point_confidence is not None:  # points the shape model extrapolated (overlays draw them dashed)
        from DeepMorphLib.overlay import extrapolated_points

        rec["extrapolated"] = int(extrapolated_points(res.point_confidence).sum())
    if res.contour is not None:  # a contour kept for review ("not confirmed") is scored apart, never in p2c
        if real:
            max_y = truth.get("eval_max_y")
            dist = scoring.femur_distances_real(res.contour, outline, h - 1 if max_y is None else max_y, w, h)
        else:
            dist = scoring.femur_distances_sim(res.contour, outline, w, h)
            if res.detected:  # the same over the points in the exposed (collimated) field only
                rec["p2c_in_field"] = scoring.femur_p2c_sim(
                    scoring.points_in_field(res.contour, _field(truth.get("detector"), (h, w))), outline, w, h)
        p2c = None if dist is None else scoring.rms(dist)
        rec["p2c" if res.detected else "p2c_unconfirmed"] = p2c
        parts = None if not landmark_indices or dist is None else scoring.contour_parts(len(dist), landmark_indices)
        if res.detected and p2c is not None and parts is not None:  # where along the outline the error lies
            rec["p2c_parts"] = scoring.rms_by_part(dist, parts)
    return rec


def _score_nearest_femur(task: str, sample: dict, res, shape: tuple, side_option: str,
                         landmark_indices: dict | None = None) -> dict | None:
    """``score_sample`` of a simulated image with several femurs in view: the record of the femur with the
    smallest error (head rmse, femur p2c; either one scored or unscored alike), plus the annotated femur's error.
    Which images are scored does not change: those where the annotated femur has truth for the task (with the side
    auto or annotated; with ``--side left|right`` those where that side's femur has)."""
    key = "rmse" if task == "head" else "p2c" if res.detected else "p2c_unconfirmed"
    recs = []
    for label, truth in scorable_femurs(sample, side_option):
        rec = score_sample(task, {**sample, "truth": {**truth, "other_femurs": []}}, res, False, shape,
                           landmark_indices=landmark_indices)
        if rec is not None:
            recs.append((label, rec))
    annotated = dict(recs).get("annotated")
    if annotated is None and side_option in ("auto", "annotated"):
        return None  # the images scored stay those with the annotated femur's truth; the others only compete
    if not recs:
        return None
    scored = [(label, r) for label, r in recs if r.get(key) is not None]
    label, rec = min(scored, key=lambda lr: lr[1][key]) if scored else recs[0]
    if task == "head":
        rec["head_in_view"] = max(r["head_in_view"] for _, r in recs)  # a head of either hip can be seen
    rec["scored_femur"] = label
    rec["rmse_annotated" if task == "head" else "p2c_annotated"] = None if annotated is None else annotated.get(key)
    return rec


def _field(detector: dict | None, shape: tuple):
    """Exposed-field weight (H, W) of a simulated sample from its ``detector`` record (collimation only); None
    when it has none (real images, or a dataset without collimation)."""
    if not detector or detector.get("collimation", "none") == "none":
        return None
    from DeepMorphSimulatorLib.detector import DetectorParams, field_mask

    params = DetectorParams(collimation=detector["collimation"],
                            collimation_center=tuple(detector.get("collimation_center", (0.5, 0.5))),
                            collimation_radius=float(detector.get("collimation_radius", 0.5)))
    return field_mask(shape, params)


def summarize(task: str, records: list[dict], real: bool) -> dict:
    from DeepMorphLib import scoring

    fn = scoring.summarize_head if task == "head" else scoring.summarize_femur
    by_part = scoring.summarize_parts(records) if task == "femur" else None  # where along the outline the error is
    if real:
        keys = HEAD_KEYS_REAL if task == "head" else FEMUR_KEYS_REAL
        pick = lambda recs: {k: v for k, v in fn(recs).items() if k in keys}  # noqa: E731
        out = pick(records)
        out["by_maturity"] = scoring.summarize_by(records, "maturity", pick)
        out["by_modality"] = scoring.summarize_by(records, "modality", pick)
        if by_part is not None:
            out["by_part"] = by_part
            for group, parts in scoring.summarize_by(records, "maturity", scoring.summarize_parts).items():
                if parts is not None:
                    out["by_maturity"][group]["by_part"] = parts
        return out
    out = fn(records, p95=True)
    if task == "head":
        out = {k: out[k] for k in ("rmse_mean", "rmse_median", "rmse_p95", "center_err_mean", "detection_rate", "n",
                                   "detection_rate_in_view", "n_in_view") if k in out}
    phantoms = {r["phantom"] for r in records if r.get("phantom") is not None}
    if phantoms:  # how many anatomies the figures rest on (the generator's default: 48 views per phantom)
        out["n_phantoms"] = len(phantoms)
    key = "rmse" if task == "head" else "p2c"
    others = [r for r in records if r.get("scored_femur") == "other" and r.get(key) is not None]
    if others or any("scored_femur" in r for r in records):  # images showing both hips: how many fits found the
        out["n_other_femur"] = len(others)  # other one, and the figures against the annotated femur alone
        strict = [{**r, key: r[f"{key}_annotated"]} if "scored_femur" in r else r for r in records]
        out["annotated_only"] = {k: v for k, v in fn(strict, p95=True).items() if k.startswith(key)}
    if by_part is not None:
        out["by_part"] = by_part
    if task == "femur" and any(r.get("p2c_in_field") is not None for r in records):
        in_field = [{**r, "p2c": r.get("p2c_in_field")} for r in records]
        out["in_field"] = {k: v for k, v in fn(in_field, p95=True).items() if k.startswith("p2c")}
    return out


def polarity_accuracy(records: list[dict]) -> float | None:
    known = [r for r in records if r.get("polarity_true") in ("bone-dark", "bone-bright")]
    return sum(r["polarity_true"] == r["polarity_used"] for r in known) / len(known) if known else None


# ---------------------------------------------------------------------------------------------- command
def run(args) -> int:
    from DeepMorphLib import pipeline
    from DeepMorphLib.inference import resolve_device
    from DeepMorphSimulatorLib.files import check_output_path

    if args.n is not None and args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n} (leave it out for all images, or 200 held-out ones).")
    resolve_device(args.device)  # a clear error now rather than every image skipped
    if args.report:
        check_output_path(args.report, "--report")
    predictor = pipeline.load_predictor(args.task, args.model, args.device)
    refiner = pipeline.load_refiner(args.refine_model, args.device) if args.task == "head" else None
    shape_model = pipeline.load_shape_model(args.pdm) if args.task == "femur" else None
    anchor = pipeline.load_head_anchor(args.head_anchor, args.device) if args.task == "femur" else None
    region = pipeline.load_region_net(args.region_model, args.device) if args.task == "femur" else None
    with tempfile.TemporaryDirectory(prefix="deepmorph-heldout-") as tmp:
        if args.real:
            source, real, samples = "real", True, iter_real(Path(args.real), args.n)
        elif args.data:
            source, real, samples = "data", False, iter_dataset(Path(args.data), args.n)
        else:
            n = 200 if args.n is None else args.n
            root = generate_heldout(Path(tmp) / "heldout", n, args.seed, args.implants, args.workers,
                                    args.views_per_phantom)
            source, real, samples = "heldout", False, iter_dataset(Path(root), n)
        records, bad, figures = _evaluate(args, samples, predictor, refiner, shape_model, real, anchor, region)
    result = {"task": args.task, "source": source, **summarize(args.task, records, real)}
    if source == "heldout":
        result.update(seed=HELDOUT_SEED_BASE + args.seed, implants=bool(args.implants),
                      views_per_phantom=args.views_per_phantom or _default_views_per_phantom())
    result["polarity"] = args.polarity
    result["side"] = args.side
    if args.task == "head":
        result["refiner"] = refiner.describe().get("path") if hasattr(refiner, "describe") else None
    if args.polarity == "auto":
        result["polarity_accuracy"] = polarity_accuracy(records)
    result["skipped"] = len(bad)
    if args.report:
        _write_report(Path(args.report), args, result, records, bad, figures)
    if not records:
        why = (f"{len(bad)} skipped, e.g. {bad[0][0]}: {bad[0][1]}" if bad else
               f"none has ground truth for the {args.task} task")
        print(f"deepmorph evaluate: error: no image could be scored ({why}).", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, sort_keys=False))
    else:
        _print_human(result, records)
    return 0


def _evaluate(args, samples, predictor, refiner, shape_model, real: bool, anchor=None, region=None):
    from tqdm import tqdm

    from DeepMorphLib import pipeline
    from DeepMorphSimulatorLib.files import read_image_2d

    records, bad, figures = [], [], []
    fit_options = femur_fit_options(args)
    landmarks = None if shape_model is None else getattr(shape_model, "landmark_indices", None)
    report = Path(args.report) if args.report else None
    if report:
        report.mkdir(parents=True, exist_ok=True)

    def skip(path, problem):
        bad.append((str(path), problem))
        print(f"deepmorph evaluate: skipped {path}: {problem}", file=sys.stderr)

    truth_key = "head_circle" if args.task == "head" else "femur_outline"
    for sample in tqdm(list(samples), desc=f"evaluate {args.task}", unit="img", file=sys.stderr, disable=None):
        if "error" in sample:  # an annotation or sample JSON that cannot be read
            skip(sample["path"], sample["error"])
            continue
        if real and not sample["truth"].get(truth_key):  # an image without truth for the task is not scored
            skip(sample["annotation"], f'no "{truth_key}" to score the {args.task} task against')
            continue
        try:
            image = read_image_2d(sample["path"])
            res = pipeline.fit_image(image, args.task, pdm=shape_model, polarity=args.polarity,
                                     predictor=predictor, source=str(sample["path"]),
                                     circle_method=args.circle_method,
                                     refine=refiner or False, edge_snap=not args.no_edge_snap,
                                     femur_check=not args.no_femur_check, femur_min_quality=args.femur_min_quality,
                                     keep_unconfirmed_head=args.keep_unconfirmed_head,
                                     head_anchor=anchor or False, region=region or False,
                                     fit_options=fit_options, side=side_of(sample, args.side))
        except (ValueError, FileNotFoundError, OSError) as exc:
            skip(sample["path"], str(exc))
            continue
        rec = score_sample(args.task, sample, res, real, image.shape, args.side, landmarks)
        if rec is None:
            continue
        records.append(rec)
        if report:
            figures.append(_overlay(report, sample, res, image, rec, real))
    return records, bad, figures


def side_of(sample: dict, option: str) -> str | None:
    """The side ``fit_image`` gets for ``sample``: its recorded side for "annotated" (None when it has none or an
    unknown one), None for "auto", else ``option`` itself."""
    if option == "annotated":
        side = sample["meta"].get("side")
        return side if side in ("left", "right") else None
    return None if option == "auto" else option


def _caption(rec: dict) -> str:
    err = (f"rmse {rec['rmse']:.1f} px" if rec.get("rmse") is not None else
           f"p2c {rec['p2c']:.2f} px" if rec.get("p2c") is not None else
           "not detected" if not rec["detected"] else "not scored")
    other = " (the other hip's femur)" if rec.get("scored_femur") == "other" else ""
    return f"{rec['id']}: {err}{other}; polarity {rec['polarity_used']}"


def _overlay(report: Path, sample: dict, res, image, rec: dict, real: bool):
    from PIL import Image

    from DeepMorphLib.overlay import draw_overlay
    from DeepMorphSimulatorLib.files import write_png

    truth = dict(sample["truth"])
    if not real:
        truth["femur_outline"] = truth.pop("contour", None)
    rgb = draw_overlay(image, res, truth=truth, caption=_caption(rec))
    write_png(report / f"{sample['id']}_overlay.png", rgb)
    thumb = Image.fromarray(rgb)
    thumb.thumbnail((300, 300))
    return _caption(rec), np.asarray(thumb)


def _write_report(report: Path, args, result: dict, records, bad, figures) -> None:
    from DeepMorphLib.report import software_versions, write_csv, write_html_report
    from DeepMorphSimulatorLib.files import atomic_write_json

    report.mkdir(parents=True, exist_ok=True)
    versions = software_versions()
    atomic_write_json(report / "results.json", {"summary": result, "records": records, "versions": versions,
                                                "bad_files": [{"file": p, "error": e} for p, e in bad]})
    write_csv(report / "results.csv", records)
    groups = {}
    for key in ("by_maturity", "by_modality"):
        for g, v in (result.get(key) or {}).items():
            groups[f"{key[3:]}={g}"] = v
    summary = {k: v for k, v in result.items() if not isinstance(v, dict)}
    ms = [r["ms"] for r in records if r.get("ms") is not None]
    timings = {"median_ms_per_image": float(np.median(ms)) if ms else None, "images": len(records)}
    write_html_report(report / "report.html", f"DeepMorph evaluate ({args.task}, {result['source']})",
                      summary=summary, groups=groups or None, rows=records, figures=figures, bad_files=bad,
                      timings=timings, versions=versions,
                      notes="Scoring: head RMSE = ||[cx,cy,r] - truth|| px; femur = RMS point-to-curve px "
                            "(real images: points inside the crop with y <= eval_max_y).")


def _print_human(result: dict, records: list[dict]) -> None:
    for r in records:
        print(_caption(r))
    for k, v in result.items():
        if isinstance(v, dict):
            for g, vals in v.items():
                print(f"{k}[{g}]: " + ", ".join(f"{a}={_num(b)}" for a, b in vals.items()))
        else:
            print(f"{k}: {_num(v)}")


def _num(v):
    return f"{v:.3f}" if isinstance(v, float) else v
