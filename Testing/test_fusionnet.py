"""FusionNet, model files (safetensors + sidecar), inference and augmentation: tiny, fast checks."""
import json
import pickle

import numpy as np
import pytest
import torch

from DeepMorphLib.augment import NO_AUGMENTATION, AugmentConfig, augment_batch, random_affine
from DeepMorphLib.fusionnet import FusionNet, architecture_of, build_model, count_parameters, fuse_for_inference
from DeepMorphLib.inference import normalize_images, predict_confidence, row_quantiles
from DeepMorphLib.model_io import load_model, read_sidecar, save_model

torch.set_num_threads(1)


def tiny(seed=0):
    torch.manual_seed(seed)
    return FusionNet(base_channels=4, depth=2).eval()


META = {"task": "head", "input_size": 32}


def test_shapes_logits_and_probabilities():
    net = tiny()
    x = torch.randn(2, 1, 32, 32)
    assert net(x).shape == (2, 1, 32, 32)
    odd = torch.randn(1, 1, 30, 45)  # not multiples of 2^depth: padded inside, cropped back
    p = net.predict_proba(odd)
    assert p.shape == (1, 1, 30, 45)
    assert float(p.min()) >= 0.0 and float(p.max()) <= 1.0
    assert count_parameters(net) > 0
    assert FusionNet(base_channels=4, depth=3, max_channels=8)(torch.randn(1, 1, 16, 16)).shape == (1, 1, 16, 16)


def test_fused_copy_gives_the_same_confidences():
    net = tiny()
    net.train()
    net(torch.randn(4, 1, 32, 32))  # give BN non-trivial running statistics
    net.eval()
    fused = fuse_for_inference(net)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(fused(x), net(x), atol=1e-4)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())


def test_the_pipeline_predictor_runs_the_fused_copy():
    """``pipeline.NetworkPredictor`` infers with a fused copy (made once), leaves the given network as it was
    (batch norms in place, same weights) and gives the unfused network's confidences to float rounding."""
    from DeepMorphLib.pipeline import NetworkPredictor

    net = tiny(seed=2)
    net.train()
    net(torch.randn(4, 1, 32, 32))  # non-trivial running statistics
    net.eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    predictor = NetworkPredictor(net, META, device="cpu")
    image = np.random.default_rng(0).normal(100, 20, (40, 50)).astype(np.float32)
    conf = predictor(image)
    fused = predictor._inference_model
    assert fused is not net and not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    predictor(image)
    assert predictor._inference_model is fused  # made once
    np.testing.assert_allclose(conf, predict_confidence(net, META, image, device="cpu"), atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())


def test_invalid_architecture_is_refused():
    with pytest.raises(ValueError, match="base_channels"):
        FusionNet(base_channels=0)
    with pytest.raises(ValueError, match="Unknown network architecture"):
        build_model({"name": "UNet", "kwargs": {}})
    with pytest.raises(ValueError, match="unknown arguments"):
        build_model({"name": "FusionNet", "kwargs": {"width": 3}})
    with pytest.raises(ValueError, match="expects"):
        tiny()(torch.randn(1, 3, 16, 16))
    assert isinstance(build_model(architecture_of(tiny())), FusionNet)


def test_safetensors_round_trip(tmp_path):
    net = tiny()
    weights, sidecar = save_model(net, tmp_path / "m", {**META, "metrics": {"val_dice": 0.5}})
    assert weights.name == "m.safetensors" and sidecar.name == "m.json"
    meta = json.loads(sidecar.read_text())
    assert meta["architecture"]["kwargs"]["base_channels"] == 4 and meta["torch_version"] == torch.__version__
    assert meta["normalization"]["method"] == "percentile"
    x = torch.randn(1, 1, 32, 32)
    for path in (tmp_path / "m", weights, sidecar):
        loaded, meta2 = load_model(path, task="head")
        assert torch.equal(loaded(x), net(x))
    assert meta2["metrics"]["val_dice"] == 0.5
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(ValueError, match="'head' model, but a 'femur'"):
        load_model(tmp_path / "m", task="femur")


def test_pickle_files_are_refused(tmp_path):
    net = tiny()
    torch.save(net.state_dict(), tmp_path / "m.pt")
    with pytest.raises(ValueError, match="pickle"):
        load_model(tmp_path / "m.pt")
    save_model(net, tmp_path / "m", META)
    torch.save(net.state_dict(), tmp_path / "m.safetensors")  # a torch.save zip under the right name
    with pytest.raises(ValueError, match="pickle"):
        load_model(tmp_path / "m")
    (tmp_path / "m.safetensors").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError, match="pickle"):
        load_model(tmp_path / "m")


