"""Render the modules' screenshots headless with Slicer's own views (slicer-core, offscreen EGL).

    python Utilities/make_screenshots.py            # real phantom/DRR/fit when those Lib pieces exist
    python Utilities/make_screenshots.py --synthetic  # stand-ins only (analytic hip, quick DRR, fake fit)

Writes ``Resources/Screenshots/DeepMorphSimulator.png`` (3D view: femur, C-arm, DRR on the detector |
Red slice view: DRR + projected outline, head circle, landmarks) and ``Resources/Screenshots/DeepMorph.png``
(X-ray + confidence overlay + fitted head circle | + fitted femur contour with named landmarks).
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "DeepMorphSimulator"), str(ROOT / "DeepMorph")]

from DeepMorphSimulatorLib import mrml_glue as sg  # noqa: E402
from DeepMorphSimulatorLib import simulator_logic  # noqa: E402
from DeepMorphSimulatorLib.geometry import CArmGeometry, ras_from_lps  # noqa: E402
from DeepMorphSimulatorLib.volume import Volume  # noqa: E402

SIDE = "right"
SIZE_PX = 320


def have(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


# --------------------------------------------------------------------------------------------
# Synthetic stand-ins (used until the phantom, DRR and fitting pieces are available)
# --------------------------------------------------------------------------------------------
def synthetic_hip(spacing: float = 1.5):
    """An analytic right hip in LPS mm: CT (HU), femur label, femur landmarks and head radius."""
    from scipy import ndimage

    x = np.arange(-200.0, 20.0, spacing)
    y = np.arange(-80.0, 80.0, spacing)
    z = np.arange(-200.0, 60.0, spacing)
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    p = np.stack([xx, yy, zz], axis=-1)

    def capsule(a, b, r):
        a, b = np.asarray(a, float), np.asarray(b, float)
        t = np.clip(((p - a) @ (b - a)) / ((b - a) @ (b - a)), 0, 1)
        return np.linalg.norm(p - (a + t[..., None] * (b - a)), axis=-1) < r

    head, radius = np.array([-90.0, 0.0, 0.0]), 24.0
    femur = (np.linalg.norm(p - head, axis=-1) < radius) | capsule(head, [-128, 2, -38], 15)
    femur |= capsule([-136, 4, -24], [-138, 4, -60], 17) | capsule([-133, 2, -50], [-122, 0, -200], 14)
    femur |= np.linalg.norm(p - [-113.0, 10.0, -68.0], axis=-1) < 9
    pelvis = capsule([-70, 0, 30], [-20, 10, 50], 26) & ~(np.linalg.norm(p - head, axis=-1) < radius + 3)
    body = ((xx + 20) / 185) ** 2 + (yy / 105) ** 2 + ((zz + 70) / 260) ** 2 < 1
    depth_in = ndimage.distance_transform_edt(femur) * spacing
    ct = np.where(body, 40.0, -1000.0)
    ct[pelvis] = 500.0
    ct[femur] = np.where(depth_in[femur] < 3.0, 1400.0, 300.0)
    origin = np.array([x[0], y[0], z[0]])
    landmarks = {
        "head_center": head, "neck_axis_point": np.array([-120.0, 2.0, -30.0]),
        "greater_trochanter": np.array([-140.0, 4.0, -10.0]), "lesser_trochanter": np.array([-110.0, 14.0, -72.0]),
        "shaft_axis_proximal": np.array([-130.0, 1.0, -80.0]), "shaft_axis_distal": np.array([-123.0, 0.0, -180.0]),
    }
    ct_volume = Volume(ct.astype(np.int16), [spacing] * 3, origin, np.eye(3))
    return ct_volume, ct_volume.with_data(femur.astype(np.uint8)), landmarks, radius


def quick_line_integrals(volume: Volume, geometry: CArmGeometry, samples: int = 320) -> np.ndarray:
    """Trilinear ray sums through ``volume`` (its values per mm), uniform in depth along each ray."""
    from scipy import ndimage

    depths = geometry.depth(volume.corners_lps())
    d = np.linspace(depths.min(), depths.max(), samples)
    pixels = geometry.pixel_positions_lps()
    rays = pixels - geometry.source_lps
    step = np.linalg.norm(rays, axis=-1) / geometry.sid_mm * (d[1] - d[0])
    total = np.zeros(pixels.shape[:2])
    for depth in d:
        ijk = volume.lps_to_index((geometry.source_lps + rays * depth / geometry.sid_mm).reshape(-1, 3))
        total += ndimage.map_coordinates(volume.data, ijk[:, ::-1].T, order=1, cval=0.0).reshape(total.shape)
    return total * step


def quick_drr(ct: Volume, geometry: CArmGeometry) -> np.ndarray:
    """uint8 stand-in DRR, bone dark: line integrals (eq. 8-9) shown on a linear scale in [20, 255]."""
    mu = ct.with_data(((np.clip(ct.data, -1024, 3071) + 1024.0) / 1024.0 * 0.02).astype(np.float32))
    a = quick_line_integrals(mu, geometry)
    lo, hi = np.quantile(a, [0.02, 0.995])
    return (255 - 235 * np.clip((a - lo) / (hi - lo), 0, 1)).astype(np.uint8)


def outline_of(mask: np.ndarray) -> np.ndarray:
    """Longest iso-contour (M, 2) as (u, v) of a 2-D mask, via VTK's contour filter."""
    import vtk
    from vtk.util import numpy_support

    padded = np.pad(mask.astype(np.float32), 1)  # closes outlines that leave the image
    image = vtk.vtkImageData()
    image.SetDimensions(padded.shape[1], padded.shape[0], 1)
    image.SetOrigin(-1.0, -1.0, 0.0)
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(padded.ravel(), deep=True))
    contour = vtk.vtkContourFilter()
    contour.SetInputData(image)
    contour.SetValue(0, 0.5)
    stripper = vtk.vtkStripper()
    stripper.SetInputConnection(contour.GetOutputPort())
    stripper.Update()
    out = stripper.GetOutput()
    pts = numpy_support.vtk_to_numpy(out.GetPoints().GetData())[:, :2]
    lines, cells, best = out.GetLines(), vtk.vtkIdList(), None
    lines.InitTraversal()
    while lines.GetNextCell(cells):
        ids = [cells.GetId(i) for i in range(cells.GetNumberOfIds())]
        if best is None or len(ids) > len(best):
            best = ids
    return pts[best]


