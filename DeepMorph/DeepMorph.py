"""DeepMorph: find the femoral head circle or the proximal femur contour in an X-ray (3D Slicer module).

Thin Qt adapter in the shape of Slicer's TemplateKey module: the work is done in DeepMorphLib
(``fit_logic``, ``mrml_glue``), which the headless tests cover.
"""
import enum
import logging
import pathlib
import time
from typing import Annotated, Optional, Union

import vtk

import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLVectorVolumeNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import *  # noqa: F403
from slicer.util import VTKObservationMixin

#
# DeepMorph
#


class DeepMorph(ScriptedLoadableModule):  # noqa: F405
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)  # noqa: F405
        self.parent.title = _("DeepMorph")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "DeepMorph")]
        self.parent.dependencies = []
        self.parent.contributors = ["DeepMorph developers"]
        self.parent.helpText = _("""
Finds the femur in an X-ray by <i>deep morphing</i>: a segmentation network predicts the bone outline as a
confidence map (shown as a coloured overlay), then a circle (femoral head) or a statistical shape model
(proximal femur contour with the femoral head, neck, greater and lesser trochanter and shaft landmarks) is
fitted to it. A fit that finds too little outline is reported as <b>not detected</b>, never guessed; a circle or
contour that was found but that nothing confirms is shown in orange as "unconfirmed", for review (the
<i>Femur minimum confidence</i> and <i>Report a head circle that nothing confirms</i> settings change these rules).
Drag contour points to correct the femur contour: the rest follows the shape model. A fluoroscopy run (a multi-frame
X-ray) is fitted on the frame shown in the Red view.
See <a href="https://github.com/deepmorph/SlicerDeepMorph#readme">the documentation</a>.
""")
        self.parent.acknowledgementText = _("""
Method: deep morphing (FusionNet confidence maps + circle fit / point distribution model fit), trained on
DRRs simulated by the DeepMorph Simulator module. Built on 3D Slicer's MRML, markups and volumes.
""")


#
# DeepMorphParameterNode
#


class Task(enum.Enum):
    HEAD = "head"
    FEMUR = "femur"

    def label(self):
        return {"head": _("Femoral head circle"), "femur": _("Proximal femur contour")}[self.value]


class ModelSource(enum.Enum):
    SHIPPED = "shipped"
    FILE = "file"

    def label(self):
        return {"shipped": _("Shipped with DeepMorph"), "file": _("Model file")}[self.value]


class Polarity(enum.Enum):
    AUTO = "auto"
    BONE_DARK = "bone-dark"
    BONE_BRIGHT = "bone-bright"

    def label(self):
        return {"auto": _("Detect automatically"), "bone-dark": _("Dark (fluoroscopy)"),
                "bone-bright": _("Bright (radiograph)")}[self.value]


class Side(enum.Enum):
    AUTO = "auto"
    LEFT = "left"
    RIGHT = "right"

    def label(self):
        return {"auto": _("Either (not known)"), "left": _("Left hip"), "right": _("Right hip")}[self.value]


class TestTimeViews(enum.Enum):
    MODEL = "model"
    ONE = "1"
    TWO = "2"
    FOUR = "4"
    EIGHT = "8"

    def label(self):
        if self == TestTimeViews.MODEL:
            return _("As the model says (1 for the shipped ones)")
        return _("1 (fastest)") if self == TestTimeViews.ONE else _("{n} flipped views averaged").format(n=self.value)

    def views(self):
        """Views for ``fit_logic.fit_xray_node(test_time_views=)``: None = each model's sidecar."""
        return None if self == TestTimeViews.MODEL else int(self.value)


@parameterNodeWrapper
class DeepMorphParameterNode:
    """Input X-ray, task, model and display choices; the output nodes are kept for re-fits and scene saving."""

    inputVolume: Union[vtkMRMLScalarVolumeNode, vtkMRMLVectorVolumeNode, None] = None  # colour (RGB) images too
    task: Task = Task.HEAD
    modelSource: ModelSource = ModelSource.SHIPPED
    modelPath: pathlib.Path = pathlib.Path(__file__).parent / "Resources" / "Models" / "head.safetensors"
    polarity: Polarity = Polarity.AUTO
    side: Side = Side.AUTO
    femurMinQuality: Annotated[float, WithinRange(0.0, 1.0)] = 0.35  # femur_confirm.FEMUR_MIN_QUALITY
    keepUnconfirmedHead: bool = False
    testTimeViews: TestTimeViews = TestTimeViews.MODEL
    overlayOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    interactiveCorrection: bool = True
    resultText: str = "No result yet."
    exportDirectory: pathlib.Path = pathlib.Path.home() / "DeepMorph" / "results"
    confidenceVolume: Optional[vtkMRMLScalarVolumeNode] = None


