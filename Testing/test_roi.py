"""Head ROIs (coarse -> fine cascade): crop geometry against analytic disks, ROI training, circle refinement."""
import numpy as np
import pytest
import torch

from DeepMorphLib import pipeline
from DeepMorphLib.circle_fit import fit_circle_points
from DeepMorphLib.region import boundary_points, disk_mask
from DeepMorphLib.roi import crop_rois, head_roi, to_crop, to_source
from DeepMorphLib.training import (TrainConfig, _generator, cut_rois, head_rois, load_dataset, load_head_circles,
                                   train)
from toy_data import write_toy_dataset

TRUE = (201.7, 163.4, 58.3)  # cx, cy, r px of the test disk in a 448 x 448 image


def disk_image(shape=(448, 448), circle=TRUE) -> np.ndarray:
    return disk_mask(shape, *circle)


@pytest.mark.parametrize("side", [100.0, 233.2])  # patch finer than the image / antialiased downscale
def test_a_cropped_disk_maps_back_to_its_true_circle(side):
    img = torch.from_numpy(disk_image())[None, None]
    center = np.array([TRUE[0] + 9.3, TRUE[1] - 6.1])
    patch = crop_rois(img, center[None], [side], 128)[0, 0].numpy()
    assert patch.shape == (128, 128)
    rim = boundary_points(patch)
    fit = fit_circle_points(to_source(rim, center, side, 128), method="algebraic")
    assert fit.detected
    assert np.hypot(fit.cx - TRUE[0], fit.cy - TRUE[1]) < 0.15 and abs(fit.r - TRUE[2]) < 0.15


def test_patch_and_source_coordinates_are_inverse():
    pts = np.array([[0.0, 0.0], [127.0, 64.5], [-3.2, 200.0]])
    center, side = np.array([150.5, 99.25]), 211.0
    assert np.allclose(to_crop(to_source(pts, center, side, 128), center, side, 128), pts)
    # patch pixel centres: x = cx + (j + 0.5 - S/2) * side / S
    assert np.allclose(to_source([[0, 0]], center, side, 128), center + (0.5 - 64) * side / 128)


def test_outside_the_image_gets_the_fill_value():
    img = torch.full((1, 1, 64, 64), 100.0)
    patch = crop_rois(img, [[0.0, 0.0]], [64.0], 64, fill=7.0)[0, 0]
    assert float(patch[0, 0]) == pytest.approx(7.0)  # source (-31.5, -31.5): outside
    assert float(patch[-1, -1]) == pytest.approx(100.0)  # source (31.5, 31.5): inside
    assert float(patch[16, 40]) == pytest.approx(7.0) and float(patch[40, 16]) == pytest.approx(7.0)


def test_bad_rois_are_refused():
    img = torch.zeros(1, 1, 32, 32)
    with pytest.raises(ValueError, match="finite"):
        crop_rois(img, [[np.nan, 3.0]], [10.0], 16)
    with pytest.raises(ValueError, match="positive"):
        crop_rois(img, [[3.0, 3.0]], [0.0], 16)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        crop_rois(torch.zeros(32, 32), [[3.0, 3.0]], [10.0], 16)
    with pytest.raises(ValueError, match="positive radius"):
        head_roi(10.0, 10.0, -1.0)


def test_training_rois_hold_the_true_head_within_the_jitter(tmp_path):
    toy = write_toy_dataset(tmp_path / "toy", n=8, size=48, seed=3)
    cfg = TrainConfig(task="head", data=[str(toy)], out=str(tmp_path / "m"), target="region", roi="head",
                      size=32, crop=32, roi_source=96, roi_jitter=0.5, roi_size_jitter=1.25).validate()
    images, masks, _ = load_dataset([toy], "head", 96, progress=False, target="region")
    heads = load_head_circles([toy], 96)
    assert heads.shape == (8, 3)
    centers, sides = head_rois(heads, cfg, _generator(0, 1))
    offset = torch.hypot(*(centers - heads[:, :2]).T)
    assert bool((offset <= 0.5 * heads[:, 2] + 1e-4).all()) and float(offset.max()) > 0
    ratio = sides / (4.0 * heads[:, 2])
    assert bool(((ratio >= 1 / 1.25 - 1e-5) & (ratio <= 1.25 + 1e-5)).all())
    # the target patch is the true disk: its centroid maps back to the true centre
    _, y = cut_rois(images, masks, heads, np.arange(8), cfg, _generator(0, 1), torch.device("cpu"))
    yy, xx = np.mgrid[0:32, 0:32]
    for k in range(8):
        m = y[k, 0].numpy()
        c = [(m * xx).sum() / m.sum(), (m * yy).sum() / m.sum()]
        back = to_source([c], centers[k].numpy(), float(sides[k]), 32)[0]
        assert np.hypot(*(back - heads[k, :2].numpy())) < 0.35 * float(sides[k]) / 32
    with pytest.raises(ValueError, match="--task head"):
        TrainConfig(task="femur", data=[str(toy)], out="m", roi="head").validate()
    with pytest.raises(ValueError, match="--roi must be one of"):
        TrainConfig(task="head", data=[str(toy)], out="m", roi="knee").validate()


