"""DRR renderer (drr.py): analytic truths, display mapping, orientation, bad input, CLI."""
import json

import numpy as np
import pytest
from DeepMorphSimulatorLib import drr
from DeepMorphSimulatorLib.drr_testing import (
    box_segments,
    hip_like_ct,
    linear_truth,
    linear_volume,
    random_rotation,
)
from DeepMorphSimulatorLib.geometry import CArmGeometry
from DeepMorphSimulatorLib.volume import Volume, write_volume

MIN_PATH_MM = 50.0


def _linear_case(seed: int, rotated: bool):
    rng = np.random.default_rng(seed)
    spacing = rng.uniform(0.8, 2.5, size=3)  # anisotropic
    extent_mm = rng.uniform(90, 130, size=3)
    shape = tuple(int(n) for n in (extent_mm / spacing)[::-1])  # (k, j, i)
    direction = random_rotation(rng) if rotated else np.eye(3)
    origin = rng.uniform(-80, 80, size=3)
    gradient = rng.uniform(-0.004, 0.004, size=3)  # per mm; values stay within ~[0.4, 1.6]
    vol = linear_volume(shape, spacing, origin, direction, gradient, 1.0)
    poses = [
        CArmGeometry(width_px=40, height_px=32, pixel_mm=3.0, isocenter_lps=tuple(vol.center_lps())),
        CArmGeometry(width_px=40, height_px=32, pixel_mm=3.0, orbital_deg=float(rng.uniform(20, 70)),
                     angular_deg=float(rng.uniform(-35, 35)), inplane_deg=float(rng.uniform(-180, 180)),
                     isocenter_lps=tuple(vol.center_lps() + rng.uniform(-15, 15, size=3))),
        CArmGeometry(width_px=40, height_px=32, pixel_mm=3.0, orbital_deg=90.0, angular_deg=float(rng.uniform(-60, 60)),
                     isocenter_lps=tuple(vol.center_lps())),
    ]
    return vol, gradient, poses


def _max_rel_err(estimate, truth, length):
    mask = length >= MIN_PATH_MM
    assert mask.sum() >= 50, "test geometry must have rays crossing >= 50 mm"
    return float(np.max(np.abs(estimate[mask] - truth[mask]) / np.abs(truth[mask])))


@pytest.mark.parametrize("method", ["joseph", "trilinear"])
@pytest.mark.parametrize("seed,rotated", [(1, False), (2, True), (3, True)])
def test_linear_volume_matches_analytic_truth(method, seed, rotated):
    vol, gradient, poses = _linear_case(seed, rotated)
    for g in poses:
        truth, length = linear_truth(vol, gradient, 1.0, g)
        A = drr.line_integrals(vol, g, method=method, device="cpu")
        assert A.dtype == np.float32 and A.shape == (g.height_px, g.width_px)
        assert _max_rel_err(A, truth, length) <= 0.005
        assert _max_rel_err(A, truth, length) <= 1e-4  # in practice float32 rounding only
        # rays that miss the volume integrate nothing
        assert np.all(A[length == 0] == 0)


@pytest.mark.parametrize("device", ["cpu", "torch-cpu"])
def test_awkward_geometries_match_analytic_truth(device):
    rng = np.random.default_rng(11)
    gradient = [0.003, -0.002, 0.001]
    vol = linear_volume((70, 80, 90), (2.0, 1.7, 2.3), (-100, -80, -90), random_rotation(rng), gradient, 1.0)
    c = vol.center_lps()
    for g in (
        # source (and detector) inside the volume: rays start and end inside the box
        CArmGeometry(sid_mm=200, sod_mm=100, width_px=32, height_px=32, pixel_mm=8, isocenter_lps=tuple(c)),
        # about 45 degrees: neighbouring rays have different major axes
        CArmGeometry(width_px=32, height_px=32, pixel_mm=8, orbital_deg=45, angular_deg=44.9, isocenter_lps=tuple(c)),
        CArmGeometry(width_px=32, height_px=32, pixel_mm=8, orbital_deg=135, inplane_deg=45,
                     isocenter_lps=tuple(c + 20)),
    ):
        truth, length = linear_truth(vol, gradient, 1.0, g)
        for method in ("joseph", "trilinear"):
            A = drr.line_integrals(vol, g, method=method, device=device)
            assert _max_rel_err(A, truth, length) <= 1e-4