def test_corrupt_or_mismatched_files_give_clear_errors(tmp_path):
    net = tiny()
    weights, sidecar = save_model(net, tmp_path / "m", META)
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="corrupt|sha256"):
        load_model(tmp_path / "m")
    weights.write_bytes(b"not a model at all")
    with pytest.raises(ValueError, match="not a valid safetensors"):
        load_model(tmp_path / "m")
    flipped = bytearray(good)
    flipped[-3] ^= 0xFF
    weights.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="sha256"):
        load_model(tmp_path / "m")
    weights.write_bytes(good)
    meta = json.loads(sidecar.read_text())
    meta["architecture"]["kwargs"]["base_channels"] = 8
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="do not fit") as err:
        load_model(tmp_path / "m")
    assert "\n" not in str(err.value) and "m.json" in str(err.value)  # one line naming the sidecar, not torch's list
    meta["architecture"]["kwargs"]["base_channels"] = 4
    meta["task"] = "femur"  # a head network's weights under a femur sidecar (same architecture, same sha256)
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="holds a 'head' network but its sidecar .*m.json says 'femur'"):
        load_model(tmp_path / "m", task="femur")
    sidecar.write_text("{broken")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_sidecar(tmp_path / "m")
    sidecar.unlink()
    with pytest.raises(FileNotFoundError, match="sidecar"):
        load_model(tmp_path / "m")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "absent")
    with pytest.raises(ValueError, match="task"):
        save_model(net, tmp_path / "bad", {"task": "knee", "input_size": 32})


def test_predict_confidence_any_size_and_bit_depth():
    net = tiny()
    rng = np.random.default_rng(0)
    for shape, dtype, scale in (((48, 48), np.uint8, 255), ((37, 90), np.uint16, 4095), ((100, 20), np.float32, 1.0)):
        img = (rng.random(shape) * scale).astype(dtype)
        conf = predict_confidence(net, META, img, device="cpu")
        assert conf.shape == shape and conf.dtype == np.float32
        assert 0.0 <= conf.min() and conf.max() <= 1.0
    flat = predict_confidence(net, META, np.full((40, 40), 7.0), device="cpu")
    assert np.isfinite(flat).all()
    img = rng.random((40, 40))
    inv = predict_confidence(net, META, img, polarity="invert", device="cpu")
    assert np.allclose(inv, predict_confidence(net, META, 1 - img, device="cpu"), atol=1e-5)
    with pytest.raises(ValueError, match="polarity"):
        predict_confidence(net, META, img, polarity="bright")
    with pytest.raises(ValueError, match="NaN"):
        predict_confidence(net, META, np.full((8, 8), np.nan))
    with pytest.raises(ValueError, match="grey"):
        predict_confidence(net, META, np.zeros((4, 4, 3)))


def test_normalisation_ignores_affine_intensity_changes():
    x = torch.rand(2, 1, 20, 20)
    assert torch.allclose(normalize_images(x), normalize_images(3.0 * x + 100.0), atol=1e-4)
    y = normalize_images(x)
    assert float(y.min()) >= -1.5 and float(y.max()) <= 1.5


def test_row_quantiles_are_torch_quantile_to_the_bit():
    rng = np.random.default_rng(7)
    q = torch.tensor([0.01, 0.99])
    for n in (2, 3, 101, 4097, 65536):  # odd and even ranks, ties (rounded values), several rows
        for x in (rng.normal(size=(3, n)) * 300.0, np.round(rng.normal(size=(2, n)) * 3.0)):
            x = torch.from_numpy(x.astype(np.float32))
            assert torch.equal(row_quantiles(x, q), torch.quantile(x, q, dim=1))
            assert torch.equal(row_quantiles(x[:, ::2], q), torch.quantile(x[:, ::2], q, dim=1))  # strided rows
    bad = torch.rand(2, 50)
    bad[1, 3] = float("nan")  # NaN follows torch.quantile: that row's quantiles are NaN, the other row's are not
    got = row_quantiles(bad, q)
    assert torch.isnan(got[:, 1]).all() and torch.equal(got[:, 0], torch.quantile(bad[:1], q, dim=1)[:, 0])


def disc_batch(n=4, size=64):
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    centres = [(29.0 + 2.3 * i, 34.0 - 1.7 * i) for i in range(n)]  # near the centre
    imgs, masks = [], []
    for cx, cy in centres:
        d = torch.hypot(xx - cx, yy - cy)
        imgs.append(0.8 - 0.6 * (d <= 8).float())
        masks.append(((d - 8).abs() <= 1.5).float())
    return torch.stack(imgs)[:, None], torch.stack(masks)[:, None]


def centroid(w):
    h, ww = w.shape
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(ww, dtype=torch.float32), indexing="ij")
    s = w.sum()
    return float((w * xx).sum() / s), float((w * yy).sum() / s)


