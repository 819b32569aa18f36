"""Projected ground truth: silhouette vs DRR of the label map, head circle, correspondence, user femurs."""
import json
from pathlib import Path

import numpy as np
import pytest

from DeepMorphSimulatorLib.femur import load_femur
from DeepMorphSimulatorLib.geometry import CArmGeometry
from DeepMorphSimulatorLib.mesh import mesh_arrays, polydata_from_arrays, read_mesh, write_mesh
from DeepMorphSimulatorLib.phantom import make_phantom, save_phantom
from DeepMorphSimulatorLib.projection import (ANCHORS, anchor_indices, fit_circle_algebraic, project_ground_truth,
                                              project_sphere, sphere_outline)
from DeepMorphSimulatorLib.raster import closest_on_polygon, iso_contours, polygon_area, rasterize
from DeepMorphSimulatorLib.volume import Volume

POSES = [
    dict(),
    dict(orbital_deg=25, angular_deg=-10),
    dict(orbital_deg=-20, angular_deg=15, inplane_deg=40),
    dict(orbital_deg=10, angular_deg=5, inplane_deg=-120),
]


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(21, spacing_mm=2.0)


def _geometry(femur, size=256, pixel=0.9, **pose):
    hc = femur.landmarks["head_center"]
    lateral = -20.0 if femur.side == "right" else 20.0
    return CArmGeometry(width_px=size, height_px=size, pixel_mm=pixel,
                        isocenter_lps=tuple(hc + [lateral, 0.0, -45.0]), **pose)


def _label_line_integrals(label: Volume, geometry: CArmGeometry) -> np.ndarray:
    """Line integrals (mm) of the binary label map (label > 0), via the DRR renderer."""
    from DeepMorphSimulatorLib.drr import line_integrals

    return line_integrals(label.with_data((label.data > 0).astype(np.float32)), geometry)


def _crop_label(label: Volume, value: int) -> Volume:
    k, j, i = np.nonzero(label.data == value)
    lo = np.array([k.min(), j.min(), i.min()]) - 2
    hi = np.array([k.max(), j.max(), i.max()]) + 3
    sub = (label.data[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] == value).astype(np.uint8)
    return Volume(sub, label.spacing, label.index_to_lps(lo[::-1].astype(float))[0], label.direction)


# --- head sphere -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sid, sod, pixel", [(1000.0, 600.0, 0.6), (1200.0, 800.0, 0.3), (950.0, 450.0, 1.2)])
def test_sphere_on_the_central_ray_projects_to_the_analytic_circle(sid, sod, pixel):
    g = CArmGeometry(sid_mm=sid, sod_mm=sod, pixel_mm=pixel, orbital_deg=12, angular_deg=-7,
                     isocenter_lps=(10.0, -5.0, 30.0))
    R = 24.0
    (cx, cy, r), _ = project_sphere(g.isocenter_lps, R, g)
    expected = sid / pixel * R / np.sqrt(sod**2 - R**2)  # tangent cone: tan(half angle) = R / sqrt(d^2 - R^2)
    assert np.hypot(cx - g.principal_point_px[0], cy - g.principal_point_px[1]) < 1e-6
    assert abs(r - expected) < 1e-6


def test_off_axis_sphere_outline_is_tangent_and_matches_the_rasterised_mesh():
    import vtk

    g = CArmGeometry(width_px=448, height_px=448, pixel_mm=0.6, orbital_deg=15, angular_deg=10)
    centre, R = np.array([55.0, 20.0, -50.0]), 23.0
    outline = sphere_outline(centre, R, g)
    # every outline point's ray grazes the sphere
    rays = g.pixel_positions_lps(outline[:, 0], outline[:, 1]) - g.source_lps
    rays /= np.linalg.norm(rays, axis=1)[:, None]
    w = centre - g.source_lps
    dist = np.linalg.norm(w - (rays @ w)[:, None] * rays, axis=1)
    assert np.allclose(dist, R, atol=1e-6)
    # the circle agrees with the silhouette of a fine sphere mesh within 0.5 px
    src = vtk.vtkSphereSource()
    src.SetCenter(*centre)
    src.SetRadius(R)
    src.SetThetaResolution(120)
    src.SetPhiResolution(120)
    src.Update()
    v, f = mesh_arrays(src.GetOutput())
    uv = g.project(v)
    lo = np.floor(uv.min(axis=0)).astype(int) - 3
    hi = np.ceil(uv.max(axis=0)).astype(int) + 3
    cov, _ = rasterize(uv[f], tuple(lo), (hi[1] - lo[1] + 1, hi[0] - lo[0] + 1))
    contour = max(iso_contours(cov, 0.5, origin_uv=tuple(lo.astype(float))), key=lambda p: abs(polygon_area(p)))
    (cx, cy, r), _ = project_sphere(centre, R, g)
    ccx, ccy, cr = fit_circle_algebraic(contour)
    assert np.hypot(cx - ccx, cy - ccy) < 0.5 and abs(r - cr) < 0.5


