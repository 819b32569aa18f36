"""Crash safety of `deepmorph train`: a real training process killed with SIGKILL resumes to the same weights.

Kept in its own file: the child process pays torch's import (and its lazy torch._dynamo import on the first
optimizer) again, which takes several seconds on a loaded 2-core machine.
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from DeepMorphLib.training import TrainConfig, train
from toy_data import write_toy_dataset

ROOT = Path(__file__).resolve().parents[1]
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


@pytest.mark.slow
def test_cli_kill_9_then_resume_gives_the_same_weights(toy, tmp_path):
    """A real `deepmorph train` process is killed with SIGKILL after its first checkpoint; the re-run finishes
    with exactly the weights of an uninterrupted run."""
    work = tmp_path / "work-cli"
    args = ["train", "--task", "head", "--data", str(toy), "--out", str(tmp_path / "cli"), "--work-dir", str(work),
            "--epochs", "3", "--batch", "4", "--size", "32", "--crop", "32", "--base-channels", "4", "--depth", "2",
            "--lr", "0.01", "--seed", "3", "--val-fraction", "0.1", "--threads", "1", "--device", "cpu",
            "--checkpoint-minutes", "0", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "DeepMorphSimulator"), str(ROOT / "DeepMorph")])}
    proc = subprocess.Popen([sys.executable, "-m", "DeepMorphLib.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def kill_after_first_checkpoint():
        deadline = time.monotonic() + 120
        while not (work / "checkpoint.safetensors").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)

    watcher = threading.Thread(target=kill_after_first_checkpoint)
    watcher.start()
    try:  # the uninterrupted reference run overlaps with the child's start-up
        ref = train(tiny_config(toy, tmp_path, "ref", epochs=3), progress=False, log=lambda m: None)
    finally:
        watcher.join()
        proc.wait()
    assert ref["status"] == "finished"
    assert proc.returncode == -signal.SIGKILL, "the training finished before it could be killed"
    assert not (tmp_path / "cli.safetensors").exists()
    from DeepMorphLib.cli import main

    assert main(args) == 0
    a, b = load_file(tmp_path / "ref.safetensors"), load_file(tmp_path / "cli.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    meta = json.loads((tmp_path / "cli.json").read_text())
    assert meta["training"]["command"].startswith("deepmorph train --task head --data ")
