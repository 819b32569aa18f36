"""DeepMorph fit logic, headless: X-ray node -> fit -> markups, polarity, "not detected", editing, export.

The network is a stand-in here (a function drawing the outline it "sees") and so is the PDM fit in the
femur test (a monkeypatched ``asm_fit``); the circle fit is the real one. These tests cover the MRML side and
the result handling; ``test_fit_logic_with_real_pieces`` runs the shipped models.
"""
import json
import re
import sys
import types

import numpy as np
import pytest

pytest.importorskip("slicer")

from DeepMorphLib import fit_logic as logic  # noqa: E402
from DeepMorphLib import mrml_glue as g  # noqa: E402

pytestmark = pytest.mark.usefixtures("fit_at_own_size")  # stand-in networks draw at fixed px (conftest)

H, W = 120, 160
CIRCLE = (70.0, 55.0, 22.0)


@pytest.fixture(scope="module")
def app():
    return g.create_headless_slicer()


def ring(cx, cy, r, width=2.0):
    v, u = np.mgrid[:H, :W]
    return np.exp(-((np.hypot(u - cx, v - cy) - r) ** 2) / (2 * width**2)).astype(np.float32)


def xray_image():
    """Bone-dark image: the head as a sphere's shadow (darker with the path length through it) on a bright
    background."""
    v, u = np.mgrid[:H, :W]
    path = 2 * np.sqrt(np.clip(CIRCLE[2] ** 2 - (u - CIRCLE[0]) ** 2 - (v - CIRCLE[1]) ** 2, 0, None))
    return np.round(200 - 160 * path / (2 * CIRCLE[2])).astype(np.uint8)


def predict_ring_if_bone_dark(image):
    """Stand-in network: sees the head outline only when the disc is dark (the trained polarity)."""
    inside = image[int(CIRCLE[1]), int(CIRCLE[0])]
    return ring(*CIRCLE) if inside < image.mean() else np.zeros_like(image, dtype=np.float32)


def test_auto_polarity_is_detected_and_weak_evidence_lets_the_fits_decide(monkeypatch):
    """"auto" as in ``deepmorph fit``: the detector's polarity alone when its score is clear; both polarities, the
    better fit kept, when it is weak (below pipeline.AUTO_FIT_BELOW)."""
    from DeepMorphLib import polarity

    dark = xray_image()
    bright = 255 - dark  # a radiograph: bone bright
    calls = []

    def predict(image):
        calls.append(1)
        return predict_ring_if_bone_dark(image)

    monkeypatch.setattr(polarity, "detect_polarity", lambda image: ("bone-dark", -0.004))  # weak, and wrong
    result = logic.fit_image(bright, "head", polarity="auto", predict=predict)
    assert result.detected and result.polarity == "bone-bright" and len(calls) == 2
    assert result.polarity_score == -0.004 and result.to_dict()["polarity_score"] == -0.004
    assert np.allclose(result.circle, CIRCLE, atol=0.75)
    calls.clear()
    monkeypatch.setattr(polarity, "detect_polarity", lambda image: ("bone-bright", 0.4))  # clear: fitted once
    result = logic.fit_image(bright, "head", polarity="auto", predict=predict)
    assert result.detected and result.polarity == "bone-bright" and len(calls) == 1
    calls.clear()
    forced = logic.fit_image(bright, "head", polarity="bone-dark", predict=predict)
    assert not forced.detected and "NOT DETECTED" in forced.summary() and "foreground pixels" in forced.summary()
    assert forced.polarity_score is None and len(calls) == 1