# --- silhouette vs the DRR of the label map ------------------------------------------------------------------
def test_silhouette_matches_thresholded_drr_of_the_label_map():
    ph = make_phantom(3, spacing_mm=1.0, sides=("right",))
    fem = ph.femurs["right"]
    label = _crop_label(ph.femur_label, 1)
    for pose in POSES[:3]:
        g = _geometry(fem, size=200, pixel=1.2, **pose)
        gt = project_ground_truth(fem.mesh, fem.landmarks, fem.head_radius_mm, g)
        drr_mask = _label_line_integrals(label, g) > 1.0  # > 1 mm of bone along the ray
        iou = np.sum(drr_mask & gt.silhouette) / np.sum(drr_mask | gt.silhouette)
        assert iou >= 0.97, (pose, iou)


# --- correspondence --------------------------------------------------------------------------------------
def test_points_are_anchored_and_ordered(phantom):
    for side, fem in phantom.femurs.items():
        for pose in POSES:
            g = _geometry(fem, **pose)
            gt = project_ground_truth(fem.mesh, fem.landmarks, fem.head_radius_mm, g, n_points=80)
            assert gt.points.shape == (80, 2) and gt.visible.shape == (80,) and gt.anchors_in_order
            idx = anchor_indices(80)
            assert gt.anchor_indices == idx and list(idx) == list(ANCHORS)
            # the point at each landmark's index is the contour point closest to the projected landmark
            for name in ("greater_trochanter", "neck_superior", "head_apex", "neck_inferior", "lesser_trochanter"):
                target = gt.landmarks_uv[name]
                _, d_best = closest_on_polygon(gt.contour, target[None])
                assert np.linalg.norm(gt.points[idx[name]] - target) <= d_best[0] + 1e-2
            # the head apex is on the projected head circle; the contour starts at the lateral cut corner
            cx, cy, r = gt.head_circle
            assert abs(np.hypot(*(gt.points[idx["head_apex"]] - [cx, cy])) - r) < 1.5
            assert np.allclose(gt.points[0], gt.contour[0], atol=1e-6)
            # closed, densely sampled polygon
            steps = np.linalg.norm(np.diff(np.vstack([gt.contour, gt.contour[:1]]), axis=0), axis=1)
            assert steps.max() < 2.0
            # orientation: right femurs clockwise as displayed in these (roughly PA) views, left mirrored
            area = polygon_area(gt.contour)
            if abs(pose.get("inplane_deg", 0)) < 90:
                assert (area > 0) == (side == "right")
            mirrored = gt.contour * [-1, 1]
            assert (polygon_area(mirrored) > 0) == (side == "left") or abs(pose.get("inplane_deg", 0)) >= 90


def test_visibility_flags(phantom):
    fem = phantom.femurs["right"]
    g = _geometry(fem, size=256, pixel=0.9)
    gt = project_ground_truth(fem.mesh, fem.landmarks, fem.head_radius_mm, g)
    idx = gt.anchor_indices
    inside = (gt.points[:, 0] >= -0.5) & (gt.points[:, 0] <= 255.5) & (gt.points[:, 1] >= -0.5) & (gt.points[:, 1] <= 255.5)
    assert not np.any(gt.visible & ~inside)
    cut = np.arange(idx["shaft_cut_medial"] + 1, len(gt.points))
    assert not gt.visible[cut].any()
    # a detector that holds the whole femur: everything but the cut is visible
    big = g.with_(width_px=700, height_px=700, pixel_mm=0.9)
    gt2 = project_ground_truth(fem.mesh, fem.landmarks, fem.head_radius_mm, big)
    assert gt2.visible.sum() == idx["shaft_cut_medial"] + 1


