"""``deepmorph evaluate --real`` end to end on a 3-image folder in the dev-set format (stand-in predictor)."""
import json

import pytest

from DeepMorphLib.cli import main
from standins import TruthPredictor, make_real_folder, use_standins


@pytest.fixture
def real_folder(tmp_path):
    preds = {"head": TruthPredictor("head"), "femur": TruthPredictor("femur")}
    anns = make_real_folder(tmp_path / "real", preds)
    return tmp_path / "real", preds, anns


def run_json(capsys, argv):
    assert main(argv) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 1, lines  # exactly one JSON line
    return json.loads(lines[0])


def test_evaluate_real_head(real_folder, tmp_path, capsys, monkeypatch):
    root, preds, _ = real_folder
    use_standins(monkeypatch, preds["head"])
    report = tmp_path / "report"
    out = run_json(capsys, ["evaluate", "--task", "head", "--real", str(root), "--json", "--report", str(report)])
    for key in ("rmse_mean", "rmse_median", "center_err_mean", "detection_rate", "n"):
        assert key in out
    assert out["n"] == 3 and out["detection_rate"] == 1.0
    assert out["rmse_mean"] < 1.5 and out["center_err_mean"] < 1.0  # predictor draws the true outline
    assert out["polarity_accuracy"] == 1.0  # two bone-bright radiographs and one bone-dark fluoroscopy
    assert set(out["by_maturity"]) == {"mature", "immature"} and out["by_maturity"]["mature"]["n"] == 2
    assert set(out["by_modality"]) == {"radiograph", "fluoroscopy"}
    assert set(out["by_modality"]["fluoroscopy"]) == {"rmse_mean", "rmse_median", "center_err_mean",
                                                      "detection_rate", "n"}
    assert preds["head"].calls == 3
    assert len(list(report.glob("*_overlay.png"))) == 3
    html = (report / "report.html").read_text()
    assert "bone-bright" in html and "bone-dark" in html and "data:image/png;base64" in html
    records = json.loads((report / "results.json").read_text())["records"]
    assert {r["polarity_used"] for r in records} == {"bone-bright", "bone-dark"}


def test_evaluate_real_femur_and_given_polarity(real_folder, capsys, monkeypatch):
    root, preds, _ = real_folder
    use_standins(monkeypatch, preds["femur"])
    out = run_json(capsys, ["evaluate", "--task", "femur", "--real", str(root), "--json"])
    for key in ("p2c_mean", "p2c_median", "n", "by_maturity", "by_modality"):
        assert key in out
    assert out["n"] == 3 and out["p2c_mean"] < 2.0
    assert set(out["by_maturity"]["immature"]) >= {"p2c_mean", "p2c_median", "n"}
    assert set(out["by_part"]) == {"lateral", "head_neck", "medial"}  # split at the shape model's neck landmarks
    assert all(part["n"] == out["n_scored"] for part in out["by_part"].values())
    assert out["by_maturity"]["mature"]["by_part"]["medial"]["n"] == out["by_maturity"]["mature"]["n_scored"]
    # a wrong forced polarity reaches the predictor un-inverted for the radiographs: it must notice
    with pytest.raises(AssertionError, match="polarity"):
        main(["evaluate", "--task", "femur", "--real", str(root), "--json", "--polarity", "bone-dark"])


def test_evaluate_real_reports_missing_folder(tmp_path, capsys, monkeypatch):
    use_standins(monkeypatch, TruthPredictor("head"))
    assert main(["evaluate", "--task", "head", "--real", str(tmp_path), "--json"]) == 2
    assert "annotations" in capsys.readouterr().err


