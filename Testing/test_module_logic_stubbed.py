"""Run the modules' Logic classes and self-tests headless: slicer-core for MRML, small stand-ins for
what only the Slicer application has (qt, ScriptedLoadableModule, parameterNodeWrapper, layout manager).

This catches wrong calls in the thin module files, which otherwise only run inside Slicer.
"""
import importlib.util
import sys
import types
import unittest
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("slicer")

from DeepMorphSimulatorLib import mrml_glue as g  # noqa: E402

pytestmark = pytest.mark.usefixtures("fit_at_own_size")  # stand-in networks draw at fixed px (conftest)

ROOT = Path(__file__).resolve().parents[1]


class _Signal:
    def __init__(self):
        self.slots = []

    def connect(self, slot):
        self.slots.append(slot)


class _QTimer:
    def __init__(self):
        self.timeout = _Signal()

    def setInterval(self, ms):
        pass

    def start(self):
        pass

    def stop(self):
        pass


class _SliceWidget:
    def __init__(self, slicer_app, name):
        import slicer

        self.logic = slicer.vtkMRMLSliceLogic()
        self.logic.SetMRMLApplicationLogic(slicer_app.app_logic)
        self.logic.SetMRMLScene(slicer_app.scene)
        self.node = self.logic.AddSliceNode(name)

    def mrmlSliceNode(self):
        return self.node

    def sliceLogic(self):
        return self.logic


def _stub_modules(slicer_app):
    """qt, slicer.ScriptedLoadableModule, slicer.i18n, slicer.parameterNodeWrapper and slicer.app stand-ins."""
    import slicer

    qt = types.ModuleType("qt")
    qt.QTimer = _QTimer
    qt.Qt = types.SimpleNamespace(WaitCursor=3)  # slicer.util.tryWithErrorDisplay(waitCursor=True)

    slm = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent

    class ScriptedLoadableModuleLogic:
        def __init__(self):
            pass

        def getParameterNode(self):
            return slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message, msec=None):
            pass

    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                ScriptedLoadableModuleTest):
        setattr(slm, cls.__name__, cls)

    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text

    pnw = types.ModuleType("slicer.parameterNodeWrapper")

    def parameterNodeWrapper(cls):
        defaults = {name: getattr(cls, name, None) for name in cls.__annotations__}

        class Wrapped:
            def __init__(self, node):
                self.__dict__.update(defaults)
                self.parameterNode = node

        Wrapped.__name__ = cls.__name__
        Wrapped.fields = defaults
        return Wrapped

    pnw.parameterNodeWrapper = parameterNodeWrapper
    pnw.WithinRange = lambda lo, hi: ("WithinRange", lo, hi)

    widgets = {"Red": _SliceWidget(slicer_app, "Red")}  # the application has its slice views already
    def sliceWidget(name):  # made once: a new slice logic resets the view's orientation and offset
        if name not in widgets:
            widgets[name] = _SliceWidget(slicer_app, name)
        return widgets[name]

    layout = types.SimpleNamespace(sliceWidget=sliceWidget)
    app = types.SimpleNamespace(layoutManager=lambda: layout, processEvents=lambda: None,
                                testingEnabled=lambda: True, setOverrideCursor=lambda cursor: None,
                                restoreOverrideCursor=lambda: None)
    return {"qt": qt, "slicer.ScriptedLoadableModule": slm, "slicer.i18n": i18n,
            "slicer.parameterNodeWrapper": pnw}, app


@pytest.fixture
def modules(monkeypatch):
    import slicer

    slicer_app = g.create_headless_slicer()
    stubs, app = _stub_modules(slicer_app)
    for name, module in stubs.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(slicer, "mrmlScene", slicer_app.scene, raising=False)
    monkeypatch.setattr(slicer, "app", app, raising=False)
    monkeypatch.setattr(slicer.util, "startupEnvironment", lambda: dict(__import__("os").environ))
    monkeypatch.setattr(slicer.util, "setSliceViewerLayers", lambda background="keep-current", foreground="keep-current",
                        foregroundOpacity=None, **kw: g.show_in_slice_views(
                            slicer_app.scene, background if background != "keep-current" else None,
                            foreground if foreground not in ("keep-current", None) else None, foregroundOpacity))
    loaded = {}
    for name in ("DeepMorphSimulator", "DeepMorph"):
        spec = importlib.util.spec_from_file_location(name, ROOT / name / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, name, module)
        spec.loader.exec_module(module)
        loaded[name] = module
    loaded["app"] = slicer_app
    return loaded