def test_targets_follow_the_outline_and_the_head(phantom):
    fem = phantom.femurs["left"]
    g = _geometry(fem, size=256, pixel=0.9, orbital_deg=-10)
    gt = project_ground_truth(fem.mesh, fem.landmarks, fem.head_radius_mm, g, band_px=3.0)
    assert gt.femur_target.dtype == np.uint8 and set(np.unique(gt.femur_target)) <= {0, 1}
    vv, uu = np.nonzero(gt.femur_target)
    _, d = closest_on_polygon(gt.contour, np.stack([uu, vv], axis=1)[::7])
    assert d.max() <= 1.5 + 1e-6
    # the silhouette's boundary pixels lie in the band (except along the artificial cut)
    edge = gt.silhouette & ~np.roll(gt.silhouette, 1, axis=0)
    edge[-5:, :] = False
    assert np.mean(gt.femur_target[edge] == 1) > 0.97
    hv, hu = np.nonzero(gt.head_target)
    cx, cy, r = fit_circle_algebraic(np.stack([hu, hv], axis=1).astype(float))
    assert np.hypot(cx - gt.head_circle[0], cy - gt.head_circle[1]) < 1.0 and abs(r - gt.head_circle[2]) < 1.0
    # the head band covers the dome: more than half of the circle
    assert len(hu) > 0.5 * 2 * np.pi * gt.head_circle[2] * 3.0 * 0.8
    doc = json.loads(json.dumps(gt.to_dict()))
    assert len(doc["points"]) == 64 and len(doc["head_circle"]) == 3


def test_head_outside_the_detector_gives_no_circle(phantom):
    fem = phantom.femurs["right"]
    hc = fem.landmarks["head_center"]
    g = CArmGeometry(width_px=128, height_px=128, pixel_mm=0.6, isocenter_lps=tuple(hc + [0.0, 0.0, -140.0]))
    gt = project_ground_truth(fem.mesh, fem.landmarks, fem.head_radius_mm, g)
    assert gt.head_circle is None
    assert gt.head_target.sum() == 0


# --- a researcher's own femur ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(phantom, tmp_path_factory):
    return save_phantom(phantom, tmp_path_factory.mktemp("p21"))


def test_user_mesh_without_landmarks(phantom, saved):
    true = phantom.femurs["right"]
    fem = load_femur(saved["femur_right"], ct=phantom.ct)
    assert fem.side == "right"
    assert np.linalg.norm(fem.landmarks["head_center"] - true.landmarks["head_center"]) < 0.5
    assert abs(fem.head_radius_mm - true.head_radius_mm) < 0.5
    for name in ("greater_trochanter", "lesser_trochanter", "shaft_axis_distal"):
        assert np.linalg.norm(fem.landmarks[name] - true.landmarks[name]) < 12.0, name
    g = _geometry(true)
    a = project_ground_truth(true.mesh, true.landmarks, true.head_radius_mm, g)
    b = project_ground_truth(fem.mesh, fem.landmarks, fem.head_radius_mm, g)
    assert np.array_equal(a.silhouette, b.silhouette)
    assert np.allclose(a.head_circle, b.head_circle, atol=0.5)


def test_user_label_map_and_markups(phantom, saved):
    fem = load_femur(saved["femur_label"], landmarks=saved["landmarks"], side="left", ct=phantom.ct)
    true = phantom.femurs["left"]
    assert fem.side == "left" and fem.head_radius_mm == pytest.approx(true.head_radius_mm, abs=1e-3)
    assert np.allclose(fem.landmarks["greater_trochanter"], true.landmarks["greater_trochanter"])
    g = _geometry(true)
    a = project_ground_truth(true.mesh, true.landmarks, true.head_radius_mm, g)
    b = project_ground_truth(fem.mesh, fem.landmarks, fem.head_radius_mm, g)
    iou = np.sum(a.silhouette & b.silhouette) / np.sum(a.silhouette | b.silhouette)
    assert iou > 0.95  # label-map surface (2 mm voxels) vs the SDF surface


