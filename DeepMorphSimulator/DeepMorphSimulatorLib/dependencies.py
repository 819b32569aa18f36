"""Python packages the Slicer modules need, installed on first use (never at import time).

Inside Slicer: ``slicer.packaging.pip_ensure`` (Slicer >= 5.11: asks, installs, offers a restart),
falling back to ``slicer.util.pip_install`` after a confirmation on older versions; PyTorch only
through the PyTorch extension's ``PyTorchUtils`` (it picks the CUDA/CPU build), as TotalSegmentator does.
``slicer`` is imported inside the functions; :func:`missing_requirements` works anywhere.
"""
from __future__ import annotations

import importlib.metadata
import os
import re
from pathlib import Path

MINIMUM_TORCH = "2.0"
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(.*)$")


class InstallError(RuntimeError):
    """A required package is missing and was not installed (declined, offline, or no PyTorch extension)."""


def read_requirements(path: str | os.PathLike) -> list[str]:
    """Requirement lines of a requirements.txt (comments, blanks and pip options skipped)."""
    lines = Path(path).read_text().splitlines()
    return [s.strip() for s in lines if s.strip() and not s.strip().startswith(("#", "-"))]


def _satisfied(requirement: str) -> bool:
    match = _NAME.match(requirement.split(";")[0])
    if not match:
        raise ValueError(f"Cannot parse the requirement {requirement!r}.")
    name, spec = match.group(1), match.group(2).strip()
    try:
        installed = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    if not spec:
        return True
    try:
        from packaging.specifiers import SpecifierSet

        return SpecifierSet(spec).contains(installed, prereleases=True)
    except ImportError:  # pragma: no cover - packaging ships with pip
        return True


def missing_requirements(requirements: list[str]) -> list[str]:
    """The requirements (e.g. ``"numba>=0.60"``) not satisfied in this Python environment."""
    return [r for r in requirements if not _satisfied(r)]


def ensure_requirements(requirements_file: str | os.PathLike, requester: str) -> None:
    """Install what ``requirements_file`` lists and is missing, asking the user first (inside Slicer)."""
    import slicer

    requirements = read_requirements(requirements_file)
    missing = missing_requirements(requirements)
    if not missing:
        return
    try:
        import slicer.packaging  # Slicer >= 5.11

        pip_ensure = getattr(slicer.packaging, "pip_ensure", None)
    except ImportError:
        pip_ensure = None
    if pip_ensure is not None:
        pip_ensure(missing, requester=requester)
        return
    if not slicer.util.confirmOkCancelDisplay(
        f"{requester} needs these Python packages: {', '.join(missing)}.\n"
        "Install them now? (network connection needed; it may take a few minutes)",
        "Install Python packages",
    ):
        raise InstallError(f"{requester} cannot run without: {', '.join(missing)}.")
    slicer.util.pip_install(missing)


def ensure_torch(requester: str, minimum: str = MINIMUM_TORCH):
    """Return ``torch``, installing it through the PyTorch extension (PyTorchUtils) if needed."""
    try:
        import torch  # noqa: F401

        return _check_torch_version(torch, minimum)
    except ImportError:
        pass
    try:
        import PyTorchUtils
    except ImportError:
        raise InstallError(
            f"{requester} needs PyTorch. Install the 'PyTorch' extension from the Extensions Manager, "
            "restart Slicer, and try again."
        ) from None
    import slicer

    torch_logic = PyTorchUtils.PyTorchUtilsLogic()
    if not torch_logic.torchInstalled():
        if not slicer.util.confirmOkCancelDisplay(
            f"{requester} needs PyTorch. Install it now? (download of several hundred MB; a few minutes)",
            "Install PyTorch",
        ):
            raise InstallError(f"{requester} cannot run without PyTorch.")
        torch = torch_logic.installTorch(askConfirmation=False, torchVersionRequirement=f">={minimum}")
        if torch is None:
            raise InstallError("PyTorch installation failed; use the 'PyTorch Utils' module to install it.")
        return _check_torch_version(torch, minimum)
    return _check_torch_version(torch_logic.torch, minimum)


def _check_torch_version(torch, minimum: str):
    try:
        from packaging.version import Version

        if Version(torch.__version__.split("+")[0]) < Version(minimum):
            raise InstallError(
                f"PyTorch {torch.__version__} is too old (need >= {minimum}); update it with the 'PyTorch Utils' "
                f"module (version requirement '>={minimum}')."
            )
    except ImportError:  # pragma: no cover
        pass
    return torch
