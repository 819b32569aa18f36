"""DeepMorphSimulator logic on MRML nodes, headless: CT node -> DRR node + markups, C-arm in 3D, dataset inputs.

The DRR renderer and ground-truth projection are replaced by small stand-ins here (monkeypatched
modules), so these tests check the MRML side; ``test_simulator_logic_end_to_end`` uses the real ones
when they are present.
"""
import json
import sys
import types

import numpy as np
import pytest

pytest.importorskip("slicer")

from DeepMorphSimulatorLib import mrml_glue as g  # noqa: E402
from DeepMorphSimulatorLib import simulator_logic as logic  # noqa: E402
from DeepMorphSimulatorLib.geometry import CArmGeometry, lps_from_ras, ras_from_lps  # noqa: E402
from DeepMorphSimulatorLib.volume import Volume  # noqa: E402


@pytest.fixture(scope="module")
def app():
    return g.create_headless_slicer()


@pytest.fixture
def ct():
    data = np.full((40, 50, 60), -1000, np.int16)
    data[15:25, 20:30, 25:35] = 1500
    return Volume(data, [2.0, 2.0, 2.5], [-60.0, -50.0, -50.0], np.eye(3))


def fake_drr_module():
    """render_drr stand-in: a bright disc where the CT's centre projects."""
    module = types.ModuleType("DeepMorphSimulatorLib.drr")

    def render_drr(ct_hu, geometry, step_mm=0.5, method="auto", device="auto", mu_water=None):
        u0, v0 = geometry.project(ct_hu.center_lps())[0]
        v, u = np.mgrid[: geometry.height_px, : geometry.width_px]
        image = np.where(np.hypot(u - u0, v - v0) < 3, 255, 40).astype(np.uint8)
        return types.SimpleNamespace(image=image, line_integrals=image.astype(np.float32), geometry=geometry)

    module.render_drr = render_drr
    return module


def test_geometry_from_gui_parameters_takes_the_isocentre_in_ras():
    geometry = logic.geometry_from_parameters(1000, 600, 320, 256, 0.5, 10, -5, 3, isocenter_ras=(10.0, 20.0, 30.0))
    assert geometry.isocenter_lps == (-10.0, -20.0, 30.0)
    assert (geometry.width_px, geometry.height_px, geometry.orbital_deg) == (320, 256, 10.0)


def test_drr_node_lies_on_the_detector_and_lines_up_with_the_rays(app, ct, monkeypatch):
    monkeypatch.setitem(sys.modules, "DeepMorphSimulatorLib.drr", fake_drr_module())
    ct_node = g.volume_to_node(ct, app.scene, "CT")
    centre_ras = logic.isocenter_ras(ct_node)
    assert np.allclose(lps_from_ras(centre_ras), ct.center_lps())
    geometry = logic.geometry_from_parameters(1000, 600, 160, 120, 0.8, 25, -15, 10, isocenter_ras=centre_ras + [5, 0, 0])
    drr = logic.render_drr_node(app.scene, ct_node, geometry)
    assert np.allclose(logic.geometry_of(drr).projection_matrix(), geometry.projection_matrix())
    image = g.node_to_image(drr)
    assert image.shape == (120, 160) and image.dtype == np.uint8
    # the bright spot of the DRR node, the CT centre and the source are collinear in 3D
    v, u = np.nonzero(image == 255)
    spot = g.uv_to_ras(drr, [[u.mean(), v.mean()]])[0]
    source = ras_from_lps(geometry.source_lps)
    ray = (spot - source) / np.linalg.norm(spot - source)
    to_centre = centre_ras - source
    assert np.linalg.norm(to_centre - (to_centre @ ray) * ray) < 0.2  # mm off the ray
    # re-rendering updates the same node
    assert logic.render_drr_node(app.scene, ct_node, geometry.with_(orbital_deg=0), drr_node=drr) is drr


def test_carm_markups_in_3d(app):
    geometry = CArmGeometry(width_px=100, height_px=80, pixel_mm=1.0, orbital_deg=30, isocenter_lps=(1.0, 2.0, 3.0))
    nodes = logic.draw_carm(app.scene, geometry)
    points = g.named_points_lps(nodes["carm_points"])
    assert np.allclose(points["X-ray source"], geometry.source_lps, atol=1e-3)
    assert np.allclose(points["isocentre"], [1.0, 2.0, 3.0])
    corners = lps_from_ras(g.control_points_ras(nodes["detector"]))
    _, _, beam = geometry.axes()
    assert np.allclose((corners - geometry.detector_center_lps) @ beam, 0.0, atol=1e-3)  # on the detector plane (float32 markups)
    assert np.allclose(np.linalg.norm(corners[1] - corners[0]), 100.0)  # detector width in mm
    assert nodes["beam"].IsA("vtkMRMLMarkupsLineNode")
    for key in ("carm_points", "detector", "beam"):
        assert nodes[key].GetLocked()
    assert all(not node.GetDisplayNode().GetVisibility2D() for node in nodes.values())
    cone = lps_from_ras(np.array([nodes["cone"].GetPolyData().GetPoint(i) for i in range(5)]))
    assert np.allclose(cone[0], geometry.source_lps) and np.allclose(cone[1:], corners, atol=1e-3)
    again = logic.draw_carm(app.scene, geometry.with_(orbital_deg=-30), nodes)
    assert all(again[k] is nodes[k] for k in nodes)


