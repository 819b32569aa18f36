"""``deepmorph fit``: find the femoral head (circle) or the proximal femur (PDM contour + landmarks) in X-rays.

Per image ``OUT/<name>.json`` (the ``FitResult``) and ``OUT/<name>_overlay.png``; "not detected" is a result.
A file that cannot be read is reported and skipped, the others go on (exit code 1 when any was skipped).
``--report`` adds ``results.json``, ``results.csv`` and a self-contained ``report.html``. A folder given as IMAGE
stands for the image files in it (``IMAGE_SUFFIXES``, not its subfolders).

Batches resume: an image whose result ``OUT`` already holds from the same file (path, size, modification time) and
the same settings (``settings_digest``: the options, DeepMorph's version and the bytes of every model file) is not
fitted again, so a stopped run (Ctrl-C, a crash, a full disk) continues where it stopped when run again; ``--refit``
fits every image again.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

from DeepMorphLib.commands import (add_femur_fit_arguments, add_head_fit_arguments, add_tta_argument,
                                   femur_fit_options)

HELP = "fit the head circle or the femur shape model to X-ray images (PNG/JPEG/DICOM/NRRD)"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".dicom", ".nrrd", ".nhdr", ".mha", ".mhd",
                  ".nii", ".nii.gz", ".bmp")  # what a folder given as IMAGE contributes
RESUME_IGNORES = ("images", "out", "report", "refit", "device", "command")  # options that do not change a fit
CSV_COLUMNS = ["file", "detected", "reason", "cx", "cy", "r", "n_points", "quality", "polarity", "polarity_mode",
               "polarity_score", "total_ms"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="X-ray image files (PNG, JPEG, DICOM, NRRD...)")
    parser.add_argument("--task", required=True, choices=("head", "femur"), help="head: circle; femur: PDM contour")
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--model", help="network .safetensors (default: the shipped model of the task)")
    parser.add_argument("--pdm", help="point distribution model .npz for --task femur (default: shipped pdm.npz)")
    parser.add_argument("--polarity", default="auto", choices=("auto", "bone-dark", "bone-bright"),
                        help="how bone is shown in the images (default: detected per image)")
    parser.add_argument("--side", default="auto", choices=("auto", "left", "right"),
                        help="the femur's side, when known: fits then only try that side's shape, never the "
                             "mirrored one (images in the radiological convention, not mirrored); default auto = "
                             "either side")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    add_tta_argument(parser)
    add_head_fit_arguments(parser)
    add_femur_fit_arguments(parser)
    parser.add_argument("--threshold", type=float, default=0.5, help="head: confidence threshold (default 0.5)")
    parser.add_argument("--min-pixels", type=int, default=100,
                        help="head: fewest confident pixels for a detection (default 100, as in the paper)")
    parser.add_argument("--report", action="store_true", help="also write results.json/.csv and report.html")
    parser.add_argument("--refit", action="store_true",
                        help="fit every image again (by default an image whose result OUT already holds, from the same "
                             "file and settings, is reused: a stopped batch continues where it stopped)")


def expand_images(names) -> tuple[list[Path], list[tuple[str, str]]]:
    """(files, problems): the IMAGE arguments as files, a folder standing for its image files (``IMAGE_SUFFIXES``,
    sorted by name); a folder without any is a problem (name, message). Anything else is kept as given (a missing
    or unreadable file is reported when it is read)."""
    paths, problems = [], []
    for name in names:
        path = Path(name)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES))
            if not found:
                problems.append((str(path), f"a folder without image files ({', '.join(IMAGE_SUFFIXES)})"))
            paths.extend(found)
        else:
            paths.append(path)
    return paths, problems


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def settings_digest(args) -> str:
    """sha256 (hex) of what decides a fit: the options (``RESUME_IGNORES`` aside), DeepMorph's version and the
    bytes of every model file that can take part (the shipped ``Resources/Models`` and files named by options)."""
    from DeepMorphLib.pipeline import MODELS_DIR
    from DeepMorphLib.report import software_versions

    options = {k: v for k, v in sorted(vars(args).items()) if k not in RESUME_IGNORES and not k.startswith("_")}
    files = {}
    shipped = sorted(MODELS_DIR.iterdir()) if MODELS_DIR.is_dir() else []
    for path in shipped:
        if path.is_file():
            files[f"shipped/{path.name}"] = _sha256_file(path)
    for key in ("model", "pdm", "refine_model", "head_anchor", "region_model"):
        value = options.get(key)
        if not isinstance(value, str) or value.lower() == "none":
            continue
        for path in (Path(value), Path(value + ".safetensors"), Path(value).with_suffix(".json"),
                     Path(value + ".json")):
            if path.is_file():
                files[f"{key}/{path.name}"] = _sha256_file(path)
    settings = {"options": options, "deepmorph": software_versions().get("deepmorph"), "files": files}
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def input_identity(path: Path) -> dict:
    """The input file as resuming recognises it: absolute path, size (bytes), modification time (ns)."""
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def reusable_result(json_path: Path, overlay_path: Path, path: Path, digest: str) -> dict | None:
    """The result in ``json_path`` when it was fitted from this very file with these settings (and its overlay is
    there), else None."""
    if not (json_path.is_file() and overlay_path.is_file()):
        return None
    try:
        d = json.loads(json_path.read_text())
        made = d.get("provenance") or {}
        if made.get("settings_sha256") == digest and made.get("input") == input_identity(path):
            return d
    except (ValueError, OSError, AttributeError):
        pass  # unreadable or foreign: fitted again (and overwritten)
    return None


def _unique_stem(path: Path, used: set) -> str:
    """The output name of ``path``: its stem, with _2, _3... when an earlier image of this run took it (not reserved
    here: the caller adds it to ``used`` once the image is done)."""
    stem = path.stem if path.suffix.lower() != ".gz" else Path(path.stem).stem
    name, k = stem, 2
    while name in used:
        name, k = f"{stem}_{k}", k + 1
    return name


def csv_row(name: str, d: dict) -> dict:
    circle = d.get("circle") or {}
    return {"file": name, "detected": d["detected"], "reason": d["reason"], "cx": circle.get("cx"),
            "cy": circle.get("cy"), "r": circle.get("r"), "n_points": len(d.get("contour") or []),
            "quality": d.get("quality"), "polarity": d["polarity"], "polarity_mode": d["polarity_mode"],
            "polarity_score": d.get("polarity_score"), "total_ms": d["timings_ms"].get("total_ms")}


def run(args) -> int:
    from DeepMorphLib import pipeline
    from DeepMorphLib.overlay import draw_overlay
    from DeepMorphSimulatorLib.files import atomic_write_json, read_image_2d, write_png

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    predictor = pipeline.load_predictor(args.task, args.model, args.device)  # once; a missing model stops here
    refiner = pipeline.load_refiner(args.refine_model, args.device) if args.task == "head" else None
    shape_model = pipeline.load_shape_model(args.pdm) if args.task == "femur" else None
    anchor = pipeline.load_head_anchor(args.head_anchor, args.device) if args.task == "femur" else None
    region = pipeline.load_region_net(args.region_model, args.device) if args.task == "femur" else None
    fit_options = femur_fit_options(args)
    images, bad = expand_images(args.images)
    for name, problem in bad:
        print(f"deepmorph fit: skipped {name}: {problem}", file=sys.stderr)
    digest = settings_digest(args)
    used, results, figures, reused = set(), [], [], 0
    t0 = time.perf_counter()
    try:
        for i, path in enumerate(images, 1):
            stem = _unique_stem(path, used)
            previous = None if args.refit or not path.is_file() else \
                reusable_result(out / f"{stem}.json", out / f"{stem}_overlay.png", path, digest)
            if previous is not None:
                used.add(stem)
                results.append((stem, previous))
                reused += 1
                if args.report:
                    figures.append((f"{path.name}: {_summary(previous)}",
                                    _thumbnail(read_rgb(out / f"{stem}_overlay.png"))))
                print(f"[{i}/{len(images)}] {path}: {_summary(previous)} (done earlier, reused)", flush=True)
                continue
            try:
                image = read_image_2d(path)
                identity = input_identity(path)
                res = pipeline.fit_image(image, args.task, pdm=shape_model, polarity=args.polarity,
                                         predictor=predictor, threshold=args.threshold, min_pixels=args.min_pixels,
                                         source=str(path), circle_method=args.circle_method,
                                         refine=refiner or False, edge_snap=not args.no_edge_snap,
                                         femur_check=not args.no_femur_check,
                                         femur_min_quality=args.femur_min_quality,
                                         keep_unconfirmed_head=args.keep_unconfirmed_head,
                                         head_anchor=anchor or False, region=region or False,
                                         fit_options=fit_options, side=args.side)
            except (ValueError, FileNotFoundError, OSError) as exc:
                bad.append((str(path), str(exc)))
                print(f"deepmorph fit: skipped {path}: {exc}", file=sys.stderr)
                continue
            used.add(stem)
            d = res.to_dict()
            d["provenance"] = {"settings_sha256": digest, "input": identity}
            overlay = draw_overlay(image, res, caption=f"{path.name}: {_summary(d)}")
            write_png(out / f"{stem}_overlay.png", overlay)
            atomic_write_json(out / f"{stem}.json", d)  # last: a result without its overlay is never reused
            results.append((stem, d))
            if args.report:
                figures.append((f"{path.name}: {_summary(d)}", _thumbnail(overlay)))
            print(f"[{i}/{len(images)}] {path}: {_summary(d)} ({d['timings_ms']['total_ms']:.0f} ms)", flush=True)
    except KeyboardInterrupt:
        if args.report and results:
            _write_report(out, args, results, bad, figures, time.perf_counter() - t0, images, reused)
        print(f"deepmorph fit: stopped after {len(results)} of {len(images)} images; run the same command again to "
              "continue (finished images are reused)", file=sys.stderr)
        raise
    elapsed = time.perf_counter() - t0
    if args.report:
        _write_report(out, args, results, bad, figures, elapsed, images, reused)
    done_earlier = f", {reused} reused from an earlier run" if reused else ""
    print(f"deepmorph fit: {len(results)} fitted ({sum(d['detected'] for _, d in results)} detected{done_earlier}), "
          f"{len(bad)} skipped; results in {out}", file=sys.stderr)
    return 1 if bad else 0


def _summary(d: dict) -> str:
    pol = f"{d['polarity']} ({d['polarity_mode']})"
    if not d["detected"]:
        return f"not detected ({d['reason']}); {pol}"
    if d.get("circle"):
        c = d["circle"]
        return f"circle cx={c['cx']:.1f} cy={c['cy']:.1f} r={c['r']:.1f} px; {pol}"
    source = " (region network's fit)" if d.get("fit_map") == "region" else ""
    from DeepMorphLib.overlay import EXTRAPOLATED_BELOW, extrapolated_points

    low = int(extrapolated_points(d.get("point_confidence") or []).sum())
    extrapolated = f", {low} extrapolated (network confidence < {EXTRAPOLATED_BELOW:g})" if low else ""
    return (f"contour {len(d.get('contour') or [])} points{source}{extrapolated}, quality {d.get('quality') or 0:.2f}; "
            f"{pol}")


def read_rgb(path: Path):
    """An overlay PNG as an RGB array (for the report of reused results)."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def _thumbnail(rgb, side: int = 300):
    """Overlay shrunk to at most ``side`` px (keeps report.html small)."""
    import numpy as np
    from PIL import Image

    img = Image.fromarray(rgb)
    img.thumbnail((side, side))
    return np.asarray(img)


