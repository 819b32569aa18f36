"""``deepmorph fit``: find the femoral head (circle) or the proximal femur (PDM contour + landmarks) in X-rays.

Per image ``OUT/<name>.json`` (the ``FitResult``) and ``OUT/<name>_overlay.png``; "not detected" is a result.
A file that cannot be read is reported and skipped, the others go on (exit code 1 when any was skipped); an earlier
result of a file that now fails is removed (it no longer describes the file). ``--report`` adds ``results.json``,
``results.csv`` and a self-contained ``report.html``. A folder given as IMAGE stands for the image files in it
(``IMAGE_SUFFIXES``, and files without those that start as DICOM files do; not its subfolders, nor the overlays
that ``fit`` wrote there).

A multi-frame DICOM file (a fluoroscopy run) is fitted frame by frame (``--frames`` picks some), each frame a result
of its own, ``<name>_f0001`` ... (1-based). Where the file states the pixel spacing (DICOM, NRRD, NIfTI, MetaImage:
``xray_file``), each result also holds its geometry in mm (``in_mm``), the CSV the radius in mm.

``<name>`` is the image's file name without its suffix, with _2, _3... when another image took it;
``OUT/fit_outputs.json`` (``RECORD``) keeps which name belongs to which image (absolute path) and the task of OUT's
results, so that a name stays with its image in later runs, a file ``fit`` did not write is never overwritten, and
OUT holds one task only.

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
                                   femur_fit_options, open_fraction, positive_int)

HELP = "fit the head circle or the femur shape model to X-ray images (PNG/JPEG/DICOM/NRRD)"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".dicom", ".nrrd", ".nhdr", ".mha", ".mhd",
                  ".nii", ".nii.gz", ".bmp")  # what a folder given as IMAGE contributes
RESUME_IGNORES = ("images", "out", "report", "refit", "device", "command", "frames", "workers")  # not changing a fit
CSV_COLUMNS = ["file", "detected", "reason", "cx", "cy", "r", "r_mm", "n_points", "quality", "polarity",
               "polarity_mode", "polarity_score", "total_ms", "source", "frame"]  # file: the output name; source: the
# image (absolute path); frame: 1-based, of a multi-frame file
RECORD = "fit_outputs.json"  # in OUT: {"task": ..., "outputs": {output name: the image's absolute path}}
OVERLAY = "_overlay.png"


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
    parser.add_argument("--threshold", type=open_fraction, default=0.5,
                        help="head: confidence threshold, between 0 and 1 (default 0.5)")
    parser.add_argument("--min-pixels", type=positive_int, default=100,
                        help="head: fewest confident pixels for a detection (default 100, as in the paper)")
    parser.add_argument("--frames", type=frame_selection, default="all",
                        help="frames of multi-frame DICOM files (fluoroscopy runs) to fit, 1-based: 'all' (default) "
                             "or e.g. '1,5,10-20'; single-frame images are always fitted")
    parser.add_argument("--workers", type=positive_int, default=1,
                        help="images fitted at once, by processes that share the threads (default 1). Worth it for "
                             "batches (48 images on 2 cores: 38 s -> 26 s), not for a few images (each worker loads "
                             "the models first). A fit can come out differently with another thread count: float "
                             "rounding can flip a close choice between two fits (48 simulated images: 12 contours "
                             "moved by > 0.1 px, one by 17 px); the same --workers on the same machine gives the "
                             "same results")
    parser.add_argument("--report", action="store_true", help="also write results.json/.csv and report.html")
    parser.add_argument("--refit", action="store_true",
                        help="fit every image again (by default an image whose result OUT already holds, from the same "
                             "file and settings, is reused: a stopped batch continues where it stopped)")


def frame_selection(text: str) -> str:
    """argparse type of ``--frames``: 'all' or 1-based frame numbers and ranges ('1,5,10-20')."""
    if text.strip().lower() != "all":
        try:
            chosen_frames(text, 1)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: give 'all' or 1-based frame numbers and ranges, e.g. "
                                             "'1,5,10-20'") from None
    return text


def chosen_frames(text: str, n_frames: int) -> list[int]:
    """The 1-based frames of ``n_frames`` that ``--frames`` ``text`` picks, in order, each once."""
    if text.strip().lower() == "all":
        return list(range(1, n_frames + 1))
    picked = []
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        a, b = int(first), int(last or first)
        if a < 1 or b < a:
            raise ValueError(f"bad frame range {part!r}")
        picked += [k for k in range(a, min(b, n_frames) + 1) if k not in picked]
    return picked


def image_items(paths, frames: str) -> tuple[list[tuple[Path, int | None]], list[tuple[str, str]]]:
    """(items, problems): each image as (path, None), each chosen frame of a multi-frame file as (path, frame)."""
    from DeepMorphLib.xray_file import frame_count

    items, problems = [], []
    for path in paths:
        try:
            n = frame_count(path)
        except (ValueError, OSError):
            n = 1  # reported when it is read
        if n == 1:
            items.append((path, None))
            continue
        chosen = chosen_frames(frames, n)
        if not chosen:
            problems.append((str(path), f"it has {n} frames and --frames {frames} picks none of them"))
        items += [(path, k) for k in chosen]
    return items, problems


def is_image_file(path: Path) -> bool:
    """An image file a folder contributes: a name ending in one of ``IMAGE_SUFFIXES``, or a DICOM file by its
    content ("DICM" at byte 128: PACS exports name files IM0001 or by UID), the DICOMDIR index aside."""
    if path.name.lower().endswith(IMAGE_SUFFIXES):
        return True
    if path.name.upper() == "DICOMDIR":
        return False
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def expand_images(names) -> tuple[list[Path], list[tuple[str, str]]]:
    """(files, problems): the IMAGE arguments as files, a folder standing for its image files (``is_image_file``,
    sorted by name); a folder without any is a problem (name, message). Anything else is kept as given (a missing
    or unreadable file is reported when it is read)."""
    paths, problems = [], []
    for name in names:
        path = Path(name)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and is_image_file(p))
            if not found:
                problems.append((str(path), f"a folder without image files ({', '.join(IMAGE_SUFFIXES)}, or DICOM "
                                            "files without a suffix)"))
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


def input_identity(path: Path, frame: int | None = None) -> dict:
    """The input as resuming recognises it: absolute path, size (bytes), modification time (ns), and the frame."""
    stat = path.stat()
    identity = {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return identity if frame is None else {**identity, "frame": frame}


def source_of(path: Path, frame: int | None = None) -> str:
    """What ``RECORD`` names as an output's source: the absolute path, with '#frame=<k>' for a frame."""
    return str(path.resolve()) + ("" if frame is None else f"#frame={frame}")