def sphere_with_neck(centre, radius):
    """A femoral-head-like mesh: a sphere plus a cylinder (the neck) leaving it."""
    import vtk

    sphere = vtk.vtkSphereSource()
    sphere.SetCenter(*centre)
    sphere.SetRadius(radius)
    sphere.SetThetaResolution(40)
    sphere.SetPhiResolution(40)
    neck = vtk.vtkCylinderSource()
    neck.SetRadius(radius * 0.6)
    neck.SetHeight(60)
    neck.SetResolution(30)
    neck.SetCenter(centre[0], centre[1] - 40, centre[2])
    append = vtk.vtkAppendPolyData()
    append.AddInputConnection(sphere.GetOutputPort())
    append.AddInputConnection(neck.GetOutputPort())
    append.Update()
    return append.GetOutput()


def test_head_sphere_from_mesh_and_landmark():
    from vtk.util import numpy_support

    mesh = sphere_with_neck((10.0, 20.0, 30.0), 24.0)
    points = numpy_support.vtk_to_numpy(mesh.GetPoints().GetData())
    centre, radius = logic.head_sphere(points, {"head_center": np.array([12.0, 18.0, 31.0])})
    assert np.allclose(centre, [10.0, 20.0, 30.0], atol=0.3) and abs(radius - 24.0) < 0.3
    with pytest.raises(ValueError, match="head_center"):
        logic.head_sphere(points, {"F-1": np.zeros(3)})


def fake_projection_module():
    module = types.ModuleType("DeepMorphSimulatorLib.projection")

    def project_ground_truth(mesh, landmarks, head_radius_mm, geometry, n_points=64, band_px=3.0):
        c = geometry.project(landmarks["head_center"])[0]
        r = head_radius_mm * geometry.sid_mm / geometry.depth(landmarks["head_center"])[0] / geometry.pixel_mm
        contour = g.circle_points_uv(c[0], c[1] + 10, r * 1.5, 40)
        lm = {k: geometry.project(p)[0] for k, p in landmarks.items()}
        return types.SimpleNamespace(contour=contour, head_circle=(c[0], c[1], r), landmarks_uv=lm)

    module.project_ground_truth = project_ground_truth
    return module


def test_ground_truth_markups_on_the_drr(app, monkeypatch):
    monkeypatch.setitem(sys.modules, "DeepMorphSimulatorLib.projection", fake_projection_module())
    geometry = CArmGeometry(width_px=200, height_px=160, pixel_mm=1.0, orbital_deg=15)
    drr = g.image_to_node(np.zeros((160, 200), np.uint8), app.scene, "DRR", g.detector_ijk_to_ras(geometry))
    drr.SetAttribute(logic.GEOMETRY_ATTRIBUTE, json.dumps(geometry.to_dict()))
    femur = g.polydata_to_model_node(app.scene, sphere_with_neck((0.0, 0.0, 0.0), 22.0), "femur")
    lm = g.landmarks_to_fiducials(app.scene, {"head_center": np.array([1.0, -1.0, 0.5]),
                                              "greater_trochanter": np.array([40.0, 0.0, -50.0])})
    nodes = logic.ground_truth_to_markups(app.scene, drr, femur, lm)
    cx, cy, r = g.circle_from_markups(nodes["head_circle"], drr)
    expected = geometry.project(np.zeros(3))[0]
    assert np.allclose([cx, cy], expected, atol=0.2)  # the refined (sphere-fitted) head centre was used
    assert abs(r - 22.0 * geometry.magnification / geometry.pixel_mm) < 0.3
    assert nodes["outline"].IsA("vtkMRMLMarkupsClosedCurveNode")
    assert g.control_point_labels(nodes["landmarks"]) == ["greater_trochanter"]
    uv = g.markups_to_uv(nodes["landmarks"], drr)[0]
    assert np.allclose(uv, geometry.project(np.array([40.0, 0.0, -50.0]))[0], atol=1e-6)
    with pytest.raises(ValueError, match="head_center"):
        logic.ground_truth_to_markups(app.scene, drr, femur, None)