def test_augmentation_keeps_image_and_mask_aligned():
    img, mask = disc_batch()
    # crop 40 of 64 px, zoom >= 1, shift <= 2.6 px: the rotated crop never reaches the image border (no fill)
    geometric_only = AugmentConfig(gamma_range=(1, 1), occlusion_prob=0.0, contrast_range=(1, 1),
                                   brightness_range=(0, 0), blur_prob=0, noise_prob=0,
                                   zoom_range=(1.0, 1.1), shift_fraction=0.04)
    xa, ya = augment_batch(img, mask, torch.Generator().manual_seed(3), geometric_only, out_size=40)
    assert xa.shape == (4, 1, 40, 40) and ya.shape == (4, 1, 40, 40)
    for i in range(4):
        disc = (xa[i, 0] < 0.5).float()
        cd, cm = centroid(disc), centroid(ya[i, 0])  # whole disc stays inside the crop
        assert abs(cd[0] - cm[0]) < 0.3 and abs(cd[1] - cm[1]) < 0.3
        assert abs(cd[0] - 19.5) > 0.5 or abs(cd[1] - 19.5) > 0.5  # it did move
    # appearance transforms never move the targets: same generator -> same masks as geometry alone
    cfg = AugmentConfig(invert_prob=0.5)
    _, ym = augment_batch(img, mask, torch.Generator().manual_seed(5), cfg)
    _, yg = random_affine(img, mask, torch.Generator().manual_seed(5), cfg)
    assert torch.equal(ym, yg)


def test_augmentation_is_deterministic_and_in_range():
    img, mask = disc_batch()
    cfg = AugmentConfig(invert_prob=0.3)
    a = augment_batch(img, mask, torch.Generator().manual_seed(7), cfg, out_size=32)
    b = augment_batch(img, mask, torch.Generator().manual_seed(7), cfg, out_size=32)
    c = augment_batch(img, mask, torch.Generator().manual_seed(8), cfg, out_size=32)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert float(a[0].min()) >= 0 and float(a[0].max()) <= 1
    assert float(a[1].min()) >= 0 and float(a[1].max()) <= 1 + 1e-6
    x0, y0 = augment_batch(img, mask, torch.Generator().manual_seed(1), NO_AUGMENTATION)
    assert torch.allclose(x0, img, atol=1e-5) and torch.allclose(y0, mask, atol=1e-5)
    assert AugmentConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="Unknown augmentation"):
        AugmentConfig.from_dict({"spin": 1})


def test_histogram_equalisation_gives_a_uniform_histogram_in_the_same_order():
    from DeepMorphLib.augment import equalize

    x = torch.rand(2, 1, 16, 16) ** 3  # a skewed histogram
    e = equalize(x)
    for i in range(2):
        values = torch.sort(e[i].flatten())[0]
        assert torch.allclose(values, torch.linspace(0, 1, 256), atol=1e-6)  # each grey level once
        order_x, order_e = torch.argsort(x[i].flatten()), torch.argsort(e[i].flatten())
        assert torch.equal(order_x, order_e)  # a monotone map: the image's order kept


def test_display_processing_enhances_edges_and_is_off_by_default():
    """Unsharp masking over- and undershoots at a step edge (the halo of clinical edge enhancement); with its
    probabilities at 0 (the default) the appearance step draws nothing, so earlier runs replay unchanged."""
    from DeepMorphLib.augment import display_processing

    step = torch.zeros(1, 1, 32, 32)
    step[..., 16:] = 0.8
    step = step + 0.1
    cfg = AugmentConfig(unsharp_prob=1.0, unsharp_sigma=(0.1, 0.1), unsharp_amount=(1.0, 1.0))
    out = display_processing(step, torch.Generator().manual_seed(0), cfg)
    row = out[0, 0, 16]
    assert float(row[15]) < 0.1 - 0.05 and float(row[16]) > 0.9 + 0.05  # dark undershoot, bright overshoot
    assert torch.allclose(row[:4], torch.full((4,), 0.1), atol=0.02)  # far from the edge: unchanged
    g = torch.Generator().manual_seed(4)
    assert torch.equal(display_processing(step, g, AugmentConfig()), step)
    assert torch.equal(g.get_state(), torch.Generator().manual_seed(4).get_state())  # no random number drawn
    img, mask = disc_batch()
    on = AugmentConfig(unsharp_prob=0.5, equalize_prob=0.5)
    a = augment_batch(img, mask, torch.Generator().manual_seed(7), on)
    b = augment_batch(img, mask, torch.Generator().manual_seed(7), on)
    assert torch.equal(a[0], b[0]) and float(a[0].min()) >= 0 and float(a[0].max()) <= 1