def test_evaluate_dataset_folder(tmp_path, capsys, monkeypatch):
    """--data reads the 'deepmorph dataset' format (samples/000000.png + .json) and adds p95 figures."""
    import numpy as np

    from DeepMorphSimulatorLib.files import write_png
    from synthetic_hip import make_hip

    pred = TruthPredictor("femur")
    (tmp_path / "ds" / "samples").mkdir(parents=True)
    (tmp_path / "ds" / "manifest.json").write_text(json.dumps({"generator_version": "test", "n": 2}))
    for i, polarity in enumerate(("bone-dark", "bone-bright")):
        image, truth = make_hip(30 + i, polarity, "right")
        image = np.round(image).astype(np.uint8)
        pred.register(image if polarity == "bone-dark" else image.max() + image.min() - image.astype(float), truth)
        write_png(tmp_path / "ds" / "samples" / f"{i:06d}.png", image)
        sample = {"head_circle": truth["head_circle"], "contour": truth["femur_outline"], "polarity": polarity,
                  "side": "right", "implants": [], "seed": i, "source": {"kind": "phantom", "phantom_seed": 7}}
        (tmp_path / "ds" / "samples" / f"{i:06d}.json").write_text(json.dumps(sample))
    use_standins(monkeypatch, pred)
    out = run_json(capsys, ["evaluate", "--task", "femur", "--data", str(tmp_path / "ds"), "--json"])
    assert out["source"] == "data" and out["n"] == 2 and out["polarity_accuracy"] == 1.0
    assert out["p2c_mean"] < 2.0 and out["p2c_p95"] >= out["p2c_median"]
    assert out["n_phantoms"] == 1  # both views of the same phantom: the figures rest on one anatomy


def test_default_heldout_set_uses_disjoint_seeds(capsys, monkeypatch):
    """Without --data/--real a fresh held-out set is generated (seed 9_000_000 + S, never a training seed)."""
    pytest.importorskip("DeepMorphSimulatorLib.dataset")
    import dataclasses

    import numpy as np

    from DeepMorphLib.commands import evaluate

    settings = evaluate.heldout_settings(3, implants=True)
    assert settings.seed == 9_000_003 and settings.size == 448 and settings.implants == 1.0
    assert evaluate.heldout_settings(0, implants=False).implants == 0.0
    original = evaluate.heldout_settings
    monkeypatch.setattr(evaluate, "heldout_settings", lambda seed, implants, **kw: dataclasses.replace(
        original(seed, implants, **kw), size=64, phantom_spacing_mm=3.0))  # small and coarse: keeps the test fast
    nothing = lambda image: np.zeros(np.shape(image), np.float32)  # noqa: E731 - stand-in net: finds nothing
    use_standins(monkeypatch, nothing)
    out = run_json(capsys, ["evaluate", "--task", "head", "--n", "2", "--seed", "1", "--json"])
    assert out["source"] == "heldout" and out["seed"] == 9_000_001 and out["n"] == 2
    assert out["detection_rate"] == 0.0 and out["rmse_mean"] is None
    assert out["views_per_phantom"] == 48 and out["n_phantoms"] == 1  # the generator's default: one anatomy


def test_heldout_views_per_phantom_sets_how_many_anatomies(capsys, monkeypatch):
    """``--views-per-phantom K``: K images per phantom in the generated held-out set, so more anatomies; the JSON
    says so (``views_per_phantom``, ``n_phantoms``); K < 1 is refused with a clear message."""
    pytest.importorskip("DeepMorphSimulatorLib.dataset")
    import dataclasses

    import numpy as np

    from DeepMorphLib.commands import evaluate

    assert evaluate.heldout_settings(0, False, views_per_phantom=8).group == 8
    assert evaluate.heldout_settings(0, False).group == evaluate._default_views_per_phantom()
    with pytest.raises(ValueError, match="views-per-phantom"):
        evaluate.heldout_settings(0, False, views_per_phantom=0)
    original = evaluate.heldout_settings
    monkeypatch.setattr(evaluate, "heldout_settings", lambda seed, implants, **kw: dataclasses.replace(
        original(seed, implants, **kw), size=64, phantom_spacing_mm=3.0))
    use_standins(monkeypatch, lambda image: np.zeros(np.shape(image), np.float32))
    out = run_json(capsys, ["evaluate", "--task", "head", "--n", "2", "--views-per-phantom", "1", "--json"])
    assert out["views_per_phantom"] == 1 and out["n_phantoms"] == 2 and out["n"] == 2
    assert main(["evaluate", "--task", "head", "--n", "2", "--views-per-phantom", "0", "--json"]) == 2
    assert "--views-per-phantom must be >= 1" in capsys.readouterr().err
