"""C-arm geometry against known projections."""
import numpy as np
import pytest
from DeepMorphSimulatorLib.geometry import CArmGeometry, lps_from_ras, ras_from_lps
from DeepMorphSimulatorLib.volume import Volume, read_volume, write_volume


def test_isocentre_projects_to_principal_point():
    g = CArmGeometry(isocenter_lps=(12.0, -30.0, 400.0), orbital_deg=17, angular_deg=-8, inplane_deg=33)
    uv = g.project(np.array(g.isocenter_lps))
    np.testing.assert_allclose(uv[0], g.principal_point_px, atol=1e-9)
    g2 = g.with_(principal_point=(100.0, 300.0))
    np.testing.assert_allclose(g2.project(np.array(g.isocenter_lps))[0], [100.0, 300.0], atol=1e-9)


def test_magnification_is_sid_over_sod():
    g = CArmGeometry(sid_mm=1100, sod_mm=700, pixel_mm=0.5)
    uv = g.project(np.array([[0, 0, 0], [10.0, 0, 0]]))
    # 10 mm at the isocentre -> 10 * SID/SOD mm on the detector -> / pitch px
    assert uv[1, 0] - uv[0, 0] == pytest.approx(10 * 1100 / 700 / 0.5)
    assert g.magnification == pytest.approx(1100 / 700)


def test_radiological_display_convention():
    g = CArmGeometry()
    c = g.principal_point_px
    left, superior = g.project(np.array([[50.0, 0, 0], [0, 0, 50.0]]))
    assert left[0] > c[0] and abs(left[1] - c[1]) < 1e-9  # patient's left -> image right
    assert superior[1] < c[1] and abs(superior[0] - c[0]) < 1e-9  # head -> image top
    assert g.source_lps[1] > 0  # PA beam: source posterior


def test_orbital_90_swaps_axes():
    g0 = CArmGeometry()
    g90 = CArmGeometry(orbital_deg=90)
    # At 90 deg LAO the beam runs along -x...+x; an anterior-posterior offset now moves along u.
    p = np.array([[0.0, -40.0, 0.0]])  # 40 mm anterior
    assert g0.project(p)[0, 0] == pytest.approx(g0.principal_point_px[0])
    uv = g90.project(p)
    assert abs(uv[0, 0] - g90.principal_point_px[0]) == pytest.approx(40 * g90.magnification / g90.pixel_mm)
    # a left-right offset no longer moves the projection sideways (it is along the beam)
    q = g90.project(np.array([[40.0, 0.0, 0.0]]))
    assert q[0, 0] == pytest.approx(g90.principal_point_px[0])
    # superior stays up
    assert g90.project(np.array([[0, 0, 30.0]]))[0, 1] < g90.principal_point_px[1]


def test_angular_tilts_superior_axis():
    g = CArmGeometry(angular_deg=90)
    p = g.project(np.array([[0.0, -40.0, 0.0], [0, 0, 40.0]]))
    assert p[1, 1] == pytest.approx(g.principal_point_px[1])  # along the beam now
    assert abs(p[0, 1] - g.principal_point_px[1]) == pytest.approx(40 * g.magnification / g.pixel_mm)


def test_inplane_rotation_is_counter_clockwise():
    g = CArmGeometry(inplane_deg=90)
    c = g.principal_point_px
    uv = g.project(np.array([[30.0, 0, 0]]))[0]  # would be right of centre without rotation
    assert uv[0] == pytest.approx(c[0]) and uv[1] < c[1]  # now above centre


def test_projection_matrix_matches_backprojection_and_depth():
    g = CArmGeometry(orbital_deg=-25, angular_deg=12, inplane_deg=-70, isocenter_lps=(5, 6, 7))
    rng = np.random.default_rng(0)
    uv = rng.uniform(0, 447, size=(20, 2))
    depth = rng.uniform(300, 900, size=20)
    pts = g.backproject(uv, depth)
    np.testing.assert_allclose(g.project(pts), uv, atol=1e-8)
    np.testing.assert_allclose(g.depth(pts), depth, atol=1e-8)
    h = np.hstack([pts, np.ones((20, 1))]) @ g.projection_matrix().T
    np.testing.assert_allclose(h[:, 2], depth, atol=1e-8)
    # the detector centre lies at depth SID
    assert g.depth(g.detector_center_lps)[0] == pytest.approx(g.sid_mm)


def test_points_behind_source_are_rejected():
    g = CArmGeometry()
    with pytest.raises(ValueError, match="behind the X-ray source"):
        g.project(g.source_lps + np.array([0, 10.0, 0]))


@pytest.mark.parametrize(
    "kwargs, message",
    [({"sid_mm": -1}, "sid_mm"), ({"sod_mm": 1200}, "sod_mm"), ({"pixel_mm": 0}, "pixel_mm"), ({"width_px": 0}, "detector size"),
     # non-finite angles reached the renderer, which crashed the process (segmentation fault, no message)
     ({"orbital_deg": float("nan")}, "orbital_deg"), ({"angular_deg": float("inf")}, "angular_deg"),
     ({"inplane_deg": -float("inf")}, "inplane_deg"), ({"principal_point": (float("nan"), 3.0)}, "principal_point")],
)
def test_bad_geometry_is_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CArmGeometry(**kwargs)


def test_geometry_json_round_trip():
    g = CArmGeometry(orbital_deg=10, principal_point=(200.0, 210.0), isocenter_lps=(1, 2, 3))
    g2 = CArmGeometry.from_dict(__import__("json").loads(g.to_json()))
    np.testing.assert_allclose(g2.projection_matrix(), g.projection_matrix())


def test_ras_lps_round_trip_through_real_nrrd(tmp_path):
    import SimpleITK as sitk

    direction = np.array([[0, 1, 0], [-1, 0, 0], [0, 0, 1.0]])
    vol = Volume(np.zeros((4, 5, 6), np.int16), spacing=(0.7, 0.9, 2.0), origin=(10, -20, 30), direction=direction)
    write_volume(vol, tmp_path / "ct.nrrd")
    back = read_volume(tmp_path / "ct.nrrd")
    np.testing.assert_allclose(back.ijk_to_lps(), vol.ijk_to_lps())
    # the NRRD header says "left-posterior-superior"; Slicer's RAS of voxel (1,2,3) flips x and y
    header = (tmp_path / "ct.nrrd").read_bytes()[:600].decode("latin-1")
    assert "left-posterior-superior" in header
    lps = vol.index_to_lps([1, 2, 3])[0]
    ras = ras_from_lps(lps)
    np.testing.assert_allclose(ras, [-lps[0], -lps[1], lps[2]])
    np.testing.assert_allclose(lps_from_ras(ras), lps)
    img = sitk.ReadImage(str(tmp_path / "ct.nrrd"))
    np.testing.assert_allclose(img.TransformContinuousIndexToPhysicalPoint((1, 2, 3)), lps)


@pytest.mark.parametrize(
    "data, kwargs, message",
    [
        (np.zeros((5, 5)), {}, "3-D"),
        (np.zeros((0, 5, 5)), {}, "empty"),
        (np.full((2, 2, 2), np.nan), {}, "NaN"),
        (np.zeros((2, 2, 2)), {"spacing": (1, 0, 1)}, "spacing"),
    ],
)
def test_bad_volume_is_a_clear_error(data, kwargs, message):
    with pytest.raises(ValueError, match=message):
        Volume(data, **kwargs)
