"""The ``deepmorph`` command: one entry point for both libraries' headless jobs.

Each sub-command lives in its own module exposing ``HELP`` (one line), ``add_arguments(parser)``
and ``run(args) -> int``. Modules are imported only when their command runs, so ``deepmorph --help``
stays fast and a heavy dependency (torch, vtk) is loaded only where needed.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import os
import signal
import sys
from pathlib import Path

COMMANDS = {
    "demo": "DeepMorphLib.commands.demo",
    "phantom": "DeepMorphSimulatorLib.commands.phantom",
    "drr": "DeepMorphSimulatorLib.commands.drr",
    "dataset": "DeepMorphSimulatorLib.commands.dataset",
    "build-pdm": "DeepMorphLib.commands.build_pdm",
    "build-dome-circle": "DeepMorphLib.commands.build_dome_circle",
    "train": "DeepMorphLib.commands.train",
    "fit": "DeepMorphLib.commands.fit",
    "evaluate": "DeepMorphLib.commands.evaluate",
}

BENCHMARKS = {
    "drr": "DeepMorphSimulatorLib.commands.bench_drr",
    "dataset": "DeepMorphSimulatorLib.commands.bench_dataset",
    "fit": "DeepMorphLib.commands.bench_fit",
    "pipeline": "DeepMorphLib.commands.bench_pipeline",
}


def _load(module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None  # command not built into this version
        raise


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("deepmorph")
    except PackageNotFoundError:  # run from a checkout without installing
        return "(checkout, not installed)"


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepmorph",
        description="Deep morphing of the femur in (simulated) X-ray images: DRRs, training data, fits.",
    )
    parser.add_argument("--version", action="version", version=f"deepmorph {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    wanted = argv[0] if argv else None
    for name, module_name in COMMANDS.items():
        # Import only the command being run (others get a placeholder help line).
        module = _load(module_name) if name == wanted else None
        p = sub.add_parser(name, help=getattr(module, "HELP", None) or f"see 'deepmorph {name} --help'")
        if module is not None:
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
    bench = sub.add_parser("bench", help="speed/accuracy benchmarks printing one JSON line")
    bench_sub = bench.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    wanted_bench = argv[1] if wanted == "bench" and len(argv) > 1 else None
    for name, module_name in BENCHMARKS.items():
        module = _load(module_name) if name == wanted_bench else None
        p = bench_sub.add_parser(name, help=getattr(module, "HELP", None) or f"see 'deepmorph bench {name} --help'")
        if module is not None:
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a batch scheduler's time limit), raised where Ctrl-C would be so that the same clean-up
    runs: workers stopped, finished work kept."""


def _raise_terminated(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    run = getattr(args, "_run", None)
    if run is None:
        name = args.command if args.command != "bench" else f"bench {args.benchmark}"
        print(f"deepmorph: the '{name}' command is not available in this version.", file=sys.stderr)
        return 2
    installed, previous = False, None
    try:
        previous, installed = signal.signal(signal.SIGTERM, _raise_terminated), True
    except ValueError:  # not the main thread (e.g. called from a GUI's worker thread): leave SIGTERM as it is
        pass
    from DeepMorphLib.pipeline import test_time_views_block

    try:
        with test_time_views_block(getattr(args, "tta", None)):  # --tta: one setting for every network of the command
            return int(run(args) or 0)
    except Terminated:
        print("\ndeepmorph: stopped (SIGTERM); finished work is kept and a re-run resumes it.", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("\ndeepmorph: cancelled (Ctrl-C); finished work is kept and a re-run resumes it.", file=sys.stderr)
        return 130
    except ValueError as exc:
        print(f"deepmorph {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except MemoryError as exc:  # e.g. --size 100000: numpy says how much it could not allocate
        print(f"deepmorph {args.command}: error: not enough memory ({exc or 'allocation failed'}); "
              f"{memory_advice(args)}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file in the way, no permission, disk full...: one line, no traceback
        print(f"deepmorph {args.command}: error: {os_error_message(exc)}", file=sys.stderr)
        return 2
    finally:
        if installed:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def memory_advice(args) -> str:
    """What to do when a command ran out of memory, naming only the options that ``args``' command has."""
    fixes = [fix for option, fix in (("size", "smaller images (--size)"), ("workers", "fewer --workers"))
             if hasattr(args, option)]
    return ("use " + " or ".join(fixes) + ", or " if fixes else "") + "free memory, and re-run."


def os_error_message(exc: OSError) -> str:
    """One line for an OSError: the path, the problem and what to do (our own messages are kept as they are)."""
    path = exc.filename2 or exc.filename  # a rename's target, else the file
    if exc.errno == errno.ENOSPC:
        where = f" while writing {os.fsdecode(path)}" if isinstance(path, (str, bytes)) else ""
        return f"no space left on the device{where}; free some space and re-run (finished files are kept)."
    if exc.errno is None or not isinstance(path, (str, bytes)):
        return str(exc)
    path = Path(os.fsdecode(path))
    in_the_way = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if isinstance(exc, (FileExistsError, NotADirectoryError)) and in_the_way:
        return (f"cannot write {path}: {in_the_way} is a file, not a folder; choose another output path or move "
                "the file away.")
    if isinstance(exc, IsADirectoryError):
        return f"{path} is a folder; give a file name instead."
    if isinstance(exc, PermissionError):
        return f"permission denied: {path}; choose a location you can write to (or change its permissions)."
    if isinstance(exc, FileNotFoundError):
        return f"{path} does not exist; check the path."
    return f"{exc.strerror}: {path}; check the path and re-run."


if __name__ == "__main__":
    sys.exit(main())