def test_dataset_landmarks_are_exported_in_the_world_frame_as_the_ct_and_mesh(app, tmp_path):
    """Landmarks under a transform are written where they are shown (world), as the CT and femur mesh are: Slicer's
    storage node writes untransformed positions, which put the dataset's head centre off by the transform."""
    from DeepMorphSimulatorLib.landmarks import read_markups

    lm = g.landmarks_to_fiducials(app.scene, {"head_center": np.array([10.0, 20.0, 30.0]), "shaft": np.zeros(3)})
    lm.SetNthControlPointDescription(0, "right femoral head centre; head radius 24.000 mm")
    transform = app.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    to_parent = np.eye(4)
    to_parent[:3, :3] = [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]  # 90 deg about S
    to_parent[:3, 3] = [15.0, 0.0, -8.0]
    transform.SetMatrixTransformToParent(g._vtk_matrix(to_parent))
    lm.SetAndObserveTransformNodeID(transform.GetID())
    lm.AddControlPoint(0.0, 0.0, 0.0, "unplaced")
    lm.UnsetNthControlPointPosition(2)  # not placed yet: not exported
    path = logic.write_markups_json(lm, tmp_path / "landmarks.mrk.json")
    written = {label: (pos, desc) for label, pos, desc in read_markups(path)}
    assert sorted(written) == ["head_center", "shaft"]
    for label, local_lps in (("head_center", [10.0, 20.0, 30.0]), ("shaft", [0.0, 0.0, 0.0])):
        world_ras = (to_parent @ np.append(ras_from_lps(np.array(local_lps)), 1.0))[:3]
        assert np.allclose(written[label][0], lps_from_ras(world_ras), atol=1e-4), label
    assert "head radius 24.000 mm" in written["head_center"][1]
    assert lm.GetStorageNode() is None


def test_ground_truth_reads_landmark_labels_as_the_dataset_command_does(app, monkeypatch, tmp_path):
    """``deepmorph phantom`` writes both femurs' landmarks as ``right_head_center``, ``left_head_center``, ...: loaded
    into Slicer, the simulator refused them ("Give landmarks with a 'head_center' point") although
    ``deepmorph dataset --landmarks`` reads them. The femur selected picks its side's points."""
    from DeepMorphSimulatorLib.landmarks import write_markups

    monkeypatch.setitem(sys.modules, "DeepMorphSimulatorLib.projection", fake_projection_module())
    geometry = CArmGeometry(width_px=200, height_px=160, pixel_mm=1.0, orbital_deg=15)
    drr = g.image_to_node(np.zeros((160, 200), np.uint8), app.scene, "DRR", g.detector_ijk_to_ras(geometry))
    drr.SetAttribute(logic.GEOMETRY_ATTRIBUTE, json.dumps(geometry.to_dict()))
    right, left = np.array([-30.0, 0.0, 0.0]), np.array([30.0, 0.0, 0.0])
    path = tmp_path / "landmarks.mrk.json"
    write_markups(path, [("right_head_center", right + 1.0, "right femoral head centre"),
                         ("right_greater_trochanter", right + [-40.0, 0.0, -50.0], ""),
                         ("left_head_center", left + 1.0, "left femoral head centre"),
                         ("Left Greater-Trochanter", left + [40.0, 0.0, -50.0], "")])
    lm = g.load_markups(app, path)  # Slicer's markups reader
    for side, centre in (("right", right), ("left", left)):
        femur = g.polydata_to_model_node(app.scene, sphere_with_neck(tuple(centre), 22.0), f"{side} femur")
        nodes = logic.ground_truth_to_markups(app.scene, drr, femur, lm)
        cx, cy, r = g.circle_from_markups(nodes["head_circle"], drr)
        assert np.allclose([cx, cy], geometry.project(centre)[0], atol=0.2), side  # the mesh's own head
        assert g.control_point_labels(nodes["landmarks"]) == ["greater_trochanter"]
        expected = centre + ([-40.0, 0.0, -50.0] if side == "right" else [40.0, 0.0, -50.0])
        assert np.allclose(g.markups_to_uv(nodes["landmarks"], drr)[0], geometry.project(expected)[0], atol=1e-3)
        # Generate dataset: the exported list holds the selected femur's points, which the dataset command reads
        # without --side (both femurs' points: "choose one with --side left|right", the job failed)
        from DeepMorphSimulatorLib.landmarks import femur_landmarks_from_markups

        ct_node = g.volume_to_node(Volume(np.zeros((4, 4, 4), np.int16)), app.scene, "CT")
        paths = logic.export_dataset_inputs(ct_node, femur, lm, tmp_path / side)
        read, _ = femur_landmarks_from_markups(paths["landmarks"])
        assert sorted(read) == ["greater_trochanter", "head_center"]
        assert np.allclose(read["head_center"], centre + 1.0, atol=1e-4)


