"""Rewrite each module's CMakeLists.txt lists of Lib scripts and resources from the files on disk.

Run after adding or removing a file: ``python Utilities/sync_cmake_scripts.py``. The lists are sorted,
so two branches that each add files merge by re-running this script.
"""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULES = ("DeepMorphSimulator", "DeepMorph")
RESOURCE_SUFFIXES = {".png", ".svg", ".ui", ".json", ".safetensors", ".npz", ".txt"}


def module_files(module: str) -> tuple[list[str], list[str]]:
    mod = ROOT / module
    scripts = sorted(p.relative_to(mod).as_posix() for p in (mod / f"{module}Lib").rglob("*.py") if "__pycache__" not in p.parts)
    fixed = {f"Resources/Icons/{module}.png", f"Resources/UI/{module}.ui"}
    resources = sorted(
        p.relative_to(mod).as_posix()
        for p in (mod / "Resources").rglob("*")
        if p.is_file() and p.suffix in RESOURCE_SUFFIXES and p.relative_to(mod).as_posix() not in fixed
    )
    return scripts, resources


def replace_block(text: str, tag: str, lines: list[str]) -> str:
    body = "".join(f"  {line}\n" for line in lines)
    pattern = re.compile(rf"(  # BEGIN {tag}\n).*?(  # END {tag}\n)", re.S)
    return pattern.sub(lambda m: m.group(1) + body + m.group(2), text)


def main() -> None:
    for module in MODULES:
        cmake = ROOT / module / "CMakeLists.txt"
        scripts, resources = module_files(module)
        text = replace_block(cmake.read_text(), "LIB SCRIPTS", scripts)
        text = replace_block(text, "RESOURCES", resources)
        cmake.write_text(text)
        print(f"{cmake.relative_to(ROOT)}: {len(scripts)} scripts, {len(resources)} resources")


if __name__ == "__main__":
    main()
