"""Filled-region targets (head disk, proximal femur polygon) and region confidence -> rim -> circle / ridge,
against analytic circles and polygons."""
import json

import numpy as np
import pytest
import torch

from DeepMorphLib.pipeline import femur_fit_map, fit_head_confidence
from DeepMorphLib.region import boundary_points, disk_mask, edge_rim_map, main_region, polygon_mask
from DeepMorphLib.training import TrainConfig, list_samples, load_dataset, train
from toy_data import write_toy_dataset


def soft_disk(shape, cx, cy, r, width=1.5):
    """A smooth 'network confidence' of a disk: logistic in the signed distance to the circle (px)."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    return (1 / (1 + np.exp((np.hypot(xx - cx, yy - cy) - r) / width))).astype(np.float32)


def test_disk_mask_has_the_area_and_centroid_of_the_circle():
    m = disk_mask((120, 140), 61.3, 52.8, 23.4)
    assert m.min() == 0 and m.max() == 1
    assert m.sum() == pytest.approx(np.pi * 23.4**2, rel=0.005)
    yy, xx = np.mgrid[0:120, 0:140]
    assert (m * xx).sum() / m.sum() == pytest.approx(61.3, abs=0.01)
    assert (m * yy).sum() / m.sum() == pytest.approx(52.8, abs=0.01)
    with pytest.raises(ValueError, match="positive radius"):
        disk_mask((10, 10), 5, 5, 0)


def test_rim_points_lie_on_the_circle_and_the_fit_recovers_it():
    cx, cy, r = 201.7, 188.2, 61.9
    conf = soft_disk((448, 448), cx, cy, r)
    conf += 0.9 * soft_disk((448, 448), 60, 380, 12)  # a smaller, competing blob: not the main region
    pts = boundary_points(conf)
    d = np.hypot(pts[:, 0] - cx, pts[:, 1] - cy)
    assert len(pts) > 4 * r and np.abs(d - r).max() < 0.05
    for method in ("algebraic", "robust"):
        fit = fit_head_confidence(conf, target="region", method=method)
        assert fit.detected
        assert np.hypot(fit.cx - cx, fit.cy - cy) < 0.05 and abs(fit.r - r) < 0.05
    # the paper's outline reading of the same map fits the filled blobs, not the rim: far off
    wrong = fit_head_confidence(conf, target="outline")
    assert np.hypot(wrong.cx - cx, wrong.cy - cy) + abs(wrong.r - r) > 10


def test_region_at_the_border_gives_no_rim_there():
    conf = soft_disk((100, 100), 10.0, 50.0, 30.0)
    pts = boundary_points(conf)
    assert len(pts) > 100 and np.abs(np.hypot(pts[:, 0] - 10, pts[:, 1] - 50) - 30).max() < 0.05


def test_empty_and_tiny_regions_are_not_detected():
    fit = fit_head_confidence(np.zeros((64, 64), np.float32), target="region")
    assert not fit.detected and "rim has only 0 points" in fit.reason
    assert not fit_head_confidence(soft_disk((64, 64), 30, 30, 3), target="region").detected
    assert not main_region(np.zeros((8, 8))).any()
    with pytest.raises(ValueError, match="target must be one of"):
        fit_head_confidence(np.zeros((64, 64)), target="disk")


def test_an_outline_map_is_fitted_as_it_is():
    conf = soft_disk((80, 80), 40, 40, 20)
    assert femur_fit_map(conf, "outline") is conf


def test_polygon_mask_has_the_area_of_the_polygon():
    square = [[10.5, 8.5], [30.5, 8.5], [30.5, 20.5], [10.5, 20.5]]  # pixel edges: exactly 20 x 12 pixels
    m = polygon_mask((40, 50), square)
    assert m.sum() == pytest.approx(240.0, abs=0.5) and m[14, 20] == 1 and m[5, 5] == 0
    tri = [[5.0, 5.0], [45.0, 5.0], [5.0, 35.0]]  # area 600 px^2, open: closed back to the first point
    assert polygon_mask((40, 50), tri).sum() == pytest.approx(600.0, rel=0.01)
    t = np.linspace(0, 2 * np.pi, 200, endpoint=False)  # a 200-gon: the disk up to anti-aliasing
    ngon = polygon_mask((80, 80), np.column_stack([40.2 + 25 * np.cos(t), 37.7 + 25 * np.sin(t)]))
    assert np.abs(ngon - disk_mask((80, 80), 40.2, 37.7, 25)).max() < 0.35
    assert ngon.sum() == pytest.approx(np.pi * 25**2, rel=0.005)
    with pytest.raises(ValueError, match="at least 3 finite"):
        polygon_mask((10, 10), [[1, 1], [2, np.nan], [3, 1]])


def test_edge_rim_map_peaks_where_the_region_ends_and_ignores_flat_uncertainty():
    conf = soft_disk((100, 120), 45, 50, 25)
    conf[:, 95:] = 0.5  # a flat area the network is unsure about
    rim = edge_rim_map(conf)
    assert femur_fit_map(conf, "region") == pytest.approx(rim)
    row = rim[50]  # along y = 50 the region ends at x = 45 +- 25 (conf = 0.5 there)
    assert abs(int(np.argmax(row[:45])) - 20) <= 1 and abs(45 + int(np.argmax(row[45:90])) - 70) <= 1
    # logistic edge of width 1.5 px: |grad| = 1 / (4 * 1.5) = 0.17 /px before the 1 px blur, so close to full
    assert 0.6 < row.max() <= 1.0
    assert rim[50, 45] < 0.01 and rim[50, 105:].max() < 0.01  # confident inside, flat uncertainty: no ridge
    with pytest.raises(ValueError, match="2-D"):
        edge_rim_map(np.zeros((3, 4, 5)))


def test_femur_region_targets_are_the_closed_outline(tmp_path):
    from DeepMorphLib.training import _region_target

    contour = [[60.0, 90.0], [20.0, 40.0], [50.0, 10.0], [80.0, 40.0], [75.0, 90.0]]  # open; closed at the shaft
    path = tmp_path / "000000.json"
    path.write_text(json.dumps({"contour": contour, "head_circle": [50, 30, 12]}))
    femur = _region_target(path, (100, 100), "femur") / 255
    assert np.allclose(femur, polygon_mask((100, 100), contour), atol=1e-6)
    assert femur[60, 50] == 1 and femur[95, 50] == 0
    head = _region_target(path, (100, 100), "head") / 255
    assert np.allclose(head, disk_mask((100, 100), 50, 30, 12), atol=1e-6)
    path.write_text(json.dumps({"head_circle": None}))  # femur not in the sample
    assert _region_target(path, (100, 100), "femur").max() == 0


def test_region_training_targets_are_the_ground_truth_disks(tmp_path):
    toy = write_toy_dataset(tmp_path / "toy", n=12, size=48, seed=2)
    pairs = list_samples(toy, "head", "region")
    assert pairs[0][1].name == "000000.json"
    images, masks, _ = load_dataset([toy], "head", 96, progress=False, target="region")
    circle = json.loads((toy / "samples" / "000003.json").read_text())["head_circle"]
    m = masks[3].numpy().astype(float) / 255
    yy, xx = np.mgrid[0:96, 0:96]
    # the 48 px sample is resized to 96 px: pixel centres map as x' = 2 x + 0.5
    assert (m * xx).sum() / m.sum() == pytest.approx(2 * circle[0] + 0.5, abs=0.3)
    assert m.sum() == pytest.approx(np.pi * (2 * circle[2]) ** 2, rel=0.03)
    TrainConfig(task="femur", data=[str(toy)], out=str(tmp_path / "m"), target="region").validate()  # allowed


def test_a_region_model_records_its_target_and_the_pipeline_reads_the_rim(tmp_path):
    from DeepMorphLib.model_io import load_model
    from DeepMorphLib.pipeline import NetworkPredictor

    toy = write_toy_dataset(tmp_path / "toy", n=16, size=48, seed=4)
    cfg = TrainConfig(task="head", data=[str(toy)], out=str(tmp_path / "head"), work_dir=str(tmp_path / "w"),
                      epochs=1, batch=4, size=32, crop=32, base_channels=4, depth=2, target="region",
                      threads=1, device="cpu")
    torch.manual_seed(0)
    result = train(cfg, progress=False, log=lambda m: None)
    net, meta = load_model(result["model"], task="head")
    assert meta["target"] == "region" and "head disk" in meta["description"]
    assert NetworkPredictor(net, meta).target == "region"


# ---------------------------------------------------------------- the region network as the femur fit's second opinion
def _femur_maps(decoy_shift_px: float, outline_peak: float):
    """A plausible femur (PDM instance, open contour) in 448 px, its region map (the closed outline filled, as a
    region network marks it) and an outline map drawn ``decoy_shift_px`` px off (a network that followed another
    structure) at ``outline_peak``."""
    from DeepMorphLib.pdm import PointDistributionModel
    from DeepMorphLib.similarity import Similarity
    from DeepMorphLib.synthetic_shapes import femur_training_set, landmark_indices, render_confidence

    pdm = PointDistributionModel.fit(femur_training_set(50, seed=1), landmarks=landmark_indices())
    truth = pdm.instance(None, Similarity.from_params(1.05, 15.0, (224.0, 230.0)))
    region = polygon_mask((448, 448), truth).astype(np.float32)
    outline = render_confidence(truth + [decoy_shift_px, 0.0], (448, 448), peak=outline_peak)
    return pdm, truth, region, outline


def test_a_weak_outline_fit_is_replaced_by_the_region_networks_fit():
    from DeepMorphLib.pipeline import fit_femur_confidence
    from DeepMorphLib.synthetic_shapes import point_to_curve_distance

    pdm, truth, region, outline = _femur_maps(decoy_shift_px=30.0, outline_peak=0.65)
    asked = []
    fit = fit_femur_confidence(outline, "outline", pdm, {}, lambda: asked.append(1) or region)
    err = point_to_curve_distance(fit.points, truth)
    assert asked == [1] and fit.info["fit_map"] == "region"
    assert fit.info["outline_quality"] < 0.7 < fit.quality  # the outline fit sat on the decoy, weakly
    # the region fit found the femur (only the shaft ends may slide along the closing edge); the decoy is too far
    # to polish onto
    assert np.mean(err) < 1.0 and np.percentile(err, 90) < 1.0


def test_a_region_fit_is_polished_onto_the_outline_ridge():
    from DeepMorphLib.pipeline import REGION_POLISH_PX, fit_femur_confidence
    from DeepMorphLib.synthetic_shapes import point_to_curve_distance

    pdm, truth, region, outline = _femur_maps(decoy_shift_px=3.0, outline_peak=0.6)  # weak but where it should be
    shifted = np.roll(region, -3, axis=1)  # the region network's edge 3 px left of the outline ridge
    fit = fit_femur_confidence(outline, "outline", pdm, {}, lambda: shifted)
    ridge = truth + [3.0, 0.0]
    assert 3.0 < REGION_POLISH_PX and fit.info["fit_map"] == "region"
    assert np.median(point_to_curve_distance(fit.model_points, ridge)) > 2.0  # the PDM fit follows the region ...
    assert np.median(point_to_curve_distance(fit.points, ridge)) < 0.5  # ... its points end on the outline ridge


def test_a_convincing_outline_fit_does_not_ask_the_region_network():
    from DeepMorphLib.pipeline import fit_femur_confidence

    pdm, truth, region, outline = _femur_maps(decoy_shift_px=0.0, outline_peak=1.0)

    def never():
        raise AssertionError("the region network was run for a convincing outline fit")

    fit = fit_femur_confidence(outline, "outline", pdm, {}, never)
    assert fit.detected and fit.quality > 0.9 and "fit_map" not in fit.info
    weak = fit_femur_confidence(0.6 * outline, "outline", pdm, {"second_opinion_below": 0.0}, never)  # 0 = never
    assert weak.detected


def test_a_femur_leaving_the_image_is_judged_where_the_network_sees_it(monkeypatch):
    """A clear outline fit whose shaft leaves the image: its points below the image have no confidence, so its mean
    confidence is low, but the region network is not asked, because on the points inside the image the fit lies
    on the outline (``asm_fit.in_view_confidence``); a fit that is weak inside the image still asks."""
    from DeepMorphLib import pipeline
    from DeepMorphLib.asm_fit import ShapeFit, in_view_confidence, sample_bilinear

    pdm, truth, region, outline = _femur_maps(decoy_shift_px=0.0, outline_peak=1.0)
    shift = int(448 - 100 - truth[:, 1].min())  # the femur's top 100 px at the bottom of the image
    points = truth + [0.0, shift]
    asked = []
    for peak in (1.0, 0.6):
        moved = np.zeros_like(outline)
        moved[shift:] = peak * outline[: 448 - shift]
        conf = sample_bilinear(moved, points)
        fit = ShapeFit(detected=True, points=points, model_points=points, point_confidence=conf,
                       quality=float(conf.mean()), info={})
        monkeypatch.setattr(pipeline, "_fit_pdm", lambda *a, **k: fit)  # noqa: B023
        kept = pipeline.fit_femur_confidence(moved, "outline", pdm, {}, lambda: asked.append(peak) or None)
        assert kept.detected and kept.quality < 0.7 and np.isclose(kept.quality, kept.point_confidence.mean())
    assert in_view_confidence(moved / 0.6, points) > 0.9 and asked == [0.6]


def test_in_view_confidence_averages_over_the_points_inside_the_map():
    from DeepMorphLib.asm_fit import in_view_confidence

    conf = np.zeros((10, 20))
    conf[:, :10] = 0.8
    points = np.array([[2.0, 3.0], [5.0, 9.0], [15.0, 4.0], [-1.0, 4.0], [5.0, 9.5], [25.0, 4.0]])
    assert in_view_confidence(conf, points) == pytest.approx((0.8 + 0.8 + 0.0) / 3)
    assert in_view_confidence(conf, points[3:4]) == 0.0


def test_the_region_second_opinion_needs_a_region_network():
    from DeepMorphLib.fusionnet import FusionNet
    from DeepMorphLib.pipeline import NetworkPredictor, default_region_model_path, load_region_net

    outline_net = NetworkPredictor(FusionNet(base_channels=4, depth=2), {"task": "femur", "target": "outline"})
    with pytest.raises(ValueError, match="not a region network.*--region-model none"):
        load_region_net(outline_net)
    assert load_region_net("none") is None and load_region_net(False) is None
    if default_region_model_path().is_file():  # the shipped one
        shipped = load_region_net(None, device="cpu")
        assert shipped.target == "region" and shipped.task == "femur"


def test_the_slicer_logic_takes_the_region_networks_fit_too():
    from DeepMorphLib import fit_logic
    from DeepMorphLib.synthetic_shapes import point_to_curve_distance

    pdm, truth, region, outline = _femur_maps(decoy_shift_px=30.0, outline_peak=0.65)
    image = np.random.default_rng(0).normal(100.0, 10.0, (448, 448)).astype(np.float32)

    def region_net(img):
        assert img.shape == image.shape
        return region

    result = fit_logic.fit_image(image, "femur", pdm=pdm, polarity="bone-dark", predict=lambda img: outline,
                                 region=region_net)
    assert result.detected and result.quality["region_fit"] == 1.0
    assert np.mean(point_to_curve_distance(result.contour, truth)) < 1.0
    plain = fit_logic.fit_image(image, "femur", pdm=pdm, polarity="bone-dark", predict=lambda img: outline)
    assert "region_fit" not in plain.quality and np.mean(point_to_curve_distance(plain.contour, truth)) > 15.0
