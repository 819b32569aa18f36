"""The two scripted modules without Slicer: .py compiles, .ui is valid Qt Designer XML whose
SlicerParameterName properties match the parameter node and can be connected, and every name the
module uses (widgets, Lib functions) exists."""
import ast
import importlib
import py_compile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = ("DeepMorphSimulator", "DeepMorph")

# Widget class -> predicate on the field's annotation source text, as Slicer's GUI connectors accept them
# (Base/Python/slicer/parameterNodeWrapper/guiConnectors.py).
NODE = ("vtkMRML",)
CONNECTABLE = {
    "qMRMLNodeComboBox": lambda a: "vtkMRML" in a,
    "QCheckBox": lambda a: a == "bool",
    "QSpinBox": lambda a: a.startswith("Annotated[int") or a == "int",
    "QDoubleSpinBox": lambda a: a.startswith("Annotated[float") or a == "float",
    "ctkSliderWidget": lambda a: a.startswith(("Annotated[float", "Annotated[int")) and "WithinRange" in a,
    "QComboBox": lambda a: a in ENUMS or "Choice" in a,
    "ctkDirectoryButton": lambda a: a == "pathlib.Path",
    "ctkPathLineEdit": lambda a: a == "pathlib.Path",
    "QLabel": lambda a: a == "str",
    "QLineEdit": lambda a: a == "str",
}
ENUMS = set()


def module_tree(module):
    path = ROOT / module / f"{module}.py"
    return path, ast.parse(path.read_text())


def parameter_fields(tree) -> dict[str, str]:
    """Fields of the @parameterNodeWrapper class: name -> annotation source."""
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(
            getattr(d, "id", None) == "parameterNodeWrapper" for d in node.decorator_list
        ):
            return {
                item.target.id: ast.unparse(item.annotation)
                for item in node.body
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
            }
    raise AssertionError("no @parameterNodeWrapper class")


def enum_names(tree) -> set[str]:
    return {
        n.name for n in tree.body
        if isinstance(n, ast.ClassDef) and any(ast.unparse(b) in ("enum.Enum", "Enum") for b in n.bases)
    }


def ui_widgets(module):
    root = ET.parse(ROOT / module / "Resources" / "UI" / f"{module}.ui").getroot()
    return root, {w.get("name"): w for w in root.iter("widget")}


def parameter_name(widget):
    for prop in widget.findall("property"):
        if prop.get("name") == "SlicerParameterName":
            return prop.findtext("string")
    return None


@pytest.mark.parametrize("module", MODULES)
def test_module_compiles(module, tmp_path):
    py_compile.compile(str(ROOT / module / f"{module}.py"), cfile=str(tmp_path / "m.pyc"), doraise=True)


@pytest.mark.parametrize("module", MODULES)
def test_ui_parameter_names_match_connectable_fields(module):
    _, tree = module_tree(module)
    fields = parameter_fields(tree)
    ENUMS.update(enum_names(tree))
    root, widgets = ui_widgets(module)
    assert root.tag == "ui" and root.findtext("class") == module
    named = {name: w for name, w in widgets.items() if parameter_name(w)}
    assert named, "no SlicerParameterName in the .ui"
    for name, widget in named.items():
        param = parameter_name(widget)
        assert param in fields, f"{name}: SlicerParameterName '{param}' is not a field of the parameter node"
        cls = widget.get("class")
        assert cls in CONNECTABLE, f"{name}: no GUI connector for {cls}"
        assert CONNECTABLE[cls](fields[param]), f"{name} ({cls}) cannot be connected to {param}: {fields[param]}"
    params = [parameter_name(w) for w in named.values()]
    assert len(params) == len(set(params)), "a parameter is bound to two widgets"


@pytest.mark.parametrize("module", MODULES)
def test_node_selectors_offer_the_node_classes_of_their_field(module):
    """The node connector replaces a selector's nodeTypes with its field's classes (guiConnectors.py
    qMRMLNodeComboBoxToNodeConnector): the .ui lists the same ones, and the X-ray selector offers colour images
    (vector volumes, as Slicer loads a colour PNG/JPEG), which a scalar-only field hid from it."""
    import re

    _, tree = module_tree(module)
    fields = parameter_fields(tree)
    _, widgets = ui_widgets(module)
    offered = {}
    for widget in widgets.values():
        if widget.get("class") == "qMRMLNodeComboBox" and parameter_name(widget):
            types_prop = [p for p in widget.findall("property") if p.get("name") == "nodeTypes"]
            ui_types = {s.text for p in types_prop for s in p.iter("string")}
            field_types = set(re.findall(r"vtkMRML\w+", fields[parameter_name(widget)]))
            assert ui_types == field_types, f"{widget.get('name')}: .ui {ui_types} vs field {field_types}"
            offered[parameter_name(widget)] = field_types
    if module == "DeepMorph":
        assert offered["inputVolume"] == {"vtkMRMLScalarVolumeNode", "vtkMRMLVectorVolumeNode"}