def test_fit_xray_node_shows_overlay_circle_and_hides_it_when_not_detected(app):
    xray = g.image_to_node(xray_image(), app.scene, "X-ray", g.image_ijk_to_ras(0.2))
    result, nodes = logic.fit_xray_node(app.scene, xray, "head", predict=predict_ring_if_bone_dark)
    assert result.detected and result.pixel_mm == pytest.approx(0.2)
    assert re.search(r"radius 2\d\.\d px = 4\.\d mm, centre \(\d+\.\d, \d+\.\d\) px\. residual \d\.\d\d px, arc "
                     r"coverage 360 deg", result.summary()), result.summary()
    assert np.allclose(result.circle, CIRCLE, atol=0.75)
    assert np.allclose(g.volume_ijk_to_ras(nodes["confidence"]), g.volume_ijk_to_ras(xray))
    assert np.allclose(g.node_to_image(nodes["confidence"]), result.confidence)
    assert np.allclose(g.circle_from_markups(nodes["head_circle"], xray), result.circle, atol=1e-3)
    assert nodes["head_circle"].GetDisplayNode().GetVisibility()
    # a blank image: same nodes, circle hidden, "not detected" stated
    blank = g.image_to_node(np.full((H, W), 200, np.uint8), app.scene, "blank", node=xray)
    result2, nodes2 = logic.fit_xray_node(app.scene, blank, "head", polarity="bone-dark",
                                          predict=predict_ring_if_bone_dark, nodes=nodes)
    assert not result2.detected and nodes2["head_circle"] is nodes["head_circle"]
    assert not nodes2["head_circle"].GetDisplayNode().GetVisibility()
    assert not nodes2["head_centre"].GetDisplayNode().GetVisibility()
    # a circle found but rejected (e.g. off the femur) stays visible for review, orange, as its own nodes
    rejected = logic.FitResult("head", False, "head not found: the circle is not on the femur",
                               circle=(60.0, 70.0, 25.0), polarity="bone-dark")
    nodes3 = logic.show_result(app.scene, xray, rejected, nodes2)
    unconfirmed = nodes3["unconfirmed_circle"]
    assert unconfirmed.GetDisplayNode().GetVisibility() and "unconfirmed" in unconfirmed.GetName()
    assert np.allclose(g.circle_from_markups(unconfirmed, xray), (60.0, 70.0, 25.0), atol=1e-3)
    assert np.allclose(unconfirmed.GetDisplayNode().GetSelectedColor(), logic.UNCONFIRMED_COLOR)
    assert not nodes3["head_circle"].GetDisplayNode().GetVisibility()
    nodes4 = logic.show_result(app.scene, xray, result, nodes3)  # a confirmed result hides it again
    assert nodes4["head_circle"].GetDisplayNode().GetVisibility()
    assert not nodes4["unconfirmed_circle"].GetDisplayNode().GetVisibility()


class LinearPDM:
    """Minimal PDM in image coordinates: shape = mean + modes.T @ b, |b_i| <= 3 sqrt(lambda_i)."""

    def __init__(self, mean, modes, variances, landmarks):
        self.mean, self.modes, self.variances, self.landmarks = mean, modes, variances, landmarks

    def coefficients(self, shape):
        return self.modes @ (np.asarray(shape).ravel() - self.mean.ravel())

    def shape(self, b):
        return (self.mean.ravel() + self.modes.T @ b).reshape(-1, 2)


def make_pdm():
    t = np.linspace(0, np.pi, 20)
    mean = np.stack([80 + 40 * np.cos(t), 60 - 30 * np.sin(t)], axis=1)
    m1 = np.zeros_like(mean)
    m1[:, 1] = 1.0  # shift up/down
    m2 = np.zeros_like(mean)
    m2[:, 0] = np.cos(t)  # widen
    modes = np.stack([m1.ravel() / np.linalg.norm(m1), m2.ravel() / np.linalg.norm(m2)])
    return LinearPDM(mean, modes, np.array([2000.0, 400.0]), {"head": 10, "greater_trochanter": 0, "shaft": 19})


def constrained_fit(pdm, shape, fixed_indices, fixed_xy):
    """Least-squares b matching the fixed points, clipped to +-3 sqrt(lambda) (the agreed semantics)."""
    rows = np.ravel([[2 * i, 2 * i + 1] for i in fixed_indices])
    a = pdm.modes.T[rows]
    target = np.asarray(fixed_xy).ravel() - pdm.mean.ravel()[rows]
    b, *_ = np.linalg.lstsq(a, target, rcond=None)
    limit = 3 * np.sqrt(pdm.variances)
    return pdm.shape(np.clip(b, -limit, limit))


