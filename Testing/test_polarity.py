"""Polarity detection: simulated hips of both polarities (with/without collimation) and two real dev images."""
import os
from pathlib import Path

import numpy as np
import pytest

from DeepMorphLib.polarity import apply_polarity, detect_polarity, resolve_polarity
from synthetic_hip import make_hip

ROOT = Path(__file__).resolve().parents[1]
DEV_IMAGES = ("cgmh_01_L.png", "cgmh_31_R.png")  # the only dev-set images the test suite reads


def dev_dir():
    """The real dev set, from DEEPMORPH_DEV_DATA, ../shared next to the checkout, or /work/shared; else None."""
    for cand in (os.environ.get("DEEPMORPH_DEV_DATA"), ROOT.parent / "shared/data/real-hip-radiographs-dev",
                 "/work/shared/data/real-hip-radiographs-dev"):
        if cand and (Path(cand) / "images").is_dir():
            return Path(cand)
    return None


@pytest.mark.parametrize("polarity", ["bone-dark", "bone-bright"])
@pytest.mark.parametrize("collimation", [None, "circle-black", "rect-black"])
def test_simulated_hips_both_polarities(polarity, collimation):
    for seed, side in ((len(str(collimation)), "left"), (20 + len(polarity), "right")):
        image, _ = make_hip(seed, polarity, side, collimation)
        label, score = detect_polarity(image)
        assert label == polarity, (seed, score)
        assert abs(score) > 0.1


def test_gamma_and_range_do_not_change_the_answer():
    image, _ = make_hip(7, "bone-dark", "right")
    for mapped in (image, 255 * (image / 255) ** 0.5, 255 * (image / 255) ** 2, image * 16 + 1000, np.log1p(image)):
        assert detect_polarity(mapped)[0] == "bone-dark"


@pytest.mark.parametrize("name", DEV_IMAGES)
def test_real_radiographs_are_bone_bright_and_their_inverse_bone_dark(name):
    root = dev_dir()
    if root is None:
        pytest.skip("real dev set not present (set DEEPMORPH_DEV_DATA)")
    from DeepMorphSimulatorLib.files import read_image_2d

    image = read_image_2d(root / "images" / name)
    assert detect_polarity(image)[0] == "bone-bright"
    assert detect_polarity(255 - image)[0] == "bone-dark"


def test_apply_and_resolve_polarity():
    image = np.array([[10.0, 20.0], [30.0, 250.0]] * 8)
    assert np.array_equal(apply_polarity(image, "bone-dark"), image.astype(np.float32))
    flipped = apply_polarity(image, "bone-bright")  # default expectation: bone-dark (paper's DRRs)
    assert flipped.min() == 10 and flipped.max() == 250 and flipped[0, 0] == 250
    assert np.array_equal(apply_polarity(image, "bone-bright", expected="bone-bright"), image.astype(np.float32))
    assert np.array_equal(apply_polarity(image, "bone-bright", expected="any"), image.astype(np.float32))
    assert resolve_polarity(image, "bone-bright") == ("bone-bright", None)
    with pytest.raises(ValueError, match="polarity"):
        resolve_polarity(image, "dark")
    with pytest.raises(ValueError, match="contrast"):
        detect_polarity(np.zeros((64, 64)))


def test_simulator_drrs_of_both_polarities():
    """A DRR of a phantom as the simulator renders it (bone-dark, eq. 10) and its bone-bright inverse."""
    phantom = pytest.importorskip("DeepMorphSimulatorLib.phantom")
    from DeepMorphSimulatorLib.drr import render_drr
    from DeepMorphSimulatorLib.geometry import CArmGeometry

    ph = phantom.make_phantom(3, sides=("right",), spacing_mm=2.0)
    centre = tuple(ph.femurs["right"].landmarks["head_center"])
    drr = render_drr(ph.ct, CArmGeometry(pixel_mm=0.5, isocenter_lps=centre)).image.astype(np.float32)
    assert detect_polarity(drr)[0] == "bone-dark"
    assert detect_polarity(275.0 - drr)[0] == "bone-bright"  # radiograph display of the same projection
    assert detect_polarity(255 * ((275.0 - drr) / 255) ** 0.6)[0] == "bone-bright"


def test_compiled_ridge_strength_matches_numpy_and_analytic_ridges():
    """The numba kernel gives numpy's numbers (float32 rounding); a bright line has a negative dominant
    curvature across it, a dark line a positive one, and flat noise has next to no ridge strength."""
    from scipy import ndimage as ndi

    from DeepMorphLib import polarity

    yy, xx = np.mgrid[0:96, 0:80].astype(np.float32)
    image = np.exp(-0.5 * ((xx - 40.0) / 1.5) ** 2) - np.exp(-0.5 * ((yy - 70.0) / 1.5) ** 2)  # bright | dark
    image += np.random.default_rng(3).normal(0, 0.01, image.shape).astype(np.float32)
    g = ndi.gaussian_filter(image.astype(np.float32), 1.5)
    inner = np.ones(g.shape, bool)
    inner[:5] = False
    sign_np, strength_np = polarity._ridge_strength_numpy(g, inner, 1.5)
    sign, strength = polarity._ridge_strength(g, inner, 1.5)
    assert np.array_equal(sign, sign_np)
    np.testing.assert_allclose(strength, strength_np, rtol=1e-5, atol=1e-7)
    assert not strength[:5].any()
    assert sign[30, 40] == -1 and strength[30, 40] > 0  # bright vertical line: dark-to-bright-to-dark across x
    assert sign[70, 20] == 1 and strength[70, 20] > 0  # dark horizontal line
    assert strength[30, 40] > 10 * strength[30, 20]  # far from both lines: nothing