def fake(monkeypatch, name, **functions):
    module = types.ModuleType(name)
    for key, value in functions.items():
        setattr(module, key, value)
    monkeypatch.setitem(sys.modules, name, module)


def test_parameter_node_defaults_are_valid(modules):
    sim = modules["DeepMorphSimulator"]
    p = sim.DeepMorphSimulatorLogic().getParameterNode()
    assert (p.sidMm, p.sodMm, p.detectorWidthPx, p.pixelMm) == (1000.0, 600.0, 448, 0.6)
    dm = modules["DeepMorph"]
    q = dm.DeepMorphLogic().getParameterNode()
    assert q.task is dm.Task.HEAD and q.polarity is dm.Polarity.AUTO and q.side is dm.Side.AUTO
    assert [s.value for s in dm.Side] == ["auto", "left", "right"]
    assert [t.label() for t in dm.Task] == ["Femoral head circle", "Proximal femur contour"]
    assert q.testTimeViews is dm.TestTimeViews.MODEL and q.testTimeViews.views() is None
    assert [v.views() for v in dm.TestTimeViews] == [None, 1, 2, 4, 8]


def test_deepmorph_logic_hands_the_test_time_views_to_the_fit(modules, monkeypatch):
    """The module's "Test-time views" choice reaches fit_logic.fit_xray_node (None = the models' sidecars)."""
    import slicer
    from DeepMorphLib import fit_logic

    seen = []

    def fit_xray_node(scene, volume, task, **kw):
        seen.append(kw["test_time_views"])
        return fit_logic.FitResult(task, False, reason="stand-in"), {}

    monkeypatch.setattr(fit_logic, "fit_xray_node", fit_xray_node)
    dm = modules["DeepMorph"]
    logic = dm.DeepMorphLogic()
    p = logic.getParameterNode()
    p.inputVolume = g.image_to_node(np.zeros((8, 8), np.uint8), slicer.mrmlScene, "X-ray views")
    logic.process(p)
    p.testTimeViews = dm.TestTimeViews.FOUR
    logic.process(p)
    assert seen == [None, 4]


def test_simulator_logic_renders_through_the_lib(modules, monkeypatch):
    import slicer

    from DeepMorphSimulatorLib.volume import Volume

    def render_drr(ct_hu, geometry, step_mm=0.5, method="auto", device="auto"):
        return types.SimpleNamespace(image=np.full((geometry.height_px, geometry.width_px), 128, np.uint8))

    fake(monkeypatch, "DeepMorphSimulatorLib.drr", render_drr=render_drr)
    sim = modules["DeepMorphSimulator"]
    logic = sim.DeepMorphSimulatorLogic()
    p = logic.getParameterNode()
    p.ctVolume = g.volume_to_node(Volume(np.zeros((20, 20, 20), np.int16)), slicer.mrmlScene, "CT")
    p.detectorWidthPx, p.detectorHeightPx = 64, 48
    nodes = logic.process(p)
    assert p.drrVolume is nodes["drr"] and g.node_to_image(nodes["drr"]).shape == (48, 64)
    assert nodes["carm_points"].GetNumberOfControlPoints() == 3
    logic.showInViews(nodes["drr"])
    red = slicer.app.layoutManager().sliceWidget("Red")
    assert red.sliceLogic().GetSliceCompositeNode().GetBackgroundVolumeID() == nodes["drr"].GetID()
    p.showCArm = False
    logic.process(p)
    assert not nodes["carm_points"].GetDisplayNode().GetVisibility()


