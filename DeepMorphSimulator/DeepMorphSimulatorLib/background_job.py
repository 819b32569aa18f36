"""Run a long command (e.g. ``deepmorph dataset``) in a background process, without Qt.

The pattern of SlicerMONAIAuto3DSeg's ``process.py``: a reader thread moves the process output into a
queue, and the GUI drains it with :meth:`BackgroundJob.poll` from a timer (``qt.QTimer``), so the GUI
never blocks. Progress is parsed from tqdm bars or ``N/M`` counters. :meth:`BackgroundJob.cancel`
interrupts the whole process group (SIGINT first, so the command can stop cleanly; then SIGKILL).

A job ends when its own process exits. Children it leaves behind still holding the output pipe (a
Ctrl-C that reached a child while Python was still starting can be swallowed by ``site``'s .pth
handling) do not keep it "running": after :data:`STRAGGLER_S` seconds the job ends anyway and, if it
was cancelled, what is left of its process group is killed.
"""
from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

# tqdm: " 45%|####5     | 45/100 [00:01<00:02, 30.1it/s]"; plain: "sample 45/100", "progress: 45 / 100"
_TQDM = re.compile(r"(\d+)%\|[^|]*\|\s*(\d+)/(\d+)")
STRAGGLER_S = 1.0  # s a cancelled job's children get to exit after the job's own process has

_COUNT = re.compile(r"(?:^|[\s\[(:])(\d+)\s*/\s*(\d+)(?=$|[\s\]),:])")


def parse_progress(line: str) -> tuple[int, int] | None:
    """(done, total) from a progress line (tqdm bar or an ``N/M`` counter), else None."""
    match = _TQDM.search(line)
    if match:
        done, total = int(match.group(2)), int(match.group(3))
    else:
        match = _COUNT.search(line)
        if not match:
            return None
        done, total = int(match.group(1)), int(match.group(2))
    if total <= 0 or done > total:
        return None
    return done, total


class BackgroundJob:
    """A command run in its own process group, its output read by a thread.

    States: ``"not started"``, ``"running"``, ``"finished"`` (exit code 0), ``"failed"``,
    ``"cancelled"``. ``progress`` is the last (done, total) seen, ``lines`` all output lines.
    """

    def __init__(self, args: list[str], env: dict[str, str] | None = None, cwd: str | None = None):
        self.args = [str(a) for a in args]
        self.env = env
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None
        self.progress: tuple[int, int] | None = None
        self.lines: list[str] = []
        self.returncode: int | None = None
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._cancelled = False
        self._kill_at: float | None = None
        self._exited_at: float | None = None  # when the job's own process was first seen to have exited
        self.started_at: float | None = None

    def start(self) -> "BackgroundJob":
        kwargs = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | 0x08000000  # CREATE_NO_WINDOW
        else:
            kwargs["start_new_session"] = True
        env = dict(self.env) if self.env is not None else dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.setdefault("PYTHONIOENCODING", "utf-8")
        self.proc = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.cwd,
            env=env, text=True, encoding="utf-8", errors="replace", bufsize=1, **kwargs,
        )
        self.started_at = time.monotonic()
        self._thread = threading.Thread(target=self._read_output, daemon=True)
        self._thread.start()
        return self

    def _read_output(self) -> None:
        # Text mode with universal newlines: tqdm's carriage returns arrive as separate lines.
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self.proc.wait()
        self._queue.put(None)  # end marker

    @property
    def state(self) -> str:
        if self.proc is None:
            return "not started"
        if self.returncode is None:
            return "running"
        if self._cancelled:
            return "cancelled"
        return "finished" if self.returncode == 0 else "failed"

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def fraction(self) -> float | None:
        """Progress in [0, 1], or None before the first progress line."""
        return None if self.progress is None else self.progress[0] / self.progress[1]

    def poll(self) -> list[str]:
        """New output lines since the last call (never blocks); updates progress and state."""
        if self._kill_at is not None and time.monotonic() > self._kill_at and self.proc.poll() is None:
            self._signal(interrupt=False)  # did not stop after Ctrl-C
            self._kill_at = None
        new = []
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is None:
                self.returncode = self.proc.returncode
                break
            if not line.strip():
                continue
            new.append(line)
            progress = parse_progress(line)
            if progress is not None:
                self.progress = progress
        self.lines.extend(new)
        if self.returncode is None and self.proc.poll() is not None:
            self._exited_at = self._exited_at or time.monotonic()
            if time.monotonic() - self._exited_at > STRAGGLER_S:  # children still hold the output pipe
                if self._cancelled:
                    self._kill_leftover_children()
                self.returncode = self.proc.returncode
        return new

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the process ends (tests and scripts; the GUI polls instead)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.state == "running":
            if deadline is not None and time.monotonic() > deadline:
                return None
            self.poll()
            time.sleep(0.02)
        return self.returncode

    def cancel(self, grace_s: float = 5.0, wait: bool = True) -> None:
        """Interrupt the process and all its children (Ctrl-C first; killed after ``grace_s`` s).

        With ``wait=False`` this returns at once (for a GUI); :meth:`poll` then kills the process
        group if it is still running after ``grace_s``.
        """
        if self.proc is None or self.proc.poll() is not None:
            return
        self._cancelled = True
        self._signal(interrupt=True)
        self._kill_at = time.monotonic() + grace_s
        if not wait:
            return
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self._signal(interrupt=False)
            self.proc.wait()
        if self._thread is not None:
            self._thread.join(timeout=STRAGGLER_S)
            if self._thread.is_alive():  # a child outlived the interrupt and still holds the output pipe
                self._kill_leftover_children()
                self._thread.join(timeout=STRAGGLER_S)

    def _kill_leftover_children(self) -> None:
        """SIGKILL what is left of the job's process group after its own process has exited."""
        if os.name == "nt":
            return  # taskkill /T in _signal already took the tree
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, OSError):
            pass

    def _signal(self, interrupt: bool) -> None:
        try:
            if os.name == "nt":
                if interrupt:
                    self.proc.send_signal(signal.CTRL_BREAK_EVENT)
                else:
                    subprocess.run(["taskkill", "/F", "/T", "/PID", str(self.proc.pid)], capture_output=True)
            else:
                os.killpg(self.proc.pid, signal.SIGINT if interrupt else signal.SIGKILL)
        except (ProcessLookupError, PermissionError, OSError):
            pass

    def elapsed_s(self) -> float:
        return 0.0 if self.started_at is None else time.monotonic() - self.started_at


def python_module_command(module: str, *args: str, python: str | None = None) -> list[str]:
    """``[python, "-m", module, *args]``; inside Slicer pass ``python=shutil.which("PythonSlicer")``."""
    return [python or sys.executable, "-m", module, *[str(a) for a in args]]