def synthetic_ground_truth(label: Volume, landmarks: dict, radius: float, geometry: CArmGeometry) -> dict:
    silhouette = quick_line_integrals(label.with_data(label.data.astype(np.float32)), geometry, 200) > 0.5
    centre = landmarks["head_center"]
    r_px = radius * geometry.sid_mm / geometry.depth(centre)[0] / geometry.pixel_mm
    return {"contour": outline_of(silhouette), "head_circle": (*geometry.project(centre)[0], r_px),
            "landmarks_uv": {k: geometry.project(v)[0] for k, v in landmarks.items()}}


def resample(points: np.ndarray, n: int, closed: bool = True) -> np.ndarray:
    """``n`` points evenly spaced by arc length along a polygon (closed) or polyline."""
    path = np.vstack([points, points[:1]]) if closed else points
    s = np.concatenate([[0], np.cumsum(np.linalg.norm(np.diff(path, axis=0), axis=1))])
    t = np.linspace(0, s[-1], n, endpoint=not closed)
    return np.stack([np.interp(t, s, path[:, 0]), np.interp(t, s, path[:, 1])], axis=1)


def inside_part(contour: np.ndarray, shape, margin: float = 2.0) -> np.ndarray:
    """The open stretch of a closed outline that lies inside the image (drops the border run)."""
    h, w = shape
    inside = (contour[:, 0] > margin) & (contour[:, 0] < w - 1 - margin) & (contour[:, 1] > margin) & (
        contour[:, 1] < h - 1 - margin)
    if inside.all():
        return contour
    start = int(np.argmax(~inside))  # roll so that the stretch begins right after an outside run
    rolled, flags = np.roll(contour, -start, axis=0), np.roll(inside, -start)
    first = int(np.argmax(flags))
    last = len(flags) - int(np.argmax(flags[::-1]))
    return rolled[first:last]


def band(points: np.ndarray, shape, width_px: float = 2.5, closed: bool = True) -> np.ndarray:
    """Confidence-like map: Gaussian band of ``width_px`` around a polygon."""
    from scipy import ndimage

    mask = np.zeros(shape, bool)
    dense = resample(points, 4000, closed)
    uv = np.round(dense).astype(int)
    keep = (uv[:, 0] >= 0) & (uv[:, 0] < shape[1]) & (uv[:, 1] >= 0) & (uv[:, 1] < shape[0])
    mask[uv[keep, 1], uv[keep, 0]] = True
    distance = ndimage.distance_transform_edt(~mask)
    return np.exp(-0.5 * (distance / width_px) ** 2).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Inputs: real Lib pieces when present