def reusable_result(json_path: Path, overlay_path: Path, path: Path, digest: str,
                    frame: int | None = None) -> dict | None:
    """The result in ``json_path`` when it was fitted from this very file (and frame) with these settings (and its
    overlay is there), else None."""
    if not (json_path.is_file() and overlay_path.is_file()):
        return None
    try:
        d = json.loads(json_path.read_text())
        made = d.get("provenance") or {}
        if made.get("settings_sha256") == digest and made.get("input") == input_identity(path, frame):
            return d
    except (ValueError, OSError, AttributeError):
        pass  # unreadable or foreign: fitted again (and overwritten)
    return None


def read_record(out: Path, task: str) -> dict:
    """``out``'s ``RECORD`` ({"task", "outputs": {name: source path}}); for a folder written before the record was
    kept, made from the results in it (their task, and the image that their ``provenance`` names). ValueError when
    ``out`` holds results of the other task."""
    try:
        record = json.loads((out / RECORD).read_text())
        if not isinstance(record, dict) or not isinstance(record.get("outputs"), dict):
            raise ValueError("not a record of fit's outputs")
        tasks = {record.get("task")}
    except FileNotFoundError:
        record, tasks = {"outputs": {}}, set()
        for path in sorted(out.glob("*.json")) if out.is_dir() else []:
            try:
                d = json.loads(path.read_text())
            except (ValueError, OSError):
                continue
            if not (isinstance(d, dict) and isinstance(d.get("task"), str) and ("detected" in d or "results" in d)):
                continue  # not a result or report of fit: ``assign_names`` never overwrites it
            tasks.add(d["task"])
            made = (d.get("provenance") or {}).get("input") or {}
            source = made.get("path") or d.get("source")
            if path.name != "results.json" and isinstance(source, str):
                record["outputs"][path.stem] = source_of(Path(source), made.get("frame"))
    except (ValueError, OSError) as exc:
        raise ValueError(f"cannot read {out / RECORD} ({exc}); move it away or use another --out") from None
    other = sorted(tasks - {task, None})
    if other:
        raise ValueError(f"{out} holds {' and '.join(other)} results; use another --out for the {task} task")
    return {"task": task, "outputs": record["outputs"]}