def test_simulator_starts_the_dataset_command_in_the_background(modules, tmp_path):
    import slicer

    from DeepMorphSimulatorLib.volume import Volume

    sim = modules["DeepMorphSimulator"]
    logic = sim.DeepMorphSimulatorLogic()
    p = logic.getParameterNode()
    p.ctVolume = g.volume_to_node(Volume(np.zeros((8, 8, 8), np.int16)), slicer.mrmlScene, "CT")
    import vtk

    sphere = vtk.vtkSphereSource()
    sphere.Update()
    p.femur = g.polydata_to_model_node(slicer.mrmlScene, sphere.GetOutput(), "femur")
    p.outputDirectory = tmp_path / "data"
    p.numberOfSamples = 3
    job = logic.startDatasetGeneration(p)
    assert (tmp_path / "data" / "inputs" / "ct.nrrd").is_file() and (tmp_path / "data" / "inputs" / "femur.vtp").is_file()
    assert job.args[1:4] == ["-m", "DeepMorphLib.cli", "dataset"] and "--mesh" in job.args
    job.wait(timeout=60)
    # The CLI ran and understood the command (it finishes, or this version lacks 'dataset' / rejects the toy CT).
    assert job.state in ("finished", "failed")
    assert not any("ModuleNotFoundError" in line for line in job.lines), job.lines


def test_deepmorph_logic_fit_export_and_edit(modules, monkeypatch, tmp_path):
    import slicer

    def ring(image):  # stand-in network: the outline of a circle (30, 20, 10) px; the real circle fit runs
        yy, xx = np.mgrid[0:image.shape[0], 0:image.shape[1]]
        return (np.abs(np.hypot(xx - 30.0, yy - 20.0) - 10.0) < 1.1).astype(np.float32)

    dm = modules["DeepMorph"]
    logic = dm.DeepMorphLogic()
    p = logic.getParameterNode()
    ramp = np.tile(np.arange(60, dtype=np.uint8) * 4, (40, 1))  # some contrast: "auto" detects the polarity
    p.inputVolume = g.image_to_node(ramp, slicer.mrmlScene, "X-ray 1")
    p.exportDirectory = tmp_path
    result, nodes = logic.process(p, predict=ring)
    assert result.detected and "Detected" in p.resultText and "radius 10.0 px" in p.resultText
    assert p.confidenceVolume is nodes["confidence"]
    logic.showInViews(p)
    paths = logic.exportResults(p)
    assert paths["json"].name == "X-ray_1-head.json" and paths["csv"].is_file()

    # femur: contour + landmarks, then an edit re-fitted through shape_edit.constrained_fit
    contour = np.stack([np.linspace(5, 50, 12), np.full(12, 20.0)], axis=1)
    pdm = types.SimpleNamespace(landmarks={"head": 0, "shaft": 11})

    def fit_pdm_to_confidence(conf, model, **kw):
        return types.SimpleNamespace(points=contour, b=None, transform=None, point_confidence=None, quality=0.9,
                                     detected=True, reason="")

    fake(monkeypatch, "DeepMorphLib.asm_fit", fit_pdm_to_confidence=fit_pdm_to_confidence)
    fake(monkeypatch, "DeepMorphLib.shape_edit",
         constrained_fit=lambda pdm, shape, fixed, xy: contour + [0.0, xy[0][1] - contour[fixed[0]][1]])
    logic._pdm = pdm
    p.task = dm.Task.FEMUR
    result, nodes = logic.process(p, predict=lambda image: np.zeros(image.shape, np.float32))
    assert g.control_point_labels(nodes["landmarks"]) == ["femoral head", "shaft"]
    assert not nodes["head_circle"].GetDisplayNode().GetVisibility()  # the old circle is hidden
    curve = nodes["contour"]
    curve.SetNthControlPointPositionWorld(5, *g.uv_to_ras(p.inputVolume, [[contour[5, 0], 27.0]])[0])
    logic.refitAfterEdit(p, [5])
    assert np.allclose(g.markups_to_uv(curve, p.inputVolume)[:, 1], 27.0, atol=1e-4)
    assert np.allclose(g.markups_to_uv(nodes["landmarks"], p.inputVolume)[:, 1], 27.0, atol=1e-4)
    assert "1 point(s) fixed by you" in p.resultText


