"""The polarity classifier: network, files, training, and how detect_polarity adds its evidence to the ridges'."""
import json

import numpy as np
import pytest
import torch

from DeepMorphLib import polarity
from DeepMorphLib.fusionnet import architecture_of, build_model
from DeepMorphLib.model_io import load_model, save_model
from DeepMorphLib.polarity_net import PolarityClassifier, PolarityNet, invert_with_labels
from synthetic_hip import make_hip
from toy_data import write_toy_dataset


def test_network_shapes_and_bad_input():
    net = PolarityNet(base_channels=4, levels=3).eval()
    assert net(torch.zeros(3, 1, 32, 48)).shape == (3,)
    with pytest.raises(ValueError, match="multiples of 8"):
        net(torch.zeros(1, 1, 30, 32))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        net(torch.zeros(1, 2, 32, 32))
    with pytest.raises(ValueError, match="levels"):
        PolarityNet(levels=0)
    with pytest.raises(ValueError, match="unknown arguments"):
        build_model({"name": "PolarityNet", "kwargs": {"depth": 3}})


def test_safetensors_round_trip_and_task_check(tmp_path):
    net = PolarityNet(base_channels=4, levels=3).eval()
    save_model(net, tmp_path / "pol", {"task": "polarity", "input_size": 32})
    loaded, meta = load_model(tmp_path / "pol", task="polarity")
    assert architecture_of(loaded) == architecture_of(net) and meta["architecture"]["name"] == "PolarityNet"
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(loaded(x), net(x))
    with pytest.raises(ValueError, match="'polarity' model, but a 'head' model"):
        load_model(tmp_path / "pol", task="head")
    image = np.random.default_rng(0).uniform(0, 255, (40, 56))  # any size: letterboxed to 32 px
    assert np.isfinite(PolarityClassifier.load(tmp_path / "pol").logit(image))


def test_inversion_flips_exactly_the_inverted_labels():
    x = torch.rand(64, 1, 8, 8) * 100 + 50
    labels = (torch.arange(64) % 2).float()
    out, flipped = invert_with_labels(x, labels, torch.Generator().manual_seed(1))
    inverted = ~torch.isclose(out, x).all(dim=(1, 2, 3))
    assert 10 < int(inverted.sum()) < 54  # about half
    assert torch.equal(flipped, torch.where(inverted, 1 - labels, labels))
    assert torch.allclose(out[inverted], (x.amin(dim=(1, 2, 3), keepdim=True) + x.amax(dim=(1, 2, 3), keepdim=True)
                                          - x)[inverted])


def _polarity_toy_set(root, n=48):
    """Toy discs (dark on grey = "bone-dark", bright = "bone-bright"), labelled in their JSON."""
    from PIL import Image

    write_toy_dataset(root, n=n, size=64, seed=5)
    for i in range(n):
        stem = root / "samples" / f"{i:06d}"
        img = np.asarray(Image.open(f"{stem}.png")).astype(float)
        cx, cy, r = json.loads(stem.with_suffix(".json").read_text())["head_circle"]
        yy, xx = np.mgrid[0:64, 0:64]
        bright = img[np.hypot(xx - cx, yy - cy) < r].mean() > img.mean()
        meta = json.loads(stem.with_suffix(".json").read_text())
        meta["polarity"] = "bone-bright" if bright else "bone-dark"
        stem.with_suffix(".json").write_text(json.dumps(meta))
    return root


def test_training_learns_a_toy_polarity_and_records_accuracy(tmp_path):
    from DeepMorphLib.training import TrainConfig, load_polarity_dataset, train

    data = _polarity_toy_set(tmp_path / "toy")
    images, labels, _ = load_polarity_dataset([data], 32)
    assert images.shape == (48, 32, 32) and set(labels.tolist()) == {0.0, 1.0}
    cfg = TrainConfig(task="polarity", data=[str(data)], out=str(tmp_path / "pol"), work_dir=str(tmp_path / "w"),
                      epochs=6, batch=8, size=32, crop=32, base_channels=4, depth=3, lr=3e-3, seed=2,
                      augment={"occlusion_prob": 0.0, "rotation_deg": 0.0}, val_fraction=0.25)
    result = train(cfg, progress=False, log=lambda m: None)
    history = result["history"]
    assert result["status"] == "finished" and history[-1]["train_loss"] < history[0]["train_loss"]
    assert 0.0 <= history[-1]["val_accuracy"] <= 1.0
    meta = json.loads((tmp_path / "pol.json").read_text())
    assert meta["task"] == "polarity" and meta["polarity"] == "any" and "val_accuracy" in meta["metrics"]["final"]
    with pytest.raises(ValueError, match="--crop equal to --size"):
        TrainConfig(task="polarity", data=[str(data)], out="x", size=32, crop=16, depth=3).validate()


def test_a_sample_without_polarity_is_refused(tmp_path):
    from DeepMorphLib.training import load_polarity_dataset

    data = write_toy_dataset(tmp_path / "toy", n=2, size=32)
    meta = json.loads((data / "samples/000001.json").read_text())
    del meta["polarity"]
    (data / "samples/000001.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="000001.json has no 'polarity'"):
        load_polarity_dataset([data], 32)


class FixedLogit:
    def __init__(self, value):
        self.value = value

    def logit(self, image):
        return self.value


def test_the_classifier_and_the_ridges_add_their_log_odds():
    image, _ = make_hip(7, "bone-dark", "right")
    ridge = polarity.ridge_polarity_score(image)
    assert ridge < -0.1
    alone = polarity.polarity_evidence(image, classifier=None)
    assert alone["net_logit"] is None and alone["score"] == pytest.approx(np.tanh(ridge))
    k = polarity.NET_LOGIT_PER_SCORE
    agree = polarity.polarity_evidence(image, classifier=FixedLogit(-4.0))
    assert agree["score"] == pytest.approx(np.tanh((k * ridge - 4.0) / k)) and agree["score"] < alone["score"]
    # a classifier far more certain than the ridges outvotes them; one as unsure as they are does not
    assert polarity.detect_polarity(image, classifier=FixedLogit(-k * ridge + 5.0))[0] == "bone-bright"
    assert polarity.detect_polarity(image, classifier=FixedLogit(-k * ridge - 1.0))[0] == "bone-dark"


def test_shipped_classifier_on_simulated_images_with_implants_and_inverted_copies():
    """Dataset samples with implants in view (training seeds' generator, a seed no shipped model saw), as rendered
    and inverted: the shipped classifier alone and the combined detector both read the polarity."""
    if polarity.load_classifier("default") is None:
        pytest.skip("no shipped polarity classifier")
    from DeepMorphSimulatorLib import dataset as ds

    settings = ds.DatasetSettings(size=192, group=4, phantom_spacing_mm=2.5, seed=424_242, implants=1.0,
                                  p_bone_bright=0.5)
    scene = ds.make_phantom_scene(settings, 0)
    net = polarity.load_classifier("default")
    seen = set()
    for i in range(4):
        sample = ds.render_sample(scene, settings, i)
        image, truth = sample["image"].astype(np.float32), sample["annotation"]["polarity"]
        assert sample["annotation"]["implants"]
        inverse = image.max() + image.min() - image
        other = "bone-dark" if truth == "bone-bright" else "bone-bright"
        for img, label in ((image, truth), (inverse, other)):
            assert (net.logit(img) > 0) == (label == "bone-bright"), (i, label)
            assert polarity.detect_polarity(img)[0] == label, (i, label)
        seen.add(truth)
    assert seen == {"bone-dark", "bone-bright"}