def output_stem(path: Path) -> str:
    """An image's output name before clashes: its name without the suffix (x.nii.gz -> x); a DICOM file named by its
    UID (1.2.840.113619.2.55.3.4) keeps its whole name."""
    if path.suffix[1:].isdigit():
        return path.name
    return path.stem if path.suffix.lower() != ".gz" else Path(path.stem).stem


def assign_names(items, outputs: dict, out: Path) -> list[str]:
    """The output name of each (path, frame) item: the one ``outputs`` (``RECORD``'s: name -> ``source_of``) holds
    for it, else its ``output_stem`` (+ _f0001... for a frame), with _2, _3... while the name is another image's or a
    file in ``out`` that ``fit`` did not record (never overwritten). New names are added to ``outputs``."""
    owner = {source: name for name, source in outputs.items()}
    names = []
    for path, frame in items:
        source = source_of(path, frame)
        if source not in owner:
            stem = output_stem(path) + ("" if frame is None else f"_f{frame:04d}")
            name, k = stem, 2
            while name in outputs or (out / f"{name}.json").exists() or (out / f"{name}{OVERLAY}").exists():
                name, k = f"{stem}_{k}", k + 1
            outputs[name], owner[source] = source, name
        names.append(owner[source])
    return names


def is_own_overlay(path: Path, out: Path, outputs: dict) -> bool:
    """Whether ``path`` is an overlay that ``fit`` wrote into ``out`` (not an X-ray to fit)."""
    stem = path.name[:-len(OVERLAY)]
    return (path.name.endswith(OVERLAY) and path.parent.resolve() == out.resolve()
            and (stem in outputs or (out / f"{stem}.json").is_file()))


def _once(paths) -> list[Path]:
    """``paths`` without repeats of a file (named twice, or named and in a folder named)."""
    seen, kept = set(), []
    for path in paths:
        if path.resolve() not in seen:
            seen.add(path.resolve())
            kept.append(path)
    return kept


def remove_result(out: Path, stem: str) -> bool:
    """Remove ``stem``'s result files (the JSON first: an overlay alone is never taken for a result); whether there
    were any."""
    found = False
    for path in (out / f"{stem}.json", out / f"{stem}{OVERLAY}"):
        if path.is_file():
            path.unlink()
            found = True
    return found


def csv_row(name: str, d: dict) -> dict:
    circle = d.get("circle") or {}
    made = (d.get("provenance") or {}).get("input") or {}
    source = made.get("path") or d.get("source")
    r_mm = ((d.get("in_mm") or {}).get("circle") or {}).get("r")
    return {"file": name, "detected": d["detected"], "reason": d["reason"], "cx": circle.get("cx"),
            "cy": circle.get("cy"), "r": circle.get("r"), "r_mm": r_mm, "frame": made.get("frame"),
            "n_points": len(d.get("contour") or []),
            "quality": d.get("quality"), "polarity": d["polarity"], "polarity_mode": d["polarity_mode"],
            "polarity_score": d.get("polarity_score"), "total_ms": d["timings_ms"].get("total_ms"), "source": source}


