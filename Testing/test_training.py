"""Training: loss goes down, deterministic, resumable after an interruption or kill -9, dataset errors."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from DeepMorphLib.inference import normalize_images
from DeepMorphLib.model_io import load_model
from DeepMorphLib.training import (TrainConfig, learning_rate, list_samples, load_dataset, outline_loss,
                                   split_indices, train)
from toy_data import write_toy_dataset

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_dataset(tmp_path_factory.mktemp("toy"), n=40, size=48, seed=1)


def tiny_config(toy, tmp_path, name, **kw):
    base = dict(task="head", data=[str(toy)], out=str(tmp_path / name), work_dir=str(tmp_path / f"work-{name}"),
                epochs=2, batch=4, size=32, crop=32, base_channels=4, depth=2, lr=1e-2, seed=3,
                val_fraction=0.1, threads=1, device="cpu", checkpoint_minutes=60.0)
    base.update(kw)
    return TrainConfig(**base)


def test_dataset_reading_and_split(toy, tmp_path):
    pairs = list_samples(toy, "femur")
    assert len(pairs) == 40 and pairs[0][1].name == "000000_femur.png"
    images, masks, infos = load_dataset([toy], "head", 32, progress=False)
    assert images.shape == (40, 32, 32) and images.dtype == torch.uint8 and masks.max() > 100
    assert infos[0]["generator_version"] == "toy-1" and infos[0]["n_used"] == 40
    tr, va = split_indices(40, 0.1, 0)
    assert len(va) == 4 and not set(tr) & set(va)
    assert np.array_equal(split_indices(40, 0.1, 0)[1], va)
    with pytest.raises(FileNotFoundError, match="samples"):
        list_samples(tmp_path, "head")
    with pytest.raises(FileNotFoundError, match=f"samples/ folder of a dataset: give .*--data {toy}"):
        list_samples(toy / "samples", "head")  # used to suggest making a new dataset inside this one
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        list_samples(toy / "manifest.json", "head")
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "000000.png").write_bytes((toy / "samples" / "000000.png").read_bytes())
    with pytest.raises(ValueError, match="lack their 'head' target"):
        list_samples(tmp_path, "head")


def test_few_steps_reduce_the_loss(toy):
    images, masks, _ = load_dataset([toy], "head", 32, progress=False)
    x = normalize_images(images[:8, None].float() / 255)
    y = masks[:8, None].float() / 255
    torch.manual_seed(0)
    from DeepMorphLib.fusionnet import FusionNet

    net = FusionNet(base_channels=4, depth=2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        loss = outline_loss(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.75 * losses[0], losses


def test_learning_rate_step_decay():
    cfg = TrainConfig(task="head", data=["x"], out="m", epochs=8, lr=0.01)
    assert [learning_rate(cfg, e) for e in range(8)] == [0.01] * 6 + [pytest.approx(0.001)] * 2


def test_train_writes_model_metrics_and_resumes_identically(toy, tmp_path):
    full = train(tiny_config(toy, tmp_path, "full"), progress=False, log=lambda m: None)
    assert full["status"] == "finished" and len(full["history"]) == 2
    metrics = [json.loads(line) for line in (tmp_path / "work-full" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2] and {"train_loss", "val_loss", "val_dice", "lr"} <= set(metrics[0])
    model, meta = load_model(tmp_path / "full", task="head")
    assert meta["input_size"] == 32 and meta["training"]["n_train"] == 36 and meta["metrics"]["history"] == metrics
    # interrupted twice (mid-epoch, then at another step), resumed: bit-identical final weights
    cfg = tiny_config(toy, tmp_path, "resumed")
    assert train(cfg, progress=False, stop_after_steps=5, log=lambda m: None)["status"] == "stopped"
    assert not (tmp_path / "resumed.safetensors").exists()
    assert train(cfg, progress=False, stop_after_steps=4, log=lambda m: None)["status"] == "stopped"
    assert train(cfg, progress=False, log=lambda m: None)["status"] == "finished"
    a, b = load_file(tmp_path / "full.safetensors"), load_file(tmp_path / "resumed.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    resumed_metrics = (tmp_path / "work-resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(m)["val_loss"] for m in resumed_metrics] == [m["val_loss"] for m in metrics]


def test_changed_settings_are_not_resumed_silently(toy, tmp_path):
    cfg = tiny_config(toy, tmp_path, "m", epochs=1)
    train(cfg, progress=False, stop_after_steps=2, log=lambda m: None)
    other = tiny_config(toy, tmp_path, "m", epochs=1, lr=5e-3)
    with pytest.raises(ValueError, match="different training run.*lr"):
        train(other, progress=False, log=lambda m: None)
    assert train(other, restart=True, progress=False, log=lambda m: None)["status"] == "finished"
    with pytest.raises(ValueError, match="multiples"):
        tiny_config(toy, tmp_path, "m", size=34, crop=34).validate()
    with pytest.raises(ValueError, match="--task"):
        tiny_config(toy, tmp_path, "m", task="knee").validate()


def test_max_minutes_stop_is_reported_with_exit_code_3(toy, tmp_path):
    from DeepMorphLib.cli import main

    args = ["train", "--task", "femur", "--data", str(toy), "--out", str(tmp_path / "f"), "--work-dir",
            str(tmp_path / "w"), "--epochs", "1", "--size", "32", "--crop", "32", "--base-channels", "2",
            "--depth", "1", "--threads", "1", "--max-minutes", "0.00001", "--no-progress"]
    assert main(args) == 3
    assert (tmp_path / "w" / "checkpoint.safetensors").exists() and not (tmp_path / "f.json").exists()
    assert main(args[:-3] + ["--no-progress"]) == 0
    assert load_model(tmp_path / "f", task="femur")[1]["task"] == "femur"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_training_runs_on_cuda(toy, tmp_path):
    result = train(tiny_config(toy, tmp_path, "gpu", device="cuda", epochs=1), progress=False, log=lambda m: None)
    assert result["status"] == "finished"
    assert load_model(tmp_path / "gpu")[1]["training"]["device"].startswith("cuda")


def test_export_checkpoint_of_a_stopped_run(tmp_path):
    """A run stopped early can be exported; the sidecar says how far it got."""
    from DeepMorphLib.model_io import load_model
    from DeepMorphLib.training import TrainConfig, export_checkpoint, train
    data = write_toy_dataset(tmp_path / "toy", n=24, size=48, seed=3)
    manifest = json.loads((data / "manifest.json").read_text())
    (data / "manifest.json").write_text(json.dumps({**manifest, "n": 50}))  # a dataset run stopped at 24 of 50
    cfg = TrainConfig(task="head", data=[str(data)], out=str(tmp_path / "m"), work_dir=str(tmp_path / "w"),
                      epochs=3, batch=4, size=32, crop=32, base_channels=4, depth=2, seed=0, threads=1)
    assert train(cfg, progress=False, stop_after_steps=3, log=lambda m: None)["status"] == "stopped"
    export_checkpoint(cfg, log=lambda m: None)
    model, meta = load_model(tmp_path / "m", task="head")
    assert meta["training"]["stopped_early"] == {"epochs_completed": 0, "epochs_planned": 3, "step_in_epoch": 3}
    assert (meta["training"]["n_train"], meta["training"]["n_val"]) == (22, 2)  # the samples used, not the manifest's n
    assert meta["training"]["data"][0]["n_used"] == 24
    import dataclasses

    with pytest.raises(ValueError, match="other settings"):
        export_checkpoint(dataclasses.replace(cfg, lr=0.5), log=lambda m: None)


def test_init_from_starts_with_the_given_weights(tmp_path):
    """--init-from copies a saved model's weights before the first step (fine-tuning)."""
    from DeepMorphLib.model_io import load_model, save_model
    from DeepMorphLib.training import TrainConfig, _init_weights, build_network

    cfg = TrainConfig(task="head", data=["x"], out=str(tmp_path / "m"), base_channels=4, depth=2, seed=0)
    source = build_network(TrainConfig(task="head", data=["x"], out="s", base_channels=4, depth=2, seed=7))
    save_model(source, tmp_path / "src", {"task": "head", "input_size": 32})
    model = build_network(cfg)
    _init_weights(model, TrainConfig(**{**cfg.__dict__, "init_from": str(tmp_path / "src")}))
    for (k, a), b in zip(model.state_dict().items(), source.state_dict().values()):
        assert torch.equal(a, b), k
    wrong = TrainConfig(**{**cfg.__dict__, "init_from": str(tmp_path / "src"), "base_channels": 8})
    with pytest.raises(ValueError, match="architecture"):
        _init_weights(build_network(wrong), wrong)