@pytest.fixture
def fake_femur_fit(monkeypatch):
    module = types.ModuleType("DeepMorphLib.asm_fit")

    def fit_pdm_to_confidence(conf, pdm, **kwargs):
        shape = pdm.shape(np.array([3.0, -2.0]))
        return types.SimpleNamespace(points=shape, b=np.array([3.0, -2.0]), transform=None,
                                     point_confidence=np.full(len(shape), 0.9), quality=0.87, detected=True,
                                     reason="")

    module.fit_pdm_to_confidence = fit_pdm_to_confidence
    monkeypatch.setitem(sys.modules, "DeepMorphLib.asm_fit", module)


def test_an_unconvincing_femur_fit_is_shown_unconfirmed_and_locked(app, fake_femur_fit, monkeypatch):
    """A fit with a mean confidence at its points below femur_confirm.FEMUR_MIN_QUALITY is "not detected": its contour
    is kept for review as its own orange, locked curve; a convincing fit hides that curve again."""
    from DeepMorphLib import femur_confirm

    fitter = sys.modules["DeepMorphLib.asm_fit"]
    good = fitter.fit_pdm_to_confidence
    monkeypatch.setattr(fitter, "fit_pdm_to_confidence",
                        lambda conf, pdm, **kw: types.SimpleNamespace(**{**vars(good(conf, pdm)), "quality": 0.3}))
    pdm = make_pdm()
    xray = g.image_to_node(xray_image(), app.scene, "X-ray weak femur")
    result, nodes = logic.fit_xray_node(app.scene, xray, "femur", polarity="bone-dark", pdm=pdm,
                                        predict=lambda image: ring(*CIRCLE))
    assert not result.detected and "not confirmed" in result.summary() and "0.30" in result.reason
    assert str(femur_confirm.FEMUR_MIN_QUALITY) in result.reason
    curve = nodes["unconfirmed_contour"]
    assert curve.GetDisplayNode().GetVisibility() and curve.GetLocked() and "unconfirmed" in curve.GetName()
    assert np.allclose(curve.GetDisplayNode().GetSelectedColor(), logic.UNCONFIRMED_COLOR)
    assert np.allclose(g.markups_to_uv(curve, xray), result.contour, atol=1e-4)
    assert nodes.get("contour") is None  # nothing the user could take for a confirmed fit
    kept, _ = logic.fit_xray_node(app.scene, xray, "femur", polarity="bone-dark", pdm=pdm,
                                  predict=lambda image: ring(*CIRCLE), femur_min_quality=0.0)
    assert kept.detected  # the module's "Femur minimum confidence" 0: every fit is confirmed
    with pytest.raises(ValueError, match=">= 0"):
        logic.fit_xray_node(app.scene, xray, "femur", polarity="bone-dark", pdm=pdm,
                            predict=lambda image: ring(*CIRCLE), femur_min_quality=-0.1)
    monkeypatch.setattr(fitter, "fit_pdm_to_confidence", good)
    confirmed, nodes2 = logic.fit_xray_node(app.scene, xray, "femur", polarity="bone-dark", pdm=pdm,
                                            predict=lambda image: ring(*CIRCLE), nodes=nodes)
    assert confirmed.detected and nodes2["contour"].GetDisplayNode().GetVisibility()
    assert not nodes2["unconfirmed_contour"].GetDisplayNode().GetVisibility()


