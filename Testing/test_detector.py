"""Detector/display effects: Poisson statistics, polarity, collimation, determinism; pose sampling."""
import numpy as np
import pytest

from DeepMorphSimulatorLib.detector import (
    DetectorParams,
    apply_detector,
    coloured_noise,
    field_mask,
    quantum_noise,
    sample_detector,
)
from DeepMorphSimulatorLib.poses import PoseSampler, sample_pose


def test_poisson_variance_scales_with_dose():
    rng = np.random.default_rng(0)
    intensity = np.full((300, 300), np.exp(-2.0))
    var = {}
    for n0 in (1e3, 1e4, 1e5):
        noisy = quantum_noise(intensity, n0, rng)
        assert noisy.mean() == pytest.approx(intensity[0, 0], rel=0.01)
        var[n0] = noisy.var()
        # Poisson: var(N / n0) = I / n0
        assert var[n0] == pytest.approx(intensity[0, 0] / n0, rel=0.05)
    assert var[1e3] / var[1e4] == pytest.approx(10.0, rel=0.08)
    assert var[1e4] / var[1e5] == pytest.approx(10.0, rel=0.08)
    # low counts are drawn exactly: integer photon numbers, Poisson variance = mean
    low = quantum_noise(np.full((300, 300), 0.005), 1e3, rng) * 1e3
    assert np.allclose(low, np.round(low)) and low.min() >= 0
    assert low.var() == pytest.approx(5.0, rel=0.05) and low.mean() == pytest.approx(5.0, rel=0.02)
    with pytest.raises(ValueError, match="n0"):
        quantum_noise(intensity, 0.0, rng)


def test_display_noise_falls_with_dose():
    """Through the whole pipeline (linear display, nothing else on) the grey-level std ~ 1/sqrt(dose)."""
    a = np.full((200, 200), 3.0)
    a[:, :20] = 1.0  # something brighter so the display has a range
    std = {}
    for counts in (100.0, 10000.0):
        p = DetectorParams(counts=counts, abc_gain=2.0, low=0.0, high=255.0)
        img = apply_detector(a, p, np.random.default_rng(1)).astype(float)
        std[counts] = img[50:150, 60:180].std()
    assert std[100.0] / std[10000.0] == pytest.approx(10.0, rel=0.15)


def test_coloured_noise_is_unit_and_low_frequency_heavy():
    n = coloured_noise((128, 128), np.random.default_rng(2), beta=2.0)
    assert abs(n.mean()) < 1e-6 and n.std() == pytest.approx(1.0)
    spec = np.abs(np.fft.fft2(n)) ** 2
    assert spec[1:4, 1:4].mean() > 50 * spec[40:60, 40:60].mean()


def test_polarity_and_metal_dark_in_bone_dark():
    a = np.full((64, 64), 2.0)
    a[20:40, 20:40] = 3.0  # bone
    a[28:32, :] = 15.0  # metal rod
    dark = apply_detector(a, DetectorParams(polarity="bone-dark", low=20, high=255), np.random.default_rng(0))
    bright = apply_detector(a, DetectorParams(polarity="bone-bright", low=20, high=255), np.random.default_rng(0))
    assert dark.dtype == np.uint8 and dark.shape == a.shape
    assert dark[30, 5] < dark[22, 30] < dark[5, 5]
    assert bright[30, 5] > bright[22, 30] > bright[5, 5]


def test_circular_collimation_blacks_out_the_rim():
    p = DetectorParams(collimation="circle", collimation_radius=0.4, outside_value=0.0)
    img = apply_detector(np.full((100, 100), 1.0), p, np.random.default_rng(0))
    assert img[0, 0] == 0 and img[50, 50] > 100
    f = field_mask((100, 100), p)
    assert f[50, 50] == 1.0 and f[0, 0] == 0.0


def test_random_detector_is_deterministic_and_valid():
    a = np.random.default_rng(3).uniform(0, 6, (96, 96))
    for seed in range(15):
        p1 = sample_detector(np.random.default_rng(seed))
        p2 = sample_detector(np.random.default_rng(seed))
        assert p1 == p2
        img1 = apply_detector(a, p1, np.random.default_rng(seed))
        img2 = apply_detector(a, p2, np.random.default_rng(seed))
        assert np.array_equal(img1, img2) and img1.dtype == np.uint8
    assert {sample_detector(np.random.default_rng(s)).polarity for s in range(40)} == {"bone-dark", "bone-bright"}


