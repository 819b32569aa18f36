"""DeepMorph: 3D Slicer scripted module (thin adapter; the real code is in DeepMorphLib)."""
import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)


class DeepMorph(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "DeepMorph"
        self.parent.categories = ["DeepMorph"]
        self.parent.contributors = ["DeepMorph developers"]
        self.parent.helpText = "Work in progress."
        self.parent.acknowledgementText = "Method: deep morphing (network confidence map + shape fit)."


class DeepMorphWidget(ScriptedLoadableModuleWidget):
    pass


class DeepMorphLogic(ScriptedLoadableModuleLogic):
    pass


class DeepMorphTest(ScriptedLoadableModuleTest):
    def runTest(self):
        slicer.mrmlScene.Clear()