def test_module_self_tests_run_headless(modules, monkeypatch):
    """The NameTest classes that run inside Slicer, run here on the same stand-ins."""
    sim_test = modules["DeepMorphSimulator"].DeepMorphSimulatorTest("test_DeepMorphSimulator_background_job")
    sim_test.test_DeepMorphSimulator_background_job()

    dm_test = modules["DeepMorph"].DeepMorphTest("test_DeepMorph_not_detected")
    dm_test.test_DeepMorph_not_detected()
    if importlib.util.find_spec("DeepMorphSimulatorLib.phantom") and importlib.util.find_spec("DeepMorphSimulatorLib.drr"):
        modules["DeepMorphSimulator"].DeepMorphSimulatorTest("test_DeepMorphSimulator_render").test_DeepMorphSimulator_render()


def test_simulator_renders_again_after_the_scene_was_closed_or_its_nodes_deleted(modules, monkeypatch):
    """File > Close Scene (or deleting the C-arm in the Data module) left the logic holding nodes outside the scene:
    the next Render failed ("'NoneType' object has no attribute 'SetColor'") and drew no C-arm."""
    import slicer

    from DeepMorphSimulatorLib.volume import Volume

    def render_drr(ct_hu, geometry, step_mm=0.5, method="auto", device="auto"):
        return types.SimpleNamespace(image=np.full((geometry.height_px, geometry.width_px), 128, np.uint8))

    fake(monkeypatch, "DeepMorphSimulatorLib.drr", render_drr=render_drr)
    logic = modules["DeepMorphSimulator"].DeepMorphSimulatorLogic()
    scene = slicer.mrmlScene

    def render(show_carm=True):
        p = logic.getParameterNode()
        p.ctVolume = p.ctVolume or g.volume_to_node(Volume(np.zeros((20, 20, 20), np.int16)), scene, "CT")
        p.detectorWidthPx, p.detectorHeightPx, p.showCArm = 64, 48, show_carm
        return logic.process(p)

    render()
    scene.Clear(0)  # what File > Close Scene does
    nodes = render()
    carm = {key: node for key, node in nodes.items() if key in ("carm_points", "detector", "beam", "cone")}
    assert len(carm) == 4 and all(scene.IsNodePresent(node) for node in carm.values())
    assert nodes["carm_points"].GetNumberOfControlPoints() == 3 and nodes["carm_points"].GetDisplayNode().GetVisibility()
    scene.RemoveNode(nodes["beam"])
    nodes = render()
    assert scene.IsNodePresent(nodes["beam"]) and nodes["beam"].GetNumberOfControlPoints() == 2
    scene.RemoveNode(nodes["cone"])
    render(show_carm=False)  # hides the C-arm nodes that are still there
    assert not nodes["carm_points"].GetDisplayNode().GetVisibility()


def test_deepmorph_fits_again_after_result_nodes_were_deleted(modules, monkeypatch):
    """A result node deleted by the user (Data module) was reused by the next Fit: a crash, or a circle in no view."""
    import slicer

    def ring(image):
        yy, xx = np.mgrid[0:image.shape[0], 0:image.shape[1]]
        return (np.abs(np.hypot(xx - 30.0, yy - 20.0) - 10.0) < 1.1).astype(np.float32)

    dm = modules["DeepMorph"]
    logic = dm.DeepMorphLogic()
    p = logic.getParameterNode()
    ramp = np.tile(np.arange(60, dtype=np.uint8) * 4, (40, 1))
    p.inputVolume = g.image_to_node(ramp, slicer.mrmlScene, "X-ray 1")
    result, nodes = logic.process(p, predict=ring)
    for key in ("head_circle", "confidence"):
        slicer.mrmlScene.RemoveNode(nodes[key])
    result, nodes = logic.process(p, predict=ring)
    assert result.detected
    for key in ("head_circle", "head_centre", "confidence"):
        assert slicer.mrmlScene.IsNodePresent(nodes[key]), key
    assert nodes["head_circle"].GetDisplayNode().GetVisibility()
    assert np.allclose(g.circle_from_markups(nodes["head_circle"], p.inputVolume), result.circle, atol=1e-3)
    assert p.confidenceVolume is nodes["confidence"]
    slicer.mrmlScene.RemoveNode(nodes["head_centre"])  # deleted, then a fit that hides the circle: no crash
    result, nodes = logic.process(p, predict=lambda image: np.zeros(image.shape, np.float32))
    assert not result.detected and not nodes["head_circle"].GetDisplayNode().GetVisibility()


