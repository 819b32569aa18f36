"""Dataset generation: pure per-sample function, GT vs implants, sanity of GT on the femur, argument checks."""
import json

import numpy as np
import pytest

from DeepMorphSimulatorLib import dataset as ds

SMALL = dict(size=64, group=4, phantom_spacing_mm=3.0, seed=3)


@pytest.fixture(scope="module")
def scene():
    return ds.make_phantom_scene(ds.DatasetSettings(**SMALL), 0)


def test_sample_is_pure_function_of_index(scene):
    s = ds.DatasetSettings(implants=1.0, **SMALL)
    a = ds.render_sample(scene, s, 2)
    b = ds.render_sample(scene, s, 2)
    for key in ("image", "head_mask", "femur_mask"):
        assert np.array_equal(a[key], b[key])
    assert json.dumps(a["annotation"], sort_keys=True) == json.dumps(b["annotation"], sort_keys=True)
    c = ds.render_sample(scene, s, 3)
    assert not np.array_equal(a["image"], c["image"])


def test_implants_darken_image_but_leave_ground_truth(scene):
    bigger = {**SMALL, "size": 128}
    with_metal = ds.DatasetSettings(implants=1.0, p_bone_bright=0.0, **bigger)
    without = ds.DatasetSettings(implants=0.0, p_bone_bright=0.0, **bigger)
    checked = 0
    for i in range(5):
        m = ds.render_sample(scene, with_metal, i, return_arrays=True)
        b = ds.render_sample(scene, without, i, return_arrays=True)
        assert m["annotation"]["implants"] and not b["annotation"]["implants"]
        for key in ("head_circle", "contour", "points", "visible", "geometry", "side"):
            assert m["annotation"][key] == b["annotation"][key], key
        assert np.array_equal(m["head_mask"], b["head_mask"]) and np.array_equal(m["femur_mask"], b["femur_mask"])
        assert set(np.unique(m["femur_mask"])) <= {0, 255}
        from scipy import ndimage

        metal = (m["line_integrals"] - m["body_line_integrals"]) > 4.0
        exposed = m["image"] > 0  # outside a circular collimator the image is black anyway
        sel = ndimage.binary_erosion(metal, iterations=1) & exposed  # inside the metal, away from blurred edges
        if sel.sum() >= 5:
            # bone-dark polarity: metal pixels are much darker than the same pixels without metal and
            # darker than most of the image (thin screws less so: blur and scatter fill them in)
            assert np.median(m["image"][sel]) < np.median(b["image"][sel]) - 60
            assert np.median(m["image"][sel]) <= np.percentile(m["image"][exposed], 50)
            checked += 1
    assert checked >= 4


def test_ground_truth_lies_on_the_projected_femur(scene):
    """Sample-wise sanity: circle and contour sit on the femur's own projection (label-volume DRR)."""
    from DeepMorphSimulatorLib import drr, phantom

    s = ds.DatasetSettings(implants=0.5, **SMALL)
    ph = phantom.make_phantom(ds.phantom_seed(s.seed, 0), sides=ds.SIDES, spacing_mm=s.phantom_spacing_mm)
    for i in range(6):
        out = ds.render_sample(scene, s, i, return_arrays=True)
        ann, g = out["annotation"], out["geometry"]
        side_id = 1 if ann["side"] == "right" else 2
        label = ph.femur_label.with_data((ph.femur_label.data == side_id).astype(np.float32))
        proj = drr.line_integrals(label, g) > 0.5  # mm of femur along the ray
        from scipy import ndimage

        dist_out = ndimage.distance_transform_edt(~proj)
        dist_in = ndimage.distance_transform_edt(proj)
        edge_dist = np.where(proj, dist_in, dist_out)
        h, w = proj.shape
        pts = np.asarray(ann["contour"], float).reshape(-1, 2)
        inside = (pts[:, 0] >= 1) & (pts[:, 0] < w - 2) & (pts[:, 1] >= 1) & (pts[:, 1] < h - 2)
        if inside.sum() >= 10:
            d = edge_dist[np.rint(pts[inside, 1]).astype(int), np.rint(pts[inside, 0]).astype(int)]
            assert np.median(d) <= 1.5 and np.mean(d <= 3.0) >= 0.85, (i, np.median(d))
        if ann["head_circle"]:
            cx, cy, r = ann["head_circle"]
            if 0 <= cx < w and 0 <= cy < h:
                assert proj[int(round(cy)), int(round(cx))], i
                vv, uu = np.mgrid[0:h, 0:w]
                disc = np.hypot(uu - cx, vv - cy) <= 0.8 * r
                assert proj[disc].mean() > 0.95


