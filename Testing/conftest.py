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