def test_constant_box_gives_path_length():
    rng = np.random.default_rng(5)
    vol = Volume(np.ones((40, 50, 60), np.float32), spacing=(1.7, 0.9, 2.2), origin=(10, -20, 30),
                 direction=random_rotation(rng))
    for g in (CArmGeometry(width_px=48, height_px=40, pixel_mm=2.5, isocenter_lps=tuple(vol.center_lps())),
              CArmGeometry(width_px=48, height_px=40, pixel_mm=2.5, orbital_deg=-30, angular_deg=25,
                           isocenter_lps=tuple(vol.center_lps()))):
        _, _, length = box_segments(vol, g)
        for method in ("joseph", "trilinear"):
            A = drr.line_integrals(vol, g, method=method, device="cpu")
            assert _max_rel_err(A, length, length) <= 1e-4


@pytest.mark.parametrize("method", ["joseph", "trilinear"])
def test_torch_path_matches_numba(method):
    vol, gradient, poses = _linear_case(4, True)
    for g in poses[:2]:
        truth, length = linear_truth(vol, gradient, 1.0, g)
        a_numba = drr.line_integrals(vol, g, method=method, device="cpu")
        a_torch = drr.line_integrals(vol, g, method=method, device="torch-cpu")
        assert _max_rel_err(a_torch, truth, length) <= 1e-4
        np.testing.assert_allclose(a_torch, a_numba, rtol=2e-5, atol=1e-5 * float(a_numba.max()))


def test_torch_and_numba_agree_on_a_hip_ct():
    ct = hip_like_ct((40, 64, 64), (6.4, 6.4, 7.5))
    mu = drr.hu_to_mu(ct)
    g = CArmGeometry(width_px=48, height_px=40, pixel_mm=3.0, orbital_deg=25, angular_deg=-10,
                     isocenter_lps=tuple(ct.center_lps()))
    for method in ("joseph", "trilinear"):
        a = drr.line_integrals(mu, g, method=method, device="cpu")
        b = drr.line_integrals(mu, g, method=method, device="torch-cpu")
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * float(a.max()))
    # Joseph and the paper's 0.5 mm sampler agree closely on real-looking content
    j = drr.line_integrals(mu, g, method="joseph", device="cpu")
    t = drr.line_integrals(mu, g, method="trilinear", step_mm=0.5, device="cpu")
    assert np.median(np.abs(j - t)[t > 1] / t[t > 1]) < 1e-3


def test_empty_margins_are_skipped_without_changing_results():
    ct = hip_like_ct((40, 64, 64), (6.4, 6.4, 7.5))
    mu = drr.hu_to_mu(ct)
    lo, hi = drr.support_box(mu.data)
    assert np.all(lo > 0) or np.any(hi < np.array(mu.shape_ijk) - 1)  # the body leaves air margins
    g = CArmGeometry(width_px=48, height_px=40, pixel_mm=4.0, orbital_deg=60, angular_deg=20,
                     isocenter_lps=tuple(ct.center_lps()))
    full = drr._integrate(mu, mu.data, g, None, "joseph", "cpu", crop=False)
    cropped = drr.line_integrals(mu, g, method="joseph", device="cpu")
    np.testing.assert_allclose(cropped, full, rtol=1e-5, atol=1e-5 * float(full.max()))
    # a single nonzero voxel in a corner, and an all-zero volume
    data = np.zeros((10, 12, 14), np.float32)
    data[0, 11, 13] = 1.0
    lo, hi = drr.support_box(data)
    assert lo.tolist() == [12, 10, 0] and hi.tolist() == [13, 11, 1]
    lo, hi = drr.support_box(np.zeros((5, 6, 7), np.float32))
    assert lo.tolist() == [0, 0, 0] and hi.tolist() == [6, 5, 4]