def test_femur_contour_with_named_landmarks_and_constrained_editing(app, fake_femur_fit):
    pdm = make_pdm()
    xray = g.image_to_node(xray_image(), app.scene, "X-ray femur")
    result, nodes = logic.fit_xray_node(app.scene, xray, "femur", polarity="bone-dark", pdm=pdm,
                                        predict=lambda image: ring(*CIRCLE))
    assert result.detected and result.quality["quality"] == pytest.approx(0.87) and result.pixel_mm is None
    contour = nodes["contour"]
    assert contour.IsA("vtkMRMLMarkupsCurveNode") and not contour.GetLocked()  # editable by the user
    assert contour.GetFixedNumberOfControlPoints()  # ... by dragging only: correspondence is kept
    assert np.allclose(result.point_confidence, 0.9)  # the fit's point confidences reach the markups
    assert contour.GetAttribute("DeepMorph.extrapolated") == "" and contour.GetNthControlPointDescription(0) == \
        "network confidence 0.90"
    contour.RemoveNthControlPoint(3)
    assert contour.GetNumberOfControlPoints() == len(result.contour)
    assert np.allclose(g.markups_to_uv(contour, xray), result.contour, atol=1e-4)
    assert g.control_point_labels(nodes["landmarks"]) == ["femoral head", "greater trochanter", "shaft"]
    assert np.allclose(g.markups_to_uv(nodes["landmarks"], xray)[0], result.contour[10], atol=1e-4)

    # the user drags the head point 60 px down: the refit keeps the shape plausible
    uv = g.markups_to_uv(contour, xray)
    moved = uv[10] + [0.0, 60.0]
    contour.SetNthControlPointPositionWorld(10, *g.uv_to_ras(xray, [moved])[0])
    new = logic.refit_after_edit(contour, xray, pdm, [10], constrained_fit=constrained_fit)
    b = pdm.coefficients(new)
    assert np.all(np.abs(b) <= 3 * np.sqrt(pdm.variances) + 1e-6)  # inside +-3 sqrt(lambda)
    assert np.allclose(g.markups_to_uv(contour, xray), new, atol=1e-4)
    assert new[10, 1] > uv[10, 1] + 10  # followed the drag as far as plausible
    assert np.allclose(np.diff(new[:, 1]), np.diff(uv[:, 1]), atol=1e-3)  # rigidly, as mode 1 allows
    g_nodes = nodes["landmarks"]
    g.update_landmarks_from_contour(contour, g_nodes, {"femoral head": 10})
    assert np.allclose(g.markups_to_uv(g_nodes, xray)[0], new[10], atol=1e-4)


def test_export_json_and_csv(tmp_path):
    result = logic.fit_image(xray_image(), "head", polarity="bone-dark", predict=predict_ring_if_bone_dark,
                             pixel_mm=0.5)
    paths = logic.export_result(result, tmp_path / "case1")
    data = json.loads(paths["json"].read_text())
    assert data["detected"] and data["head_circle"]["r_px"] == pytest.approx(result.circle[2], abs=1e-6)
    assert data["head_circle"]["r_mm"] == pytest.approx(result.circle[2] / 2, abs=1e-6)
    assert result.circle[2] == pytest.approx(CIRCLE[2], abs=0.75)
    csv_text = paths["csv"].read_text()
    assert csv_text.startswith("quantity,value,unit\n") and "radius," in csv_text and ",mm" in csv_text
    femur = logic.FitResult("femur", True, contour=np.array([[1.0, 2.0], [3.0, 4.0]]), landmarks={"head": 1})
    assert "1,3.000,4.000,head" in logic.result_csv(femur)
    assert logic.FitResult("head", False, "too few pixels").to_dict()["detected"] is False


def test_bad_input_is_a_clear_error(app):
    with pytest.raises(ValueError, match="Task must be one of"):
        logic.fit_image(xray_image(), "knee", predict=lambda x: x)
    with pytest.raises(ValueError, match="Polarity"):
        logic.fit_image(xray_image(), "head", polarity="dark", predict=lambda x: x)
    with pytest.raises(ValueError, match="2-D X-ray"):
        logic.fit_image(np.zeros((3, 40, 40)), "head", predict=lambda x: x)
    with pytest.raises(ValueError, match="Select an X-ray"):
        logic.fit_xray_node(app.scene, None, "head")
    with pytest.raises(FileNotFoundError, match="Model file not found"):
        logic.load_task_model("head", "/nonexistent/model.safetensors")


