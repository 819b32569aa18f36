"""Slicer's slice view pipeline, offscreen: overlays land where the fit says (within 1 px)."""
import numpy as np
import pytest

pytest.importorskip("slicer")

from DeepMorphLib import mrml_glue as g  # noqa: E402
from DeepMorphLib.slice_view_render import OffscreenSliceView, opengl_available  # noqa: E402
from DeepMorphSimulatorLib.geometry import CArmGeometry  # noqa: E402
from DeepMorphSimulatorLib.mrml_glue import detector_ijk_to_ras  # noqa: E402

OK, WHY = opengl_available()
pytestmark = pytest.mark.skipif(not OK, reason=f"no offscreen OpenGL context (install libegl1 libgl1): {WHY}")

H, W = 240, 320
MAGENTA = (1.0, 0.0, 1.0)


@pytest.fixture(scope="module")
def scene():
    """A tilted detector image with a confidence ring, a magenta fitted circle and two landmarks."""
    app = g.create_headless_slicer()
    v, u = np.mgrid[:H, :W]
    image = (60 + 150 * np.exp(-((u - 200.0) ** 2 + (v - 100.0) ** 2) / 3000.0)).astype(np.uint8)
    geometry = CArmGeometry(width_px=W, height_px=H, orbital_deg=25, angular_deg=-10, inplane_deg=15)
    xray = g.image_to_node(image, app.scene, "X-ray", detector_ijk_to_ras(geometry), window_level=(0, 255))
    circle = (120.3, 130.6, 40.2)
    conf = np.exp(-((np.hypot(u - 230.0, v - 60.0) - 25.0) ** 2) / 20.0).astype(np.float32)
    confidence = g.confidence_to_node(app.scene, conf, xray)
    curve, centre = g.circle_to_markups(app.scene, xray, circle, n=120, color=MAGENTA)
    centre.GetDisplayNode().SetVisibility(False)  # its label would be magenta too
    landmarks = g.uv_points_to_markups(app.scene, xray, [[60.0, 200.0]], ["greater_trochanter"], color=(0, 1, 0))
    landmarks.GetDisplayNode().SetPointLabelsVisibility(False)
    landmarks.GetDisplayNode().SetGlyphScale(2.0)
    view = OffscreenSliceView(app, (640, 480))
    view.show_image(xray, confidence, 0.8)
    yield dict(app=app, view=view, xray=xray, circle=circle, conf=conf)
    view.close()


def fit_circle(xs, ys):
    a = np.c_[2 * xs, 2 * ys, np.ones(len(xs))]
    (cx, cy, c), *_ = np.linalg.lstsq(a, xs**2 + ys**2, rcond=None)
    return cx, cy, np.sqrt(c + cx * cx + cy * cy)


def test_drawn_circle_lies_where_the_fit_says(scene, tmp_path):
    view, xray, circle = scene["view"], scene["xray"], scene["circle"]
    rgb = view.save_png(tmp_path / "view.png")
    assert (tmp_path / "view.png").stat().st_size > 1000
    magenta = (rgb[..., 0] > 200) & (rgb[..., 1] < 80) & (rgb[..., 2] > 200)
    ys, xs = np.nonzero(magenta)
    assert len(xs) > 300, "circle not drawn"
    cx, cy, r = fit_circle(xs.astype(float), ys.astype(float))
    centre = view.ras_to_screen(g.uv_to_ras(xray, [circle[:2]]))[0]
    screen_per_px = np.linalg.norm(
        view.ras_to_screen(g.uv_to_ras(xray, [[circle[0] + 1.0, circle[1]]]))[0] - centre
    )
    # errors in image pixels
    assert np.hypot(cx - centre[0], cy - centre[1]) / screen_per_px < 1.0
    assert abs(r / screen_per_px - circle[2]) < 1.0
    # every drawn pixel is on the circle (no stray magenta)
    radial = np.hypot(xs - centre[0], ys - centre[1]) / screen_per_px - circle[2]
    assert np.abs(radial).max() < 2.0


def test_image_is_upright_and_confidence_is_a_coloured_overlay(scene):
    view, xray = scene["view"], scene["xray"]
    rgb = view.render().astype(int)
    def at(u, v):
        x, y = np.round(view.ras_to_screen(g.uv_to_ras(xray, [[u, v]]))[0]).astype(int)
        return rgb[y, x]

    bright, dark = at(200, 100), at(10, 230)  # the image's bright blob is up and right
    assert bright.mean() > dark.mean() + 80 and np.ptp(bright) < 10 and np.ptp(dark) < 10  # grey
    ring = at(230 + 25, 60)  # confidence 1 -> opaque warm colour
    assert ring[0] > 200 and ring[2] < 120 and ring[0] - ring[2] > 100