def test_hu_to_mu_follows_eq_8():
    mu = drr.hu_to_mu(np.array([-2000, -1024, 0, 1024, 3071, 5000], np.int16), mu_water=0.02)
    np.testing.assert_allclose(mu, 0.02 * np.array([0, 0, 1, 2, 4095 / 1024, 4095 / 1024]), rtol=1e-6)
    assert mu.dtype == np.float32 and not mu.flags.writeable
    ct = hip_like_ct((8, 16, 16), (20.0, 20.0, 30.0), marker=False)
    vol = drr.hu_to_mu(ct)
    assert isinstance(vol, Volume) and np.allclose(vol.origin, ct.origin)
    with pytest.raises(ValueError, match="mu_water"):
        drr.hu_to_mu(ct, mu_water=0)
    with pytest.raises(ValueError, match="NaN"):
        drr.hu_to_mu(np.array([0.0, np.nan]))


def test_display_saturates_exactly_2_5_percent_and_is_monotonic():
    rng = np.random.default_rng(0)
    A = rng.uniform(2.0, 7.0, size=(120, 100)).astype(np.float32)
    img = drr.to_display(A)
    assert img.dtype == np.uint8 and img.shape == A.shape
    assert np.count_nonzero(img == 255) == round(0.025 * A.size)
    assert img.min() == 20 and img[np.unravel_index(np.argmax(A), A.shape)] == 20
    order = np.argsort(A, axis=None, kind="stable")
    assert np.all(np.diff(img.ravel()[order].astype(int)) <= 0)  # more attenuation -> darker
    # ties at the threshold saturate together
    A2 = np.full((40, 40), 5.0)
    A2[:10] = 1.0  # 25 % share the lowest attenuation
    assert np.count_nonzero(drr.to_display(A2) == 255) == 400
    assert np.count_nonzero(drr.to_display(A, saturate_fraction=0.1) == 255) == round(0.1 * A.size)
    with pytest.raises(ValueError):
        drr.to_display(np.full((4, 4), np.nan))
    with pytest.raises(ValueError):
        drr.to_display(A, low=200, high=100)


def test_orientation_patient_right_on_image_left_head_up():
    ct = hip_like_ct((60, 128, 128), (3.2, 3.2, 5.0))  # dense bead at LPS (-120, -80, 110): right, cranial
    g = CArmGeometry(pixel_mm=1.6, width_px=160, height_px=160, isocenter_lps=(-60.0, 0.0, 40.0))
    result = drr.render_drr(ct, g)
    assert result.image.dtype == np.uint8 and result.line_integrals.dtype == np.float32
    bead_uv = g.project(np.array([[-120.0, -80.0, 110.0]]))[0]
    assert bead_uv[0] < g.width_px / 2 and bead_uv[1] < g.height_px / 2  # upper left, by the geometry
    u, v = np.round(bead_uv).astype(int)
    A = result.line_integrals
    # the rendered bead sits where the geometry projects it: a local attenuation peak, and dark
    assert A[v, u] > A[v, u + 12] + 0.5 and A[v, u] > A[v + 12, u] + 0.5
    assert result.image[v, u] < result.image[v, u + 12] and result.image[v, u] < result.image[v + 12, u]
    # femoral head of the right hip (LPS x = -90) lies left of the image centre
    head_uv = g.project(np.array([[-90.0, 0.0, 0.0]]))[0]
    assert head_uv[0] < g.width_px / 2


def test_rays_missing_the_volume_are_an_error():
    vol = Volume(np.ones((10, 10, 10), np.float32))
    far = CArmGeometry(width_px=16, height_px=16, isocenter_lps=(0.0, 0.0, 500.0))
    with pytest.raises(ValueError, match="miss"):
        drr.line_integrals(vol, far, device="cpu")
    with pytest.raises(ValueError, match="miss"):
        drr.line_integrals(vol, far, device="torch-cpu")


