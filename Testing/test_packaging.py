"""The packaged Slicer extension: every Lib file listed in CMake, Lib code importable headless."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = ("DeepMorphSimulator", "DeepMorph")


@pytest.mark.parametrize("module", MODULES)
def test_every_lib_file_is_listed_in_cmake(module):
    text = (ROOT / module / "CMakeLists.txt").read_text()
    lib_files = sorted((ROOT / module).glob(f"{module}Lib/**/*.py"))
    assert lib_files
    missing = [p.relative_to(ROOT / module).as_posix() for p in lib_files if p.relative_to(ROOT / module).as_posix() not in text]
    assert not missing, f"not in {module}/CMakeLists.txt (run Utilities/sync_cmake_scripts.py): {missing}"
    listed = re.findall(rf"^\s+({module}Lib/\S+\.py)$", text, re.M)
    gone = [p for p in listed if not (ROOT / module / p).exists()]
    assert not gone, f"{module}/CMakeLists.txt lists files that do not exist: {gone}"
    for res in re.findall(r"^\s+(Resources/\S+)$", text.replace("${MODULE_NAME}", module), re.M):
        assert (ROOT / module / res).exists(), f"resource listed but missing: {res}"


@pytest.mark.parametrize("module", MODULES)
def test_lib_never_imports_qt_or_slicer_gui(module):
    for py in (ROOT / module).glob(f"{module}Lib/**/*.py"):
        text = py.read_text()
        assert not re.search(r"^\s*(import|from)\s+(qt|ctk|slicer\.ScriptedLoadableModule)\b", text, re.M), py


def test_top_level_cmake_adds_both_modules():
    text = (ROOT / "CMakeLists.txt").read_text()
    for module in MODULES:
        assert f"add_subdirectory({module})" in text
    for key in ("EXTENSION_DESCRIPTION", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_CATEGORY"):
        assert key in text


def test_cli_lists_commands():
    from DeepMorphLib.cli import build_parser

    help_text = build_parser([]).format_help()
    for name in ("demo", "drr", "phantom", "dataset", "train", "fit", "evaluate", "bench"):
        assert name in help_text


def test_deepmorph_version_names_the_installed_package(capsys):
    from importlib.metadata import version

    from DeepMorphLib.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"deepmorph {version('deepmorph')}"