def test_deepmorph_refit_updates_the_fit_of_a_saved_scene_and_names_the_overlay_after_its_xray(modules, tmp_path):
    """A scene saved with a fit and opened again: the next Fit added a second "Femoral head" (the old circle stayed
    on the image beside the new one). Fitting another X-ray kept the overlay named after the first one."""
    import slicer

    def ring_at(cx):
        def predict(image):
            yy, xx = np.mgrid[0:image.shape[0], 0:image.shape[1]]
            return (np.abs(np.hypot(xx - cx, yy - 20.0) - 10.0) < 1.1).astype(np.float32)
        return predict

    dm = modules["DeepMorph"]
    scene = slicer.mrmlScene
    ramp = np.tile(np.arange(60, dtype=np.uint8) * 4, (40, 1))
    logic = dm.DeepMorphLogic()
    p = logic.getParameterNode()
    p.inputVolume = g.image_to_node(ramp, scene, "X-ray 1")
    logic.process(p, predict=ring_at(30.0))
    bundle = g.save_scene_bundle(scene, tmp_path / "fitted.mrb")
    scene.Clear(0)
    g.load_scene_bundle(modules["app"], bundle, tmp_path / "unpacked")
    xray = scene.GetFirstNodeByName("X-ray 1")

    logic = dm.DeepMorphLogic()  # a new session
    p = logic.getParameterNode()
    p.inputVolume = xray
    result, nodes = logic.process(p, predict=ring_at(26.0))

    def named(name):
        return [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes()) if scene.GetNthNode(i).GetName() == name]

    for name in ("Femoral head", "Femoral head centre", "X-ray 1 confidence"):
        assert len(named(name)) == 1, name
    assert np.allclose(g.circle_from_markups(named("Femoral head")[0], xray)[:2], (26.0, 20.0), atol=0.1)
    assert named("X-ray 1 confidence")[0] is nodes["confidence"] is p.confidenceVolume

    p.inputVolume = g.image_to_node(ramp, scene, "X-ray 2")
    logic.process(p, predict=ring_at(30.0))
    assert nodes["confidence"].GetName() == "X-ray 2 confidence"


def test_deepmorph_fits_the_frame_of_a_fluoroscopy_run_that_the_red_view_shows(modules, tmp_path):
    """A multi-frame X-ray was refused ("4 slices; a 2-D X-ray is needed"): the frame shown in the Red view is
    fitted, the readout and the export say which, and the view stays on that frame with its results."""
    import slicer
    from test_fit_logic import disc_centre, predict_dark_disc, write_fluoroscopy_run

    dm = modules["DeepMorph"]
    run = g.load_volume(modules["app"], write_fluoroscopy_run(tmp_path / "run.dcm"), "run")
    red = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode()
    g.align_slice_to_image(red, run, 1)  # the user looks at frame 2
    logic = dm.DeepMorphLogic()
    p = logic.getParameterNode()
    p.inputVolume, p.polarity, p.exportDirectory = run, dm.Polarity.BONE_DARK, tmp_path
    result, nodes = logic.process(p, predict=predict_dark_disc)
    assert result.detected and result.frame == 2 and "Frame 2 of 4 (slice K = 1): Femoral head" in p.resultText
    assert abs(result.circle[0] - disc_centre(1)) < 1.0
    logic.showInViews(p)
    from DeepMorphLib.mrml_glue import shown_slice_k

    assert shown_slice_k(red, run) == 1  # not the volume's centre, where FitSliceToBackground puts it
    assert logic.exportResults(p)["json"].name == "run_f0002-head.json"
    red.SetSliceToRASByNTP(0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0)  # coronal: no frame shown, the first
    result, _ = logic.process(p, predict=predict_dark_disc)
    assert result.frame == 1 and abs(result.circle[0] - disc_centre(0)) < 1.0


