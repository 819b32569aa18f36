"""DeepMorph Simulator: DRRs and training data from a CT (3D Slicer scripted module).

Thin Qt adapter in the shape of Slicer's TemplateKey module: the computations are in
DeepMorphSimulatorLib (``simulator_logic``, ``mrml_glue``, ``background_job``), which the headless
tests cover.
"""
import logging
import os
import pathlib
import shutil
import sys
import time
from typing import Annotated, Optional, Union

import qt
import vtk

import slicer
from slicer import (
    vtkMRMLLabelMapVolumeNode,
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLModelNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
)
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import *  # noqa: F403
from slicer.util import VTKObservationMixin

#
# DeepMorphSimulator
#


class DeepMorphSimulator(ScriptedLoadableModule):  # noqa: F405
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)  # noqa: F405
        self.parent.title = _("DeepMorph Simulator")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "DeepMorph")]
        self.parent.dependencies = []
        self.parent.contributors = ["DeepMorph developers"]
        self.parent.helpText = _("""
Simulates fluoroscopic X-ray images (digitally reconstructed radiographs, DRRs) from a CT with a C-arm
geometry (source-detector and source-isocentre distances in mm, detector size in pixels and pixel pitch in mm,
orbital/angular/in-plane angles in degrees). <b>Render DRR</b> shows the DRR on the detector plane, the
projected femur outline, the femoral head circle and the named landmarks; the C-arm is drawn in 3D.
<b>Generate dataset</b> runs <code>deepmorph dataset</code> in the background to make training data.
See <a href="https://github.com/deepmorph/SlicerDeepMorph#readme">the documentation</a>.
""")
        self.parent.acknowledgementText = _("""
DRR model and training-data design follow the deep morphing method (segmentation network confidence maps
fitted with a circle or a point distribution model). Built on 3D Slicer's MRML, markups and volumes.
""")


#
# DeepMorphSimulatorParameterNode
#


@parameterNodeWrapper
class DeepMorphSimulatorParameterNode:
    """Inputs, C-arm geometry (mm, px, degrees; isocentre = first point of ``isocenter`` in RAS)
    and training-data settings of the simulator."""

    ctVolume: vtkMRMLScalarVolumeNode
    femur: Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode, vtkMRMLModelNode, None] = None
    landmarks: Optional[vtkMRMLMarkupsFiducialNode] = None
    isocenter: Optional[vtkMRMLMarkupsFiducialNode] = None
    sidMm: Annotated[float, WithinRange(300.0, 2000.0)] = 1000.0
    sodMm: Annotated[float, WithinRange(100.0, 1900.0)] = 600.0
    detectorWidthPx: Annotated[int, WithinRange(16, 2048)] = 448
    detectorHeightPx: Annotated[int, WithinRange(16, 2048)] = 448
    pixelMm: Annotated[float, WithinRange(0.05, 5.0)] = 0.6
    orbitalDeg: Annotated[float, WithinRange(-180.0, 180.0)] = 0.0
    angularDeg: Annotated[float, WithinRange(-90.0, 90.0)] = 0.0
    inplaneDeg: Annotated[float, WithinRange(-180.0, 180.0)] = 0.0
    stepMm: Annotated[float, WithinRange(0.1, 5.0)] = 0.5
    showCArm: bool = True
    drrVolume: Optional[vtkMRMLScalarVolumeNode] = None
    usePhantoms: bool = False
    outputDirectory: pathlib.Path = pathlib.Path.home() / "DeepMorph" / "dataset"
    numberOfSamples: Annotated[int, WithinRange(1, 1000000)] = 1000
    imageSizePx: Annotated[int, WithinRange(64, 1024)] = 256
    implantProbability: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    workers: Annotated[int, WithinRange(1, 64)] = 2
    seed: Annotated[int, WithinRange(0, 2147483647)] = 0


#
# DeepMorphSimulatorWidget
#


class DeepMorphSimulatorWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):  # noqa: F405
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)  # noqa: F405
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._jobTimer = qt.QTimer()
        self._jobTimer.setInterval(250)
        self._jobTimer.timeout.connect(self.onPollJob)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)  # noqa: F405
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/DeepMorphSimulator.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = DeepMorphSimulatorLogic()

        self.ui.isocenterPlaceWidget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceSingleMarkup
        self.ui.isocenterSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.ui.isocenterPlaceWidget.setCurrentNode)
        self.ui.progressBar.hide()
        self.ui.logTextEdit.hide()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.renderButton.connect("clicked(bool)", self.onRenderButton)
        self.ui.generateButton.connect("clicked(bool)", self.onGenerateButton)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()
        if self._job is not None and self._job.running:
            self._job.cancel()
        self._jobTimer.stop()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)
        self.logic.carmNodes, self.logic.groundTruthNodes = {}, {}

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.ctVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode and not firstVolumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.ctVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: Optional[DeepMorphSimulatorParameterNode]) -> None:
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
        canRender = bool(p and p.ctVolume)
        self.ui.renderButton.enabled = canRender
        self.ui.renderButton.toolTip = _("Render the DRR") if canRender else _("Select a CT volume")
        running = self._job is not None and self._job.running
        canGenerate = bool(p and (p.usePhantoms or (p.ctVolume and p.femur)))
        self.ui.generateButton.enabled = running or canGenerate
        if not running:
            self.ui.generateButton.toolTip = (
                _("Generate training data in the background") if canGenerate
                else _("Select a CT and the femur, or use the built-in phantoms")
            )

    def onRenderButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to render the DRR."), waitCursor=True):
            self.logic.installRequirements(self.resourcePath("requirements.txt"))
            startTime = time.time()
            nodes = self.logic.process(self._parameterNode)
            self.logic.showInViews(nodes["drr"])
            self.ui.statusLabel.text = _("DRR rendered in {seconds:.1f} s.").format(seconds=time.time() - startTime)

    def onGenerateButton(self) -> None:
        if self._job is not None and self._job.running:
            self._job.cancel(wait=False)  # the timer keeps polling until the process has stopped
            self.ui.generateButton.text = _("Cancelling...")
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to start the dataset generation."), waitCursor=True):
            self.logic.installRequirements(self.resourcePath("requirements.txt"))
            self._job = self.logic.startDatasetGeneration(self._parameterNode)
            self.ui.logTextEdit.clear()
            self.ui.logTextEdit.show()
            self.ui.progressBar.show()
            self.ui.progressBar.setRange(0, 0)  # busy until the first progress line
            self.ui.generateButton.text = _("Cancel")
            self._jobTimer.start()

    def onPollJob(self) -> None:
        job = self._job
        if job is None:
            return
        for line in job.poll():
            self.ui.logTextEdit.appendPlainText(line)
        if job.progress is not None:
            self.ui.progressBar.setRange(0, job.progress[1])
            self.ui.progressBar.setValue(job.progress[0])
        if job.running:
            return
        self._jobTimer.stop()
        self.ui.generateButton.text = _("Generate dataset")
        self.ui.progressBar.hide()
        messages = {
            "finished": _("Dataset written to {folder}."),
            "cancelled": _("Cancelled; re-run with the same settings to resume."),
            "failed": _("Dataset generation failed (see the log)."),
        }
        self.ui.statusLabel.text = messages[job.state].format(folder=self._parameterNode.outputDirectory)
        self._checkCanApply()


#
# DeepMorphSimulatorLogic
#


