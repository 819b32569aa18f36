"""Background jobs for the GUI: output polled without blocking, progress parsed, cancel stops the tree."""
import os
import signal
import sys
import time

import pytest

from DeepMorphSimulatorLib.background_job import BackgroundJob, parse_progress, python_module_command


@pytest.mark.parametrize(
    "line, expected",
    [
        (" 45%|####5     | 45/100 [00:01<00:02, 30.1it/s]", (45, 100)),
        ("dataset: 100%|##########| 8/8 [00:03<00:00,  2.50sample/s]", (8, 8)),
        ("sample 3/10 written", (3, 10)),
        ("progress: 7 / 20", (7, 20)),
        ("writing manifest.json", None),
        ("date 2026/11/25", None),
        ("12/0", None),
    ],
)
def test_parse_progress(line, expected):
    assert parse_progress(line) == expected


TQDM_SCRIPT = r"""
import sys, time
for i in range(6):
    sys.stderr.write(f"\r{int(100*i/5):3d}%|#   | {i}/5 [00:00<00:00]")
    sys.stderr.flush()
    time.sleep(0.02)
sys.stderr.write("\n")
print("done: 5 samples")
"""


def test_job_reports_progress_and_finishes():
    job = BackgroundJob([sys.executable, "-c", TQDM_SCRIPT]).start()
    assert job.running
    assert job.wait(timeout=20) == 0
    job.poll()
    assert job.state == "finished" and job.progress == (5, 5) and job.fraction == 1.0
    assert any("done: 5 samples" in line for line in job.lines)
    assert sum("/5" in line for line in job.lines) >= 5  # carriage-return updates arrive as lines


def test_failed_job_keeps_its_error_message():
    job = BackgroundJob([sys.executable, "-c", "import sys; print('deepmorph dataset: error: bad CT'); sys.exit(2)"])
    assert job.start().wait(timeout=20) == 2
    assert job.state == "failed" and "bad CT" in job.lines[-1]


def wait_for_output(job, wanted, timeout_s: float = 20.0) -> None:
    """Poll ``job`` until one of its output lines satisfies ``wanted`` (or ``timeout_s`` passes)."""
    deadline = time.monotonic() + timeout_s
    while not any(wanted(line) for line in job.lines) and time.monotonic() < deadline:
        job.poll()
        time.sleep(0.02)


SLEEPER = r"""
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print("child", child.pid, flush=True)
try:
    time.sleep(60)
except KeyboardInterrupt:
    print("interrupted, cleaning up", flush=True)
    raise SystemExit(130)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_cancel_interrupts_the_process_group():
    job = BackgroundJob([sys.executable, "-c", SLEEPER]).start()
    wait_for_output(job, lambda line: line.startswith("child"))
    child_pid = int(next(line for line in job.lines if line.startswith("child")).split()[1])
    t0 = time.monotonic()
    job.cancel(grace_s=5)
    assert time.monotonic() - t0 < 5
    job.wait(timeout=5)
    assert job.state == "cancelled"
    assert any("interrupted" in line for line in job.lines)  # got Ctrl-C, not a kill
    deadline = time.monotonic() + 5
    while alive(child_pid) and time.monotonic() < deadline:  # the grandchild got the interrupt too
        time.sleep(0.05)
    assert not alive(child_pid)


STUBBORN_CHILD = r"""
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); print('child ready', flush=True); time.sleep(60)"])
print("child", child.pid, flush=True)
time.sleep(60)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_cancel_kills_a_child_that_survives_the_interrupt():
    """A child that outlives Ctrl-C (as one interrupted while Python starts can) holds the output pipe."""
    job = BackgroundJob([sys.executable, "-c", STUBBORN_CHILD]).start()
    wait_for_output(job, lambda line: line == "child ready")
    child_pid = int(next(line for line in job.lines if line.startswith("child ")).split()[1])
    job.cancel(grace_s=5)
    assert job.wait(timeout=5) is not None and job.state == "cancelled"
    deadline = time.monotonic() + 5
    while alive(child_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child_pid)


LEAVES_A_DAEMON = r"""
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
print("daemon", child.pid, flush=True)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_job_ends_when_its_process_exits_even_if_a_child_holds_the_output():
    job = BackgroundJob([sys.executable, "-c", LEAVES_A_DAEMON]).start()
    try:
        assert job.wait(timeout=15) == 0 and job.state == "finished"
    finally:
        for line in job.lines:
            if line.startswith("daemon"):
                pid = int(line.split()[1])
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
    assert any(line.startswith("daemon") for line in job.lines)


def alive(pid):
    """Running (not a zombie) according to /proc; a zombie already exited."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def test_python_module_command():
    cmd = python_module_command("DeepMorphLib.cli", "dataset", "--n", 5, python="/opt/PythonSlicer")
    assert cmd == ["/opt/PythonSlicer", "-m", "DeepMorphLib.cli", "dataset", "--n", "5"]


STUBBORN = r"""
import signal, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(60)
"""


@pytest.mark.skipif(sys.platform.startswith("win"), reason="POSIX signals")
def test_cancel_without_waiting_escalates_to_kill_from_poll():
    job = BackgroundJob([sys.executable, "-c", STUBBORN]).start()
    wait_for_output(job, lambda line: line == "ready")
    t0 = time.monotonic()
    job.cancel(grace_s=0.3, wait=False)
    assert time.monotonic() - t0 < 0.2 and job.running  # returned at once; SIGINT ignored
    assert job.wait(timeout=10) is not None  # poll() killed it after the grace period
    assert job.state == "cancelled"
