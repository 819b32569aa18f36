"""DeepMorphSimulator: 3D Slicer scripted module (thin adapter; the real code is in DeepMorphSimulatorLib)."""
import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)


class DeepMorphSimulator(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "DeepMorphSimulator"
        self.parent.categories = ["DeepMorph"]
        self.parent.contributors = ["DeepMorph developers"]
        self.parent.helpText = "Work in progress."
        self.parent.acknowledgementText = "Method: deep morphing (network confidence map + shape fit)."


class DeepMorphSimulatorWidget(ScriptedLoadableModuleWidget):
    pass


class DeepMorphSimulatorLogic(ScriptedLoadableModuleLogic):
    pass


class DeepMorphSimulatorTest(ScriptedLoadableModuleTest):
    def runTest(self):
        slicer.mrmlScene.Clear()