# --------------------------------------------------------------------------------------------
def simulated_case(synthetic: bool):
    geometry = CArmGeometry(width_px=SIZE_PX, height_px=SIZE_PX, pixel_mm=1.0, sid_mm=1000.0, sod_mm=650.0,
                            orbital_deg=-12.0, angular_deg=8.0)
    real = not synthetic and have("DeepMorphSimulatorLib.phantom", "DeepMorphSimulatorLib.drr",
                                  "DeepMorphSimulatorLib.projection")
    if real:
        from DeepMorphSimulatorLib.drr import render_drr
        from DeepMorphSimulatorLib.phantom import make_phantom
        from DeepMorphSimulatorLib.projection import project_ground_truth

        phantom = make_phantom(1, sides=(SIDE,))
        femur = phantom.femurs[SIDE]
        iso = femur.landmarks["head_center"] + np.array([-25.0, 0.0, -30.0])
        geometry = geometry.with_(isocenter_lps=tuple(iso))
        image = np.asarray(render_drr(phantom.ct, geometry).image)
        gt = project_ground_truth(femur.mesh, femur.landmarks, femur.head_radius_mm, geometry)
        truth = {"contour": np.asarray(gt.contour), "head_circle": gt.head_circle, "landmarks_uv": gt.landmarks_uv}
        return dict(ct=phantom.ct, mesh=femur.mesh, landmarks=femur.landmarks, geometry=geometry, image=image,
                    truth=truth, real=True)
    ct, label, landmarks, radius = synthetic_hip()
    iso = landmarks["head_center"] + np.array([-25.0, 0.0, -30.0])
    geometry = geometry.with_(isocenter_lps=tuple(iso))
    return dict(ct=ct, label=label, landmarks=landmarks, geometry=geometry, image=quick_drr(ct, geometry),
                truth=synthetic_ground_truth(label, landmarks, radius, geometry), real=False)


def fitted_results(case: dict, synthetic: bool) -> dict:
    """{"head": FitResult, "femur": FitResult}: real network + fits when available, else stand-ins."""
    from DeepMorphLib import fit_logic

    if not synthetic and have("DeepMorphLib.inference", "DeepMorphLib.circle_fit", "DeepMorphLib.asm_fit") and all(
        fit_logic.shipped_model_path(t).is_file() for t in ("head", "femur")
    ):
        out = {}
        for task in ("head", "femur"):
            model, metadata = fit_logic.load_task_model(task)
            out[task] = fit_logic.fit_image(case["image"], task, model, metadata, polarity="bone-dark")
        return out
    truth, shape = case["truth"], case["image"].shape
    cx, cy, r = truth["head_circle"]
    head = fit_logic.FitResult("head", True, circle=(cx + 0.6, cy - 0.4, r + 0.3), polarity="bone-dark",
                               quality={"residual_px": 0.42, "arc_coverage_deg": 265.0},
                               confidence=band(sg.circle_points_uv(cx, cy, r, 360), shape), image_shape=shape)
    contour = inside_part(truth["contour"], shape)
    points = resample(contour, 64, closed=False)
    names = {"head": "head_center", "greater_trochanter": "greater_trochanter",
             "lesser_trochanter": "lesser_trochanter", "neck": "neck_axis_point", "shaft": "shaft_axis_distal"}
    lm = {k: int(np.argmin(np.linalg.norm(points - truth["landmarks_uv"][v], axis=1))) for k, v in names.items()}
    femur = fit_logic.FitResult("femur", True, contour=points, landmarks=lm, polarity="bone-dark",
                                quality={"quality": 0.91}, confidence=band(contour, shape, closed=False),
                                image_shape=shape)
    return {"head": head, "femur": femur}


# --------------------------------------------------------------------------------------------
# Screenshots
# --------------------------------------------------------------------------------------------
def caption(rgb: np.ndarray, text: str) -> np.ndarray:
    from PIL import Image, ImageDraw

    image = Image.fromarray(rgb)
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, 0, image.width, 22], fill=(0, 0, 0))
    draw.text((8, 5), text, fill=(235, 235, 235))
    return np.asarray(image)


