"""``deepmorph fit --workers N``: images fitted by N processes, each result in its own image's name, the report in
the images' order, and the same fits as one process."""
import csv
import json

import numpy as np
import pytest

from DeepMorphLib.cli import main
from DeepMorphSimulatorLib.files import write_png


def _image(path, value):
    image = np.full((32, 32), value, np.uint8)
    image[::2] += 10
    write_png(path, image)
    return path


def test_each_worker_result_lands_in_its_own_images_name(fits, tmp_path, monkeypatch):
    """Workers started by fork carry the stand-in fit (cx = the image's mean grey), so each result shows which image
    it was fitted from."""
    from DeepMorphLib.commands import fit

    monkeypatch.setattr(fit, "WORKER_START", "fork")
    folder = tmp_path / "in"
    folder.mkdir()
    values = {f"x{k}": 20 + 30 * k for k in range(6)}
    for name, value in values.items():
        _image(folder / f"{name}.png", value)
    out = tmp_path / "R"
    assert main(["fit", "--task", "head", str(folder), "--out", str(out), "--workers", "3", "--report"]) == 0
    for name, value in values.items():
        cx = json.loads((out / f"{name}.json").read_text())["circle"]["cx"]
        assert cx == pytest.approx(value + 5.0)  # mean of the image: value, +10 on every other row
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["file"] for r in rows] == sorted(values)  # the images' order, whichever worker finished first
    assert main(["fit", "--task", "head", str(folder), "--out", str(out), "--workers", "2"]) == 0  # all reused


def test_workers_fit_as_one_process_does(tmp_path):
    """The shipped head model in 2 spawned workers and in this process: the same circles (to float rounding: each
    worker has 1 thread)."""
    from DeepMorphLib.commands.bench_pipeline import bench_image

    img = bench_image()
    grey = ((img - img.min()) / (img.max() - img.min()) * 255).astype(np.uint8)
    folder = tmp_path / "in"
    folder.mkdir()
    write_png(folder / "a.png", grey)
    write_png(folder / "b.png", np.ascontiguousarray(grey[:, ::-1]))
    for workers in ("1", "2"):
        assert main(["fit", "--task", "head", str(folder), "--out", str(tmp_path / workers), "--workers", workers]) == 0
    for name in ("a", "b"):
        one, two = (json.loads((tmp_path / w / f"{name}.json").read_text()) for w in ("1", "2"))
        assert one["detected"] and two["detected"]
        assert [two["circle"][k] for k in "cx cy r".split()] == pytest.approx(
            [one["circle"][k] for k in "cx cy r".split()], abs=0.5)


SLOW_FIT_SCRIPT = r"""
import sys, time
import numpy as np
from DeepMorphLib import pipeline
from DeepMorphLib.cli import main
from DeepMorphLib.commands import fit
from DeepMorphLib.pipeline import FitResult

def slow_fit(image, task, **kw):  # the first image at once, every other one takes 300 s
    if not kw["source"].endswith("x0.png"):
        time.sleep(300)
    res = FitResult(task=task, image_shape=np.shape(image), detected=True, reason="", polarity="bone-dark",
                    polarity_score=None, polarity_mode="given", source=kw["source"])
    res.circle, res.timings_ms = {"cx": 1.0, "cy": 1.0, "r": 1.0}, {"total_ms": 1.0}
    return res

pipeline.fit_image = slow_fit
for name in ("load_predictor", "load_refiner", "load_shape_model", "load_head_anchor", "load_region_net"):
    setattr(pipeline, name, lambda *a, **k: None)
fit.WORKER_START = "fork"
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_stops_the_workers_at_once_and_keeps_what_is_done(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(4):
        _image(folder / f"x{k}.png", 20 + 30 * k)
    out = tmp_path / "R"
    script = tmp_path / "slow_fit.py"
    script.write_text(SLOW_FIT_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), "fit", "--task", "head", str(folder), "--out", str(out),
                             "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "x0.json").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert (out / "x0.json").exists(), proc.communicate(timeout=5)
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)  # not the 300 s the images in flight would take
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("fit --workers did not stop on Ctrl-C") from None
    assert proc.returncode == 130 and "stopped after 1 of 4" in err
    assert sorted(p.name for p in out.glob("x*.json")) == ["x0.json"]  # nothing half-written


def test_a_worker_that_dies_stops_the_run_with_a_clear_error(tmp_path):
    """A worker killed (as by the OOM killer) while fitting: one error line naming the cause and the fix, exit 2,
    the results already written kept; never a hang."""
    import subprocess
    import sys

    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(3):
        _image(folder / f"x{k}.png", 20 + 30 * k)
    script = tmp_path / "dying_fit.py"
    script.write_text(SLOW_FIT_SCRIPT.replace("time.sleep(300)", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"))
    proc = subprocess.run([sys.executable, str(script), "fit", "--task", "head", str(folder), "--out",
                           str(tmp_path / "R"), "--workers", "2"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "a worker process ended" in proc.stderr and "Traceback" not in proc.stderr