class DeepMorphSimulatorLogic(ScriptedLoadableModuleLogic):  # noqa: F405
    """Usable from the Python console without the widget; delegates to DeepMorphSimulatorLib."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)  # noqa: F405
        self.carmNodes = {}
        self.groundTruthNodes = {}

    def getParameterNode(self):
        return DeepMorphSimulatorParameterNode(super().getParameterNode())

    @staticmethod
    def installRequirements(requirementsPath) -> None:
        from DeepMorphSimulatorLib.dependencies import ensure_requirements

        ensure_requirements(requirementsPath, requester="DeepMorph Simulator")

    def geometry(self, p):
        """The C-arm geometry of the parameter node (isocentre: the marked point or the CT's centre)."""
        from DeepMorphSimulatorLib import simulator_logic

        iso = simulator_logic.isocenter_ras(p.ctVolume, p.isocenter)
        return simulator_logic.geometry_from_parameters(
            p.sidMm, p.sodMm, p.detectorWidthPx, p.detectorHeightPx, p.pixelMm, p.orbitalDeg, p.angularDeg,
            p.inplaneDeg, isocenter_ras=iso,
        )

    def process(self, p) -> dict:
        """Render the DRR into ``p.drrVolume`` (created if None), project the femur, draw the C-arm."""
        from DeepMorphSimulatorLib import mrml_glue, simulator_logic

        if not p.ctVolume:
            raise ValueError(_("Select a CT volume."))
        startTime = time.time()
        geometry = self.geometry(p)
        # the femur first: one that cannot be projected fails before the DRR changes (no outline left stale over it)
        femur = simulator_logic.femur_for_projection(p.femur, p.landmarks) if p.femur else None
        drr = simulator_logic.render_drr_node(
            slicer.mrmlScene, p.ctVolume, geometry, drr_node=p.drrVolume,
            name=slicer.mrmlScene.GenerateUniqueName(f"{p.ctVolume.GetName()} DRR"), step_mm=p.stepMm,
        )
        p.drrVolume = drr
        nodes = {"drr": drr}
        if femur is not None:  # drawn anew, what is not drawn this time hidden
            self.groundTruthNodes = simulator_logic.ground_truth_to_markups(
                slicer.mrmlScene, drr, p.femur, p.landmarks, geometry, nodes=self.groundTruthNodes, femur=femur
            )
        else:  # none left stale over the new DRR
            self.groundTruthNodes = simulator_logic.hide_ground_truth(slicer.mrmlScene, self.groundTruthNodes)
        nodes.update(self.groundTruthNodes)
        self.carmNodes = mrml_glue.nodes_in_scene(slicer.mrmlScene, self.carmNodes)  # deleted, or scene closed
        if p.showCArm:
            self.carmNodes = simulator_logic.draw_carm(slicer.mrmlScene, geometry, nodes=self.carmNodes)
            nodes.update(self.carmNodes)
        for node in self.carmNodes.values():
            node.GetDisplayNode().SetVisibility(bool(p.showCArm))
        logging.info(f"DRR {geometry.width_px}x{geometry.height_px} rendered in {time.time() - startTime:.2f} s")
        return nodes

    @staticmethod
    def showInViews(drrNode) -> None:
        """Show the DRR face-on and upright in the Red slice view (the DRR lies on the detector in 3D)."""
        from DeepMorphSimulatorLib.mrml_glue import align_slice_to_image

        slicer.util.setSliceViewerLayers(background=drrNode, foreground=None)
        sliceWidget = slicer.app.layoutManager().sliceWidget("Red")
        align_slice_to_image(sliceWidget.mrmlSliceNode(), drrNode)
        sliceWidget.sliceLogic().FitSliceToBackground()

    def startDatasetGeneration(self, p):
        """Write the inputs next to the dataset and start ``deepmorph dataset`` (returns the BackgroundJob)."""
        from DeepMorphSimulatorLib import simulator_logic
        from DeepMorphSimulatorLib.background_job import BackgroundJob, python_module_command

        out = pathlib.Path(p.outputDirectory)
        inputs = None
        if not p.usePhantoms:
            inputs = simulator_logic.export_dataset_inputs(p.ctVolume, p.femur, p.landmarks, out / "inputs")
        args = simulator_logic.dataset_arguments(
            out, p.numberOfSamples, p.imageSizePx, inputs, implants=p.implantProbability, workers=p.workers,
            seed=p.seed,
        )
        python = shutil.which("PythonSlicer") or sys.executable
        command = python_module_command("DeepMorphLib.cli", *args, python=python)
        logging.info("Starting: " + " ".join(command))
        env = simulator_logic.lib_environment(base=slicer.util.startupEnvironment())
        return BackgroundJob(command, env=env, cwd=os.path.dirname(__file__)).start()


#
# DeepMorphSimulatorTest
#


class DeepMorphSimulatorTest(ScriptedLoadableModuleTest):  # noqa: F405
    """Runs inside Slicer (Developer mode > Reload and Test) on a generated phantom."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_DeepMorphSimulator_render()
        self.setUp()
        self.test_DeepMorphSimulator_background_job()

    def test_DeepMorphSimulator_render(self):
        import numpy as np

        from DeepMorphSimulatorLib import mrml_glue
        from DeepMorphSimulatorLib.geometry import ras_from_lps
        from DeepMorphSimulatorLib.phantom import make_phantom

        self.delayDisplay("Generating a phantom")
        phantom = make_phantom(0, sides=("right",), spacing_mm=2.0)
        femur = phantom.femurs["right"]
        scene = slicer.mrmlScene
        logic = DeepMorphSimulatorLogic()
        p = logic.getParameterNode()
        p.ctVolume = mrml_glue.volume_to_node(phantom.ct, scene, "phantom CT")
        p.femur = mrml_glue.polydata_to_model_node(scene, femur.mesh, "phantom femur")
        p.landmarks = mrml_glue.landmarks_to_fiducials(scene, femur.landmarks, name="phantom landmarks")
        p.isocenter = mrml_glue.points_to_fiducials(scene, ras_from_lps(femur.landmarks["head_center"]), ["isocentre"])
        p.detectorWidthPx = p.detectorHeightPx = 256
        p.pixelMm = 1.0
        self.delayDisplay("Rendering")
        nodes = logic.process(p)
        logic.showInViews(nodes["drr"])
        image = mrml_glue.node_to_image(nodes["drr"])
        self.assertEqual(image.shape, (256, 256))
        cx, cy, r = mrml_glue.circle_from_markups(nodes["head_circle"], nodes["drr"])
        self.assertLess(np.hypot(cx - 127.5, cy - 127.5), 1.5)  # the isocentre is the head centre
        expected = femur.head_radius_mm * p.sidMm / p.sodMm / p.pixelMm
        self.assertLess(abs(r - expected), 0.1 * expected)
        self.assertTrue(nodes["carm_points"].GetLocked())
        self.delayDisplay("Test passed")

    def test_DeepMorphSimulator_background_job(self):
        from DeepMorphSimulatorLib.background_job import BackgroundJob

        python = shutil.which("PythonSlicer") or sys.executable
        job = BackgroundJob([python, "-c", "import time\nfor i in range(4): print(f'{i + 1}/4', flush=True); time.sleep(0.05)"])
        job.start()
        deadline = time.time() + 30
        while job.running and time.time() < deadline:
            slicer.app.processEvents()  # the GUI stays responsive while polling
            job.poll()
            time.sleep(0.02)
        self.assertEqual(job.state, "finished")
        self.assertEqual(job.progress, (4, 4))
        self.delayDisplay("Test passed")
