"""``deepmorph fit``: per-image JSON + overlay, "not detected" as a result, bad files reported and skipped."""
import json

import numpy as np
import pytest

from DeepMorphLib.cli import main
from DeepMorphLib.pipeline import HEAD_TASK_VIEWS, FitResult, fit_image, load_predictor, with_task_views
from DeepMorphSimulatorLib.files import write_png
from standins import TruthPredictor, _key, use_standins
from synthetic_hip import make_hip

pytestmark = pytest.mark.usefixtures("fit_at_own_size")  # stand-in networks draw at fixed px (conftest)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("fit")
    pred = TruthPredictor("head")
    paths = []
    for seed, polarity in ((3, "bone-bright"), (4, "bone-dark")):
        image, truth = make_hip(seed, polarity, "left")
        image = np.round(image).astype(np.uint8)
        dark = image.astype(float) if polarity == "bone-dark" else image.max() + image.min() - image.astype(float)
        pred.register(dark, truth)
        write_png(tmp_path / f"hip{seed}.png", image)
        paths.append(tmp_path / f"hip{seed}.png")
    blank = np.full((64, 64), 90, np.uint8)
    blank[::2] = 100  # stripes: some contrast
    for version in (blank, 190 - blank):  # whichever polarity is detected, the predictor sees nothing there
        pred.maps[_key(version)] = np.zeros((64, 64), np.float32)
    write_png(tmp_path / "blank.png", blank)
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    return tmp_path, paths, pred


def test_fit_reports_bad_files_and_continues(images, capsys, monkeypatch):
    tmp, paths, pred = images
    use_standins(monkeypatch, pred)
    out = tmp / "out"
    argv = ["fit", "--task", "head", str(paths[0]), str(tmp / "corrupt.png"), str(tmp / "missing.png"),
            str(paths[1]), str(tmp / "blank.png"), "--polarity", "auto", "--out", str(out), "--report"]
    assert main(argv) == 1  # some files were skipped
    err = capsys.readouterr().err
    assert "corrupt.png" in err and "missing.png" in err and "3 fitted" in err
    for stem, polarity in (("hip3", "bone-bright"), ("hip4", "bone-dark")):
        d = json.loads((out / f"{stem}.json").read_text())
        assert d["detected"] and d["polarity"] == polarity and d["polarity_mode"] == "auto"
        assert abs(d["circle"]["r"] - 45) < 30 and set(d["timings_ms"]) >= {"network_ms", "fit_ms", "total_ms"}
        assert (out / f"{stem}_overlay.png").stat().st_size > 1000
    blank = json.loads((out / "blank.json").read_text())
    assert blank["detected"] is False and blank["reason"]  # "not detected" is a result
    results = json.loads((out / "results.json").read_text())
    assert {b["file"].rsplit("/", 1)[-1] for b in results["bad_files"]} == {"corrupt.png", "missing.png"}
    assert "numpy" in results["versions"]
    assert (out / "results.csv").read_text().splitlines()[0].startswith("file,detected")
    html = (out / "report.html").read_text()
    assert "corrupt.png" in html and "data:image/png;base64" in html and "Software" in html