def test_a_colour_xray_is_fitted_in_grey_as_the_command_line_does(app, tmp_path):
    """Slicer loads a colour PNG/JPEG/DICOM as a vector volume: it was refused ("3 components per voxel") and not even
    offered by the module's selector, while ``deepmorph fit`` averages the colour (files.read_image_2d)."""
    import SimpleITK as sitk

    from DeepMorphSimulatorLib.files import read_image_2d

    grey = xray_image()
    rgb = np.stack([grey, np.clip(grey.astype(int) + 20, 0, 255), np.clip(grey.astype(int) - 10, 0, 255)], -1)
    path = tmp_path / "colour-xray.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(rgb.astype(np.uint8), isVector=True), str(path))
    node = g.load_volume(app, path)  # Slicer's own volume reader
    assert node.IsA("vtkMRMLVectorVolumeNode")
    assert np.allclose(g.node_to_image(node), read_image_2d(path))  # the grey the command line fits
    result, nodes = logic.fit_xray_node(app.scene, node, "head", predict=predict_ring_if_bone_dark)
    assert result.detected and np.allclose(result.circle, CIRCLE, atol=0.75)
    assert np.allclose(g.circle_from_markups(nodes["head_circle"], node), result.circle, atol=1e-3)
    assert g.node_to_image(nodes["confidence"]).shape == grey.shape
    from DeepMorphSimulatorLib.mrml_glue import node_to_volume

    with pytest.raises(ValueError, match="3 components per voxel"):  # a colour CT stays refused
        node_to_volume(node)


def test_fit_logic_with_real_pieces(app, tmp_path):
    """Shipped models + real morphing (network region -> circle -> edge snap) find the head of a fresh DRR."""
    pytest.importorskip("DeepMorphLib.inference")
    pytest.importorskip("DeepMorphLib.circle_fit")
    if not logic.shipped_model_path("head").is_file():
        pytest.skip("no shipped head model yet")
    phantom = pytest.importorskip("DeepMorphSimulatorLib.phantom")
    drr = pytest.importorskip("DeepMorphSimulatorLib.drr")
    projection = pytest.importorskip("DeepMorphSimulatorLib.projection")
    from DeepMorphSimulatorLib.geometry import CArmGeometry

    ph = phantom.make_phantom(3, sides=("right",))
    femur = ph.femurs["right"]
    geometry = CArmGeometry(isocenter_lps=tuple(femur.landmarks["head_center"]))
    image = drr.render_drr(ph.ct, geometry).image
    truth = projection.project_ground_truth(femur.mesh, femur.landmarks, femur.head_radius_mm, geometry).head_circle
    xray = g.image_to_node(image, app.scene, "simulated X-ray")
    result, nodes = logic.fit_xray_node(app.scene, xray, "head")
    assert result.detected
    assert np.hypot(result.circle[0] - truth[0], result.circle[1] - truth[1]) < 2.0
    assert abs(result.circle[2] - truth[2]) < 2.0 and result.quality["edge_support"] >= 0.65
    assert result.test_time_views == 1  # the head task runs at pipeline.HEAD_TASK_VIEWS unless told
    averaged, _ = logic.fit_xray_node(app.scene, xray, "head", nodes=nodes, test_time_views=4)
    assert averaged.test_time_views == 4 and averaged.to_dict()["test_time_views"] == 4
    assert "averaged over 4 flipped views" in averaged.summary()
    assert np.hypot(averaged.circle[0] - truth[0], averaged.circle[1] - truth[1]) < 2.0
    assert not np.array_equal(averaged.confidence, result.confidence)  # the 4 views' mean, not the first view
    with pytest.raises(ValueError, match="test_time_views must be one of"):
        logic.fit_xray_node(app.scene, xray, "head", test_time_views=3)