def test_dragging_the_contour_of_a_reopened_scene_refits_it(modules, monkeypatch, tmp_path):
    """A scene saved with a femur fit and opened again: dragging a contour point did nothing until the next Fit (no
    observer on the reopened contour, and the logic had no result to re-fit). Now the widget observes the contour that
    fit_logic.result_nodes finds, and the drag is re-fitted, the landmarks following."""
    import slicer

    dm = modules["DeepMorph"]
    scene = slicer.mrmlScene
    contour = np.stack([np.linspace(5, 50, 12), np.full(12, 20.0)], axis=1)
    pdm = types.SimpleNamespace(landmarks={"head": 0, "greater_trochanter": 5, "shaft": 11})

    def fit_pdm_to_confidence(conf, model, **kw):
        return types.SimpleNamespace(points=contour, b=None, transform=None, point_confidence=None, quality=0.9,
                                     detected=True, reason="")

    fake(monkeypatch, "DeepMorphLib.asm_fit", fit_pdm_to_confidence=fit_pdm_to_confidence)
    fake(monkeypatch, "DeepMorphLib.shape_edit",  # the shape model's answer: all points shift with the dragged one
         constrained_fit=lambda pdm, shape, fixed, xy: contour + [0.0, xy[0][1] - contour[fixed[0]][1]])
    logic = dm.DeepMorphLogic()
    logic._pdm = pdm
    p = logic.getParameterNode()
    p.inputVolume = g.image_to_node(np.tile(np.arange(60, dtype=np.uint8) * 4, (40, 1)), scene, "X-ray 1")
    p.task = dm.Task.FEMUR
    logic.process(p, predict=lambda image: np.zeros(image.shape, np.float32))
    bundle = g.save_scene_bundle(scene, tmp_path / "fitted.mrb")
    scene.Clear(0)
    g.load_scene_bundle(modules["app"], bundle, tmp_path / "unpacked")

    widget = dm.DeepMorphWidget()  # a new session: its logic has neither nodes nor a result
    widget.logic = dm.DeepMorphLogic()
    widget.logic._pdm = pdm
    widget._parameterNode = p = widget.logic.getParameterNode()
    p.inputVolume = scene.GetFirstNodeByName("X-ray 1")
    widget._observeResultsOf(p)
    curve = scene.GetFirstNodeByName("Femur contour")
    landmarks = scene.GetFirstNodeByName("Femur contour landmarks")
    assert widget._observedContour is curve and widget.logic.nodes["landmarks"] is landmarks

    curve.SetNthControlPointPositionWorld(5, *g.uv_to_ras(p.inputVolume, [[contour[5, 0], 27.0]])[0])
    curve.GetDisplayNode().SetActiveControlPoint(5)
    curve.InvokeEvent(slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent)  # the user releases the point
    assert np.allclose(g.markups_to_uv(curve, p.inputVolume)[:, 1], 27.0, atol=1e-4)  # re-fitted: all followed
    assert g.control_point_labels(landmarks) == ["femoral head", "greater trochanter", "shaft"]
    assert np.allclose(g.markups_to_uv(landmarks, p.inputVolume), [[5.0, 27.0], [contour[5, 0], 27.0], [50.0, 27.0]],
                       atol=1e-4)
    assert "1 point(s) fixed by you" in p.resultText
    assert curve.GetNthControlPointDescription(5) == "edited by hand"


