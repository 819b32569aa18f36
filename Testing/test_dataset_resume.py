"""Dataset generation across processes: same bytes for any worker count; a SIGKILLed run resumes exactly."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from DeepMorphSimulatorLib import dataset as ds

ROOT = Path(__file__).resolve().parents[1]
N = 10
ARGS = ["--phantom", "--n", str(N), "--size", "64", "--group", "5", "--phantom-spacing", "3", "--seed", "5", "--implants", "0.8"]


def _settings():
    return ds.DatasetSettings(size=64, group=5, phantom_spacing_mm=3.0, seed=5, implants=0.8)


def _tree(d: Path) -> dict:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _cli(out, workers, **kw):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "DeepMorphSimulator"), str(ROOT / "DeepMorph")]))
    cmd = [sys.executable, "-m", "DeepMorphLib.cli", "dataset", "--out", str(out), "--workers", str(workers), "--quiet", *ARGS]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, **kw)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "d"
    ds.generate(_settings(), out, N, workers=1, progress=False)
    return _tree(out)


@pytest.mark.slow
def test_same_bytes_for_any_worker_count(reference, tmp_path):
    ds.generate(_settings(), tmp_path / "w2", N, workers=2, progress=False)
    assert _tree(tmp_path / "w2") == reference


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_gives_identical_files(reference, tmp_path):
    out = tmp_path / "killed"
    proc = _cli(out, 1)
    deadline = time.time() + 120
    n_done = 0
    while time.time() < deadline and proc.poll() is None:
        n_done = len(list((out / "samples").glob("*.json"))) if (out / "samples").exists() else 0
        if n_done >= 3:
            break
        time.sleep(0.01)
    assert proc.poll() is None, f"run ended before it could be killed: {proc.communicate()[1].decode()[-2000:]}"
    os.killpg(proc.pid, signal.SIGKILL)  # the whole job, mid-sample (possibly mid-write)
    proc.wait()
    partial = len(list((out / "samples").glob("*.json")))
    assert 3 <= partial < N
    stats = ds.generate(_settings(), out, N, workers=1, progress=False)  # the re-run with the same arguments
    assert stats["skipped"] == partial and stats["written"] == N - partial
    assert _tree(out) == reference


def test_a_sample_with_a_missing_or_damaged_file_is_rendered_again(tmp_path):
    """Resume checks every file of a sample, not only that its JSON exists: a deleted target PNG or a cut-short JSON
    makes the sample incomplete, and the re-run writes it again, byte-identical."""
    settings = ds.DatasetSettings(size=64, group=3, phantom_spacing_mm=3.0, seed=5)
    out = tmp_path / "d"
    ds.generate(settings, out, 3, progress=False)
    before = _tree(out)
    (out / "samples" / "000001_femur.png").unlink()
    (out / "samples" / "000002.json").write_text('{"head_circle": [1')
    assert ds.is_complete(out, 0) and not ds.is_complete(out, 1) and not ds.is_complete(out, 2)
    stats = ds.generate(settings, out, 3, progress=False)
    assert stats["skipped"] == 1 and stats["written"] == 2
    assert _tree(out) == before


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _all_ended(workers, timeout_s: float = 20.0) -> bool:
    """True when every worker has ended within ``timeout_s``; those still running are then killed (no leftovers)."""
    deadline = time.time() + timeout_s
    while any(_running(w) for w in workers) and time.time() < deadline:
        time.sleep(0.1)
    left = [w for w in workers if _running(w)]
    for w in left:
        os.kill(w, signal.SIGKILL)
    return not left


def _start_with_workers(out):
    proc = _cli(out, 2)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        workers = _children(proc.pid)
        if len(workers) >= 2 and (out / "samples").exists() and any((out / "samples").glob("*.json")):
            return proc, workers
        time.sleep(0.05)
    raise AssertionError(f"no workers at work: {proc.communicate()[1].decode()[-2000:]}")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_end_when_their_parent_is_killed(tmp_path):
    """SIGKILL (or the OOM killer) gives the parent no chance to stop its workers: they must notice."""
    proc, workers = _start_with_workers(tmp_path / "orphans")
    os.kill(proc.pid, signal.SIGKILL)  # the parent alone
    proc.wait()
    assert _all_ended(workers)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_stops_cleanly_and_the_run_resumes(reference, tmp_path):
    out = tmp_path / "terminated"
    proc, workers = _start_with_workers(out)
    os.kill(proc.pid, signal.SIGTERM)  # e.g. a batch scheduler's time limit
    _, err = proc.communicate(timeout=60)
    assert _all_ended(workers)
    assert proc.returncode == 143 and b"stopped (SIGTERM)" in err
    partial = len(list((out / "samples").glob("*.json")))
    stats = ds.generate(_settings(), out, N, workers=1, progress=False)
    assert stats["skipped"] == partial and _tree(out) == reference