class Fitter:
    """The models and settings of one ``fit`` run, loaded once (per worker process with ``--workers``), and the work
    on one image: read it, fit it, write ``OUT/<name>.json`` and its overlay."""

    def __init__(self, args, digest: str):
        from DeepMorphLib import pipeline

        self.args, self.digest, self.out = args, digest, Path(args.out)
        self.predictor = pipeline.load_predictor(args.task, args.model, args.device)  # a missing model stops here
        self.refiner = pipeline.load_refiner(args.refine_model, args.device) if args.task == "head" else None
        self.shape_model = pipeline.load_shape_model(args.pdm) if args.task == "femur" else None
        self.anchor = pipeline.load_head_anchor(args.head_anchor, args.device) if args.task == "femur" else None
        self.region = pipeline.load_region_net(args.region_model, args.device) if args.task == "femur" else None
        self.fit_options = femur_fit_options(args)
        self._xray = (None, None)  # (path, XRayFile): the file read last (a multi-frame file is read once)

    def fit_item(self, path: Path, frame: int | None, stem: str, thumbnail: bool):
        """("done", result dict, thumbnail or None), or ("skipped", why, whether an earlier result was removed) for
        an image that cannot be read or fitted."""
        from DeepMorphLib import pipeline
        from DeepMorphLib.overlay import draw_overlay
        from DeepMorphLib.xray_file import read_xray, result_in_mm
        from DeepMorphSimulatorLib.files import atomic_write_json, write_png

        args = self.args
        try:
            if self._xray[0] != path:
                self._xray = (path, read_xray(path))
            xray = self._xray[1]
            if len(xray.frames) < (frame or 1):
                raise ValueError(f"it has {len(xray.frames)} frames, not {frame}")
            image = xray.frames[(frame or 1) - 1]
            identity = input_identity(path, frame)
            res = pipeline.fit_image(image, args.task, pdm=self.shape_model, polarity=args.polarity,
                                     predictor=self.predictor, threshold=args.threshold, min_pixels=args.min_pixels,
                                     source=str(path) if frame is None else source_of(path, frame),
                                     circle_method=args.circle_method,
                                     refine=self.refiner or False, edge_snap=not args.no_edge_snap,
                                     femur_check=not args.no_femur_check,
                                     femur_min_quality=args.femur_min_quality,
                                     keep_unconfirmed_head=args.keep_unconfirmed_head,
                                     head_anchor=self.anchor or False, region=self.region or False,
                                     fit_options=self.fit_options, side=args.side)
        except (ValueError, FileNotFoundError, OSError) as exc:
            removed = path.is_file() and remove_result(self.out, stem)  # it no longer describes this file
            return "skipped", str(exc), removed
        d = res.to_dict()
        if xray.spacing_mm is not None:
            d["pixel_spacing_mm"], d["pixel_spacing_source"] = list(xray.spacing_mm), xray.spacing_source
            d["in_mm"] = result_in_mm(d, xray.spacing_mm)
        d["provenance"] = {"settings_sha256": self.digest, "input": identity}
        overlay = draw_overlay(image, res, caption=f"{_shown(path, frame)}: {_summary(d)}")
        write_png(self.out / f"{stem}{OVERLAY}", overlay)
        atomic_write_json(self.out / f"{stem}.json", d)  # last: a result without its overlay is never reused
        return "done", d, _thumbnail(overlay) if thumbnail else None


def _shown(path: Path, frame: int | None) -> str:
    return path.name + _frame_text(frame)


def _frame_text(frame: int | None) -> str:
    return "" if frame is None else f" frame {frame}"


_WORKER: dict = {}  # the worker process's Fitter


def _start_worker(args, digest: str, threads: int) -> None:
    """A ``--workers`` process: ``threads`` threads for torch and numba, Ctrl-C left to the main process (which
    stops the workers), the models loaded once."""
    import signal

    from DeepMorphLib.blas_threads import set_compute_threads

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    set_compute_threads(threads)
    _WORKER["fitter"] = Fitter(args, digest)


def _worker_fit(task):
    i, path, frame, stem, thumbnail = task
    return i, _WORKER["fitter"].fit_item(path, frame, stem, thumbnail)


WORKER_START = "spawn"  # how worker processes start (fork is unsafe once torch runs threads)


def _fitted(todo, fitter: Fitter | None, args, digest: str):
    """Yield (index, outcome) for each (index, path, frame, stem) of ``todo`` as it is fitted: in this process
    (``fitter``), or by ``args.workers`` processes, each with its share of this process's threads. Ctrl-C stops the
    workers at once: an image being fitted then has no result (written last, atomically) and is fitted next run."""
    if args.workers == 1:
        for i, path, frame, stem in todo:
            yield i, fitter.fit_item(path, frame, stem, args.report)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    import torch

    threads = max(1, torch.get_num_threads() // args.workers)
    pool = ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context(WORKER_START),
                               initializer=_start_worker, initargs=(args, digest, threads))
    try:
        futures = [pool.submit(_worker_fit, (*item, args.report)) for item in todo]
        for future in as_completed(futures):
            try:
                yield future.result()
            except BrokenProcessPool:
                raise ValueError("a worker process ended without finishing its image (out of memory? killed?); run "
                                 "the same command again, with fewer --workers (finished images are reused)") from None
    finally:
        _stop_workers(pool)


def _stop_workers(pool) -> None:
    """End ``pool``'s processes now, without waiting for the images they are fitting."""
    for future in getattr(pool, "_pending_work_items", {}).values():
        future.future.cancel()
    processes = list((getattr(pool, "_processes", None) or {}).values())  # kill_workers() is Python >= 3.14
    for process in processes:  # SIGKILL: a worker's inherited SIGTERM handler would only end its current image
        process.kill()
    pool.shutdown(wait=True, cancel_futures=True)


