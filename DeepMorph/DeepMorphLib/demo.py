"""The one-command demo: phantom -> fluoroscopy-like images -> networks + morphing -> figures, scene, report.

:func:`run_demo` builds the built-in hip phantom (CT, femur meshes, landmarks), renders a handful of C-arm
views of it with the dataset generator's realism (implants and tools, detector noise, blur, collimation),
fits both tasks to every image (femoral head circle, proximal femur shape model), compares the fits with the
exact ground truth of the simulation and writes into one folder::

    DIR/report.html                 self-contained report (figures, errors, timings, software versions)
    DIR/overview.png                all overlays in one picture
    DIR/overlays/NN_<view>.png      image + fitted circle, contour, named landmarks; ground truth in red
    DIR/confidence/NN_<view>_{head,femur}.png   network confidence maps (0-255 = 0-1)
    DIR/images/NN_<view>.png        the simulated X-ray, and NN_<view>.json: its C-arm geometry, ground truth,
                                    implants and detector settings
    DIR/results.json, results.csv   per-image fits and errors
    DIR/scene.mrb                   3D Slicer scene: X-rays on their detector planes, confidence maps,
                                    circles and contours as markups curves, named landmarks, CT, femur models
    DIR/phantom/                    the phantom (ct.nrrd, femur-label.nrrd, femur meshes, landmarks)

Pixel coordinates are (u, v) = (column, row) px of the images, pixel centres at integers; 3-D positions LPS mm.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

DEFAULT_SEED = 0
DEFAULT_SIZE = 448
QUICK = {"n_images": 2, "size": 256, "phantom_spacing_mm": 2.5}
MRB_CT_SPACING_MM = 3.0  # the CT in the scene bundle is block-averaged to about this voxel size
TRUTH_CURVE_POINTS = 240  # the ground-truth outline is resampled to this many points for the scene
MODEL_FILES = ("head.safetensors", "femur.safetensors", "pdm.npz")
TRUTH_RGB = (255, 50, 50)  # as overlay.TRUTH
TRUTH_COLOR = (1.0, 0.2, 0.2)  # the same, 0-1, for markups
LANDMARK_NAMES = ("head", "neck", "greater_trochanter", "lesser_trochanter", "shaft")  # named contour points


# --------------------------------------------------------------------------------------------
# Views
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DemoView:
    """One C-arm shot of the phantom. Angles in degrees (geometry.py conventions), lengths in mm.

    The isocentre lies on the segment from the femoral head centre (``aim`` 0) to the lesser trochanter
    (``aim`` 1); ``fov_mm`` is the field of view at the isocentre. ``detector`` names a display preset.
    """

    name: str
    title: str
    side: str = "right"
    orbital_deg: float = 0.0
    angular_deg: float = 0.0
    inplane_deg: float = 0.0
    fov_mm: float = 200.0
    magnification: float = 1.4
    sid_mm: float = 1000.0
    aim: float = 0.45
    implants: bool = False
    detector: str = "fluoro"

    def geometry(self, landmarks: dict, size: int):
        from DeepMorphSimulatorLib.geometry import CArmGeometry

        head = np.asarray(landmarks["head_center"], dtype=float)
        lesser = np.asarray(landmarks.get("lesser_trochanter", head), dtype=float)
        iso = (1.0 - self.aim) * head + self.aim * lesser
        return CArmGeometry(
            sid_mm=self.sid_mm, sod_mm=self.sid_mm / self.magnification, width_px=int(size), height_px=int(size),
            pixel_mm=self.fov_mm * self.magnification / int(size), orbital_deg=self.orbital_deg,
            angular_deg=self.angular_deg, inplane_deg=self.inplane_deg, isocenter_lps=tuple(float(x) for x in iso),
        )


DEMO_VIEWS = (
    DemoView("ap", "AP view, right hip"),
    DemoView("implant", "Right hip with implant and tools", orbital_deg=-8.0, angular_deg=6.0, inplane_deg=5.0,
             fov_mm=215.0, aim=0.55, implants=True, detector="fluoro-dose"),
    DemoView("oblique", "Oblique view, right hip", orbital_deg=25.0, angular_deg=-12.0, inplane_deg=12.0,
             fov_mm=190.0, detector="log"),
    DemoView("left", "Left hip, rotated image", side="left", orbital_deg=-15.0, angular_deg=8.0, inplane_deg=-18.0,
             fov_mm=205.0, detector="fluoro-soft"),
)

# Display presets (DetectorParams fields); noise and blur as a C-arm with an image intensifier shows them.
DETECTOR_PRESETS = {
    "fluoro": dict(focal_blur_px=0.4, scatter_ratio=0.2, counts=3000.0, detector_blur_px=0.7, vignetting=0.2,
                   display="linear", abc_gain=2.2, drc_amount=0.4, collimation="circle", collimation_radius=0.55,
                   coloured_noise=0.01, low=10.0, high=245.0),
    "fluoro-dose": dict(focal_blur_px=0.5, scatter_ratio=0.3, counts=1500.0, detector_blur_px=0.8, vignetting=0.25,
                        display="linear", abc_gain=2.6, drc_amount=0.5, collimation="circle",
                        collimation_radius=0.56, coloured_noise=0.015, low=5.0, high=250.0),
    "log": dict(focal_blur_px=0.3, scatter_ratio=0.15, counts=5000.0, detector_blur_px=0.6, display="log",
                window_low=0.03, window_high=0.99, gamma=1.2, unsharp_amount=0.6, unsharp_sigma_px=6.0,
                collimation="shutters", collimation_radius=0.46, low=15.0, high=240.0),
    "fluoro-soft": dict(focal_blur_px=0.6, scatter_ratio=0.35, counts=2500.0, detector_blur_px=1.0, vignetting=0.3,
                        display="linear", abc_gain=1.9, drc_amount=0.3, gamma=0.85, collimation="circle",
                        collimation_radius=0.58, coloured_noise=0.02, low=20.0, high=235.0),
}


def demo_views(n_images: int, seed: int = DEFAULT_SEED) -> list[DemoView]:
    """The first ``n_images`` views: the four curated ones, then random variations of them."""
    if int(n_images) < 1:
        raise ValueError(f"--n-images must be >= 1, got {n_images}.")
    views = list(DEMO_VIEWS[: int(n_images)])
    rng = np.random.default_rng([int(seed), 0xD3])
    presets = list(DETECTOR_PRESETS)
    for k in range(len(views), int(n_images)):
        base = DEMO_VIEWS[k % len(DEMO_VIEWS)]
        views.append(dataclasses.replace(
            base, name=f"{base.name}{k + 1}", title=f"{base.title} (variation {k + 1})",
            orbital_deg=float(base.orbital_deg + rng.uniform(-12, 12)),
            angular_deg=float(base.angular_deg + rng.uniform(-8, 8)),
            inplane_deg=float(base.inplane_deg + rng.normal(0, 10)),
            fov_mm=float(np.clip(base.fov_mm + rng.uniform(-20, 20), 160, 240)),
            aim=float(rng.uniform(0.3, 0.7)), implants=bool(k % 3 == 1),
            detector=presets[int(rng.integers(len(presets)))],
        ))
    return views


# --------------------------------------------------------------------------------------------
# Rendering (building blocks of the dataset generator)
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class DemoImage:
    """A rendered view: uint8 image (H, W), its geometry, ground truth and what was in the beam."""

    index: int
    view: DemoView
    image: np.ndarray
    geometry: object  # CArmGeometry
    truth: object  # projection.GroundTruth
    implants: list
    detector: dict

    @property
    def stem(self) -> str:
        return f"{self.index + 1:02d}_{self.view.name}"

    def truth_landmarks(self) -> dict[str, np.ndarray]:
        """Ground-truth positions (px) of the named contour landmarks (the anchors the PDM's names refer to)."""
        from DeepMorphLib.pdm_build import LANDMARK_ALIASES

        points, anchors = np.asarray(self.truth.points, dtype=float), self.truth.anchor_indices
        return {name: points[anchors[LANDMARK_ALIASES[name]]] for name in LANDMARK_NAMES
                if LANDMARK_ALIASES.get(name) in anchors}

    def annotation(self) -> dict:
        """JSON-ready description: view, geometry, ground truth, implants, detector settings."""
        return {
            "view": dataclasses.asdict(self.view), "geometry": self.geometry.to_dict(),
            "ground_truth": self.truth.to_dict(), "implants": [imp.to_dict() for imp in self.implants],
            "detector": self.detector, "polarity": self.detector.get("polarity", "bone-dark"),
            "frames": "geometry in LPS mm; image points (u, v) = (column, row) px, pixel centres at integers",
        }


def _mesh_points(mesh) -> np.ndarray:
    from vtk.util.numpy_support import vtk_to_numpy

    return vtk_to_numpy(mesh.GetPoints().GetData()).astype(float)


def render_view(mu, femur, view: DemoView, size: int, rng: np.random.Generator, index: int = 0) -> DemoImage:
    """Render one view of the phantom's attenuation volume ``mu`` (1/mm) looking at ``femur``.

    As ``dataset.render_sample``: body DRR + analytic metal (implant construct and 1-2 tools when
    ``view.implants``) -> detector/display effects; ground truth projected from the femur mesh.
    """
    from DeepMorphSimulatorLib import drr, projection
    from DeepMorphSimulatorLib.detector import DetectorParams, apply_detector
    from DeepMorphSimulatorLib.implants import estimate_shaft_radius, metal_line_integrals, sample_implants

    geometry = view.geometry(femur.landmarks, size)
    a = np.asarray(drr.line_integrals(mu, geometry), dtype=np.float32)
    implants, metal = [], None
    if view.implants:
        shaft_r = estimate_shaft_radius(_mesh_points(femur.mesh), femur.landmarks, default=None)
        implants = sample_implants(rng, femur.landmarks, femur.head_radius_mm, 1.0, shaft_r, tool_probability=1.0)
        a_metal = metal_line_integrals(implants, geometry)
        a = a + a_metal
        metal = a_metal > 0.5
    params = DetectorParams(**DETECTOR_PRESETS[view.detector])
    image = np.asarray(apply_detector(a, params, rng, metal=metal), dtype=np.uint8)
    truth = projection.project_ground_truth(femur.mesh, femur.landmarks, femur.head_radius_mm, geometry, n_points=64)
    return DemoImage(index, view, image, geometry, truth, list(implants), params.to_dict())


# --------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------
def score(img: DemoImage, head, femur) -> dict:
    """Errors of the fits (pipeline ``FitResult``) against the simulation's ground truth, in px."""
    from DeepMorphLib.scoring import femur_p2c_sim, head_errors

    h, w = img.image.shape
    rec = {"image": img.stem, "view": img.view.title, "side": img.view.side,
           "implants": ", ".join(imp.kind.replace("_", " ") for imp in img.implants) or "none",
           "head_detected": bool(head.detected), "head_rmse_px": None, "head_centre_err_px": None,
           "head_radius_err_px": None, "femur_detected": bool(femur.detected), "femur_p2c_px": None,
           "landmark_err_px": None, "polarity": head.polarity}
    gt_circle = img.truth.head_circle
    if head.detected and head.circle and gt_circle is not None:
        e = head_errors((head.circle["cx"], head.circle["cy"], head.circle["r"]), gt_circle)
        rec.update(head_rmse_px=e["rmse"], head_centre_err_px=e["center_err"], head_radius_err_px=e["radius_err"])
    if femur.detected and femur.contour is not None:
        rec["femur_p2c_px"] = femur_p2c_sim(femur.contour, img.truth.contour, w, h)
        truth_lm = img.truth_landmarks()
        errs = {k: float(np.hypot(*(np.asarray(v) - truth_lm[k]))) for k, v in femur.landmarks.items() if k in truth_lm}
        rec["landmark_errors_px"] = errs
        rec["landmark_err_px"] = float(np.mean(list(errs.values()))) if errs else None
    return rec


def named_landmarks(landmarks: dict) -> dict:
    """The clinically named landmarks of a fit (the PDM's ``anchor_*`` duplicates left out)."""
    return {k: v for k, v in (landmarks or {}).items() if not str(k).startswith("anchor_")}


# --------------------------------------------------------------------------------------------
# Pictures
# --------------------------------------------------------------------------------------------
def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def overlay_picture(img: DemoImage, head, femur, rec: dict | None = None) -> np.ndarray:
    """RGB uint8 (H + legend, W, 3): the X-ray with both fits and the ground truth, plus a legend strip.

    Colours as ``overlay.draw_overlay``: fitted circle green, fitted contour yellow, named landmarks
    magenta (labelled), ground truth red (circle, outline, landmarks as small circles).
    """
    from PIL import Image, ImageDraw

    from DeepMorphLib import overlay

    merged = {"detected": bool(head.detected or femur.detected), "reason": "neither head nor femur found",
              "circle": head.circle if head.detected else None,
              "contour": femur.contour if femur.detected else None,
              "contour_closed": bool(getattr(femur, "contour_closed", False)),
              "landmarks": named_landmarks(femur.landmarks) if femur.detected else {}}
    truth = {"head_circle": img.truth.head_circle,
             "femur_outline": np.asarray(img.truth.contour, dtype=float).tolist()}
    rgb = overlay.draw_overlay(img.image, merged, truth)
    pil = Image.fromarray(rgb)
    draw = ImageDraw.Draw(pil)
    for u, v in img.truth_landmarks().values():
        draw.ellipse([u - 3, v - 3, u + 3, v + 3], outline=TRUTH_RGB, width=1)
    w = pil.size[0]
    fs = int(round(11 * max(1.0, w / 448.0)))
    font = _font(fs)
    lines = [f"{img.index + 1}. {img.view.title}"]
    if rec is not None:
        lines += _errors_line(rec).split("; ")
    legend = [("fit: head circle", overlay.FIT_CIRCLE), ("fit: femur contour", overlay.FIT_CONTOUR),
              ("fit: landmarks", overlay.LANDMARK), ("ground truth", TRUTH_RGB)]
    rows, x = [[]], 4  # legend items wrapped to the picture's width
    for label, colour in legend:
        item_w = int(draw.textlength(label, font=font)) + fs + 14
        if x + item_w > w and rows[-1]:
            rows.append([])
            x = 4
        rows[-1].append((x, label, colour))
        x += item_w
    if w >= 400:  # wide enough: the two error lines side by side
        lines = lines[:1] + ["; ".join(lines[1:])] if len(lines) > 1 else lines
    line_h = fs + 5
    out = Image.new("RGB", (w, pil.size[1] + (len(lines) + len(rows)) * line_h + 8), (0, 0, 0))
    out.paste(pil, (0, 0))
    d = ImageDraw.Draw(out)
    y = pil.size[1] + 4
    for line in lines:
        d.text((4, y), line, fill=(235, 235, 235), font=font)
        y += line_h
    for row in rows:
        for x, label, colour in row:
            d.rectangle([x, y + 2, x + fs - 2, y + fs], fill=colour)
            d.text((x + fs + 2, y), label, fill=colour, font=font)
        y += line_h
    return np.asarray(out)


def _errors_line(rec: dict) -> str:
    head = (f"head: centre {rec['head_centre_err_px']:.1f} px, RMSE {rec['head_rmse_px']:.1f} px"
            if rec.get("head_rmse_px") is not None else "head: not detected" if not rec["head_detected"] else "head: -")
    femur = (f"femur: {rec['femur_p2c_px']:.1f} px to outline" if rec.get("femur_p2c_px") is not None
             else "femur: not detected" if not rec["femur_detected"] else "femur: -")
    return f"{head}; {femur}"


def confidence_png(conf) -> np.ndarray:
    """A confidence map in [0, 1] as uint8 grey (0-255)."""
    return np.clip(np.rint(np.asarray(conf, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def montage(pictures: list[np.ndarray], cols: int = 2, gap: int = 4) -> np.ndarray:
    """Pictures (RGB, same width) in a grid on black; rows as tall as their tallest picture."""
    cols = max(1, min(cols, len(pictures)))
    w = max(p.shape[1] for p in pictures)
    rows = [pictures[i:i + cols] for i in range(0, len(pictures), cols)]
    heights = [max(p.shape[0] for p in row) for row in rows]
    out = np.zeros((sum(heights) + gap * (len(rows) - 1), cols * w + gap * (cols - 1), 3), np.uint8)
    y = 0
    for row, h in zip(rows, heights):
        for c, p in enumerate(row):
            out[y:y + p.shape[0], c * (w + gap):c * (w + gap) + p.shape[1]] = p[..., :3]
        y += h + gap
    return out


# --------------------------------------------------------------------------------------------
# Slicer scene
# --------------------------------------------------------------------------------------------
def downsample_volume(volume, target_mm: float = MRB_CT_SPACING_MM):
    """Block-average a volume to roughly ``target_mm`` voxels (integer factor per axis; 1 = unchanged)."""
    from DeepMorphSimulatorLib.volume import Volume

    spacing = np.asarray(volume.spacing, dtype=float)
    f = np.maximum(1, np.floor(target_mm / spacing + 1e-6)).astype(int)  # (i, j, k)
    if np.all(f == 1):
        return volume
    fi, fj, fk = (int(x) for x in f)
    data = np.asarray(volume.data)
    k, j, i = (s // n * n for s, n in zip(data.shape, (fk, fj, fi)))
    blocks = data[:k, :j, :i].astype(np.float32).reshape(k // fk, fk, j // fj, fj, i // fi, fi)
    out = blocks.mean(axis=(1, 3, 5))
    out = np.rint(out).astype(data.dtype) if np.issubdtype(data.dtype, np.integer) else out.astype(data.dtype)
    direction = np.asarray(volume.direction, dtype=float)
    origin = np.asarray(volume.origin, dtype=float) + direction @ ((f - 1) / 2.0 * spacing)
    return Volume(out, spacing * f, origin, direction)


def resample_polygon(polygon, n: int) -> np.ndarray:
    """``n`` points (n, 2) at equal arc length along a closed polygon (its first vertex kept)."""
    poly = np.asarray(polygon, dtype=float)
    if len(poly) <= n:
        return poly
    closed = np.vstack([poly, poly[:1]])
    s = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(closed, axis=0).T))])
    t = np.linspace(0.0, s[-1], int(n), endpoint=False)
    return np.stack([np.interp(t, s, closed[:, 0]), np.interp(t, s, closed[:, 1])], axis=1)


class quiet_vtk:
    """Collect VTK's messages (e.g. the bundle writer's "Zip: adding ...") instead of printing them."""

    def __enter__(self):
        import vtk

        self._old = vtk.vtkOutputWindow.GetInstance()
        self.window = vtk.vtkStringOutputWindow()
        vtk.vtkOutputWindow.SetInstance(self.window)
        self._verbosity = vtk.vtkLogger.GetCurrentVerbosityCutoff()
        vtk.vtkLogger.SetStderrVerbosity(vtk.vtkLogger.VERBOSITY_ERROR)  # Slicer's warnings go through vtkLogger
        return self

    def __exit__(self, *exc):
        import vtk

        vtk.vtkOutputWindow.SetInstance(self._old)
        vtk.vtkLogger.SetStderrVerbosity(self._verbosity)
        return False

    def text(self) -> str:
        return self.window.GetOutput() or ""


def slice_view_screenshot(app, image_name: str, overlay_name: str | None, path, size: int = 512):
    """PNG of an X-ray with its markups as Slicer's own slice view draws it (offscreen); returns the path,
    or raises RuntimeError when no offscreen OpenGL context can be made here."""
    from DeepMorphLib.slice_view_render import OffscreenSliceView, opengl_available

    ok, why = opengl_available()
    if not ok:
        raise RuntimeError(why)
    scene = app.scene
    with OffscreenSliceView(app, (size, size), layout_name="Green") as view:  # the scene's "Red" stays as saved
        overlay_node = scene.GetFirstNodeByName(overlay_name) if overlay_name else None
        view.show_image(scene.GetFirstNodeByName(image_name), overlay_node, 0.35)
        view.save_png(path)
    return Path(path)


def build_scene(images: list[DemoImage], fits: list[tuple], phantom, landmark_indices: dict,
                ct_spacing_mm: float = MRB_CT_SPACING_MM):
    """A headless Slicer scene with everything of the demo; returns the ``HeadlessSlicer``.

    Per image (a subject-hierarchy folder): the X-ray as a single-slice volume on its C-arm's detector
    plane (geometry in the ``DeepMorph.geometry`` attribute), both confidence maps (coloured overlay
    table), the fitted head circle (closed curve + centre point) and femur contour (curve + named
    landmark points), and the ground truth in red. Plus the CT (block-averaged to ``ct_spacing_mm``),
    the femur models and their 3-D landmarks. The Red slice view shows the first X-ray face-on.
    """
    import slicer

    from DeepMorphLib import mrml_glue as glue
    from DeepMorphLib.fit_logic import LANDMARK_TITLES
    from DeepMorphSimulatorLib import mrml_glue as sim_glue
    from DeepMorphSimulatorLib.simulator_logic import GEOMETRY_ATTRIBUTE, draw_carm

    app = glue.create_headless_slicer()
    scene = app.scene
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)

    def folder(name):
        return sh.CreateFolderItem(sh.GetSceneItemID(), name)

    def put(parent, *nodes):
        for node in nodes:
            if node is None:
                continue
            item = sh.GetItemByDataNode(node)
            if item:
                sh.SetItemParent(item, parent)
            else:
                sh.CreateItem(parent, node)

    ph_folder = folder("Phantom")
    ct = downsample_volume(phantom.ct, ct_spacing_mm)
    ct_node = sim_glue.volume_to_node(ct, scene, f"Phantom CT ({ct.spacing[0]:g} mm)", window_level=(-350.0, 1250.0))
    put(ph_folder, ct_node)
    for side, fem in phantom.femurs.items():
        put(ph_folder, sim_glue.polydata_to_model_node(scene, fem.mesh, f"Femur ({side})"))
    lm3d = {f"{side} {LANDMARK_TITLES.get(k, k.replace('_', ' '))}": v
            for side, fem in phantom.femurs.items() for k, v in fem.landmarks.items()
            if k in ("head_center", "greater_trochanter", "lesser_trochanter", "neck_axis_point")}
    put(ph_folder, sim_glue.landmarks_to_fiducials(scene, lm3d, name="Femur landmarks (3D)"))

    titles = {k: LANDMARK_TITLES.get(k, k.replace("_", " ")) for k in LANDMARK_NAMES}
    named_idx = {titles[k]: int(i) for k, i in landmark_indices.items() if k in titles}
    first = None
    for img, (head, femur) in zip(images, fits):
        prefix = f"{img.index + 1:02d}"
        parent = folder(f"{prefix} {img.view.title}")
        xr = glue.image_to_node(img.image, scene, f"{prefix} X-ray", sim_glue.detector_ijk_to_ras(img.geometry),
                                window_level=(0.0, 255.0))
        xr.SetAttribute(GEOMETRY_ATTRIBUTE, json.dumps(img.geometry.to_dict()))
        nodes = [xr]
        conf = {}
        for res in (head, femur):
            if res.confidence is not None:
                q = np.rint(np.asarray(res.confidence, dtype=np.float32) * 255.0) / np.float32(255.0)  # compresses well
                conf[res.task] = glue.confidence_to_node(scene, q.astype(np.float32), xr, name=f"{prefix} {res.task} confidence")
                nodes.append(conf[res.task])
        if head.detected and head.circle:
            c = head.circle
            nodes += glue.circle_to_markups(scene, xr, (c["cx"], c["cy"], c["r"]), name=f"{prefix} femoral head")
        if femur.detected and femur.contour is not None:
            lms = {k: i for k, i in named_idx.items() if i < len(femur.contour)}
            nodes += glue.contour_to_markups(scene, xr, femur.contour, lms, name=f"{prefix} femur contour")
        truth = img.truth
        truth_nodes = [glue.uv_curve_to_markups(scene, xr, resample_polygon(truth.contour, TRUTH_CURVE_POINTS), closed=True,
                                              name=f"{prefix} femur outline (ground truth)", color=TRUTH_COLOR)]
        if truth.head_circle is not None:
            truth_nodes += glue.circle_to_markups(scene, xr, truth.head_circle,
                                                  name=f"{prefix} femoral head (ground truth)", color=TRUTH_COLOR)
        for node in truth_nodes:
            node.GetDisplayNode().SetPointLabelsVisibility(False)
        nodes += truth_nodes
        put(parent, *nodes)
        if first is not None:  # one image at a time in the views: the others' markups start hidden
            for node in nodes:
                if node.IsA("vtkMRMLMarkupsNode"):
                    node.GetDisplayNode().SetVisibility(False)
        if first is None:
            first = (xr, conf.get("femur") or conf.get("head"))
            carm = draw_carm(scene, img.geometry)
            put(parent, *[n for n in carm.values() if hasattr(n, "GetID")])
    if first is not None:
        slice_logic = slicer.vtkMRMLSliceLogic()
        slice_logic.SetMRMLApplicationLogic(app.app_logic)
        slice_logic.SetMRMLScene(scene)
        red = slice_logic.AddSliceNode("Red")
        glue.align_slice_to_image(red, first[0])
        glue.show_in_slice_views(scene, background=first[0], foreground=first[1], foreground_opacity=0.4)
    return app


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------
FIGURE_LEGEND = ("overlays: green = fitted femoral-head circle, yellow = fitted femur contour (shape model), magenta = "
                 "named landmarks of the fit, red = ground truth of the simulation (circle, outline, landmarks as "
                 "rings); confidence maps: white = 1. Click a picture for full size.")
REPORT_COLUMNS = ["image", "view", "implants", "polarity", "head_rmse_px", "head_centre_err_px", "head_radius_err_px",
                  "femur_p2c_px", "landmark_err_px", "fit_ms"]


def software_versions() -> dict:
    """``report.software_versions()`` plus the libraries the demo uses on top (VTK, Slicer core, numba)."""
    import importlib
    from importlib import metadata

    from DeepMorphLib.report import software_versions as base

    out = dict(base())
    for name in ("vtk", "numba"):
        try:
            out[name] = importlib.import_module(name).__version__
        except Exception:  # noqa: BLE001 - report, do not fail
            out[name] = "not available"
    try:
        out["slicer-core"] = metadata.version("slicer-core")
    except Exception:  # noqa: BLE001
        out["slicer-core"] = "not available"
    return out


def _mean(values):
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else None


def summarize(records: list[dict]) -> dict:
    n = len(records)
    return {
        "images": n,
        "head detected": f"{sum(r['head_detected'] for r in records)} / {n}",
        "head RMSE mean (px)": _mean(r["head_rmse_px"] for r in records),
        "head centre error mean (px)": _mean(r["head_centre_err_px"] for r in records),
        "femur detected": f"{sum(r['femur_detected'] for r in records)} / {n}",
        "femur point-to-curve mean (px)": _mean(r["femur_p2c_px"] for r in records),
        "named landmark error mean (px)": _mean(r.get("landmark_err_px") for r in records),
    }


def write_report(out: Path, records: list[dict], images: list[DemoImage], timings: dict, settings: dict,
                 versions: dict, screenshot: Path | None = None) -> Path:
    """``report.html`` through the shared writer; figures are the files in the folder (relative links)."""
    from DeepMorphLib.report import write_html_report

    figures = []
    for img, rec in zip(images, records):
        figures.append((f"{img.index + 1}. {img.view.title}: {_errors_line(rec)}", f"overlays/{img.stem}.png"))
        figures.append((f"{img.index + 1}. head confidence", f"confidence/{img.stem}_head.png"))
        figures.append((f"{img.index + 1}. femur confidence", f"confidence/{img.stem}_femur.png"))
    if screenshot is not None:
        figures.append(("1. as 3D Slicer shows it (scene.mrb: X-ray, femur confidence overlay, fitted circle and "
                        "contour with named landmarks, ground truth in red)", screenshot.name))
    links = [("scene.mrb", "3D Slicer scene (File > Add Data, or drag onto Slicer)"),
             ("results.json", "fits and errors (JSON)"), ("results.csv", "per-image errors (CSV)"),
             ("overview.png", "all overlays in one picture"), ("phantom/ct.nrrd", "phantom CT"),
             ("phantom/landmarks.mrk.json", "3-D femur landmarks (Slicer markups)")]
    links += [(f"images/{img.stem}.png", f"X-ray {img.index + 1}") for img in images]
    links += [(f"images/{img.stem}.json", f"geometry and ground truth {img.index + 1}") for img in images]
    notes = (
        "DeepMorph finds the femur in X-ray images by deep morphing: a FusionNet turns the image into confidence "
        "maps of the femoral-head outline and the proximal-femur outline; a circle is fitted to the first and a "
        "point distribution model (shape model) of the proximal femur to the second. The images here are "
        f"simulated from a built-in CT phantom (seed {settings['seed']}), so the exact ground truth is known "
        "(red). Errors are in pixels of these images."
    )
    rows = [{**{k: r.get(k) for k in REPORT_COLUMNS}} for r in records]
    return write_html_report(out / "report.html", "DeepMorph demo", summary={**summarize(records), **settings},
                             rows=rows, columns=REPORT_COLUMNS, figures=figures, timings=timings,
                             versions=versions, notes=notes, links=links, figure_legend=FIGURE_LEGEND,
                             figure_columns=3)


# --------------------------------------------------------------------------------------------
# The demo
# --------------------------------------------------------------------------------------------
class _Stages:
    """Times named stages and prints one line per finished stage."""

    def __init__(self, log):
        self.log, self.seconds, self.t0 = log, {}, time.perf_counter()

    def run(self, name: str, fn, *args, detail=None, **kwargs):
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        dt = time.perf_counter() - t
        self.seconds[name] = self.seconds.get(name, 0.0) + dt
        extra = f"  {detail(out) if callable(detail) else detail}" if detail else ""
        self.log(f"[demo] {name:<22s} {dt:6.1f} s{extra}")
        return out

    def total(self) -> float:
        return time.perf_counter() - self.t0


def check_models_dir(models) -> Path:
    """The folder with ``head.safetensors``, ``femur.safetensors`` and ``pdm.npz`` (shipped by default)."""
    from DeepMorphLib.pipeline import MODELS_DIR

    folder = Path(models) if models else MODELS_DIR
    missing = [name for name in MODEL_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder} lacks {', '.join(missing)}. Give a folder with trained models (--models DIR), e.g. made by\n"
            "  deepmorph dataset --phantom --n 2000 --out data/train\n"
            "  deepmorph train --task head --data data/train --out DIR/head\n"
            "  deepmorph train --task femur --data data/train --out DIR/femur\n"
            "  deepmorph build-pdm --data data/train --out DIR/pdm"
        )
    return folder


