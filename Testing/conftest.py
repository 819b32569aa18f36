"""Make both Lib packages importable from a plain checkout (no install needed) and share fixtures."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
for module_dir in ("DeepMorphSimulator", "DeepMorph"):
    path = str(ROOT / module_dir)
    if path not in sys.path:
        sys.path.insert(0, path)

SHARED_DEV = ROOT.parent / "shared" / "data" / "real-hip-radiographs-dev"


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(1234)


@pytest.fixture
def fit_at_own_size(monkeypatch):
    """Fits run on images of at most 448 px as they are given, not enlarged to 448 px (``working_size``): for tests
    whose stand-in networks draw their maps at fixed pixels of the image they get, or know it by its pixels. The
    enlargement itself is tested in test_working_size.py with stand-ins that do not depend on the image size."""
    from DeepMorphLib import working_size

    enlarging = working_size.working_shape

    def own_size(shape):
        h, w = int(shape[0]), int(shape[1])
        return (h, w) if max(h, w) <= working_size.WORKING_SIZE_PX else enlarging(shape)

    monkeypatch.setattr(working_size, "working_shape", own_size)