def test_changed_arguments_are_a_clear_error(tmp_path):
    s = ds.DatasetSettings(implants=0.0, **SMALL)
    ds.generate(s, tmp_path / "d", 2, workers=1, progress=False)
    assert len(list((tmp_path / "d" / "samples").glob("*.json"))) == 2
    stats = ds.generate(s, tmp_path / "d", 2, workers=1, progress=False)
    assert stats["written"] == 0 and stats["skipped"] == 2
    other = ds.DatasetSettings(implants=0.3, **SMALL)
    with pytest.raises(ValueError, match="other settings.*implants"):
        ds.generate(other, tmp_path / "d", 2, progress=False)
    with pytest.raises(ValueError, match="--n"):
        ds.generate(s, tmp_path / "d", 1, progress=False)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        ds.generate(s, tmp_path / "junk", 2, progress=False)


def test_bad_ct_or_mesh_fails_before_any_work(tmp_path):
    import SimpleITK as sitk

    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="CT"):
        ds.generate(ds.DatasetSettings(source="ct", ct=str(tmp_path / "no.nrrd"), mesh=str(tmp_path / "no.vtp")), out, 2, progress=False)
    bad = tmp_path / "bad.nrrd"
    bad.write_bytes(b"not an image")
    mesh = tmp_path / "m.vtp"
    mesh.write_text("nope")
    with pytest.raises(ValueError, match="Cannot read"):
        ds.generate(ds.DatasetSettings(source="ct", ct=str(bad), mesh=str(mesh)), out, 2, progress=False)
    ct = tmp_path / "ct.nrrd"
    img = sitk.GetImageFromArray(np.zeros((10, 10, 10), np.int16))
    sitk.WriteImage(img, str(ct))
    with pytest.raises(ValueError, match="mesh"):
        ds.generate(ds.DatasetSettings(source="ct", ct=str(ct), mesh=str(mesh)), out, 2, progress=False)
    # a valid mesh far outside the CT
    import vtk

    sphere = vtk.vtkSphereSource()
    sphere.SetCenter(500.0, 500.0, 500.0)
    sphere.SetRadius(20.0)
    sphere.Update()
    writer = vtk.vtkXMLPolyDataWriter()
    writer.SetFileName(str(tmp_path / "far.vtp"))
    writer.SetInputData(sphere.GetOutput())
    writer.Write()
    with pytest.raises(ValueError, match="outside the CT"):
        ds.generate(ds.DatasetSettings(source="ct", ct=str(ct), mesh=str(tmp_path / "far.vtp")), out, 2, progress=False)
    assert not out.exists()