def test_simulator_estimates_missing_landmarks_and_never_leaves_a_stale_outline(modules, monkeypatch):
    """A femur mesh without landmarks: Render failed ("Give landmarks with a 'head_center' point") after the DRR was
    re-rendered, so the old outline stayed over the new DRR. Now the landmarks are estimated from the mesh as
    ``deepmorph drr --mesh`` without --landmarks does (femur.estimate_landmarks); a femur that cannot be projected
    fails before the DRR changes; without a femur, the old outline is hidden."""
    import slicer

    from DeepMorphSimulatorLib import simulator_logic
    from DeepMorphSimulatorLib.geometry import ras_from_lps
    from DeepMorphSimulatorLib.phantom import make_phantom

    def render_drr(ct_hu, geometry, step_mm=0.5, method="auto", device="auto"):
        return types.SimpleNamespace(image=np.full((geometry.height_px, geometry.width_px), 128, np.uint8))

    fake(monkeypatch, "DeepMorphSimulatorLib.drr", render_drr=render_drr)
    femur = make_phantom(0, sides=("right",), spacing_mm=3.0).femurs["right"]
    scene = slicer.mrmlScene
    logic = modules["DeepMorphSimulator"].DeepMorphSimulatorLogic()
    p = logic.getParameterNode()
    from DeepMorphSimulatorLib.volume import Volume

    p.ctVolume = g.volume_to_node(Volume(np.zeros((20, 20, 20), np.int16), [10.0] * 3, [-190.0, -100.0, -80.0]),
                                  scene, "CT")
    p.femur = g.polydata_to_model_node(scene, femur.mesh, "femur")
    p.isocenter = g.points_to_fiducials(scene, ras_from_lps(femur.landmarks["head_center"]), ["isocentre"])
    p.detectorWidthPx = p.detectorHeightPx = 160
    p.pixelMm, p.orbitalDeg = 1.0, 20.0
    nodes = logic.process(p)  # no landmarks
    geometry = simulator_logic.geometry_of(nodes["drr"])
    cx, cy, r = g.circle_from_markups(nodes["head_circle"], nodes["drr"])
    truth = geometry.project(femur.landmarks["head_center"])[0]  # the phantom's own head centre and radius
    assert np.hypot(cx - truth[0], cy - truth[1]) < 1.0
    assert abs(r - femur.head_radius_mm * geometry.magnification / geometry.pixel_mm) < 1.0
    assert nodes["outline"].GetDisplayNode().GetVisibility()
    assert "greater_trochanter" in g.control_point_labels(nodes["landmarks"])  # estimated, projected

    import vtk

    sphere = vtk.vtkSphereSource()  # no femur shape to estimate landmarks from
    sphere.SetRadius(20.0)
    sphere.Update()
    p.femur, p.orbitalDeg = g.polydata_to_model_node(scene, sphere.GetOutput(), "ball"), -20.0
    with pytest.raises(ValueError, match="head_center"):
        logic.process(p)
    assert simulator_logic.geometry_of(nodes["drr"]).orbital_deg == 20.0  # the DRR its outline was projected on
    p.femur = None
    logic.process(p)
    assert simulator_logic.geometry_of(nodes["drr"]).orbital_deg == -20.0
    assert not any(nodes[key].GetDisplayNode().GetVisibility() for key in ("outline", "head_circle", "landmarks"))


def test_deepmorph_starts_with_an_xray_not_a_label_map_or_its_own_overlay(modules):
    """The module took the scene's first scalar volume as its input: a label map, or its own confidence map."""
    import slicer

    from DeepMorphLib import fit_logic

    dm = modules["DeepMorph"]
    scene = slicer.mrmlScene
    image = np.tile(np.arange(60, dtype=np.uint8) * 4, (40, 1))
    label = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "femur label")
    fitted = g.image_to_node(image, scene, "fitted X-ray")
    _, nodes = fit_logic.fit_xray_node(scene, fitted, "head", predict=lambda x: np.zeros(x.shape, np.float32))
    scene.RemoveNode(fitted)  # its confidence map stays, now the first scalar volume after the label map
    assert nodes["confidence"].GetAttribute(fit_logic.RESULT_ATTRIBUTE) == "confidence"
    xray = g.image_to_node(image, scene, "X-ray")

    widget = dm.DeepMorphWidget()
    widget.logic = dm.DeepMorphLogic()
    widget.setParameterNode = lambda p: setattr(widget, "_parameterNode", p)  # no GUI to connect here
    assert scene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode") is label
    widget.initializeParameterNode()
    assert widget._parameterNode.inputVolume is xray
    scene.RemoveNode(label)
    widget._parameterNode.inputVolume = None
    widget.initializeParameterNode()  # the confidence map is now the first scalar volume
    assert scene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode") is nodes["confidence"]
    assert widget._parameterNode.inputVolume is xray
    scene.RemoveNode(xray)
    assert fit_logic.first_xray_node(scene) is None  # none rather than a label map or an overlay