def run(args) -> int:
    from DeepMorphLib.inference import resolve_device
    from DeepMorphSimulatorLib.files import atomic_write_json, lock_folder

    try:
        resolve_device(args.device)  # once: a batch without the device stops before its first image
    except ValueError as exc:  # resolve_device's message names the devices to use
        print(f"deepmorph fit: error: --device {args.device}: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    read_record(out, args.task)  # OUT of the other task: stops here
    out.mkdir(parents=True, exist_ok=True)
    lock = lock_folder(out, "deepmorph fit")  # noqa: F841  (held until this run ends)
    record = read_record(out, args.task)  # as the run before this one left it
    digest = settings_digest(args)
    fitter = Fitter(args, digest)  # with --workers too: a missing or bad model stops here, before any worker
    images, bad = expand_images(args.images)
    for name, problem in bad:
        print(f"deepmorph fit: skipped {name}: {problem}", file=sys.stderr)
    own = [p for p in images if is_own_overlay(p, out, record["outputs"])]
    if own:
        print(f"deepmorph fit: not fitting {len(own)} overlay(s) that it wrote into {out} ({own[0].name}...)",
              file=sys.stderr)
    images = _once(p for p in images if p not in own)
    items, no_frames = image_items(images, args.frames)
    for name, problem in no_frames:
        print(f"deepmorph fit: skipped {name}: {problem}", file=sys.stderr)
    bad += no_frames
    stems = assign_names(items, record["outputs"], out)
    atomic_write_json(out / RECORD, record)  # before any result: a name, once given, stays with its image
    done, figures, todo = {}, {}, []  # by item index
    reused, count = 0, 0
    t0 = time.perf_counter()

    def results():
        return [done[i] for i in sorted(done)]

    def report(elapsed):
        _write_report(out, args, results(), bad, [figures[i] for i in sorted(figures)], elapsed, items, reused)

    try:
        for i, ((path, frame), stem) in enumerate(zip(items, stems)):
            previous = None if args.refit or not path.is_file() else \
                reusable_result(out / f"{stem}.json", out / f"{stem}{OVERLAY}", path, digest, frame)
            if previous is None:
                todo.append((i, path, frame, stem))
                continue
            done[i] = (stem, previous)
            reused, count = reused + 1, count + 1
            if args.report:
                figures[i] = (f"{_shown(path, frame)}: {_summary(previous)}",
                              _thumbnail(read_rgb(out / f"{stem}{OVERLAY}")))
            print(f"[{count}/{len(items)}] {path}{_frame_text(frame)}: {_summary(previous)} "
                  "(done earlier, reused)", flush=True)
        for i, (status, value, extra) in _fitted(todo, fitter, args, digest):
            (path, frame), stem = items[i], stems[i]
            count += 1
            if status == "skipped":
                bad.append((str(path), value))
                print(f"deepmorph fit: skipped {path}: {value}" +
                      (f" (its earlier result {stem}.json removed)" if extra else ""), file=sys.stderr)
                continue
            done[i] = (stem, value)
            if args.report:
                figures[i] = (f"{_shown(path, frame)}: {_summary(value)}", extra)
            print(f"[{count}/{len(items)}] {path}{_frame_text(frame)}: {_summary(value)} "
                  f"({value['timings_ms']['total_ms']:.0f} ms)", flush=True)
    except KeyboardInterrupt:
        if args.report and done:
            report(time.perf_counter() - t0)
        print(f"deepmorph fit: stopped after {len(done)} of {len(items)} images; run the same command again to "
              "continue (finished images are reused)", file=sys.stderr)
        raise
    if args.report:
        report(time.perf_counter() - t0)
    done_earlier = f", {reused} reused from an earlier run" if reused else ""
    print(f"deepmorph fit: {len(done)} fitted ({sum(d['detected'] for _, d in results())} detected{done_earlier}), "
          f"{len(bad)} skipped; results in {out}", file=sys.stderr)
    return 1 if bad else 0


def _summary(d: dict) -> str:
    pol = f"{d['polarity']} ({d['polarity_mode']})"
    if not d["detected"]:
        return f"not detected ({d['reason']}); {pol}"
    if d.get("circle"):
        c = d["circle"]
        r_mm = ((d.get("in_mm") or {}).get("circle") or {}).get("r")
        in_mm = f" (r {r_mm:.1f} mm)" if r_mm is not None else ""
        return f"circle cx={c['cx']:.1f} cy={c['cy']:.1f} r={c['r']:.1f} px{in_mm}; {pol}"
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