def test_confirmation_defaults_match_the_pipeline():
    """The DeepMorph module's femur minimum confidence starts at femur_confirm.FEMUR_MIN_QUALITY, the head rule on."""
    from DeepMorphLib.femur_confirm import FEMUR_MIN_QUALITY

    _, tree = module_tree("DeepMorph")
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "DeepMorphParameterNode")
    defaults = {i.target.id: ast.literal_eval(i.value) for i in cls.body
                if isinstance(i, ast.AnnAssign) and isinstance(i.target, ast.Name) and i.target.id in
                ("femurMinQuality", "keepUnconfirmedHead")}
    assert defaults == {"femurMinQuality": FEMUR_MIN_QUALITY, "keepUnconfirmedHead": False}


@pytest.mark.parametrize("module", MODULES)
def test_ui_custom_widgets_declared_and_scene_connected(module):
    root, widgets = ui_widgets(module)
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    qt_builtin = {"QLabel", "QPushButton", "QCheckBox", "QSpinBox", "QDoubleSpinBox", "QComboBox", "QWidget",
                  "QProgressBar", "QPlainTextEdit", "QLineEdit"}
    for name, widget in widgets.items():
        cls = widget.get("class")
        assert cls in qt_builtin or cls in declared, f"{name}: custom widget {cls} not declared"
    receivers = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"}
    for name, widget in widgets.items():
        if widget.get("class") in ("qMRMLNodeComboBox", "qSlicerMarkupsPlaceWidget"):
            assert name in receivers, f"{name} does not get the MRML scene"


@pytest.mark.parametrize("module", MODULES)
def test_module_uses_only_existing_widgets(module):
    path, tree = module_tree(module)
    _, widgets = ui_widgets(module)
    used = {
        node.attr for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
        and node.value.attr == "ui" and getattr(node.value.value, "id", None) == "self"
    }
    assert used, "the widget uses no self.ui.* names?"
    assert not used - set(widgets), f"{path.name} uses widgets missing from the .ui: {sorted(used - set(widgets))}"


@pytest.mark.parametrize("module", MODULES)
def test_module_uses_only_existing_lib_names(module):
    """``from DeepMorph*Lib.x import y`` and ``x.y`` in the module refer to real Lib names (when x exists)."""
    _, tree = module_tree(module)
    checked = 0
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(("DeepMorphLib", "DeepMorphSimulatorLib")):
            for alias in node.names:
                target = f"{node.module}.{alias.name}"
                try:
                    mod = importlib.import_module(target)  # a submodule
                    aliases[alias.asname or alias.name] = mod
                    continue
                except ModuleNotFoundError:
                    pass
                try:
                    parent = importlib.import_module(node.module)
                except ModuleNotFoundError:
                    continue  # a Lib piece still being built elsewhere
                assert hasattr(parent, alias.name), f"{node.module} has no {alias.name}"
                checked += 1
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            assert hasattr(aliases[node.value.id], node.attr), f"{node.value.id}.{node.attr} does not exist"
            checked += 1
    assert checked > 3


@pytest.mark.parametrize("module", MODULES)
def test_module_metadata_and_self_test(module):
    _, tree = module_tree(module)
    text = (ROOT / module / f"{module}.py").read_text()
    for needle in ("helpText", "acknowledgementText", "contributors", "categories", "tryWithErrorDisplay",
                   "connectGui", "disconnectGui", "def runTest", f"class {module}Test(", f"class {module}Logic(",
                   f"class {module}Widget("):
        assert needle in text, f"{module}.py lacks {needle}"
    assert (ROOT / module / "Resources" / "Icons" / f"{module}.png").is_file()
    assert (ROOT / module / "Resources" / "requirements.txt").is_file()
    # the module file is thin: no numerics, no top-level import of heavy or Lib packages
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            for name in names:
                assert not name.startswith(("torch", "numpy", "DeepMorph", "scipy", "numba")), (
                    f"{module}.py imports {name} at module level; import it where it is used"
                )
    assert len(text.splitlines()) < 450


def test_requirements_never_list_slicer_bundled_or_torch():
    from DeepMorphSimulatorLib.dependencies import read_requirements

    for module in MODULES:
        names = [r.split(">")[0].split("=")[0].strip().lower() for r in
                 read_requirements(ROOT / module / "Resources" / "requirements.txt")]
        assert names and not {"torch", "vtk", "simpleitk", "numpy"} & set(names), names


def test_missing_requirements_check():
    from DeepMorphSimulatorLib.dependencies import missing_requirements

    assert missing_requirements(["numpy>=1.0", "pytest"]) == []
    assert missing_requirements(["numpy>=999", "surely-not-installed-pkg-xyz"]) == [
        "numpy>=999", "surely-not-installed-pkg-xyz"]