def test_plan_chunks_covers_everything_once():
    todo = [i for i in range(100) if i % 7]
    for workers in (1, 2, 3):
        chunks = ds.plan_chunks(todo, 32, workers)
        flat = [i for c in chunks for i in c]
        assert sorted(flat) == todo and len(flat) == len(set(flat))
        assert all(len({i // 32 for i in c}) == 1 for c in chunks)


def test_scan_coverage_detects_views_past_the_ct_ends():
    from DeepMorphSimulatorLib.geometry import CArmGeometry
    from DeepMorphSimulatorLib.volume import Volume

    data = np.full((60, 100, 100), 0.02, np.float32)  # 'body' everywhere, 60 mm tall (k = S axis)
    vol = Volume(data, spacing=(2.0, 2.0, 1.0), origin=(-99.0, -99.0, -29.5))
    cov = ds.ScanCoverage.from_volume(vol)
    inside = CArmGeometry(width_px=32, height_px=32, pixel_mm=0.5)  # ~10 mm field at the isocentre
    assert cov.cut_fraction(inside) == 0.0
    wide = inside.with_(pixel_mm=8.0)  # ~150 mm field: the top and bottom rows look past the ends
    assert 0.2 < cov.cut_fraction(wide) < 0.8
    flank = inside.with_(pixel_mm=2.0, isocenter_lps=(90.0, 0.0, 0.0))  # ~38 mm field across the x = +100 mm cut
    assert cov.cut_fraction(flank) > 0.1
    slim = Volume(np.where(np.abs(np.arange(100) * 2.0 - 99.0) < 80, data, 0.0).astype(np.float32), vol.spacing, vol.origin)
    assert ds.ScanCoverage.from_volume(slim).cut_fraction(flank) == 0.0  # air at the flanks: nothing is cut
    lateral = wide.with_(orbital_deg=90.0)  # beam along x: the x faces face the beam and do not count
    assert cov.cut_fraction(lateral) == pytest.approx(cov.cut_fraction(wide), abs=0.1)
    from DeepMorphSimulatorLib.poses import sample_pose

    lm = {"head_center": np.zeros(3)}
    g = sample_pose(np.random.default_rng(0), lm, 32, accept=lambda geo: cov.cut_fraction(geo) == 0.0, max_tries=200)
    assert cov.cut_fraction(g) == 0.0 or g is not None


def test_user_ct_with_mesh_landmarks_and_label_map(tmp_path):
    """A researcher's CT + femur (mesh or label map) + markups: many poses of one CT, side checked."""
    from DeepMorphSimulatorLib import phantom

    files = phantom.save_phantom(phantom.make_phantom(7, spacing_mm=3.0), tmp_path / "in")
    s = ds.DatasetSettings(source="ct", ct=files["ct"], mesh=files["femur_left"], landmarks=files["landmarks"],
                           side="left", size=64, implants=1.0)
    stats = ds.generate(s, tmp_path / "out", 3, progress=False)
    assert stats["written"] == 3
    anns = [json.loads((tmp_path / "out" / "samples" / f"{i:06d}.json").read_text()) for i in range(3)]
    assert {a["side"] for a in anns} == {"left"} and all(a["head_circle"] for a in anns)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["settings"]["source"] == "ct" and len(manifest["settings"]["input_digest"]) == 64
    # label map instead of a mesh, side inferred from the anatomy
    s2 = ds.DatasetSettings(source="ct", ct=files["ct"], mesh=files["femur_label"], side="right", size=64, implants=0.0)
    ds.generate(s2, tmp_path / "out2", 1, progress=False)
    assert json.loads((tmp_path / "out2" / "samples" / "000000.json").read_text())["side"] == "right"
    # the wrong side for the mesh: a clear error before any work
    bad = ds.DatasetSettings(source="ct", ct=files["ct"], mesh=files["femur_left"], side="right", size=64)
    with pytest.raises(ValueError, match="left femur"):
        ds.generate(bad, tmp_path / "out3", 1, progress=False)
    assert not (tmp_path / "out3").exists()


def test_display_window_setting():
    """--display-window: validated; the default stays out of the manifest identity (older manifests still
    resume), 'anatomy' is recorded."""
    from DeepMorphSimulatorLib.dataset import DatasetSettings

    assert "display_window" not in DatasetSettings().identity()
    assert DatasetSettings(display_window="anatomy").identity()["display_window"] == "anatomy"
    with pytest.raises(ValueError, match="display-window"):
        DatasetSettings(display_window="wide").validate()


def test_the_command_offers_exactly_the_detector_display_windows():
    """``deepmorph dataset --display-window`` lists its choices without importing the detector (fast --help):
    they must be the detector's ``DISPLAY_WINDOWS``."""
    import argparse

    from DeepMorphSimulatorLib.commands import dataset as command
    from DeepMorphSimulatorLib.detector import DISPLAY_WINDOWS

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    action = next(a for a in parser._actions if a.dest == "display_window")
    assert tuple(action.choices) == DISPLAY_WINDOWS and action.default == DISPLAY_WINDOWS[0]


def test_wide_views_record_the_other_hips_femur(scene):
    """A view centred between the hips shows both femurs: the other one's truth is recorded, on its own projection
    (label-volume DRR) and with its head centred on its projected head centre; a view of one hip records none."""
    import dataclasses

    from DeepMorphSimulatorLib import drr, phantom
    from DeepMorphSimulatorLib.geometry import CArmGeometry

    s = ds.DatasetSettings(**SMALL)
    ph = phantom.make_phantom(ds.phantom_seed(s.seed, 0), sides=ds.SIDES, spacing_mm=s.phantom_spacing_mm)
    heads = {k: f.landmarks["head_center"] for k, f in scene.femurs.items()}
    between = tuple((heads["left"] + heads["right"]) / 2.0)
    wide = CArmGeometry(width_px=96, height_px=96, pixel_mm=4.0, isocenter_lps=between)  # ~230 mm field
    found = ds.other_femurs_in_view(scene, "right", wide)
    others = [record for record, _ in found]
    assert [o["side"] for o in others] == ["left"]
    label = ph.femur_label.with_data((ph.femur_label.data == 2).astype(np.float32))  # 2 = left femur
    proj = drr.line_integrals(label, wide) > 0.5
    from scipy import ndimage

    edge_dist = np.where(proj, ndimage.distance_transform_edt(proj), ndimage.distance_transform_edt(~proj))
    pts = np.asarray(others[0]["contour"], float)
    inside = (pts[:, 0] >= 1) & (pts[:, 0] < 94) & (pts[:, 1] >= 1) & (pts[:, 1] < 94)
    assert inside.sum() >= 20
    d = edge_dist[np.rint(pts[inside, 1]).astype(int), np.rint(pts[inside, 0]).astype(int)]
    assert np.median(d) <= 1.5
    cx, cy, r = others[0]["head_circle"]
    assert np.hypot(*(np.array([cx, cy]) - wide.project(heads["left"][None])[0])) < 0.5 and r > 3
    narrow = dataclasses.replace(wide, pixel_mm=0.6, isocenter_lps=tuple(heads["right"]))  # ~35 mm around one head
    assert ds.other_femurs_in_view(scene, "right", narrow) == []
    sample = ds.render_sample(scene, s, 0)["annotation"]
    assert isinstance(sample["other_femurs"], list)
    femur_target = found[0][1].femur_target > 0  # --targets all adds it to the masks: on the left femur's outline
    assert femur_target.sum() > 20 and np.median(edge_dist[femur_target]) <= 2.0


def test_targets_setting():
    from DeepMorphSimulatorLib.commands import dataset as cmd
    import argparse

    assert "targets" not in ds.DatasetSettings().identity()  # older manifests (before the setting) still match
    assert ds.DatasetSettings(targets="all").identity()["targets"] == "all"
    with pytest.raises(ValueError, match="--targets"):
        ds.DatasetSettings(targets="both").validate()
    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    action = next(a for a in parser._actions if a.dest == "targets")
    assert tuple(action.choices) == ds.TARGETS and action.default == ds.TARGETS[0]


def test_all_femurs_targets_add_the_other_hip_and_keep_the_rest(scene):
    """Sample 2 of the small set shows part of the other femur: with targets 'all' its masks gain that femur's
    outline; image, annotation and the annotated femur's targets stay the same."""
    one = ds.render_sample(scene, ds.DatasetSettings(**SMALL), 2)
    every = ds.render_sample(scene, ds.DatasetSettings(targets="all", **SMALL), 2)
    assert one["annotation"]["other_femurs"] and one["annotation"] == every["annotation"]
    assert np.array_equal(one["image"], every["image"])
    a, b = one["femur_mask"] > 0, every["femur_mask"] > 0
    assert np.all(b[a]) and b.sum() > a.sum()