def simulator_screenshot(case: dict, out: Path) -> None:
    from DeepMorphLib.slice_view_render import OffscreenSliceView, OffscreenThreeDView

    app = sg.create_headless_slicer()
    scene, geometry = app.scene, case["geometry"]
    drr = sg.image_to_node(case["image"], scene, "DRR", sg.detector_ijk_to_ras(geometry), window_level=(0, 255))
    mesh = case.get("mesh") or sg.labelmap_to_polydata_lps(
        sg.volume_to_node(case["label"], scene, "femur label", node_class="vtkMRMLLabelMapVolumeNode"))
    sg.polydata_to_model_node(scene, mesh, "Femur")
    if "label" in case:  # the body outline for context
        body = case["ct"].with_data((case["ct"].data > -500).astype(np.uint8))
        skin = sg.labelmap_to_polydata_lps(sg.volume_to_node(body, scene, "body", node_class="vtkMRMLLabelMapVolumeNode"))
        sg.polydata_to_model_node(scene, skin, "Body", color=(0.9, 0.7, 0.6), opacity=0.12)
    truth = case["truth"]
    sg.uv_curve_to_markups(scene, drr, inside_part(truth["contour"], case["image"].shape), closed=False,
                           name="Femur outline")
    circle, centre = sg.circle_to_markups(scene, drr, truth["head_circle"], name="Femoral head")
    centre.GetDisplayNode().SetPointLabelsVisibility(False)
    names = [k for k in truth["landmarks_uv"] if k in ("greater_trochanter", "lesser_trochanter")]
    lm = sg.uv_points_to_markups(scene, drr, np.array([truth["landmarks_uv"][k] for k in names]),
                                 [k.replace("_", " ") for k in names], name="Landmarks")
    lm.GetDisplayNode().SetTextScale(2.5)
    simulator_logic.draw_carm(scene, geometry)

    slice_view = OffscreenSliceView(app, (600, 600))
    slice_view.show_image(drr, zoom=1.05)
    slice_view.slice_node.SetSliceVisible(True)  # the DRR also appears on the detector in 3D
    right = caption(slice_view.render(), "DRR with projected femur outline, head circle and landmarks")
    three_d = OffscreenThreeDView(app, (640, 600))
    centre_ras = ras_from_lps(np.asarray(geometry.isocenter_lps))
    _, _, beam = geometry.axes()
    side = ras_from_lps(np.cross(beam, [0.0, 0.0, 1.0]))
    focal = ras_from_lps(0.5 * np.asarray(geometry.isocenter_lps) + 0.5 * geometry.detector_center_lps)
    direction = side / np.linalg.norm(side) + [0.0, -0.45, 0.35]
    three_d.look_at(focal, focal + 1150 * direction / np.linalg.norm(direction))
    left = caption(three_d.render(), "C-arm (source, beam, detector) over the femur; DRR on the detector")
    write(np.hstack([left, np.zeros((600, 4, 3), np.uint8), right]), out)


def deepmorph_screenshot(case: dict, results: dict, out: Path) -> None:
    from DeepMorphLib import fit_logic
    from DeepMorphLib.slice_view_render import OffscreenSliceView

    panels = []
    for task in ("head", "femur"):
        app = sg.create_headless_slicer()
        xray = sg.image_to_node(case["image"], app.scene, "X-ray", window_level=(0, 255))
        nodes = fit_logic.show_result(app.scene, xray, results[task], editable=task == "femur")
        if task == "head":
            nodes["head_centre"].GetDisplayNode().SetPointLabelsVisibility(False)
        else:
            nodes["landmarks"].GetDisplayNode().SetTextScale(2.5)
        view = OffscreenSliceView(app, (600, 600))
        view.show_image(xray, nodes["confidence"], 0.55, zoom=1.05)
        text = results[task].summary().split(". ")[0]
        panels.append(caption(view.render(), text))
        view.close()
    write(np.hstack([panels[0], np.zeros((600, 4, 3), np.uint8), panels[1]]), out)


def write(rgb: np.ndarray, path: Path) -> None:
    from DeepMorphSimulatorLib.files import write_png

    write_png(path, np.ascontiguousarray(rgb))
    print(f"wrote {path.relative_to(ROOT)} ({rgb.shape[1]}x{rgb.shape[0]})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic", action="store_true", help="use stand-ins even if the real pieces exist")
    parser.add_argument("--out", type=Path, default=ROOT / "Resources" / "Screenshots")
    args = parser.parse_args(argv)
    case = simulated_case(args.synthetic)
    print("inputs:", "phantom + DRR renderer + ground truth" if case["real"] else "synthetic stand-ins")
    simulator_screenshot(case, args.out / "DeepMorphSimulator.png")
    deepmorph_screenshot(case, fitted_results(case, args.synthetic), args.out / "DeepMorph.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
