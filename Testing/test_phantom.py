"""Procedural hip phantom: determinism, variation, plausible HU, label/mesh/CT agreement, markups, CLI."""
import json

import numpy as np
import pytest

from DeepMorphSimulatorLib.femur import Femur
from DeepMorphSimulatorLib.landmarks import femur_landmarks_from_markups, read_markups
from DeepMorphSimulatorLib.mesh import mesh_arrays, read_mesh
from DeepMorphSimulatorLib.phantom import LABELS, make_phantom, save_phantom
from DeepMorphSimulatorLib.phantom_femur import LANDMARK_NAMES, FemurParams

SPACING = 2.0  # coarse phantoms keep the tests fast; the anatomy is the same at any spacing


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(7, spacing_mm=SPACING)


@pytest.fixture(scope="module")
def saved(phantom, tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom7")
    return save_phantom(phantom, out)


def _sample(vol, pts_lps):
    from scipy import ndimage

    ijk = vol.lps_to_index(pts_lps)
    return ndimage.map_coordinates(vol.data.astype(np.float32), [ijk[:, 2], ijk[:, 1], ijk[:, 0]], order=1)


def test_frame_and_types(phantom):
    ct, lab = phantom.ct, phantom.femur_label
    assert ct.data.dtype == np.int16 and lab.data.dtype == np.uint8
    assert ct.data.shape == lab.data.shape
    assert np.allclose(ct.spacing, SPACING) and np.allclose(ct.direction, np.eye(3))
    # patient-centred LPS frame: origin between the hip-joint centres, right hip at -x, left at +x
    lo, hi = ct.corners_lps().min(axis=0), ct.corners_lps().max(axis=0)
    assert np.all(lo < -100) and np.all(hi > 100)
    right, left = phantom.femurs["right"], phantom.femurs["left"]
    mid = 0.5 * (right.landmarks["head_center"] + left.landmarks["head_center"])
    assert np.all(np.abs(mid) < 20.0)
    assert right.landmarks["head_center"][0] < -60 and left.landmarks["head_center"][0] > 60
    assert isinstance(right, Femur) and right.side == "right" and left.side == "left"
    for fem in phantom.femurs.values():
        assert set(LANDMARK_NAMES) <= set(fem.landmarks)
        assert 20.0 <= fem.head_radius_mm <= 28.0


def test_hu_ranges_plausible(phantom):
    hu = phantom.ct.data
    assert hu.min() >= -1024 and hu.max() <= 3071
    assert np.median(hu[:, :, :3]) < -900  # air at the right/left border of the field
    body = hu[(hu > -300) & (hu < 150)]
    assert np.sum((body > -140) & (body < -60)) > 0.05 * body.size  # fat
    assert np.sum((body > 20) & (body < 80)) > 0.2 * body.size  # muscle
    lab = phantom.femur_label.data
    bone = hu[lab > 0].astype(float)
    assert 1000 <= np.percentile(bone, 99) <= 1900  # cortical shell
    assert 100 <= np.percentile(bone, 25) <= 450  # cancellous / marrow inside
    assert np.sum(hu > 1000) > 3 * np.sum(lab > 0) * 0.1  # pelvis cortex too, not only femurs


def test_label_values_and_sides(phantom):
    lab = phantom.femur_label.data
    assert set(np.unique(lab)) == {0, LABELS["right"], LABELS["left"]}
    one = make_phantom(7, sides=("left",), spacing_mm=4.0)
    assert set(np.unique(one.femur_label.data)) == {0, LABELS["left"]} and set(one.femurs) == {"left"}


def test_label_mesh_and_ct_agree(phantom):
    import vtk

    for side, fem in phantom.femurs.items():
        mp = vtk.vtkMassProperties()
        mp.SetInputData(fem.mesh)
        mp.Update()
        n_vox = np.sum(phantom.femur_label.data == LABELS[side])
        assert mp.GetVolume() == pytest.approx(n_vox * SPACING**3, rel=0.05)
        v, f = mesh_arrays(fem.mesh)
        assert 3000 <= len(f) <= 6000
        from vtk.util.numpy_support import vtk_to_numpy

        n = vtk_to_numpy(fem.mesh.GetPointData().GetNormals())
        keep = v[:, 2] > fem.landmarks["shaft_axis_distal"][2] + 5  # away from the artificial cut
        inside = _sample(phantom.ct, v[keep] - 1.5 * n[keep])
        outside = _sample(phantom.ct, v[keep] + 4.0 * n[keep])
        assert np.median(inside) > 600  # just under the surface: cortex
        assert np.median(outside) < 150  # just outside: soft tissue / joint space
        head = fem.landmarks["head_center"]
        assert _sample(phantom.femur_label, head[None])[0] == LABELS[side]


def test_deterministic_per_seed_and_different_across_seeds(tmp_path, phantom, saved):
    again = save_phantom(make_phantom(7, spacing_mm=SPACING), tmp_path / "again")
    for key, path in saved.items():
        with open(path, "rb") as a, open(again[key], "rb") as b:
            assert a.read() == b.read(), f"{key} differs between two runs with the same seed"
    other = make_phantom(8, spacing_mm=SPACING, sides=("right",))
    assert not np.array_equal(other.ct.data, phantom.ct.data)
    p7, p8 = phantom.params["femurs"]["right"], other.params["femurs"]["right"]
    assert p7["neck_shaft_deg"] != p8["neck_shaft_deg"] and p7["head_radius"] != p8["head_radius"]


def test_femur_shape_varies_within_adult_ranges():
    rng = np.random.default_rng(0)
    ps = [FemurParams.random(rng, "right") for _ in range(300)]
    r = np.array([p.head_radius for p in ps])
    nsa = np.array([p.neck_shaft_deg for p in ps])
    av = np.array([p.anteversion_deg for p in ps])
    assert r.min() >= 20 and r.max() <= 28 and r.std() > 0.7
    assert nsa.min() >= 120 and nsa.max() <= 140 and nsa.std() > 3
    assert av.std() > 4
    for name in ("neck_length", "shaft_radius", "gt_tip_drop", "lt_drop"):
        vals = np.array([getattr(p, name) for p in ps])
        assert vals.std() > 0.02 * abs(vals.mean()) + 0.5, name


def test_files_and_markups(saved, phantom):
    for key in ("ct", "femur_label", "femur", "femur_right", "femur_left", "landmarks"):
        assert saved[key].endswith((".nrrd", ".vtp", ".mrk.json"))
    mesh = read_mesh(saved["femur"])  # femur.vtp = the right femur
    v, _ = mesh_arrays(mesh)
    v0, _ = mesh_arrays(phantom.femurs["right"].mesh)
    assert np.allclose(v, v0)
    doc = json.loads(open(saved["landmarks"]).read())
    assert doc["@schema"].endswith("markups-schema-v1.0.3.json#")
    assert doc["markups"][0]["coordinateSystem"] == "LPS"
    pts = read_markups(saved["landmarks"])
    assert len(pts) == 2 * len(LANDMARK_NAMES)
    lm, radius = femur_landmarks_from_markups(saved["landmarks"], "left")
    fem = phantom.femurs["left"]
    assert radius == pytest.approx(fem.head_radius_mm, abs=1e-3)
    for k, p in fem.landmarks.items():
        assert np.allclose(lm[k], p)


def test_markups_load_in_slicer(saved, phantom):
    slicer = pytest.importorskip("slicer")
    import vtk

    scene = slicer.vtkMRMLScene()
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    app.SetSliceLogics(vtk.vtkCollection())
    app.SetViewLogics(vtk.vtkCollection())
    logic = slicer.vtkSlicerMarkupsLogic()
    logic.SetMRMLScene(scene)
    logic.SetMRMLApplicationLogic(app)
    app.SetModuleLogic("Markups", logic)
    node_id = logic.LoadMarkups(saved["landmarks"], "FemurLandmarks")
    assert node_id
    node = scene.GetNodeByID(node_id)
    assert node.GetNumberOfControlPoints() == 2 * len(LANDMARK_NAMES)
    labels = {}
    for i in range(node.GetNumberOfControlPoints()):
        p = [0.0, 0.0, 0.0]
        node.GetNthControlPointPosition(i, p)
        labels[node.GetNthControlPointLabel(i)] = np.array(p)
    for side, fem in phantom.femurs.items():
        for name, lps in fem.landmarks.items():
            ras = labels[f"{side}_{name}"]
            assert np.allclose(ras, lps * [-1, -1, 1], atol=1e-6)  # Slicer holds RAS
    del app


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(seed=-1), "seed"),
        (dict(seed=1.5), "seed"),
        (dict(seed=1, sides=("middle",)), "sides"),
        (dict(seed=1, sides=()), "sides"),
        (dict(seed=1, spacing_mm=0.1), "spacing"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_phantom(**kwargs)


def test_cli_writes_the_files(tmp_path, capsys):
    from DeepMorphLib.cli import main

    rc = main(["phantom", "--out", str(tmp_path / "p"), "--seed", "3", "--spacing", "4", "--sides", "left"])
    assert rc == 0
    for name in ("ct.nrrd", "femur-label.nrrd", "femur.vtp", "femur-left.vtp", "landmarks.mrk.json", "phantom.json"):
        assert (tmp_path / "p" / name).is_file()
    assert "left femur" in capsys.readouterr().out
    assert main(["phantom", "--out", str(tmp_path / "q"), "--seed", "-2"]) == 2
    assert "seed" in capsys.readouterr().err


def test_markups_reading_rules(tmp_path, saved):
    from DeepMorphSimulatorLib.landmarks import markups_dict, write_markups

    with pytest.raises(ValueError, match="both femurs"):
        femur_landmarks_from_markups(saved["landmarks"])
    # RAS files, unprefixed and loosely written labels, radius from the description
    doc = markups_dict([("Head Center", [1.0, 2.0, 3.0], "head radius 23.5 mm"), ("greater-trochanter", [4, 5, 6], "")])
    doc["markups"][0]["coordinateSystem"] = "RAS"
    (tmp_path / "ras.mrk.json").write_text(json.dumps(doc))
    lm, radius = femur_landmarks_from_markups(tmp_path / "ras.mrk.json", "right")
    assert np.allclose(lm["head_center"], [-1.0, -2.0, 3.0]) and np.allclose(lm["greater_trochanter"], [-4, -5, 6])
    assert radius == 23.5
    write_markups(tmp_path / "l.mrk.json", [("left_head_center", [0, 0, 0], "")])
    with pytest.raises(ValueError, match="only for the left"):
        femur_landmarks_from_markups(tmp_path / "l.mrk.json", "right")
    (tmp_path / "bad.mrk.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a Slicer markups"):
        read_markups(tmp_path / "bad.mrk.json")
    with pytest.raises(FileNotFoundError):
        read_markups(tmp_path / "missing.mrk.json")