def test_dataset_inputs_of_both_femurs_keep_the_selected_ones_radius_and_placed_points(app, tmp_path):
    """A list with both femurs' points is exported as the selected femur's: as the dataset command reads them, with
    the head radius a head_center's description gives, and without the points not placed (the export wrote the file
    twice, the second time with every description dropped and unplaced points at the origin)."""
    from DeepMorphSimulatorLib.landmarks import femur_landmarks_from_markups

    right, left = np.array([-30.0, 0.0, 0.0]), np.array([30.0, 0.0, 0.0])
    lm = g.landmarks_to_fiducials(app.scene, {"right_head_center": right, "left_head_center": left,
                                              "right_shaft": right + [0.0, 0.0, -60.0]})
    lm.SetNthControlPointDescription(0, "head radius 21 mm")
    lm.UnsetNthControlPointPosition(2)  # not placed yet: not exported
    femur = g.polydata_to_model_node(app.scene, sphere_with_neck(tuple(right), 22.0), "right femur")
    ct_node = g.volume_to_node(Volume(np.zeros((4, 4, 4), np.int16)), app.scene, "CT")
    paths = logic.export_dataset_inputs(ct_node, femur, lm, tmp_path / "inputs")
    read, radius = femur_landmarks_from_markups(paths["landmarks"])
    assert sorted(read) == ["head_center"] and np.allclose(read["head_center"], right, atol=1e-4)
    assert radius == 21.0


def test_dataset_inputs_and_command(app, ct, tmp_path):
    import SimpleITK as sitk
    import vtk
    from vtk.util import numpy_support

    ct_node = g.volume_to_node(ct, app.scene, "CT for dataset")
    mesh = sphere_with_neck((5.0, 6.0, 7.0), 20.0)
    femur = g.polydata_to_model_node(app.scene, mesh, "femur for dataset")
    lm = g.landmarks_to_fiducials(app.scene, {"head_center": np.array([5.0, 6.0, 7.0])})
    paths = logic.export_dataset_inputs(ct_node, femur, lm, tmp_path / "inputs")
    assert lm.GetStorageNode() is None  # the user's node is left alone
    image = sitk.ReadImage(str(paths["ct"]))
    assert np.array_equal(sitk.GetArrayFromImage(image), ct.data) and np.allclose(image.GetOrigin(), ct.origin)
    reader = vtk.vtkXMLPolyDataReader()
    reader.SetFileName(str(paths["mesh"]))
    reader.Update()
    written = numpy_support.vtk_to_numpy(reader.GetOutput().GetPoints().GetData())
    assert np.allclose(written, numpy_support.vtk_to_numpy(mesh.GetPoints().GetData()), atol=1e-4)  # LPS
    markups = json.loads(paths["landmarks"].read_text())["markups"][0]
    assert markups["coordinateSystem"] == "LPS" and np.allclose(markups["controlPoints"][0]["position"], [5, 6, 7])

    args = logic.dataset_arguments(tmp_path / "data", 100, 256, paths, implants=0.5, workers=2, seed=7)
    assert args[:2] == ["dataset", "--out"] and "--phantom" not in args
    assert args[args.index("--mesh") + 1] == str(paths["mesh"]) and args[args.index("--implants") + 1] == "0.5"
    assert "--phantom" in logic.dataset_arguments(tmp_path / "data", 10, 128)
    env = logic.lib_environment()
    assert "DeepMorphSimulator" in env["PYTHONPATH"]


def test_simulator_logic_end_to_end(app):
    """Real phantom + DRR + ground truth (runs once those Lib pieces are merged)."""
    phantom = pytest.importorskip("DeepMorphSimulatorLib.phantom")
    pytest.importorskip("DeepMorphSimulatorLib.drr")
    pytest.importorskip("DeepMorphSimulatorLib.projection")
    ph = phantom.make_phantom(0, sides=("right",), spacing_mm=2.0)
    femur = ph.femurs["right"]
    ct_node = g.volume_to_node(ph.ct, app.scene, "phantom CT")
    femur_node = g.polydata_to_model_node(app.scene, femur.mesh, "phantom femur")
    lm_node = g.landmarks_to_fiducials(app.scene, femur.landmarks, name="phantom landmarks")
    iso = ras_from_lps(femur.landmarks["head_center"])
    geometry = logic.geometry_from_parameters(1000, 600, 192, 192, 1.0, isocenter_ras=iso)
    drr = logic.render_drr_node(app.scene, ct_node, geometry)
    nodes = logic.ground_truth_to_markups(app.scene, drr, femur_node, lm_node)
    cx, cy, r = g.circle_from_markups(nodes["head_circle"], drr)
    assert np.allclose([cx, cy], [95.5, 95.5], atol=1.0)  # the isocentre is the head centre
    expected_r = femur.head_radius_mm * geometry.magnification / geometry.pixel_mm
    assert abs(r - expected_r) < 0.1 * expected_r