def _write_report(out: Path, args, results, bad, figures, elapsed: float, images, reused: int) -> None:
    import numpy as np

    from DeepMorphLib.report import software_versions, write_csv, write_html_report
    from DeepMorphSimulatorLib.files import atomic_write_json

    versions = software_versions()
    rows = [csv_row(stem, d) for stem, d in results]
    totals = [d["timings_ms"]["total_ms"] for _, d in results]
    timings = {"images": len(results), "wall_s": round(elapsed, 2)}
    for key in ("polarity_ms", "network_ms", "fit_ms", "total_ms"):
        vals = [d["timings_ms"].get(key) for _, d in results if d["timings_ms"].get(key) is not None]
        if vals:
            timings[f"median_{key}"] = round(float(np.median(vals)), 1)
    atomic_write_json(out / "results.json", {"task": args.task, "polarity": args.polarity, "side": args.side,
                                             "model": args.model,
                                             "results": {stem: d for stem, d in results},
                                             "bad_files": [{"file": p, "error": e} for p, e in bad],
                                             "timings": timings, "versions": versions})
    write_csv(out / "results.csv", rows, CSV_COLUMNS)
    summary = {"task": args.task, "images given": len(images), "fitted": len(results),
               "reused from an earlier run": reused,
               "detected": sum(d["detected"] for _, d in results), "skipped (bad files)": len(bad),
               "polarity option": args.polarity, "side option": args.side, "model": args.model or "shipped",
               "median ms per image": round(float(np.median(totals)), 1) if totals else None}
    write_html_report(out / "report.html", f"DeepMorph fit ({args.task})", summary=summary, rows=rows,
                      columns=CSV_COLUMNS, figures=figures, bad_files=bad, timings=timings, versions=versions)