def test_a_roi_model_records_its_roi_and_loads_as_refiner(tmp_path):
    toy = write_toy_dataset(tmp_path / "toy", n=12, size=48, seed=4)
    common = dict(task="head", data=[str(toy)], epochs=1, batch=4, size=32, crop=32, base_channels=4, depth=2,
                  target="region", threads=1, device="cpu")
    torch.manual_seed(0)
    roi_model = train(TrainConfig(out=str(tmp_path / "refine"), work_dir=str(tmp_path / "w1"), roi="head",
                                  roi_source=64, **common), progress=False, log=lambda m: None)["model"]
    whole_model = train(TrainConfig(out=str(tmp_path / "head"), work_dir=str(tmp_path / "w2"), **common),
                        progress=False, log=lambda m: None)["model"]
    refiner = pipeline.load_refiner(roi_model, device="cpu")
    assert refiner.roi == {"kind": "head", "scale": 4.0} and "ROIs of 4 head radii" in refiner.metadata["description"]
    assert pipeline.load_refiner("none") is None and pipeline.load_refiner(False) is None
    with pytest.raises(ValueError, match="not a head refinement"):
        pipeline.load_refiner(whole_model)
    # a whole-image run's fingerprint does not mention ROIs (its checkpoints stay resumable)
    assert not any(k.startswith("roi") for k in TrainConfig(out="x", **common).fingerprint())


class DiskRefiner:
    """Stand-in refinement network: confidence = the dark (bone-dark) disk of the patch, thresholded softly."""

    roi = {"kind": "head", "scale": 4.0}
    metadata = {"input_size": 96}
    expected_polarity = "bone-dark"

    def __call__(self, patch):
        p = np.asarray(patch, np.float32)
        mid = 0.5 * (p.max() + p.min())
        return np.clip((mid - p) / (p.max() - p.min() + 1e-6) * 4 + 0.5, 0, 1).astype(np.float32)


class CoarseDisk:
    """Stand-in whole-image head network that finds the disk but too large and off-centre (a coarse fit)."""

    expected_polarity = "bone-dark"
    target = "region"

    def __call__(self, image):
        return disk_mask(np.shape(image), TRUE[0] + 17.0, TRUE[1] - 12.0, TRUE[2] + 9.0)


@pytest.mark.parametrize("polarity", ["bone-dark", "bone-bright"])
def test_refinement_pulls_a_coarse_circle_onto_the_head(polarity):
    bright = 100.0 + 800.0 * disk_image()  # bone-bright radiograph: the head is bright
    image = bright if polarity == "bone-bright" else 1000.0 - bright
    fit, done = pipeline.refine_head_circle(image, (TRUE[0] + 17.0, TRUE[1] - 12.0, TRUE[2] + 9.0), DiskRefiner(),
                                            polarity)
    assert done >= 1 and np.hypot(fit.cx - TRUE[0], fit.cy - TRUE[1]) < 0.3 and abs(fit.r - TRUE[2]) < 0.3
    # a step-edged disc, not a sphere's shadow: edge snapping (test_edge_snap.py) is left out here
    res = pipeline.fit_image(image, "head", predictor=CoarseDisk(), polarity=polarity, refine=DiskRefiner(),
                             edge_snap=False)
    assert res.detected and res.circle["refined"] >= 1
    assert res.circle["coarse"]["cx"] == pytest.approx(TRUE[0] + 17.0, abs=0.3)
    assert np.hypot(res.circle["cx"] - TRUE[0], res.circle["cy"] - TRUE[1]) < 0.3
    off = pipeline.fit_image(image, "head", predictor=CoarseDisk(), polarity=polarity, refine=False, edge_snap=False)
    assert "refined" not in off.circle and off.circle["cx"] == pytest.approx(TRUE[0] + 17.0, abs=0.3)


def test_a_refiner_that_finds_nothing_keeps_the_coarse_circle():
    blank = np.full((200, 200), 50.0, np.float32)
    fit, done = pipeline.refine_head_circle(blank, (100.0, 100.0, 30.0), lambda p: np.zeros_like(p), "bone-dark")
    assert fit is None and done == 0