def test_a_checkpoint_of_another_network_is_refused_with_a_clear_message(toy, tmp_path):
    """Another --base-channels or --task in the same work dir: the fingerprint is compared before the checkpoint's
    tensors meet the new network (was a RuntimeError listing every tensor)."""
    train(tiny_config(toy, tmp_path, "m", epochs=1), progress=False, stop_after_steps=1, log=lambda m: None)
    for other in (dict(base_channels=8), dict(task="polarity"), dict(task="femur")):
        with pytest.raises(ValueError, match="different training run.*(base_channels|task).*--restart"):
            train(tiny_config(toy, tmp_path, "m", epochs=1, **other), progress=False, log=lambda m: None)
    assert not (tmp_path / "m.safetensors").exists()


def test_raising_epochs_on_resume_gives_the_longer_run(toy, tmp_path):
    """--epochs 3 -> 4 after 1.5 epochs (both schedules still at the full LR): the weights of an uninterrupted 4-epoch
    run; a finished 2-epoch run (its epoch 2 at LR x0.1) cannot become a 4-epoch one and says why and what to do."""
    ref = train(tiny_config(toy, tmp_path, "ref", epochs=4), progress=False, log=lambda m: None)
    cfg3 = tiny_config(toy, tmp_path, "grown", epochs=3)
    assert train(cfg3, progress=False, stop_after_steps=13, log=lambda m: None)["status"] == "stopped"
    logs = []
    grown = train(tiny_config(toy, tmp_path, "grown", epochs=4), progress=False, log=logs.append)
    assert grown["status"] == "finished" and any("--epochs 3 -> 4" in m for m in logs)
    assert [h["lr"] for h in grown["history"]] == [h["lr"] for h in ref["history"]] == [0.01] * 3 + [pytest.approx(0.001)]
    a, b = load_file(tmp_path / "ref.safetensors"), load_file(tmp_path / "grown.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "grown.json").read_text())["training"]["config"]["epochs"] == 4
    train(tiny_config(toy, tmp_path, "short", epochs=2), progress=False, log=lambda m: None)
    with pytest.raises(ValueError, match="epoch 2 was trained at LR 0.001.*--init-from"):
        train(tiny_config(toy, tmp_path, "short", epochs=4), progress=False, log=lambda m: None)


def test_ctrl_c_finishes_the_step_and_leaves_a_resumable_checkpoint(toy, tmp_path, monkeypatch):
    """SIGINT during a step (no periodic checkpoint due for an hour): the step completes, a checkpoint is written,
    and the re-run ends with the weights of an uninterrupted run."""
    import os
    import signal

    from DeepMorphLib import training

    full = train(tiny_config(toy, tmp_path, "full", epochs=1), progress=False, log=lambda m: None)
    calls, loss = [], training.outline_loss

    def interrupted_loss(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return loss(*args, **kwargs)

    monkeypatch.setattr(training, "outline_loss", interrupted_loss)
    cfg, logs = tiny_config(toy, tmp_path, "cut", epochs=1), []
    try:
        result = train(cfg, progress=False, log=logs.append)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C stopped training without a checkpoint")
    assert result["status"] == "stopped" and result["signal"] == "SIGINT"
    assert "re-run the same command" in logs[-1] and "step 3/" in logs[-1]
    assert training.checkpoint_state(tmp_path / "work-cut" / "checkpoint.safetensors")["step"] == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    monkeypatch.setattr(training, "outline_loss", loss)
    assert train(cfg, progress=False, log=lambda m: None)["status"] == "finished"
    a, b = load_file(full["model"]), load_file(tmp_path / "cut.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_diverging_run_saves_no_model(toy, tmp_path, monkeypatch):
    """An infinite learning rate is refused; a loss that becomes NaN stops the run with advice, no model written."""
    from DeepMorphLib import training

    for bad in (dict(lr=float("inf")), dict(dice_weight=float("inf")), dict(pos_weight=float("inf"))):
        with pytest.raises(ValueError, match="finite"):
            tiny_config(toy, tmp_path, "m", **bad).validate()
    calls, loss = [], training.outline_loss

    def nan_loss(*args, **kwargs):
        calls.append(1)
        value = loss(*args, **kwargs)
        return value * float("nan") if len(calls) >= 4 else value

    monkeypatch.setattr(training, "outline_loss", nan_loss)
    with pytest.raises(ValueError, match="diverged.*epoch 1, step 4.*Lower --lr"):
        train(tiny_config(toy, tmp_path, "nan", checkpoint_minutes=0.0), progress=False, log=lambda m: None)
    assert not (tmp_path / "nan.safetensors").exists()


def test_bad_settings_name_their_rule_and_too_few_samples_for_validation(toy, tmp_path):
    with pytest.raises(ValueError, match=r"--batch must be >= 1, got 0"):
        tiny_config(toy, tmp_path, "m", batch=0).validate()
    with pytest.raises(ValueError, match=r"--max-samples must be >= 0 \(0 = all\), got -5"):  # was: all but the last 5
        tiny_config(toy, tmp_path, "m", max_samples=-5).validate()
    with pytest.raises(ValueError, match="--threads must be >= 0"):
        tiny_config(toy, tmp_path, "m", threads=-1).validate()
    with pytest.raises(ValueError, match="4 sample.*too few for a validation split.*--val-fraction 0"):
        train(tiny_config(toy, tmp_path, "few", max_samples=4, epochs=1), progress=False, log=lambda m: None)
    done = train(tiny_config(toy, tmp_path, "few", max_samples=4, epochs=1, val_fraction=0.0), progress=False,
                 log=lambda m: None)
    assert done["status"] == "finished" and "val_loss" not in done["history"][0]


def test_one_run_per_work_dir_and_a_killed_write_leaves_no_stray_file(toy, tmp_path):
    """A second run in a work dir in use is refused naming the first's process; the temporary file of a checkpoint
    being written when a run was killed is removed by the next run (each was a full checkpoint's size)."""
    from DeepMorphSimulatorLib.files import lock_folder

    cfg = tiny_config(toy, tmp_path, "m", epochs=1)
    work = Path(cfg.work_dir)
    work.mkdir()
    stray = work / ".checkpoint.safetensors.abc123.tmp"
    stray.write_bytes(b"half a checkpoint")
    held = lock_folder(work, "deepmorph train")
    try:
        with pytest.raises(ValueError, match="another deepmorph train .*process"):
            train(cfg, progress=False, log=lambda m: None)
    finally:
        held.close()
    assert train(cfg, progress=False, log=lambda m: None)["status"] == "finished"
    assert not stray.exists()