def test_bad_volumes_raise_clear_errors():
    with pytest.raises(ValueError, match="NaN"):
        Volume(np.array([[[0.0, np.nan]]] * 2, np.float32))
    with pytest.raises(ValueError, match="3-D"):
        Volume(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="empty"):
        Volume(np.zeros((0, 4, 4), np.float32))
    with pytest.raises(ValueError, match="spacing"):
        Volume(np.zeros((4, 4, 4), np.float32), spacing=(1.0, 0.0, 1.0))
    g = CArmGeometry(width_px=16, height_px=16, pixel_mm=2.0, isocenter_lps=(1.5, 1.5, 1.5))
    with pytest.raises(ValueError, match="Volume"):
        drr.line_integrals(np.zeros((4, 4, 4), np.float32), g)
    vol = Volume(np.ones((4, 4, 4), np.float32))
    vol.data[:, 1:3, 1:3] = np.nan  # changed after construction: caught on the rays
    with pytest.raises(ValueError, match="NaN"):
        drr.line_integrals(vol, g, device="cpu")
    vol = Volume(np.ones((4, 4, 4), np.float32))
    vol.spacing = np.array([1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="spacing"):
        drr.line_integrals(vol, g, device="cpu")
    with pytest.raises(ValueError, match="at least 2 voxels"):
        drr.line_integrals(Volume(np.ones((1, 4, 4), np.float32)), g, device="cpu")
    with pytest.raises(ValueError, match="NaN"):
        drr.render_drr(Volume(np.zeros((4, 4, 4), np.float32)).with_data(np.full((4, 4, 4), np.nan)), g)


def test_bad_options_raise_clear_errors():
    vol = Volume(np.ones((4, 4, 4), np.float32))
    g = CArmGeometry(width_px=8, height_px=8, isocenter_lps=(1.5, 1.5, 1.5))
    with pytest.raises(ValueError, match="method"):
        drr.line_integrals(vol, g, method="siddon")
    with pytest.raises(ValueError, match="step_mm"):
        drr.line_integrals(vol, g, method="trilinear", step_mm=0)
    with pytest.raises(ValueError, match="device"):
        drr.line_integrals(vol, g, device="tpu")
    with pytest.raises(ValueError, match="CArmGeometry"):
        drr.line_integrals(vol, {"sid_mm": 1000})


def test_cli_writes_png_npy_and_sidecar(tmp_path):
    from DeepMorphLib.cli import main
    from DeepMorphSimulatorLib.files import read_image_2d

    ct = hip_like_ct((30, 48, 48), (8.5, 8.5, 10.0))
    ct_path = tmp_path / "ct.nrrd"
    write_volume(ct, ct_path)
    out = tmp_path / "out" / "drr.png"
    rc = main(["drr", "--ct", str(ct_path), "--out", str(out), "--size", "64", "48", "--pixel-mm", "3",
               "--orbital", "20", "--angular", "-10", "--inplane", "5"])
    assert rc == 0
    image = read_image_2d(out)
    A = np.load(out.with_suffix(".npy"), allow_pickle=False)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert image.shape == (48, 64) and A.shape == (48, 64) and A.dtype == np.float32
    g = CArmGeometry.from_dict(meta["geometry"])
    assert g.orbital_deg == 20 and g.width_px == 64 and g.height_px == 48
    np.testing.assert_allclose(g.isocenter_lps, ct.center_lps(), atol=1e-6)  # default: volume centre
    assert np.allclose(meta["geometry"]["projection_matrix"], g.projection_matrix())
    assert meta["model"]["mu_water_per_mm"] == drr.MU_WATER_PER_MM
    expected = drr.render_drr(ct, g)
    np.testing.assert_allclose(A, expected.line_integrals, rtol=1e-6)
    assert np.array_equal(image.astype(np.uint8), expected.image)
    # a pose that misses the CT: exit code 2 and a message
    assert main(["drr", "--ct", str(ct_path), "--out", str(out), "--isocenter", "0", "0", "2000"]) == 2
    assert main(["drr", "--ct", str(ct_path), "--out", str(tmp_path / "x.jpg")]) == 2
