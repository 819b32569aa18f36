"""The demo end-to-end at a reduced size: files, errors against the ground truth, the .mrb reloaded in
slicer-core, and every file the HTML report references. Networks are replaced by stand-ins drawn from the
simulation's ground truth (and the PDM is built from projections of the phantom), so the test needs no
trained model; one test runs the shipped models when they are present."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from DeepMorphLib import demo

SPACING_MM = 2.5  # coarse phantom: fast, good enough for 256 px images


@pytest.fixture(scope="module")
def phantom():
    from DeepMorphSimulatorLib.phantom import make_phantom

    return make_phantom(3, spacing_mm=SPACING_MM)


def phantom_pdm(ph, n: int = 14, size: int = 256, seed: int = 1):
    """A femur PDM from the phantom's own projected ground truth (as ``build-pdm`` does from a dataset)."""
    from DeepMorphLib.pdm import PointDistributionModel
    from DeepMorphLib.pdm_build import LANDMARK_ALIASES
    from DeepMorphSimulatorLib.poses import sample_pose
    from DeepMorphSimulatorLib.projection import project_ground_truth

    rng = np.random.default_rng(seed)
    shapes, anchors = [], None
    for i in range(n):
        side = ("right", "left")[i % 2]
        fem = ph.femurs[side]
        geometry = sample_pose(rng, fem.landmarks, size)
        gt = project_ground_truth(fem.mesh, fem.landmarks, fem.head_radius_mm, geometry, n_points=64)
        if not gt.anchors_in_order:
            continue
        anchors = gt.anchor_indices
        pts = np.asarray(gt.points, float)[: anchors["shaft_cut_medial"] + 1]
        shapes.append(pts * np.array([-1.0, 1.0]) if side == "left" else pts)
    landmarks = {k: anchors[a] for k, a in LANDMARK_ALIASES.items()}
    landmarks.update({f"anchor_{k}": v for k, v in anchors.items()})
    return PointDistributionModel.fit(np.stack(shapes), landmarks=landmarks, closed=False)


class TruthConfidence:
    """Stand-in network: a confidence map drawn from the image's ground-truth outline band (blurred)."""

    per_image = True
    expected_polarity = "bone-dark"

    def __call__(self, task, img):
        from scipy import ndimage

        target = img.truth.head_target if task == "head" else img.truth.femur_target
        conf = ndimage.gaussian_filter(np.asarray(target, np.float32), 0.8)
        conf = np.clip(conf / max(float(conf.max()), 1e-6), 0, 1).astype(np.float32)

        def predict(image):  # at the size the fit runs at (working_size: the image's longer side at 448 px)
            from DeepMorphLib.working_size import resample

            assert image.shape[0] * conf.shape[1] == image.shape[1] * conf.shape[0]  # the same picture, resampled
            return conf if image.shape == conf.shape else np.clip(resample(conf, image.shape), 0, 1)

        predict.expected_polarity = "bone-dark"
        return predict


@pytest.fixture(scope="module")
def demo_run(phantom, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    lines = []
    result = demo.run_demo(out, seed=3, quick=True, log=lines.append, phantom=phantom, pdm=phantom_pdm(phantom),
                           predictors={"head": TruthConfidence(), "femur": TruthConfidence()})
    return out, result, lines


def test_outputs_and_errors(demo_run):
    out, result, lines = demo_run
    stems = ["01_ap", "02_implant"]
    for stem in stems:
        for rel in (f"images/{stem}.png", f"images/{stem}.json", f"overlays/{stem}.png",
                    f"confidence/{stem}_head.png", f"confidence/{stem}_femur.png",
                    f"results/{stem}_head.json", f"results/{stem}_femur.json"):
            assert (out / rel).is_file(), rel
    for rel in ("report.html", "results.json", "results.csv", "scene.mrb", "overview.png", "phantom/ct.nrrd",
                "phantom/landmarks.mrk.json"):
        assert (out / rel).is_file(), rel
    from PIL import Image

    assert Image.open(out / "images/01_ap.png").size == (256, 256)
    assert Image.open(out / "overlays/01_ap.png").size[0] == 256
    ann = json.loads((out / "images/02_implant.json").read_text())
    assert ann["implants"], "the implant view has metal in it"
    assert any(i["type"] in ("retractor", "clamp", "kwire_outside") for i in ann["implants"]), "and a tool"
    recs = result["records"]
    assert len(recs) == 2
    for rec in recs:  # stand-ins drawn from the truth: the morphing must land on it
        assert rec["head_detected"] and rec["head_centre_err_px"] < 3.0, rec
        assert rec["femur_detected"] and rec["femur_p2c_px"] < 4.0, rec
    saved = json.loads((out / "results.json").read_text())
    assert saved["images"][0]["image"] == "01_ap" and "versions" in saved and "timings_s" in saved
    assert any("[demo] phantom" in line or "render images" in line for line in lines)
    assert any(line.startswith("[demo] done") for line in lines)


def test_scene_bundle_reloads(demo_run, tmp_path):
    from DeepMorphLib import mrml_glue as glue

    out, _, _ = demo_run
    app = glue.create_headless_slicer()
    glue.load_scene_bundle(app, out / "scene.mrb", tmp_path / "unpacked")
    scene = app.scene
    volumes = [scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
               for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))]
    names = {v.GetName() for v in volumes}
    assert {"01 X-ray", "02 X-ray", "01 head confidence", "02 femur confidence"} <= names, names
    assert any(n.startswith("Phantom CT") for n in names)
    ct = next(v for v in volumes if v.GetName().startswith("Phantom CT"))
    assert ct.GetImageData().GetDimensions()[2] > 10
    xray = scene.GetFirstNodeByName("01 X-ray")
    assert glue.node_to_image(xray).shape == (256, 256)
    curves = [scene.GetNthNodeByClass(i, "vtkMRMLMarkupsCurveNode")
              for i in range(scene.GetNumberOfNodesByClass("vtkMRMLMarkupsCurveNode"))]
    contour = scene.GetFirstNodeByName("01 femur contour")
    assert contour is not None and contour.GetNumberOfControlPoints() >= 50
    assert max(c.GetNumberOfControlPoints() for c in curves) >= 50
    circle = scene.GetFirstNodeByName("01 femoral head")
    assert circle is not None and circle.GetNumberOfControlPoints() >= 50
    landmarks = scene.GetFirstNodeByName("01 femur contour landmarks")
    labels = glue.control_point_labels(landmarks)
    assert {"greater trochanter", "lesser trochanter"} <= set(labels), labels
    assert scene.GetNumberOfNodesByClass("vtkMRMLModelNode") >= 2  # femur models (+ beam)
    # markups still sit on their image: the fitted circle's points map back to the fitted circle (px)
    cx, cy, r = glue.circle_from_markups(circle, xray)
    fit = json.loads((out / "results/01_ap_head.json").read_text())["circle"]
    assert abs(cx - fit["cx"]) < 0.05 and abs(cy - fit["cy"]) < 0.05 and abs(r - fit["r"]) < 0.05