def run_demo(out, seed: int = DEFAULT_SEED, n_images: int = 4, size: int = DEFAULT_SIZE, models=None,
             quick: bool = False, phantom_spacing_mm: float | None = None, log=print, predictors: dict | None = None,
             pdm=None, phantom=None, device: str = "auto", threads: int | None = None,
             screenshots: bool = True, command: str | None = None) -> dict:
    """Run the whole demo into folder ``out``; returns {"records", "timings_s", "files", "summary"}.

    ``quick``: 2 images of 256 px (overrides ``n_images`` and ``size``) from a 2.5 mm phantom (unless
    ``phantom_spacing_mm`` is given; default 1.5 mm). ``models``: folder with head/femur networks and pdm.npz (default: shipped). For tests,
    ``predictors`` {"head": p, "femur": p} (callables image -> confidence, or ``f(task, DemoImage)``
    factories when they have ``per_image = True``), ``pdm`` (a PointDistributionModel) and a ready
    ``phantom`` may replace the models and the phantom build. ``threads``: torch CPU threads for the
    networks (None = torch's default; 1 is much faster when other programs keep the cores busy).
    ``screenshots``: also render the first image as Slicer's slice view draws it (needs offscreen OpenGL).
    ``command``: the command line, for the report.
    """
    from DeepMorphLib import pipeline
    from DeepMorphSimulatorLib import drr, files
    from DeepMorphSimulatorLib.phantom import make_phantom, save_phantom

    if quick:
        n_images, size = QUICK["n_images"], QUICK["size"]
    if phantom_spacing_mm is None:
        phantom_spacing_mm = QUICK["phantom_spacing_mm"] if quick else 1.5
    if not 0.5 <= float(phantom_spacing_mm) <= 3.0:
        raise ValueError(f"--phantom-spacing must lie in 0.5-3 mm, got {phantom_spacing_mm}.")
    if not 64 <= int(size) <= 2048:
        raise ValueError(f"--size must lie in 64-2048 px, got {size}.")
    if int(seed) < 0:
        raise ValueError(f"--seed must be >= 0, got {seed}.")
    views = demo_views(n_images, seed)
    if predictors is None or pdm is None:
        models_dir = check_models_dir(models)
    else:
        models_dir = None
    out = Path(out)
    for sub in ("images", "overlays", "confidence", "results"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    stages = _Stages(log)
    log(f"[demo] {len(views)} images of {size} px, seed {seed}, models: {models_dir or 'given'} -> {out}")

    # 1. phantom
    if phantom is None:
        phantom = stages.run("phantom", make_phantom, int(seed), spacing_mm=float(phantom_spacing_mm),
                             detail=lambda p: f"CT {p.ct.data.shape[::-1]} voxels at {p.ct.spacing[0]:g} mm")
    stages.run("save phantom", save_phantom, phantom, out / "phantom")

    # 2. images
    def render_all():
        mu = phantom.ct.with_data(drr.hu_to_mu(phantom.ct.data).astype(np.float32))
        rendered = []
        for k, view in enumerate(views):
            side = view.side if view.side in phantom.femurs else next(iter(phantom.femurs))
            rng = np.random.default_rng([int(seed), k, 0x1A6])
            rendered.append(render_view(mu, phantom.femurs[side], dataclasses.replace(view, side=side),
                                        int(size), rng, k))
            files.write_png(out / "images" / f"{rendered[-1].stem}.png", rendered[-1].image)
            files.atomic_write_json(out / "images" / f"{rendered[-1].stem}.json", rendered[-1].annotation())
        return rendered

    images = stages.run("render images", render_all,
                        detail=lambda r: ", ".join(f"{i.view.name}" + ("+metal" if i.implants else "") for i in r))

    # 3. models
    def load():
        preds = dict(predictors or {})
        for task in ("head", "femur"):
            if task not in preds:
                preds[task] = pipeline.load_predictor(task, models_dir / f"{task}.safetensors", device)
        shape = pipeline.load_shape_model(pdm if pdm is not None else models_dir / "pdm.npz")
        refine_path = models_dir / "head-refine.safetensors" if models_dir else None
        if "head-refine" not in preds:  # optional: the head ROI refinement network
            preds["head-refine"] = (pipeline.load_refiner(refine_path, device)
                                    if refine_path is not None and refine_path.is_file() else None)
        region_path = models_dir / "femur-region.safetensors" if models_dir else None
        if "femur-region" not in preds:  # optional: the femur region network (second opinion of weak femur fits)
            preds["femur-region"] = (pipeline.load_region_net(region_path, device)
                                     if region_path is not None and region_path.is_file() else None)
        return preds, shape

    preds, shape_model = stages.run("load models", load)

    # 4. fits
    def fit_all():
        fits = []
        for img in images:
            pair = []
            for task in ("head", "femur"):
                pred = preds[task]
                if getattr(pred, "per_image", False):
                    pred = pred(task, img)
                head_net = preds["head"]  # anchors a weak femur fit on the head circle (stand-ins: the image's own)
                if getattr(head_net, "per_image", False):
                    head_net = head_net("head", img)
                pair.append(pipeline.fit_image(img.image, task, pdm=shape_model, polarity="auto", predictor=pred,
                                               source=f"images/{img.stem}.png",
                                               refine=preds["head-refine"] or False,
                                               head_anchor=head_net if task == "femur" else None,
                                               region=preds["femur-region"] or False))
            fits.append(tuple(pair))
            h, f = pair
            log(f"[demo]   {img.stem:<16s} head {'found' if h.detected else 'not found'}, femur "
                f"{'found' if f.detected else 'not found'} ({h.timings_ms['total_ms'] + f.timings_ms['total_ms']:.0f} ms)")
        return fits

    def fit_all_threads():
        if not threads:
            return fit_all()
        from DeepMorphLib.inference import torch_threads

        with torch_threads(int(threads)):
            return fit_all()

    fits = stages.run("fit (network + morph)", fit_all_threads)
    net_ms = [r.timings_ms.get("network_ms", 0.0) for pair in fits for r in pair]
    if not threads and predictors is None and net_ms and float(np.median(net_ms)) > 1500.0:
        log(f"[demo] hint: the networks took {np.median(net_ms):.0f} ms per image (a few hundred ms is usual); "
            "when other programs keep the CPU busy, --threads 1 is often much faster")

    # 5. figures and results
    records = []

    def write_figures():
        pictures = []
        for img, (head, femur) in zip(images, fits):
            rec = score(img, head, femur)
            rec["fit_ms"] = head.timings_ms["total_ms"] + femur.timings_ms["total_ms"]
            rec["timings_ms"] = {"head": head.timings_ms, "femur": femur.timings_ms}
            records.append(rec)
            pic = overlay_picture(img, head, femur, rec)
            pictures.append(pic)
            files.write_png(out / "overlays" / f"{img.stem}.png", pic)
            for res in (head, femur):
                files.write_png(out / "confidence" / f"{img.stem}_{res.task}.png", confidence_png(res.confidence))
                d = res.to_dict()
                if res.task == "femur":
                    d["named_landmarks"] = named_landmarks(d.get("landmarks"))
                files.atomic_write_json(out / "results" / f"{img.stem}_{res.task}.json", d)
        files.write_png(out / "overview.png", montage(pictures, cols=2))

    stages.run("overlays and maps", write_figures)

    # 6. scene bundle
    def scene():
        from DeepMorphLib import mrml_glue as glue

        app = build_scene(images, fits, phantom, shape_model.landmark_indices)
        with quiet_vtk() as messages:
            try:
                path = glue.save_scene_bundle(app.scene, out / "scene.mrb")
            except ValueError as exc:
                raise ValueError(f"{exc} VTK said: {messages.text().strip()[-2000:]}") from None
        return app, path

    app, mrb = stages.run("Slicer scene (.mrb)", scene, detail=lambda r: f"{r[1].stat().st_size / 1e6:.1f} MB")

    # 7. the first image as Slicer shows it (optional: needs an offscreen OpenGL context)
    screenshot = None
    if screenshots:
        def shoot():
            try:
                with quiet_vtk():
                    return slice_view_screenshot(app, "01 X-ray", "01 femur confidence", out / "slicer_view.png")
            except Exception as exc:  # noqa: BLE001 - a picture less is no reason to fail the demo
                return exc

        shot = stages.run("Slicer view screenshot", shoot,
                          detail=lambda r: r.name if isinstance(r, Path) else f"skipped ({r})")
        screenshot = shot if isinstance(shot, Path) else None
    app.scene.Clear(1)


    # 8. results + report
    settings = {"seed": int(seed), "image size (px)": int(size), "images": len(images),
                "phantom voxel (mm)": float(phantom.ct.spacing[0]),
                "models": str(models_dir) if models_dir else "given (test stand-ins)",
                "command": command or f"run_demo(seed={int(seed)}, n_images={len(images)}, size={int(size)})"}
    versions = software_versions()

    def write_results():
        from DeepMorphLib.report import write_csv

        timings = {f"{k} (s)": round(v, 2) for k, v in stages.seconds.items()}
        timings["total so far (s)"] = round(stages.total(), 2)
        files.atomic_write_json(out / "results.json", {
            "settings": settings, "summary": summarize(records), "images": records, "timings_s": timings,
            "versions": versions, "landmark_indices": {k: int(v) for k, v in shape_model.landmark_indices.items()},
        })
        write_csv(out / "results.csv", [{k: r.get(k) for k in REPORT_COLUMNS} for r in records], REPORT_COLUMNS)
        return write_report(out, records, images, timings, settings, versions, screenshot)

    stages.run("results and report", write_results)
    total = stages.total()
    log(f"[demo] done in {total:.1f} s: open {out / 'report.html'} (and {out / 'scene.mrb'} in 3D Slicer)")
    summary = summarize(records)
    return {"records": records, "timings_s": {**stages.seconds, "total": total}, "summary": summary,
            "files": {"report": out / "report.html", "scene": out / "scene.mrb", "overview": out / "overview.png"}}