def _hip_like_line_integrals():
    """Dense centre (pelvis over the head, A 2.8-3.2 across rows), thinner lateral thigh (A = 1.5) outside
    the central region holding a bone (A = 1.9) whose edge is at column 112, direct beam (A = 0) from 124."""
    a = np.repeat(np.linspace(2.8, 3.2, 128)[:, None], 128, axis=1)
    a[:, 104:124] = 1.5
    a[30:100, 104:112] = 1.9
    a[:, 124:] = 0.0
    return a


@pytest.mark.parametrize("display", ["log", "linear"])
def test_anatomy_saturation_keeps_lateral_bone_visible(display):
    """Windowed on the central region alone the lateral bone and the thigh around it burn out to the same
    grey; with ``anatomy_saturation`` the window also covers the body (A > 0.3) and the bone's edge shows.
    The direct beam still saturates."""
    a = _hip_like_line_integrals()
    common = dict(display=display, abc_gain=2.0, window_low=0.0, window_high=1.0, window_margin=0.0,
                  central_fraction=0.3, low=0.0, high=255.0)
    burnt = apply_detector(a, DetectorParams(**common), np.random.default_rng(0)).astype(int)
    shown = apply_detector(a, DetectorParams(anatomy_saturation=0.01, **common), np.random.default_rng(0)).astype(int)
    bone, thigh, beam, centre = (64, 108), (64, 118), (64, 126), (64, 64)
    assert burnt[bone] == burnt[thigh] == 255  # the bone is lost
    assert shown[bone] < shown[thigh] - 20  # bone darker than the thigh beside it (bone-dark)
    assert shown[centre] < shown[bone]
    assert shown[beam] == 255


def test_sampled_detector_window():
    """window="anatomy": every draw covers the anatomy (0-3 % of it may burn out) with display contrast <= 1.1 (a
    stronger one clipped the lateral femur outline); the default "centre" draws exactly what it drew before the
    option existed (no anatomy_saturation), so earlier datasets and the held-out sets stay reproducible."""
    for seed in range(40):
        p = sample_detector(np.random.default_rng(seed), window="anatomy")
        assert p.anatomy_saturation is not None and 0.0 <= p.anatomy_saturation <= 0.03
        assert p.contrast <= 1.1
        q = sample_detector(np.random.default_rng(seed))
        assert q.anatomy_saturation is None
        assert q.gamma == p.gamma and q.abc_gain == p.abc_gain and q.polarity == p.polarity
    assert max(sample_detector(np.random.default_rng(s)).contrast for s in range(40)) > 1.1
    with pytest.raises(ValueError, match="window"):
        sample_detector(np.random.default_rng(0), window="whole")


def test_bad_line_integrals():
    with pytest.raises(ValueError, match="2-D"):
        apply_detector(np.zeros(5), DetectorParams(), np.random.default_rng(0))
    with pytest.raises(ValueError, match="NaN"):
        apply_detector(np.full((4, 4), np.nan), DetectorParams(), np.random.default_rng(0))


LANDMARKS = {
    "head_center": np.array([-90.0, 0.0, 0.0]),
    "neck_axis_point": np.array([-120.0, 0.0, -20.0]),
    "greater_trochanter": np.array([-135.0, 5.0, 5.0]),
    "lesser_trochanter": np.array([-110.0, 5.0, -55.0]),
}


def test_pose_sampling_ranges():
    sampler = PoseSampler()
    n_lateral = 0
    for seed in range(200):
        g = sample_pose(np.random.default_rng(seed), LANDMARKS, 256, sampler)
        assert g.width_px == g.height_px == 256
        fov = g.field_of_view_mm[0]
        assert 150.0 - 1e-6 <= fov <= 230.0 + 1e-6
        assert 1.15 - 1e-9 <= g.magnification <= 1.7 + 1e-9
        if abs(g.orbital_deg) > 30.0:
            n_lateral += 1
            assert 40.0 <= abs(g.orbital_deg) <= 70.0
        else:
            assert abs(g.angular_deg) <= 20.0
    assert 5 <= n_lateral <= 50
    a = sample_pose(np.random.default_rng(7), LANDMARKS, 128)
    b = sample_pose(np.random.default_rng(7), LANDMARKS, 128)
    assert a == b


def test_pose_keeps_head_in_view_unless_partial():
    sampler = PoseSampler(p_partial=0.0)
    for seed in range(100):
        g = sample_pose(np.random.default_rng(seed), LANDMARKS, 200, sampler)
        u, v = g.project(LANDMARKS["head_center"][None])[0]
        assert 20 <= u <= 180 and 20 <= v <= 180
    with pytest.raises(ValueError, match="head_center"):
        sample_pose(np.random.default_rng(0), {}, 100)