#
# DeepMorphWidget
#


class DeepMorphWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):  # noqa: F405
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)  # noqa: F405
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._observedContour = None
        self._editedPoints = set()

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)  # noqa: F405
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/DeepMorph.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = DeepMorphLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onSceneEndClose)  # e.g. a saved fit
        self.ui.fitButton.connect("clicked(bool)", self.onFitButton)
        self.ui.exportButton.connect("clicked(bool)", self.onExportButton)
        self.ui.screenshotButton.connect("clicked(bool)", self.onScreenshotButton)
        self.ui.opacitySlider.connect("valueChanged(double)", self.onOpacityChanged)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)
        self._observeContour(None)
        self.logic.nodes = {}

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        from DeepMorphLib.fit_logic import first_xray_node

        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:  # an X-ray: not a label map, not one of DeepMorph's results
            self._parameterNode.inputVolume = first_xray_node(slicer.mrmlScene)
        self._observeResultsOf(self._parameterNode)

    def _observeResultsOf(self, p) -> None:
        """Observe the contour of the fit of ``p.inputVolume`` in the scene (a saved scene opened again, too)."""
        contourNode = self.logic.restoreResults(p)
        if contourNode is not self._observedContour:
            self._observeContour(contourNode if p.interactiveCorrection else None)

    def setParameterNode(self, inputParameterNode: Optional[DeepMorphParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        p = self._parameterNode
        canFit = bool(p and p.inputVolume)
        self.ui.fitButton.enabled = canFit
        self.ui.fitButton.toolTip = _("Run the network and the fit") if canFit else _("Select an X-ray image")
        self.ui.modelPathLineEdit.enabled = bool(p and p.modelSource == ModelSource.FILE)
        hasResult = self.logic.result is not None
        self.ui.exportButton.enabled = hasResult
        self.ui.screenshotButton.enabled = hasResult

    def onOpacityChanged(self, value) -> None:
        if self._parameterNode and self._parameterNode.confidenceVolume:
            slicer.util.setSliceViewerLayers(foregroundOpacity=value)

    def onFitButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Fitting failed."), waitCursor=True):
            self.logic.installRequirements(self.resourcePath("requirements.txt"))
            result, nodes = self.logic.process(self._parameterNode)
            self.logic.showInViews(self._parameterNode)
            self._observeContour(nodes.get("contour") if self._parameterNode.interactiveCorrection else None)
            self._checkCanApply()

    def _observeContour(self, contourNode) -> None:
        """Re-fit under the shape model when the user releases a dragged contour point."""
        if self._observedContour is not None:
            self.removeObserver(self._observedContour, slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent,
                                self.onContourEdited)
        self._observedContour = contourNode
        self._editedPoints = set()
        if contourNode is not None:
            self.addObserver(contourNode, slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent, self.onContourEdited)

    def onContourEdited(self, caller, event) -> None:
        index = caller.GetDisplayNode().GetActiveControlPoint()
        if index < 0:
            return
        self._editedPoints.add(index)
        with slicer.util.tryWithErrorDisplay(_("Could not re-fit the edited contour."), waitCursor=True):
            self.logic.refitAfterEdit(self._parameterNode, sorted(self._editedPoints))

    def onExportButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Export failed."), waitCursor=True):
            paths = self.logic.exportResults(self._parameterNode)
            slicer.util.showStatusMessage(_("Results written to {path}").format(path=paths["json"].parent), 5000)

    def onScreenshotButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Screenshot failed."), waitCursor=True):
            path = self.logic.saveScreenshot(self._parameterNode)
            slicer.util.showStatusMessage(_("Screenshot saved to {path}").format(path=path), 5000)


#
# DeepMorphLogic
#


class DeepMorphLogic(ScriptedLoadableModuleLogic):  # noqa: F405
    """Usable from the Python console without the widget; delegates to DeepMorphLib.fit_logic."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)  # noqa: F405
        self.result = None
        self.nodes = {}
        self._pdm = None

    def getParameterNode(self):
        return DeepMorphParameterNode(super().getParameterNode())

    @staticmethod
    def installRequirements(requirementsPath) -> None:
        from DeepMorphSimulatorLib.dependencies import ensure_requirements, ensure_torch

        ensure_torch(requester="DeepMorph")
        ensure_requirements(requirementsPath, requester="DeepMorph")

    def shapeModel(self):
        from DeepMorphLib import fit_logic

        if self._pdm is None:
            self._pdm = fit_logic.load_shape_model()
        return self._pdm

    def process(self, p, predict=None):
        """Fit ``p.inputVolume``; returns (FitResult, nodes) and writes the readout into ``p.resultText``."""
        from DeepMorphLib import fit_logic

        if not p.inputVolume:
            raise ValueError(_("Select an X-ray image."))
        startTime = time.time()
        modelPath = p.modelPath if p.modelSource == ModelSource.FILE else None
        if p.modelSource == ModelSource.FILE and not pathlib.Path(p.modelPath).is_file():
            raise ValueError(_("Choose a model file (.safetensors), or use the shipped model."))
        pdm = self.shapeModel() if p.task == Task.FEMUR else None
        self.restoreResults(p)  # e.g. a scene saved with a fit and opened again: update its nodes, not a second set
        self.result, self.nodes = fit_logic.fit_xray_node(
            slicer.mrmlScene, p.inputVolume, p.task.value, model_path=modelPath, polarity=p.polarity.value,
            side=p.side.value, femur_min_quality=p.femurMinQuality, keep_unconfirmed_head=p.keepUnconfirmedHead,
            test_time_views=p.testTimeViews.views(), nodes=self.nodes, predict=predict, pdm=pdm,
            editable=p.interactiveCorrection, k=self.shownFrame(p.inputVolume),
        )
        p.confidenceVolume = self.nodes.get("confidence")
        p.resultText = self.resultHtml(self.result)
        logging.info(f"DeepMorph {p.task.value} fit in {time.time() - startTime:.2f} s: {self.result.summary()}")
        return self.result, self.nodes

    @staticmethod
    def shownFrame(volumeNode) -> Optional[int]:
        """Slice K of the frame of a multi-frame X-ray the Red view shows (None: another plane, no views: the first)."""
        from DeepMorphLib.mrml_glue import shown_slice_k

        layoutManager = slicer.app.layoutManager()
        return shown_slice_k(layoutManager.sliceWidget("Red").mrmlSliceNode(), volumeNode) if layoutManager else None

    @staticmethod
    def resultHtml(result) -> str:
        if not result.detected:
            return f"<b style='color:#c00000'>{_('NOT DETECTED')}</b><br>{result.summary()}"
        return f"<b>{_('Detected')}</b> ({result.polarity})<br>{result.summary()}"

    def showInViews(self, p) -> None:
        """X-ray in the background, confidence map as coloured foreground, Red view face-on and fitted, on the frame
        fitted of a multi-frame X-ray."""
        from DeepMorphLib.mrml_glue import fit_slice_view_to_image

        slicer.util.setSliceViewerLayers(background=p.inputVolume, foreground=p.confidenceVolume,
                                         foregroundOpacity=p.overlayOpacity)
        k = self.result.frame - 1 if self.result is not None and self.result.frame else 0
        fit_slice_view_to_image(slicer.app.layoutManager().sliceWidget("Red").sliceLogic(), p.inputVolume, k)

    def restoreResults(self, p):
        """The result nodes of ``p.inputVolume`` in the scene become this session's (a saved scene opened again: Fit
        updates them, a dragged point is re-fitted); returns its contour (None: none)."""
        from DeepMorphLib import fit_logic

        if p and p.inputVolume and not self.nodes:
            self.nodes = fit_logic.result_nodes(slicer.mrmlScene, p.inputVolume)
        return self.nodes.get("contour")

    def refitAfterEdit(self, p, editedIndices) -> None:
        """Keep the user's moved points, re-fit the rest of the contour with the PDM, move the landmarks."""
        from DeepMorphLib import fit_logic

        if self.nodes.get("contour") is None:
            return
        shape = fit_logic.refit_edited_nodes(self.nodes, p.inputVolume, self.shapeModel(), editedIndices, self.result)
        if self.result is not None:  # None: a reopened scene's fit
            self.result.contour = shape
        result = self.resultHtml(self.result) + "<br>" if self.result is not None else ""
        p.resultText = result + _("Edited: {n} point(s) fixed by you.").format(n=len(editedIndices))

    def _exportBase(self, p) -> pathlib.Path:
        name = p.inputVolume.GetName() if p.inputVolume else "xray"
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        frame = f"_f{self.result.frame:04d}" if self.result is not None and self.result.frame else ""  # as `fit` names
        return pathlib.Path(p.exportDirectory) / f"{safe}{frame}-{p.task.value}"

    def exportResults(self, p) -> dict:
        """Write the current result as JSON and CSV into ``p.exportDirectory``."""
        from DeepMorphLib import fit_logic

        if self.result is None:
            raise ValueError(_("Run a fit first."))
        return fit_logic.export_result(self.result, self._exportBase(p))

    def saveScreenshot(self, p) -> pathlib.Path:
        """Capture the Red slice view (X-ray, overlay and markups) as PNG."""
        import ScreenCapture

        path = self._exportBase(p).with_suffix(".png")
        path.parent.mkdir(parents=True, exist_ok=True)
        view = slicer.app.layoutManager().sliceWidget("Red").sliceView()
        ScreenCapture.ScreenCaptureLogic().captureImageFromView(view, str(path))
        return path


#
# DeepMorphTest
#


class DeepMorphTest(ScriptedLoadableModuleTest):  # noqa: F405
    """Runs inside Slicer (Developer mode > Reload and Test) on a simulated phantom X-ray."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_DeepMorph_head()
        self.setUp()
        self.test_DeepMorph_not_detected()

    def simulatedXray(self):
        from DeepMorphSimulatorLib.drr import render_drr
        from DeepMorphSimulatorLib.geometry import CArmGeometry
        from DeepMorphSimulatorLib.mrml_glue import image_to_node
        from DeepMorphSimulatorLib.phantom import make_phantom
        from DeepMorphSimulatorLib.projection import project_ground_truth

        phantom = make_phantom(5, sides=("right",))
        femur = phantom.femurs["right"]
        geometry = CArmGeometry(isocenter_lps=tuple(femur.landmarks["head_center"]), orbital_deg=10.0)
        image = render_drr(phantom.ct, geometry).image
        truth = project_ground_truth(femur.mesh, femur.landmarks, femur.head_radius_mm, geometry)
        return image_to_node(image, slicer.mrmlScene, "simulated X-ray"), truth

    def test_DeepMorph_head(self):
        import numpy as np

        from DeepMorphLib import fit_logic

        if not fit_logic.shipped_model_path("head").is_file():
            self.skipTest("no shipped head model in this build")
        self.delayDisplay("Simulating an X-ray")
        xray, truth = self.simulatedXray()
        logic = DeepMorphLogic()
        p = logic.getParameterNode()
        p.inputVolume = xray
        p.task = Task.HEAD
        result, nodes = logic.process(p)
        logic.showInViews(p)
        self.assertTrue(result.detected, result.summary())
        cx, cy, r = truth.head_circle
        self.assertLess(np.hypot(result.circle[0] - cx, result.circle[1] - cy), 5.0)
        self.assertIn("radius", p.resultText)
        self.assertTrue(nodes["head_circle"].GetDisplayNode().GetVisibility())
        self.delayDisplay("Test passed")

    def test_DeepMorph_not_detected(self):
        import numpy as np

        from DeepMorphSimulatorLib.mrml_glue import image_to_node

        stripes = np.full((128, 128), 200, np.uint8)
        stripes[::2] = 210  # some contrast (a constant image is refused as holding no X-ray), and no femur
        blank = image_to_node(stripes, slicer.mrmlScene, "blank")
        logic = DeepMorphLogic()
        p = logic.getParameterNode()
        p.inputVolume = blank
        p.task = Task.HEAD
        result, _nodes = logic.process(p, predict=lambda image: np.zeros(image.shape, np.float32))
        self.assertFalse(result.detected)
        self.assertIn("NOT DETECTED", p.resultText)
        self.delayDisplay("Test passed")