def test_refitting_a_fixed_contour_with_another_point_count(app):
    xray = g.image_to_node(xray_image(), app.scene, "X-ray refit")
    curve, _ = g.contour_to_markups(app.scene, xray, np.c_[np.arange(12.0), np.zeros(12)], editable=True)
    curve2, _ = g.contour_to_markups(app.scene, xray, np.c_[np.arange(10.0), np.ones(10)], curve_node=curve)
    assert curve2 is curve and curve.GetNumberOfControlPoints() == 10 and curve.GetFixedNumberOfControlPoints()
    assert np.allclose(g.markups_to_uv(curve, xray)[:, 1], 1.0, atol=1e-5)


@pytest.mark.parametrize("keep", [False, True])
def test_the_head_rule_switch_reaches_the_femur_check(monkeypatch, keep):
    """fit_image(keep_unconfirmed_head=) -> the pipeline's femur check: with the rule on, an unconfirmed head-network
    circle becomes "not detected" (the pipeline's verdict); switched off, it stays reported."""
    from DeepMorphLib import head_femur_check

    seen = {}

    def check(probe, *args, reject_unconfirmed=True, **kwargs):
        seen["reject"] = reject_unconfirmed
        if reject_unconfirmed:
            probe.detected, probe.reason = False, "head not confirmed"

    monkeypatch.setattr(head_femur_check, "check_with_femur_fit", check)
    result = logic.FitResult("head", True, circle=(100.0, 100.0, 40.0), quality={"edge_support": 0.0})
    logic._check_with_femur(result, np.zeros((64, 64), np.float32), None, {}, "bone-dark", None,
                            reject_unconfirmed=not keep)
    assert seen["reject"] is (not keep) and result.detected is keep


def test_contour_markups_describe_the_points_the_shape_model_extrapolated(app):
    from DeepMorphLib.overlay import EXTRAPOLATED_BELOW

    xray = g.image_to_node(xray_image(), app.scene, "X-ray support")
    conf = np.array([0.9, 0.8, EXTRAPOLATED_BELOW / 2, 0.05, EXTRAPOLATED_BELOW, 0.7])
    curve, _ = g.contour_to_markups(app.scene, xray, np.c_[np.arange(6.0), np.zeros(6)], point_confidence=conf)
    assert curve.GetAttribute("DeepMorph.extrapolated") == "2,3"
    assert curve.GetNthControlPointDescription(3) == "extrapolated by the shape model (network confidence 0.05)"
    assert curve.GetNthControlPointDescription(4) == f"network confidence {EXTRAPOLATED_BELOW:.2f}"
    # the same node refitted without confidences: nothing stale is left
    again, _ = g.contour_to_markups(app.scene, xray, np.c_[np.arange(6.0), np.ones(6)], curve_node=curve)
    assert again is curve and curve.GetAttribute("DeepMorph.extrapolated") is None
    assert all(curve.GetNthControlPointDescription(i) == "" for i in range(6))
    with pytest.raises(ValueError, match="one value per contour point"):
        g.contour_to_markups(app.scene, xray, np.c_[np.arange(6.0), np.zeros(6)], point_confidence=conf[:4])


def write_fluoroscopy_run(path, n=4):
    """A multi-frame DICOM file (X-Ray Fluoroscopy Image Storage) of ``n`` bone-dark frames, frame k with the head's
    dark disc at (disc_centre(k), CIRCLE[1]), as SimpleITK (GDCM) writes it; the process locale is restored (GDCM's
    writer leaves LC_CTYPE at "C")."""
    import locale

    import SimpleITK as sitk

    v, u = np.mgrid[:H, :W]
    frames = np.stack([np.where(np.hypot(u - disc_centre(k), v - CIRCLE[1]) < CIRCLE[2], 60, 200) for k in range(n)])
    image = sitk.GetImageFromArray(frames.astype(np.uint16))
    image.SetMetaData("0008|0016", "1.2.840.10008.5.1.4.1.1.12.2")
    image.SetMetaData("0008|0060", "RF")
    saved = locale.setlocale(locale.LC_ALL, None)
    try:
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(path))
        writer.Execute(image)
    finally:
        locale.setlocale(locale.LC_ALL, saved)
    return path