def test_train_display_prob_sets_both_display_steps():
    import argparse

    from DeepMorphLib.commands.train import augment_settings

    args = argparse.Namespace(task="head", invert_prob=0.25, display_prob=0.4)
    cfg = AugmentConfig.from_dict(augment_settings(args))
    assert cfg.unsharp_prob == cfg.equalize_prob == 0.4 and cfg.invert_prob == 0.25
    off = AugmentConfig.from_dict(augment_settings(argparse.Namespace(task="head", invert_prob=0.25, display_prob=0.0)))
    assert off == AugmentConfig(invert_prob=0.25)  # the default: as the shipped networks were trained
    with pytest.raises(ValueError, match="--display-prob"):
        augment_settings(argparse.Namespace(task="femur", invert_prob=0.25, display_prob=1.5))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_predict_confidence_on_cuda_matches_cpu():
    net = tiny()
    img = np.random.default_rng(0).random((50, 60)).astype(np.float32)
    cpu = predict_confidence(net, META, img, device="cpu")
    gpu = predict_confidence(net, META, img, device="cuda")
    assert np.allclose(cpu, gpu, atol=1e-3)


class Identity(torch.nn.Module):
    """Logits = 10 x the normalised input: the confidence map is the (resampled) image itself."""

    def forward(self, x):
        return 10.0 * x


@pytest.mark.parametrize("shape", [(90, 150), (150, 90), (64, 64), (700, 500)])
def test_confidence_map_is_registered_to_the_image(shape):
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    cx, cy, r = 0.37 * w, 0.58 * h, 0.15 * min(h, w)
    img = (np.hypot(xx - cx, yy - cy) <= r).astype(np.float32) * 1000.0
    conf = predict_confidence(Identity(), {"input_size": 32}, img, device="cpu")
    assert conf.shape == shape
    wts = conf * (conf > 0.5)
    ex, ey = (wts * xx).sum() / wts.sum(), (wts * yy).sum() / wts.sum()
    scale = max(h, w) / 32  # one network pixel in image pixels
    assert abs(ex - cx) < 0.25 * scale and abs(ey - cy) < 0.25 * scale
    assert conf[0, 0] < 0.01 and conf[-1, -1] < 0.01  # background stays background


@pytest.mark.parametrize("tta", [2, 4, 8])
def test_test_time_augmentation_keeps_the_map_registered(tta):
    """A model that commutes with flips and transposes (here the identity) gives the same map with any number of
    averaged views, on a non-square image whose letterbox padding is not symmetric."""
    rng = np.random.default_rng(1)
    img = rng.random((45, 70)).astype(np.float32)
    one = predict_confidence(Identity(), {"input_size": 32}, img, device="cpu")
    many = predict_confidence(Identity(), {"input_size": 32}, img, device="cpu", tta=tta)
    assert np.allclose(one, many, atol=1e-6)


def test_test_time_augmentation_averages_the_flipped_and_transposed_views():
    """tta=8 is the mean of the network's maps of the 8 flipped/transposed images, each mapped back, computed
    here one image at a time; a network that is not symmetric gives a different map than tta=1."""
    net = tiny(3)
    img = np.random.default_rng(2).random((64, 64)).astype(np.float32)  # square: no letterbox padding
    views = []
    for k in range(4):
        for flip in (False, True):
            v = np.rot90(img, k)
            v = v[:, ::-1] if flip else v
            conf = predict_confidence(net, META, np.ascontiguousarray(v), device="cpu")
            conf = conf[:, ::-1] if flip else conf
            views.append(np.rot90(conf, -k))
    expected = np.mean(views, axis=0)
    got = predict_confidence(net, META, img, device="cpu", tta=8)
    assert np.allclose(got, expected, atol=1e-5)
    assert np.abs(got - predict_confidence(net, META, img, device="cpu")).max() > 1e-3
    with pytest.raises(ValueError, match="tta"):
        predict_confidence(net, META, img, tta=3)


def test_the_views_averaged_come_from_the_call_the_block_or_the_sidecar():
    from DeepMorphLib.inference import test_time_views, views_for

    net = tiny(3)
    img = np.random.default_rng(4).random((40, 40)).astype(np.float32)
    meta2 = {**META, "tta_views": 2}
    two = predict_confidence(net, META, img, device="cpu", tta=2)
    assert views_for(META) == 1 and views_for(meta2) == 2
    assert np.array_equal(predict_confidence(net, meta2, img, device="cpu"), two)
    with test_time_views(1):
        assert views_for(meta2) == 1 and views_for(meta2, 4) == 4
        assert np.array_equal(predict_confidence(net, meta2, img, device="cpu"), predict_confidence(net, META, img))
    with test_time_views(None):
        assert views_for(meta2) == 2
    assert views_for(meta2) == 2
    with pytest.raises(ValueError, match="tta"):
        views_for({**META, "tta_views": 5})
