"""MRML glue, headless with slicer-core: volumes, 2-D images on planes, markups, models, files, .mrb."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("slicer")

from DeepMorphSimulatorLib import mrml_glue as g  # noqa: E402
from DeepMorphSimulatorLib.geometry import CArmGeometry, lps_from_ras  # noqa: E402
from DeepMorphSimulatorLib.volume import Volume, write_volume  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def app():
    return g.create_headless_slicer()


def rotation(ax, ay, az):
    from scipy.spatial.transform import Rotation

    return Rotation.from_euler("xyz", [ax, ay, az], degrees=True).as_matrix()


@pytest.fixture
def ct(rng):
    data = rng.integers(-1000, 2000, size=(5, 6, 7)).astype(np.int16)
    return Volume(data, [0.7, 0.8, 1.5], [10.0, -20.0, 30.0], rotation(10, -20, 30))


def test_volume_node_ijk_to_ras_matches_slicer_reading_a_simpleitk_nrrd(app, ct, tmp_path):
    node = g.volume_to_node(ct, app.scene, "ct")
    write_volume(ct, tmp_path / "ct.nrrd")
    loaded = g.load_volume(app, tmp_path / "ct.nrrd", "ct-file")
    assert np.allclose(g.volume_ijk_to_ras(node), g.volume_ijk_to_ras(loaded), atol=1e-9)
    # LPS -> RAS: x and y flip, z stays
    expected = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ct.ijk_to_lps()
    assert np.allclose(g.volume_ijk_to_ras(node), expected)
    back = g.node_to_volume(loaded)
    assert back.data.dtype == np.int16 and np.array_equal(back.data, ct.data)
    assert np.allclose(back.ijk_to_lps(), ct.ijk_to_lps(), atol=1e-9)


def test_volume_written_by_storage_node_reads_back_in_simpleitk(app, ct, tmp_path):
    import SimpleITK as sitk

    node = g.volume_to_node(ct, app.scene, "ct-save")
    g.save_node(node, tmp_path / "saved.nrrd")
    image = sitk.ReadImage(str(tmp_path / "saved.nrrd"))
    assert np.allclose(image.GetOrigin(), ct.origin) and np.allclose(image.GetSpacing(), ct.spacing)
    assert np.allclose(np.reshape(image.GetDirection(), (3, 3)), ct.direction, atol=1e-9)
    assert np.array_equal(sitk.GetArrayFromImage(image), ct.data)


def test_node_under_linear_transform_gives_world_volume(app, ct):
    import vtk

    node = g.volume_to_node(ct, app.scene, "ct-moved")
    transform = app.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 5.0)  # 5 mm towards Right = -5 mm in LPS x
    transform.SetMatrixTransformToParent(matrix)
    node.SetAndObserveTransformNodeID(transform.GetID())
    moved = g.node_to_volume(node)
    assert np.allclose(moved.origin, ct.origin + [-5.0, 0.0, 0.0])


def test_detector_image_pixels_land_on_the_cam_detector(app):
    geometry = CArmGeometry(width_px=64, height_px=48, orbital_deg=20, angular_deg=10, inplane_deg=5)
    image = (np.arange(48 * 64).reshape(48, 64) % 256).astype(np.uint8)
    node = g.image_to_node(image, app.scene, "drr", g.detector_ijk_to_ras(geometry))
    uv = np.array([[0.0, 0.0], [3.0, 4.0], [10.5, 20.25], [63.0, 47.0]])
    ras = g.uv_to_ras(node, uv)
    assert np.allclose(lps_from_ras(ras), geometry.pixel_positions_lps(uv[:, 0], uv[:, 1]), atol=1e-9)
    assert np.allclose(g.ras_to_uv(node, ras), uv, atol=1e-9)
    back = g.node_to_image(node)
    assert back.dtype == np.uint8 and np.array_equal(back, image)
    # a point off the plane projects along the plane normal
    off = ras + np.cross(*[g.volume_ijk_to_ras(node)[:3, k] for k in (0, 1)]) * 3.0
    assert np.allclose(g.ras_to_uv(node, off), uv, atol=1e-9)


def test_plain_image_is_loaded_like_slicer_loads_a_png(app):
    node = g.image_to_node(np.zeros((10, 20), np.float32), app.scene, "png")
    assert np.allclose(g.uv_to_ras(node, [[3.0, 4.0]]), [[-3.0, -4.0, 0.0]])


def test_markups_round_trip_through_mrk_json(app, tmp_path):
    image = g.image_to_node(np.zeros((100, 120), np.uint8), app.scene, "img", g.image_ijk_to_ras(0.5))
    curve, centre = g.circle_to_markups(app.scene, image, (60.25, 40.5, 17.75), n=48)
    uv = np.array([[10.0, 20.0], [30.5, 40.25]])
    landmarks = g.uv_points_to_markups(app.scene, image, uv, ["head_center", "greater_trochanter"])
    for node, name in ((curve, "circle"), (centre, "centre"), (landmarks, "landmarks")):
        g.save_node(node, tmp_path / f"{name}.mrk.json")
    other = g.create_headless_slicer()
    curve2 = g.load_markups(other, tmp_path / "circle.mrk.json")
    centre2 = g.load_markups(other, tmp_path / "centre.mrk.json")
    landmarks2 = g.load_markups(other, tmp_path / "landmarks.mrk.json")
    assert curve2.IsA("vtkMRMLMarkupsClosedCurveNode") and curve2.GetNumberOfControlPoints() == 48
    assert curve2.GetCurveType() == curve.GetCurveType() and curve2.GetLocked()
    assert np.allclose(g.circle_from_markups(curve2, image), (60.25, 40.5, 17.75), atol=1e-5)
    assert g.control_point_labels(landmarks2) == ["head_center", "greater_trochanter"]
    assert np.allclose(g.markups_to_uv(landmarks2, image), uv, atol=1e-6)
    assert "8.88 mm" in centre2.GetNthControlPointDescription(0)  # r = 17.75 px x 0.5 mm


def test_named_landmarks_are_lps_in_and_out(app):
    landmarks = {"head_center": np.array([10.0, 20.0, 30.0]), "lesser_trochanter": np.array([-5.0, 0.0, 2.0])}
    node = g.landmarks_to_fiducials(app.scene, landmarks)
    assert np.allclose(g.control_points_ras(node)[0], [-10.0, -20.0, 30.0])
    back = g.named_points_lps(node)
    assert set(back) == set(landmarks) and all(np.allclose(back[k], landmarks[k]) for k in landmarks)


def sphere_polydata(center, radius):
    import vtk

    source = vtk.vtkSphereSource()
    source.SetCenter(*center)
    source.SetRadius(radius)
    source.SetThetaResolution(24)
    source.SetPhiResolution(24)
    source.Update()
    return source.GetOutput()


def polydata_points(polydata):
    from vtk.util import numpy_support

    return numpy_support.vtk_to_numpy(polydata.GetPoints().GetData()).astype(float)


def test_model_node_is_ras_and_round_trips(app):
    mesh = sphere_polydata((10.0, 20.0, 30.0), 5.0)
    node = g.polydata_to_model_node(app.scene, mesh, "femur")
    assert np.allclose(polydata_points(node.GetPolyData()).mean(axis=0), [-10.0, -20.0, 30.0], atol=1e-3)
    assert np.allclose(polydata_points(g.femur_polydata_lps(node)), polydata_points(mesh), atol=1e-4)


def test_labelmap_and_segmentation_give_the_femur_surface_in_lps(app):
    import slicer

    z, y, x = np.mgrid[:40, :40, :40]
    label = ((x - 20) ** 2 + (y - 18) ** 2 + (z - 22) ** 2 < 100).astype(np.uint8) * 2
    volume = Volume(label, [1.0, 1.0, 1.0], [5.0, 6.0, 7.0], np.eye(3))
    labelmap = g.volume_to_node(volume, app.scene, "label", node_class="vtkMRMLLabelMapVolumeNode")
    centre = np.array([25.0, 24.0, 29.0])
    points = polydata_points(g.femur_polydata_lps(labelmap))
    assert np.allclose(points.mean(axis=0), centre, atol=0.1)
    assert abs(np.linalg.norm(points - centre, axis=1).mean() - 10.0) < 0.6
    segmentation = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
    points = polydata_points(g.femur_polydata_lps(segmentation))
    assert np.allclose(points.mean(axis=0), centre, atol=0.1)


def test_scene_bundle_round_trip(app, tmp_path):
    scene_app = g.create_headless_slicer()
    geometry = CArmGeometry(width_px=40, height_px=30, orbital_deg=-15)
    image = np.random.default_rng(3).integers(0, 255, size=(30, 40)).astype(np.uint8)
    drr = g.image_to_node(image, scene_app.scene, "DRR", g.detector_ijk_to_ras(geometry))
    g.circle_to_markups(scene_app.scene, drr, (20.0, 15.0, 8.0), name="Femoral head")
    g.uv_curve_to_markups(scene_app.scene, drr, [[1, 1], [30, 2], [25, 20]], name="Outline")
    g.polydata_to_model_node(scene_app.scene, sphere_polydata((0, 0, 0), 3.0), "femur")
    g.save_scene_bundle(scene_app.scene, tmp_path / "scene.mrb")

    loaded = g.create_headless_slicer()
    g.load_scene_bundle(loaded, tmp_path / "scene.mrb", tmp_path / "unpacked")
    drr2 = loaded.scene.GetFirstNodeByName("DRR")
    assert np.array_equal(g.node_to_image(drr2), image)
    assert np.allclose(g.volume_ijk_to_ras(drr2), g.volume_ijk_to_ras(drr), atol=1e-6)
    circle = loaded.scene.GetFirstNodeByName("Femoral head")
    assert circle.IsA("vtkMRMLMarkupsClosedCurveNode")
    assert np.allclose(g.circle_from_markups(circle, drr2), (20.0, 15.0, 8.0), atol=1e-4)
    outline = loaded.scene.GetFirstNodeByName("Outline")
    assert np.allclose(g.markups_to_uv(outline, drr2), [[1, 1], [30, 2], [25, 20]], atol=1e-4)
    assert loaded.scene.GetFirstNodeByName("femur").GetPolyData().GetNumberOfPoints() > 0


def test_clear_errors(app):
    three = g.volume_to_node(Volume(np.zeros((2, 3, 4))), app.scene, "3d")
    with pytest.raises(ValueError, match="one slice"):
        g.node_to_image(three)
    with pytest.raises(ValueError, match="2-D image"):
        g.image_to_node(np.zeros((2, 3, 4)), app.scene)
    with pytest.raises(ValueError, match="no image data"):
        g.node_to_volume(app.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty"))
    with pytest.raises(ValueError, match="radius"):
        g.circle_points_uv(0, 0, -1)
    with pytest.raises(FileNotFoundError):
        g.load_markups(app, "/nonexistent/x.mrk.json")
    with pytest.raises(ValueError, match="not a model, segmentation or label map"):
        g.femur_polydata_lps(three)


def test_libs_import_without_slicer():
    code = (
        "import sys; sys.modules['slicer'] = None; sys.path[:0] = ['DeepMorphSimulator', 'DeepMorph'];"
        "import DeepMorphSimulatorLib.mrml_glue, DeepMorphLib.mrml_glue, DeepMorphLib.slice_view_render;"
        "import DeepMorphSimulatorLib.simulator_logic, DeepMorphSimulatorLib.background_job, DeepMorphLib.fit_logic"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