def disc_centre(k):
    return 40.0 + 25.0 * k


def predict_dark_disc(image):
    """Stand-in network: the outline of the dark disc it is given (centroid and area of the dark pixels)."""
    dark = image < image.mean()
    v, u = np.nonzero(dark)
    return ring(u.mean(), v.mean(), np.sqrt(dark.sum() / np.pi))


def ijk_to_ras_of(node, ijk):
    """RAS of voxel IJK points (N, 3) from the node's IJK-to-RAS matrix (independent of the glue)."""
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([m.MultiplyPoint((*p, 1.0))[:3] for p in np.asarray(ijk, dtype=float)])


def test_a_fluoroscopy_run_is_fitted_on_the_frame_the_slice_view_shows(app, tmp_path, fake_femur_fit):
    """A multi-frame DICOM file loaded as Slicer's Add Data does (4 slices along K) was refused ("4 slices; a 2-D X-ray
    is needed"): the frame in the Red view is fitted, said, and its results lie on that frame's plane."""
    import slicer

    run = g.load_volume(app, write_fluoroscopy_run(tmp_path / "run.dcm"), "run")
    assert g.slice_count(run) == 4 and g.xray_frames(run) == 4
    red = slicer.vtkMRMLSliceNode()
    red.SetLayoutName("Red")
    red.SetDimensions(256, 256, 1)
    g.align_slice_to_image(red, run, 2)  # the user scrolled to frame 3
    assert g.shown_slice_k(red, run) == 2
    result, nodes = logic.fit_xray_node(app.scene, run, "head", polarity="bone-dark", predict=predict_dark_disc,
                                        k=g.shown_slice_k(red, run))
    assert result.detected and (result.frame, result.n_frames) == (3, 4)
    assert result.summary().startswith("Frame 3 of 4 (slice K = 2): Femoral head")
    assert result.to_dict()["xray_frame"] == 3
    assert np.allclose(result.circle, (disc_centre(2), CIRCLE[1], CIRCLE[2]), atol=1.0)  # frame 3's disc
    cx, cy, _r = result.circle
    assert np.allclose(g.control_points_ras(nodes["head_centre"]), ijk_to_ras_of(run, [[cx, cy, 2]]), atol=1e-6)
    circle_ijk = g.ras_to_ijk(run, g.control_points_ras(nodes["head_circle"]))
    assert np.allclose(circle_ijk[:, 2], 2.0, atol=1e-9)
    confidence = nodes["confidence"]  # a single slice lying on frame 3
    assert g.slice_count(confidence) == 1
    assert np.allclose(ijk_to_ras_of(confidence, [[5, 7, 0]]), ijk_to_ras_of(run, [[5, 7, 2]]))

    # femur: contour and named landmarks on frame 3; a landmark at contour point 10 = IJK (u, v, 2)
    result, nodes = logic.fit_xray_node(app.scene, run, "femur", polarity="bone-dark", pdm=make_pdm(),
                                        predict=lambda image: ring(*CIRCLE), nodes=nodes, k=2)
    u, v = result.contour[10]
    head = g.control_point_labels(nodes["landmarks"]).index("femoral head")
    assert np.allclose(g.control_points_ras(nodes["landmarks"])[head], ijk_to_ras_of(run, [[u, v, 2]])[0], atol=1e-6)
    assert np.allclose(g.ras_to_ijk(run, g.control_points_ras(nodes["contour"]))[:, 2], 2.0, atol=1e-9)
    # a dragged point is re-fitted on the same frame
    contour = nodes["contour"]
    moved = g.markups_to_uv(contour, run)[10] + [0.0, 20.0]
    contour.SetNthControlPointPositionWorld(10, *ijk_to_ras_of(run, [[*moved, 2]])[0])
    logic.refit_after_edit(contour, run, make_pdm(), [10], constrained_fit=constrained_fit)
    g.update_landmarks_from_contour(contour, nodes["landmarks"], {"femoral head": 10})
    assert np.allclose(g.ras_to_ijk(run, g.control_points_ras(contour))[:, 2], 2.0, atol=1e-9)
    assert np.allclose(g.ras_to_ijk(run, g.control_points_ras(nodes["landmarks"]))[0], [*moved, 2], atol=1e-6)

    # headless (no view): the first frame; a view that does not show the IJ plane: no frame
    first, _ = logic.fit_xray_node(app.scene, run, "head", polarity="bone-dark", predict=predict_dark_disc)
    assert first.frame == 1 and np.allclose(first.circle[:2], (disc_centre(0), CIRCLE[1]), atol=1.0)
    red.SetSliceToRASByNTP(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0)  # sagittal
    assert g.shown_slice_k(red, run) is None