def test_user_femur_errors(phantom, saved, tmp_path):
    with pytest.raises(ValueError, match="left femur"):
        load_femur(saved["femur_left"], side="right")
    with pytest.raises(ValueError, match="give the side"):
        load_femur(saved["femur_label"])
    empty = phantom.femur_label.with_data(np.zeros_like(phantom.femur_label.data))
    with pytest.raises(ValueError, match="empty"):
        load_femur(empty)
    moved = read_mesh(saved["femur_right"])
    v, f = mesh_arrays(moved)
    write_mesh(polydata_from_arrays(v + [0.0, 0.0, 400.0], f), tmp_path / "moved.vtp")
    with pytest.raises(ValueError, match="outside the CT"):
        load_femur(tmp_path / "moved.vtp", ct=phantom.ct)
    import vtk

    box = vtk.vtkCubeSource()
    box.SetXLength(30)
    box.SetYLength(30)
    box.SetZLength(200)
    tri = vtk.vtkTriangleFilter()
    tri.SetInputConnection(box.GetOutputPort())
    sub = vtk.vtkLinearSubdivisionFilter()
    sub.SetInputConnection(tri.GetOutputPort())
    sub.SetNumberOfSubdivisions(4)
    sub.Update()
    with pytest.raises(ValueError, match="femoral head"):
        load_femur(sub.GetOutput())
    with pytest.raises(FileNotFoundError):
        load_femur(tmp_path / "missing.vtp")
    fem = phantom.femurs["right"]
    g = _geometry(fem)
    partial = {k: v for k, v in fem.landmarks.items() if k != "greater_trochanter"}
    with pytest.raises(ValueError, match="greater_trochanter"):
        project_ground_truth(fem.mesh, partial, fem.head_radius_mm, g)
    behind = g.with_(sod_mm=10.0, sid_mm=1000.0)
    with pytest.raises(ValueError, match="source"):
        project_ground_truth(fem.mesh, fem.landmarks, fem.head_radius_mm, behind)


@pytest.mark.parametrize("suffix", [".vtp", ".vtk", ".stl", ".ply"])
def test_mesh_round_trip(phantom, tmp_path, suffix):
    mesh = phantom.femurs["right"].mesh
    write_mesh(mesh, tmp_path / f"m{suffix}")
    back = read_mesh(tmp_path / f"m{suffix}")
    v0, f0 = mesh_arrays(mesh)
    v1, f1 = mesh_arrays(back)
    assert len(f1) == len(f0)
    assert np.allclose(np.sort(v0, axis=0), np.sort(v1, axis=0), atol=1e-3)
    ras = read_mesh(tmp_path / f"m{suffix}", coordinate_system="RAS")
    assert np.allclose(mesh_arrays(ras)[0], v1 * [-1, -1, 1])


def test_drr_command_writes_the_ground_truth(phantom, saved, tmp_path, capsys):
    from PIL import Image

    from DeepMorphLib.cli import main

    fem = phantom.femurs["left"]
    iso = [str(x) for x in fem.landmarks["head_center"] + [20.0, 0.0, -45.0]]
    out = tmp_path / "drr.png"
    args = ["drr", "--ct", saved["ct"], "--mesh", saved["femur_left"], "--landmarks", saved["landmarks"],
            "--side", "left", "--size", "160", "--pixel-mm", "1.2", "--isocenter", *iso, "--out", str(out)]
    assert main(args) == 0
    doc = json.loads((tmp_path / "drr.json").read_text())
    assert doc["side"] == "left" and len(doc["points"]) == 64 and len(doc["visible"]) == 64
    assert len(doc["head_circle"]) == 3 and len(doc["contour"]) > 100 and doc["anchors_in_order"]
    assert doc["anchor_indices"]["shaft_cut_medial"] == anchor_indices(64)["shaft_cut_medial"]
    g = CArmGeometry.from_dict(doc["geometry"])
    gt = project_ground_truth(fem.mesh, fem.landmarks, fem.head_radius_mm, g)
    assert np.allclose(doc["head_circle"], gt.head_circle, atol=0.02)  # radius stored to 1 um
    femur_png = np.array(Image.open(tmp_path / "drr_femur.png"))
    head_png = np.array(Image.open(tmp_path / "drr_head.png"))
    assert femur_png.dtype == np.uint8 and set(np.unique(femur_png)) <= {0, 255}
    assert np.array_equal(femur_png > 0, gt.femur_target > 0) and np.array_equal(head_png > 0, gt.head_target > 0)
    # wrong side and a label map with both femurs but no side: clear errors, exit code 2
    bad = ["drr", "--ct", saved["ct"], "--mesh", saved["femur_left"], "--side", "right", "--size", "64",
           "--out", str(tmp_path / "bad.png")]
    assert main(bad) == 2
    assert "left femur" in capsys.readouterr().err
    bad = ["drr", "--ct", saved["ct"], "--mesh", saved["femur_label"], "--size", "64", "--out", str(tmp_path / "b.png")]
    assert main(bad) == 2
    assert "give the side" in capsys.readouterr().err