def test_landmark_glyph_is_centred_on_its_pixel(scene):
    view, xray = scene["view"], scene["xray"]
    rgb = view.render()
    green = (rgb[..., 1] > 200) & (rgb[..., 0] < 80) & (rgb[..., 2] < 80)
    ys, xs = np.nonzero(green)
    assert len(xs) > 5
    expected = view.ras_to_screen(g.uv_to_ras(xray, [[60.0, 200.0]]))[0]
    assert np.hypot(xs.mean() - expected[0], ys.mean() - expected[1]) < 2.0  # screen px (2 per image px)


def test_three_d_view_draws_models_and_carm():
    import vtk

    from DeepMorphLib.slice_view_render import OffscreenThreeDView
    from DeepMorphSimulatorLib import simulator_logic
    from DeepMorphSimulatorLib.mrml_glue import polydata_to_model_node

    app = g.create_headless_slicer()
    sphere = vtk.vtkSphereSource()
    sphere.SetRadius(30.0)
    sphere.Update()
    polydata_to_model_node(app.scene, sphere.GetOutput(), "femur", color=(0.0, 0.0, 1.0))
    simulator_logic.draw_carm(app.scene, CArmGeometry(width_px=100, height_px=100, pixel_mm=2.0))
    with OffscreenThreeDView(app, (300, 300)) as view:
        view.look_at((0.0, 0.0, 0.0), (0.0, -2000.0, 0.0))  # from anterior, beam along the view
        view.reset_camera()
        rgb = view.render().astype(int)
    blue = (rgb[..., 2] > 100) & (rgb[..., 0] < 60) & (rgb[..., 1] < 60)
    ys, xs = np.nonzero(blue)
    assert len(xs) > 20 and abs(xs.mean() - 150) < 10 and abs(ys.mean() - 150) < 10  # femur in the middle
    orange = (rgb[..., 0] > 150) & (rgb[..., 1] > 50) & (rgb[..., 1] < 150) & (rgb[..., 2] < 100)
    assert orange.sum() > 50  # detector outline / beam drawn


def test_a_fluoroscopy_runs_fit_is_drawn_on_its_frame_only(tmp_path, monkeypatch):
    """The frame fitted of a multi-frame X-ray (slice K = 2 of 4) shows its circle over its own disc; frame 1 (K = 0),
    whose disc is elsewhere, shows none of it."""
    from test_fit_logic import disc_centre, predict_dark_disc, write_fluoroscopy_run

    from DeepMorphLib import fit_logic, working_size

    monkeypatch.setattr(working_size, "working_shape", lambda shape: (int(shape[0]), int(shape[1])))  # stand-in px
    app = g.create_headless_slicer()
    run = g.load_volume(app, write_fluoroscopy_run(tmp_path / "run.dcm"), "run")
    result, nodes = fit_logic.fit_xray_node(app.scene, run, "head", polarity="bone-dark", predict=predict_dark_disc,
                                            k=2)
    nodes["head_centre"].GetDisplayNode().SetVisibility(False)
    with OffscreenSliceView(app, (640, 480)) as view:
        view.show_image(run, k=2)
        assert g.shown_slice_k(view.slice_node, run) == 2
        rgb = view.save_png(tmp_path / "frame3.png").astype(int)
        yellow = (rgb[..., 0] > 200) & (rgb[..., 1] > 170) & (rgb[..., 2] < 80)
        ys, xs = np.nonzero(yellow)
        cx, cy, r = fit_circle(xs.astype(float), ys.astype(float))
        expected = view.ras_to_screen(g.uv_to_ras(run, [[disc_centre(2), 55.0]], 2))[0]
        assert len(xs) > 300 and np.hypot(cx - expected[0], cy - expected[1]) < 4.0  # 4 screen px = 1 image px
        view.show_image(run, k=0)
        rgb = view.save_png(tmp_path / "frame1.png").astype(int)
        assert not ((rgb[..., 0] > 200) & (rgb[..., 1] > 170) & (rgb[..., 2] < 80)).any()
        assert rgb[int(expected[1]), int(expected[0])].mean() > 200  # frame 1 is bright where frame 3's disc is
