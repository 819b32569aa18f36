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


@pytest.fixture
def fits(monkeypatch):
    """Stand-in ``pipeline.fit_image`` (and loaders): a detected circle at the image's mean grey value (so that each
    image's result can be told apart); returns the list of the ``source`` of each call."""
    import numpy as np

    from DeepMorphLib import pipeline
    from DeepMorphLib.pipeline import FitResult

    calls = []

    def fake_fit(image, task, **kw):
        calls.append(kw.get("source"))
        value = float(np.mean(image))
        res = FitResult(task=task, image_shape=np.shape(image), detected=True, reason="", polarity="bone-dark",
                        polarity_score=None, polarity_mode="given", source=kw.get("source"))
        res.circle = {"cx": value, "cy": 10.0, "r": 5.0}
        res.timings_ms = {"total_ms": 1.0}
        return res

    monkeypatch.setattr(pipeline, "fit_image", fake_fit)
    for name in ("load_predictor", "load_refiner", "load_shape_model", "load_head_anchor", "load_region_net"):
        monkeypatch.setattr(pipeline, name, lambda *a, **k: None)
    return calls