def test_drr_command_warns_when_the_femur_is_out_of_view_or_the_ct_is_not_in_hu(phantom, saved, tmp_path, capsys):
    from DeepMorphLib.cli import main
    from DeepMorphSimulatorLib.volume import read_volume, write_volume

    fem = phantom.femurs["left"]
    common = ["--mesh", saved["femur_left"], "--landmarks", saved["landmarks"], "--side", "left", "--size", "96",
              "--pixel-mm", "1.2"]
    far = [str(x) for x in fem.landmarks["head_center"] + [-180.0, 0.0, 0.0]]  # on the other hip
    assert main(["drr", "--ct", saved["ct"], *common, "--isocenter", *far, "--out", str(tmp_path / "a.png")]) == 0
    err = capsys.readouterr().err
    assert "mostly out of view" in err and "--isocenter " + " ".join(f"{x:.1f}" for x in fem.landmarks["head_center"]) in err
    near = [str(x) for x in fem.landmarks["head_center"]]
    assert main(["drr", "--ct", saved["ct"], *common, "--isocenter", *near, "--out", str(tmp_path / "b.png")]) == 0
    assert "warning" not in capsys.readouterr().err
    raw = read_volume(saved["ct"])  # stored values without the HU rescale: air at about 0
    write_volume(raw.with_data(raw.data + 1024.0), tmp_path / "raw.nrrd")
    assert main(["drr", "--ct", str(tmp_path / "raw.nrrd"), *common, "--isocenter", *near,
                 "--out", str(tmp_path / "c.png")]) == 0
    err = capsys.readouterr().err
    assert "Hounsfield" in err and "rescale slope" in err and "out of view" not in err


def _with_point_normals(mesh, normals):
    from vtk.util.numpy_support import numpy_to_vtk

    array = numpy_to_vtk(np.ascontiguousarray(normals, dtype=np.float32), deep=True)
    array.SetName("Normals")
    mesh.GetPointData().SetNormals(array)
    return mesh


def test_normals_stored_in_the_mesh_file_do_not_steer_the_head_search(phantom, saved, tmp_path):
    """Inward normals in a .vtp, and a RAS .vtk (SPACE=RAS, as Slicer < 4.11 wrote) whose RAS normals are stale once
    its points are flipped to LPS: the head is found as on the same mesh without normals."""
    from DeepMorphSimulatorLib.femur import _normals
    from DeepMorphSimulatorLib.mesh import transform_points

    true = phantom.femurs["right"]
    mesh = read_mesh(saved["femur_right"])
    outward, _ = _normals(mesh)
    write_mesh(_with_point_normals(mesh, -outward), tmp_path / "inward.vtp")
    ras = _with_point_normals(transform_points(read_mesh(saved["femur_right"]), np.diag([-1.0, -1.0, 1.0, 1.0])),
                              outward * [-1.0, -1.0, 1.0])
    write_mesh(ras, tmp_path / "ras.vtk")
    text = (tmp_path / "ras.vtk").read_bytes().replace(b"SPACE=LPS", b"SPACE=RAS")
    (tmp_path / "ras.vtk").write_bytes(text)
    for name in ("inward.vtp", "ras.vtk"):
        fem = load_femur(tmp_path / name, ct=phantom.ct)
        assert fem.side == "right", name
        assert np.linalg.norm(fem.landmarks["head_center"] - true.landmarks["head_center"]) < 0.5, name
        assert abs(fem.head_radius_mm - true.head_radius_mm) < 0.5, name