def test_a_volume_that_is_not_frames_of_one_view_is_refused(app, tmp_path):
    """A CT (a NRRD volume, or a DICOM series: one file per slice) is no X-ray; a DICOM module's multi-frame file is."""
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(np.full((5, H, W), 100, np.int16)), str(tmp_path / "ct.nrrd"))
    ct = g.load_volume(app, tmp_path / "ct.nrrd", "CT")
    with pytest.raises(ValueError, match=r"'CT' has 5 slices and is not a multi-frame X-ray .*a 2-D X-ray is needed"):
        logic.fit_xray_node(app.scene, ct, "head", predict=predict_dark_disc)
    ct.SetAttribute("DICOM.instanceUIDs", " ".join(f"1.2.3.{i}" for i in range(5)))  # the DICOM module's CT series
    with pytest.raises(ValueError, match="its slices are 5 DICOM files"):
        logic.fit_xray_node(app.scene, ct, "head", predict=predict_dark_disc)
    ct.SetAttribute("DICOM.instanceUIDs", "1.2.3.4")  # one multi-frame file for all 5 slices
    assert g.xray_frames(ct) == 5


def test_an_edit_replaces_the_network_confidence_of_the_points_it_moved(app, fake_femur_fit):
    """After a drag and the shape model's re-fit, the points kept "network confidence 0.90" (measured where they no
    longer are): the dragged point is "edited by hand" (no longer listed as extrapolated), the others that moved say
    so, and a point that did not move keeps its value."""
    pdm = make_pdm()
    xray = g.image_to_node(xray_image(), app.scene, "X-ray edited")
    result, nodes = logic.fit_xray_node(app.scene, xray, "femur", polarity="bone-dark", pdm=pdm,
                                        predict=lambda image: ring(*CIRCLE))
    result.point_confidence[[9, 10]] = 0.05  # extrapolated there
    logic.show_result(app.scene, xray, result, nodes)
    contour = nodes["contour"]
    assert contour.GetAttribute("DeepMorph.extrapolated") == "9,10"
    before = g.markups_to_uv(contour, xray)
    contour.SetNthControlPointPositionWorld(10, *g.uv_to_ras(xray, [before[10] + [0.0, 30.0]])[0])

    def fit_moving_the_right_half(pdm, shape, fixed, xy):  # points 0..9 stay, 11.. move down with the drag
        new = np.array(shape, dtype=float)
        new[11:, 1] += 7.0
        return new

    logic.refit_after_edit(contour, xray, pdm, [10], constrained_fit=fit_moving_the_right_half)
    moved = np.hypot(*(g.markups_to_uv(contour, xray) - before).T) > 1e-3
    assert moved.tolist() == [False] * 10 + [True] * 10  # independent of the descriptions
    descriptions = [contour.GetNthControlPointDescription(i) for i in range(20)]
    assert descriptions[10] == "edited by hand"
    assert all(d == "moved by the shape model after an edit" for d in descriptions[11:])
    assert descriptions[0] == "network confidence 0.90"
    assert descriptions[9] == "extrapolated by the shape model (network confidence 0.05)"
    assert contour.GetAttribute("DeepMorph.extrapolated") == "9"