def test_images_without_an_xray_in_them_are_skipped_with_the_problem_and_the_fix(tmp_path, capsys):
    """A TIFF with NaN pixels names how many and what to do; a constant image is refused by the polarity
    detection as holding no X-ray (nothing reaches a network: no model is needed)."""
    import SimpleITK as sitk

    nan = np.full((64, 64), 100.0, np.float32)
    nan[3:5, 3:8] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(nan), str(tmp_path / "nan.tif"))
    write_png(tmp_path / "flat.png", np.full((64, 64), 90, np.uint8))
    assert main(["fit", "--task", "head", str(tmp_path / "nan.tif"), str(tmp_path / "flat.png"),
                 "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "nan.tif contains NaN/infinite pixels (10 of 4096)" in err and "replace them" in err
    assert "flat.png: Polarity detection got an image without contrast" in err and "check the file" in err
    assert "0 fitted" in err


def test_fit_image_result_is_json_ready(images, monkeypatch):
    tmp, paths, pred = images
    use_standins(monkeypatch, pred)
    from DeepMorphSimulatorLib.files import read_image_2d

    res = fit_image(read_image_2d(paths[0]), "head", predictor=pred, polarity="bone-bright")
    assert isinstance(res, FitResult) and res.polarity_mode == "given" and res.polarity_score is None
    assert res.confidence.shape == (448, 448)
    json.dumps(res.to_dict())


def test_missing_shipped_model_says_how_to_train(tmp_path):
    with pytest.raises(FileNotFoundError, match="deepmorph train --task femur"):
        load_predictor("femur", tmp_path / "nothing.safetensors")
    with pytest.raises(ValueError, match="task"):
        load_predictor("knee")


def test_fit_and_bench_with_a_real_tiny_network(images, tmp_path, capsys):
    """The network path without stand-ins: a tiny untrained FusionNet saved as safetensors + sidecar."""
    import torch

    from DeepMorphLib.fusionnet import FusionNet
    from DeepMorphLib.model_io import save_model

    torch.manual_seed(0)
    save_model(FusionNet(base_channels=4, depth=2).eval(), tmp_path / "tiny", {"task": "head", "input_size": 32})
    _, paths, _ = images
    out = tmp_path / "out-net"
    assert main(["fit", "--task", "head", str(paths[0]), "--model", str(tmp_path / "tiny"), "--out", str(out)]) == 0
    d = json.loads((out / "hip3.json").read_text())
    assert d["polarity"] == "bone-bright" and d["model"]["task"] == "head" and d["model"]["polarity"] == "bone-dark"
    assert d["detected"] in (True, False) and d["timings_ms"]["network_ms"] > 0
    capsys.readouterr()
    assert main(["bench", "pipeline", "--task", "head", "--model", str(tmp_path / "tiny"), "--image",
                 str(paths[0]), "--repeats", "1", "--threads", "1", "--polarity", "bone-bright"]) == 0
    bench = json.loads(capsys.readouterr().out.strip())
    assert bench["pipeline_ms"] > 0 and bench["head_network_ms"] > 0 and bench["threads"] == 1
    assert main(["fit", "--task", "femur", str(paths[0]), "--model", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "out-femur")]) == 2  # (an output folder holds one task)
    assert "deepmorph train --task femur" in capsys.readouterr().err


def test_weak_polarity_evidence_lets_the_fits_decide(monkeypatch):
    """A structureless image gives a weak detector score: both polarities go through the predictor and the
    polarity whose fit is convincing wins ("auto-fit")."""
    from DeepMorphLib.pipeline import AUTO_FIT_BELOW
    from DeepMorphLib.polarity import detect_polarity

    image = np.tile(np.round(np.linspace(60, 180, 128)), (128, 1))  # a plain ramp: no ridge of either sign
    assert abs(detect_polarity(image)[1]) < min(AUTO_FIT_BELOW.values())
    pred = TruthPredictor("head")
    pred.register(image.max() + image.min() - image, {"head_circle": [64.0, 60.0, 30.0]})  # bone-bright image
    pred.maps[_key(image)] = np.zeros(image.shape, np.float32)  # taken as bone-dark: nothing found
    use_standins(monkeypatch, pred)
    res = fit_image(image, "head", predictor=pred)
    assert res.polarity_mode == "auto-fit" and res.polarity == "bone-bright" and res.detected
    assert pred.calls == 2 and abs(res.circle["r"] - 30) < 1.5


def _capture_fit_options(monkeypatch, tmp_path) -> list:
    """Stand-in ``pipeline.fit_image`` (and loaders) recording the keyword arguments that ``fit`` passes (a list of
    dicts: ``fit_options``, ``side``, ...); writes x.png."""
    from DeepMorphLib import pipeline

    seen = []

    def fake_fit(image, task, **kw):
        seen.append(kw)
        res = FitResult(task=task, image_shape=np.shape(image), detected=False, reason="stub", polarity="bone-dark",
                        polarity_score=None, polarity_mode="given")
        res.timings_ms = {"total_ms": 1.0}
        return res

    monkeypatch.setattr(pipeline, "fit_image", fake_fit)
    for name in ("load_predictor", "load_shape_model", "load_head_anchor", "load_region_net"):
        monkeypatch.setattr(pipeline, name, lambda *a, **k: None)
    write_png(tmp_path / "x.png", np.full((32, 32), 90, np.uint8))
    return seen


def test_the_upright_prior_option_reaches_the_femur_fit(monkeypatch, tmp_path, capsys):
    """``--upright-max-deg DEG|none`` ends in ``fit_options`` (none = off); anything else is refused by name."""
    seen = _capture_fit_options(monkeypatch, tmp_path)
    for value, expected in (("none", None), ("75", 75.0)):
        main(["fit", "--task", "femur", str(tmp_path / "x.png"), "--out", str(tmp_path / "out"), "--upright-max-deg", value])
        assert seen[-1]["fit_options"]["upright_max_deg"] == expected
    main(["fit", "--task", "femur", str(tmp_path / "x.png"), "--out", str(tmp_path / "out")])
    assert seen[-1]["fit_options"]["upright_max_deg"] == 60.0
    with pytest.raises(SystemExit):
        main(["fit", "--task", "femur", str(tmp_path / "x.png"), "--out", str(tmp_path / "out"), "--upright-max-deg", "up"])
    assert "--upright-max-deg" in capsys.readouterr().err


@pytest.mark.parametrize("option, key", [("--polish-px", "final_polish_px"), ("--coverage-weight", "coverage_weight")])
def test_the_polish_and_coverage_options_reach_the_femur_fit(monkeypatch, tmp_path, capsys, option, key):
    """``--polish-px PX`` / ``--coverage-weight W`` end in ``fit_options`` (absent: pipeline.FINAL_POLISH_PX /
    asm_fit.COVERAGE_WEIGHT); a negative, nan or non-numeric value is refused by name."""
    seen = _capture_fit_options(monkeypatch, tmp_path)
    args = ["fit", "--task", "femur", str(tmp_path / "x.png"), "--out", str(tmp_path / "out")]
    main(args + [option, "0"])
    assert seen[-1]["fit_options"][key] == 0.0
    main(args)
    assert key not in seen[-1]["fit_options"]
    for bad in ("-1", "nan", "far"):
        with pytest.raises(SystemExit):
            main(args + [option, bad])
        assert option in capsys.readouterr().err


def test_the_side_and_femur_check_options_reach_the_fit(monkeypatch, tmp_path, capsys):
    seen = _capture_fit_options(monkeypatch, tmp_path)
    args = ["fit", "--task", "femur", str(tmp_path / "x.png"), "--out", str(tmp_path / "out")]
    main(args + ["--side", "left"])
    main(args)
    assert [kw["side"] for kw in seen] == ["left", "auto"]
    main(["fit", "--task", "head", str(tmp_path / "x.png"), "--out", str(tmp_path / "out-head"), "--no-femur-check"])
    assert seen[-1]["femur_check"] is False and seen[0]["femur_check"] is True
    with pytest.raises(SystemExit):
        main(args + ["--side", "both"])
    assert "--side" in capsys.readouterr().err


def test_the_summary_line_counts_extrapolated_contour_points():
    from DeepMorphLib.commands.fit import _summary

    d = {"detected": True, "polarity": "bone-dark", "polarity_mode": "auto", "contour": [[0, 0]] * 4,
         "point_confidence": [0.9, 0.05, 0.1, 0.2], "quality": 0.31}
    assert _summary(d) == ("contour 4 points, 2 extrapolated (network confidence < 0.2), quality 0.31; "
                           "bone-dark (auto)")
    d["point_confidence"] = [0.9] * 4
    assert _summary(d) == "contour 4 points, quality 0.31; bone-dark (auto)"


def _counting_fits(monkeypatch, interrupt_at=None):
    """Count pipeline.fit_image calls (the real one runs); with ``interrupt_at`` the n-th call raises Ctrl-C."""
    from DeepMorphLib import pipeline

    real, calls = pipeline.fit_image, []

    def fit(image, *args, **kwargs):
        calls.append(kwargs.get("source"))
        if interrupt_at is not None and len(calls) == interrupt_at:
            raise KeyboardInterrupt
        return real(image, *args, **kwargs)

    monkeypatch.setattr(pipeline, "fit_image", fit)
    return calls


def test_a_batch_resumes_and_refits_only_what_changed(images, tmp_path, monkeypatch, capsys):
    import os
    import shutil

    tmp, paths, pred = images
    use_standins(monkeypatch, pred)
    src = tmp_path / "in"
    src.mkdir()
    for p in paths:
        shutil.copy2(p, src / p.name)
    out = tmp_path / "out"
    argv = ["fit", "--task", "head", str(src), "--out", str(out), "--report"]  # a folder stands for its images
    calls = _counting_fits(monkeypatch)
    assert main(argv) == 0 and len(calls) == 2
    first = {p.name: p.read_bytes() for p in out.glob("hip*.json")}
    assert set(first) == {"hip3.json", "hip4.json"}
    made = json.loads(first["hip3.json"])["provenance"]
    assert made["input"]["path"] == str((src / "hip3.png").resolve()) and len(made["settings_sha256"]) == 64

    calls.clear()
    capsys.readouterr()
    assert main(argv) == 0 and calls == []  # the same files and settings: nothing fitted again
    assert {p.name: p.read_bytes() for p in out.glob("hip*.json")} == first
    captured = capsys.readouterr()
    assert captured.out.count("reused") == 2 and "2 reused from an earlier run" in captured.err
    assert json.loads((out / "results.json").read_text())["results"].keys() == {"hip3", "hip4"}

    stat = (src / "hip4.png").stat()  # a changed input file is fitted again, the other one reused
    os.utime(src / "hip4.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    calls.clear()
    assert main(argv) == 0 and [c.rsplit("/", 1)[-1] for c in calls] == ["hip4.png"]

    calls.clear()  # other settings: everything fitted again
    assert main(argv + ["--threshold", "0.6"]) == 0 and len(calls) == 2
    calls.clear()
    assert main(argv + ["--threshold", "0.6"]) == 0 and calls == []
    (out / "hip3.json").write_text("{not json")  # a damaged result is fitted again, not trusted
    assert main(argv + ["--threshold", "0.6"]) == 0 and len(calls) == 1
    calls.clear()
    assert main(argv + ["--threshold", "0.6", "--refit"]) == 0 and len(calls) == 2


def test_a_stopped_batch_keeps_its_results_and_continues(images, tmp_path, monkeypatch, capsys):
    tmp, paths, pred = images
    use_standins(monkeypatch, pred)
    out = tmp_path / "out"
    argv = ["fit", "--task", "head", *map(str, paths), "--out", str(out), "--report"]
    calls = _counting_fits(monkeypatch, interrupt_at=2)  # Ctrl-C while the second image is fitted
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "stopped after 1 of 2 images" in err and "run the same command again" in err
    assert (out / "hip3.json").is_file() and not (out / "hip4.json").exists()
    assert list(json.loads((out / "results.json").read_text())["results"]) == ["hip3"]  # the report of what is done
    calls = _counting_fits(monkeypatch)
    assert main(argv) == 0 and [c.rsplit("/", 1)[-1] for c in calls] == ["hip4.png"]
    assert (out / "hip4.json").is_file()


def test_a_folder_without_images_is_reported_and_the_rest_go_on(images, tmp_path, monkeypatch, capsys):
    tmp, paths, pred = images
    use_standins(monkeypatch, pred)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    argv = ["fit", "--task", "head", str(tmp_path / "empty"), str(paths[0]), "--out", str(tmp_path / "out")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "empty: a folder without image files" in err and "1 fitted" in err


def test_test_time_views_come_from_the_sidecar_unless_tta_is_given(images, tmp_path, capsys):
    """A model's sidecar says how many flipped/transposed views its maps average (``tta_views``); the head task runs
    its networks at ``HEAD_TASK_VIEWS`` and ``--tta`` overrides both for every network of the run; the views used
    are reported per image; a bad value is refused with its name."""
    import torch

    from DeepMorphLib.fusionnet import FusionNet
    from DeepMorphLib.model_io import load_model, save_model

    torch.manual_seed(0)
    net = FusionNet(base_channels=4, depth=2).eval()
    save_model(net, tmp_path / "tiny", {"task": "head", "input_size": 32, "tta_views": 2})
    _, paths, _ = images
    for extra, views in (([], HEAD_TASK_VIEWS), (["--tta", "8"], 8), (["--tta", "2"], 2)):
        out = tmp_path / f"out-{views}"
        assert main(["fit", "--task", "head", str(paths[1]), "--model", str(tmp_path / "tiny"), "--out", str(out),
                     *extra]) == 0
        assert json.loads((out / "hip4.json").read_text())["model"]["tta_views"] == views
    with pytest.raises(SystemExit):
        main(["fit", "--task", "head", str(paths[1]), "--tta", "3", "--out", str(tmp_path / "x")])
    with pytest.raises(ValueError, match="tta_views"):
        save_model(net, tmp_path / "bad", {"task": "head", "input_size": 32, "tta_views": 3})
    sidecar = json.loads((tmp_path / "tiny.json").read_text())
    (tmp_path / "tiny.json").write_text(json.dumps({**sidecar, "tta_views": "two"}))  # edited by hand
    with pytest.raises(ValueError, match="tta_views"):
        load_model(tmp_path / "tiny")


def test_the_head_task_runs_its_networks_at_its_own_views_and_the_femur_task_at_the_sidecars():
    from DeepMorphLib.inference import test_time_views, views_for

    meta = {"task": "femur", "input_size": 32, "tta_views": 2}  # a femur network whose sidecar asks for 2 views

    @with_task_views
    def fit(image, task, nested=None):
        return views_for(meta), nested and nested(image, "femur")

    assert fit(None, "femur") == (2, None)
    assert fit(None, "head", nested=fit) == (HEAD_TASK_VIEWS, (HEAD_TASK_VIEWS, None))  # the femur check inside
    with test_time_views(4):  # --tta
        assert fit(None, "head", nested=fit) == (4, (4, None)) and fit(None, "femur") == (4, None)