@pytest.mark.parametrize("move", ["shifted 30 mm", "RAS read as LPS"])
def test_a_femur_off_the_bone_of_the_ct_is_refused(phantom, saved, tmp_path, move):
    """A femur surface inside the CT's box but not on its bone (another CT's mesh, RAS points read as LPS, a shifted
    segmentation) would give ground truth beside the femur in the DRR: refused, naming the likely causes."""
    v, f = mesh_arrays(read_mesh(saved["femur_right"]))
    v = v + [30.0, 0.0, 0.0] if move == "shifted 30 mm" else v * [-1.0, -1.0, 1.0]
    lo, hi = phantom.ct.corners_lps().min(axis=0), phantom.ct.corners_lps().max(axis=0)
    assert np.all((v >= lo) & (v <= hi))  # the CT-box check alone cannot see it
    write_mesh(polydata_from_arrays(v, f), tmp_path / "off.stl")
    with pytest.raises(ValueError, match="does not lie on bone in the CT.*RAS"):
        load_femur(tmp_path / "off.stl", ct=phantom.ct)
    assert load_femur(tmp_path / "off.stl").side in ("right", "left")  # without a CT nothing to compare against


def test_a_shaft_cut_too_short_to_measure_names_the_cut(phantom, saved, tmp_path, capsys):
    """A cut above the lesser trochanter leaves no shaft to find the axis in, even with every landmark given: the
    error names --cut-mm and a length that works (not the landmarks the user already gave); a NaN cut is refused."""
    from DeepMorphLib.cli import main

    fem = phantom.femurs["right"]
    with pytest.raises(ValueError, match=r"--cut-mm.*use about (\d+) mm") as err:
        load_femur(saved["femur_right"], landmarks=dict(fem.landmarks), cut_mm=40.0)
    enough = float(err.value.args[0].split("use about ")[1].split(" mm")[0])
    assert 40.0 < enough < 150.0
    assert load_femur(saved["femur_right"], landmarks=dict(fem.landmarks), cut_mm=enough).side == "right"
    args = ["drr", "--ct", saved["ct"], "--mesh", saved["femur_right"], "--size", "32", "--out", str(tmp_path / "a.png")]
    assert main([*args, "--cut-mm", "nan"]) == 2
    assert "--cut-mm" in capsys.readouterr().err


def test_dataset_reads_a_ras_mesh_with_mesh_space(phantom, saved, tmp_path):
    """``deepmorph dataset --ct --mesh-space RAS`` (as ``drr`` has it): a mesh saved in RAS gives the femur of the LPS
    mesh; the default keeps older manifests' identity (no mesh_space key)."""
    import argparse

    from DeepMorphSimulatorLib import dataset as ds
    from DeepMorphSimulatorLib.commands.dataset import add_arguments, settings_from_args

    v, f = mesh_arrays(read_mesh(saved["femur_right"]))
    write_mesh(polydata_from_arrays(v * [-1.0, -1.0, 1.0], f), tmp_path / "ras.stl")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--ct", saved["ct"], "--mesh", str(tmp_path / "ras.stl"), "--mesh-space", "RAS",
                              "--n", "1", "--out", str(tmp_path / "out")])
    scene = ds.load_ct_scene(settings_from_args(args))
    true = phantom.femurs["right"].landmarks["head_center"]
    assert np.linalg.norm(scene.femurs["right"].landmarks["head_center"] - true) < 0.5
    assert "mesh_space" not in ds.DatasetSettings().identity()
    assert settings_from_args(args).identity()["mesh_space"] == "RAS"


def test_landmarks_whose_head_center_is_off_the_mesh_head_are_refused(phantom, saved, tmp_path):
    """A head_center 18 mm off the femoral head (landmarks of another CT, or clicked beside the head) gave a head
    circle beside the head in every image without a word; RAS positions in an LPS file gave a misleading error."""
    true = phantom.femurs["right"].landmarks["head_center"]
    doc = json.loads(Path(saved["landmarks"]).read_text())
    points = doc["markups"][0]["controlPoints"]
    doc["markups"][0]["controlPoints"] = [p for p in points if p["label"] == "right_head_center"]
    for name, position in (("exact", true), ("off", true + [15.0, 0.0, -10.0]), ("ras", true * [-1.0, -1.0, 1.0])):
        doc["markups"][0]["controlPoints"][0]["position"] = [float(x) for x in position]
        (tmp_path / f"{name}.mrk.json").write_text(json.dumps(doc))
    fem = load_femur(saved["femur_right"], landmarks=tmp_path / "exact.mrk.json", side="right")
    assert np.allclose(fem.landmarks["head_center"], true)
    for name in ("off", "ras"):
        with pytest.raises(ValueError, match="head_center .* is not the femoral head of the mesh"):
            load_femur(saved["femur_right"], landmarks=tmp_path / f"{name}.mrk.json", side="right")