def test_report_references_exist(demo_run):
    out, _, _ = demo_run
    text = (out / "report.html").read_text()
    refs = set(re.findall(r"(?:src|href)='([^']+)'", text)) | set(re.findall(r'(?:src|href)="([^"]+)"', text))
    local = [r for r in refs if not r.startswith(("data:", "http:", "https:", "#", "mailto:"))]
    assert len(local) >= 8, local
    for ref in local:
        assert (out / ref).is_file(), ref
    for needle in ("head_rmse_px", "femur_p2c_px", "Timings", "Software", "numpy", "scene.mrb"):
        assert needle in text, needle


def test_missing_models_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="head.safetensors"):
        demo.run_demo(tmp_path / "out", quick=True, models=tmp_path, log=lambda s: None)


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    from DeepMorphLib.cli import main

    assert main(["demo", "--out", str(tmp_path / "o"), "--n-images", "0", "--models", str(tmp_path)]) == 2
    assert "error" in capsys.readouterr().err


def test_views_and_downsampling():
    views = demo.demo_views(6, seed=1)
    assert [v.name for v in views[:4]] == ["ap", "implant", "oblique", "left"]
    assert len({v.name for v in views}) == 6 and any(v.implants for v in views)
    from DeepMorphSimulatorLib.volume import Volume

    vol = Volume(np.arange(6 * 8 * 10, dtype=np.int16).reshape(6, 8, 10), np.array([1.5, 1.5, 1.0]),
                 np.array([10.0, -5.0, 3.0]), np.eye(3))
    small = demo.downsample_volume(vol, 3.0)
    assert small.data.shape == (2, 4, 5) and np.allclose(small.spacing, [3.0, 3.0, 3.0])
    # the centre of the first block stays where it was
    assert np.allclose(small.origin, vol.origin + np.array([0.75, 0.75, 1.0]))
    assert small.data[0, 0, 0] == int(np.rint(vol.data[:3, :2, :2].mean()))


SHIPPED = Path(demo.__file__).resolve().parent.parent / "Resources" / "Models"


@pytest.mark.skipif(not all((SHIPPED / f).is_file() for f in demo.MODEL_FILES), reason="shipped models not present")
def test_demo_with_shipped_models(phantom, tmp_path):
    """The shipped networks + PDM through the whole demo (their accuracy is tested with the models)."""
    out = tmp_path / "shipped"
    result = demo.run_demo(out, seed=3, quick=True, log=lambda s: None, phantom=phantom, threads=1,
                           screenshots=False)
    recs = result["records"]
    assert [r["image"] for r in recs] == ["01_ap", "02_implant"]
    for rec in recs:
        assert rec["polarity"] == "bone-dark"  # detected: the demo's images are fluoroscopy-like
        for task in ("head", "femur"):
            d = json.loads((out / "results" / f"{rec['image']}_{task}.json").read_text())
            assert d["task"] == task and d["model"], d
            assert (out / "confidence" / f"{rec['image']}_{task}.png").is_file()
    assert (out / "scene.mrb").stat().st_size > 100_000 and (out / "report.html").is_file()
