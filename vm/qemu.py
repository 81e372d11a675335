"""The QEMU process plumbing shared by every guest of the test bed (x86 and POWER).

:class:`QemuRun` spawns QEMU in its own session with the console on stdout, reads the console in
a thread (``console.log``, a tail buffer, optional streaming, ``on_line`` callbacks), enforces the
time-out, kills the process group, and turns what happened into a :class:`GuestResult`.  A machine
subclass adds only what is specific to it:

- ``unavailable_reason()``: why it cannot start here;
- ``_prepare()``: kernel, initrd, job files; returns the QEMU argv;
- ``_watch(line)``: console protocol lines (exit code, results payload...); False hides a line
  from the tail, the stream and the callbacks (it is still in console.log);
- ``_drop(line)``: lines left out of console.log as well (expected QEMU noise);
- ``_job_exit_code()``, ``_early_failure()``, ``_collect()``, ``_finish()``, ``_cleanup()``.

The ready line (``pyvfio-guest: up``, printed by vm/agent.py) sets ``boot_seconds``.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Callable, Self, Sequence

EXIT_TIMEOUT = 124  # `python -m vm run` exit code when the guest timed out
EXIT_FAILURE = 125  # ... when the guest failed without an exit code (QEMU died, panic, no boot)

READY = "pyvfio-guest: up"  # vm/agent.py's first line: the guest has booted and bound its devices


class GuestUnavailable(RuntimeError):
    """No guest can be started here (wrong host, QEMU, the kernel or the userland missing)."""


@dataclasses.dataclass(frozen=True)
class GuestResult:
    """What a guest run produced.

    status: "ok" (the job ran and returned exit_code), "timeout", "qemu-died" (QEMU ended
    without the job's exit code: killed, crashed, refused its arguments), "panic" (the guest
    kernel panicked), "guest-init-failed" (POWER: /init reported an error).  exit_code is None
    unless status is "ok".
    """

    status: str
    exit_code: int | None
    console_tail: str
    duration: float
    results_dir: Path
    qemu_returncode: int | None = None
    boot_seconds: float | None = None  # host time until the agent's first line
    variant: str = "intel"

    @property
    def ok(self) -> bool:
        """The job ran and exited 0."""
        return self.status == "ok" and self.exit_code == 0

    @property
    def guest_info(self) -> dict | None:
        p = self.results_dir / "guest-info.json"
        return json.loads(p.read_text()) if p.exists() else None

    @property
    def restore(self) -> list[dict] | None:
        """What the agent did to unbind/restore the devices after the job (best effort)."""
        p = self.results_dir / "restore.json"
        return json.loads(p.read_text()) if p.exists() else None

    def describe(self) -> str:
        if self.status == "ok":
            return f"guest ({self.variant}) job exited {self.exit_code} after {self.duration:.1f} s"
        what = {"timeout": "timed out", "qemu-died": "QEMU exited without the job's exit code",
                "panic": "guest kernel panicked"}.get(self.status, self.status)
        return (f"guest ({self.variant}) {what} after {self.duration:.1f} s "
                f"(qemu rc {self.qemu_returncode}); console tail:\n{self.console_tail}")

    def host_exit_code(self) -> int:
        if self.status == "ok":
            return int(self.exit_code or 0)
        return EXIT_TIMEOUT if self.status == "timeout" else EXIT_FAILURE


def make_results_dir(results_dir: str | os.PathLike | None, variant: str) -> Path:
    """``results_dir`` (created, resolved) or a new ``/tmp/pyvfio-guest-<variant>-*``."""
    if results_dir is None:
        return Path(tempfile.mkdtemp(prefix=f"pyvfio-guest-{variant}-"))
    path = Path(results_dir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


_LIVE: "set[QemuRun]" = set()
_LIVE_LOCK = threading.Lock()


def runner_fds() -> set[int]:
    """The file descriptors live runs of this process hold (console log, QEMU's stdout pipe):
    a test's fd-leak check ignores them while guests run in the background."""
    with _LIVE_LOCK:
        live = list(_LIVE)
    fds = set()
    for run in live:
        for f in (run._console, run._proc.stdout if run._proc else None):
            if f is not None and not f.closed:
                fds.add(f.fileno())
    return fds


def kill_all() -> int:
    """Kill every QEMU this process started that is still running (an interrupted test session:
    QEMU runs in its own session and would outlive it); return how many were killed."""
    with _LIVE_LOCK:
        live = list(_LIVE)
    for run in live:
        run.kill()
    return len(live)


class QemuRun:
    """One QEMU guest run: start() then wait(), or run() for both.

    Threads: the console is read by a daemon thread; ``on_line`` callbacks run there.  kill() may
    be called from any thread (a callback included); start() and wait() belong to one thread.
    Several runs may go on at once in different threads (vm/pytest_plugin.py runs two).
    """

    def __init__(self, argv: Sequence[str], *, timeout: float, variant: str,
                 results_dir: str | os.PathLike | None = None,
                 stream: IO[str] | None | bool = True, tail_lines: int = 60) -> None:
        if not argv:
            raise ValueError("argv must name a command")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.timeout = timeout
        self.variant = variant
        self.results_dir = make_results_dir(results_dir, variant)
        if stream is True:
            self._out: IO[str] | None = sys.stdout
        elif stream is False:
            self._out = None
        else:
            self._out = stream
        self._tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self._proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._console: IO[str] | None = None
        self._t0 = 0.0
        self.boot_seconds: float | None = None
        self._line_callbacks: list[Callable[[str], None]] = []

    # -- what a machine adds -------------------------------------------------------------------
    def unavailable_reason(self) -> str | None:
        """Why this guest cannot start here, or None."""
        return None

    def _prepare(self) -> list[str]:
        """Make the kernel, initrd and job files ready; return the QEMU argv."""
        raise NotImplementedError

    def _drop(self, line: str) -> bool:
        """True: leave ``line`` out entirely (not even in console.log)."""
        return False

    def _watch(self, line: str) -> bool:
        """Read protocol lines; False hides ``line`` from the tail, the stream and callbacks."""
        return True

    def _job_exit_code(self) -> int | None:
        """The job's exit code once QEMU has ended, or None when the job did not report one."""
        return None

    def _early_failure(self) -> str | None:
        """A failure status that wins over an exit code (after a time-out), or None."""
        return None

    def _collect(self) -> None:
        """After QEMU has ended and the console is closed: bring results in (may add tail lines)."""

    def _finish(self, status: str, exit_code: int | None) -> None:
        """Last step of wait(), with the final status."""

    def _cleanup(self) -> None:
        """Remove per-run files once QEMU has ended (also when waiting failed)."""

    # -- public --------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        """QEMU's process id once started."""
        return self._proc.pid if self._proc else None

    def on_line(self, callback: Callable[[str], None]) -> None:
        """Call callback(line) for every console line (from the reader thread)."""
        self._line_callbacks.append(callback)

    def start(self) -> Self:
        reason = self.unavailable_reason()
        if reason:
            raise GuestUnavailable(reason)
        cmd = self._prepare()
        (self.results_dir / "qemu.cmd").write_text(shlex.join(cmd) + "\n")
        with _LIVE_LOCK:
            self._console = open(self.results_dir / "console.log", "w", errors="replace")
            _LIVE.add(self)
        self._t0 = time.monotonic()
        try:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        except BaseException:
            with _LIVE_LOCK:
                _LIVE.discard(self)
            self._console.close()
            raise
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def wait(self) -> GuestResult:
        assert self._proc is not None and self._console is not None, "start() first"
        timed_out = False
        try:
            self._proc.wait(timeout=max(self.timeout - (time.monotonic() - self._t0), 0))
        except subprocess.TimeoutExpired:
            timed_out = True
            self._kill()
        finally:
            if self._reader:
                self._reader.join(timeout=10)
            self._console.close()
            with _LIVE_LOCK:
                _LIVE.discard(self)
            self._cleanup()
        duration = time.monotonic() - self._t0
        self._collect()
        tail = "\n".join(self._tail)
        exit_code = self._job_exit_code()
        early = self._early_failure()
        if timed_out:
            status = "timeout"
        elif early is not None:
            status = early
        elif exit_code is not None:
            status = "ok"
        elif "Kernel panic" in tail:
            status = "panic"
        else:
            status = "qemu-died"
        if status != "ok":
            exit_code = None
        self._finish(status, exit_code)
        return GuestResult(status=status, exit_code=exit_code, console_tail=tail,
                           duration=duration, results_dir=self.results_dir,
                           qemu_returncode=self._proc.returncode, boot_seconds=self.boot_seconds,
                           variant=self.variant)

    def kill(self) -> None:
        """Kill QEMU now (wait() then reports the run as failed)."""
        self._kill()

    def run(self) -> GuestResult:
        self.start()
        try:
            return self.wait()
        except BaseException:
            self._kill()
            raise

    # -- internals -----------------------------------------------------------------------------
    def _kill(self) -> None:
        if self._proc and self._proc.poll() is None:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._proc.wait()

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        assert self._console is not None
        for raw in self._proc.stdout:
            line = raw.decode("utf-8", "replace").replace("\r", "")
            if self._drop(line):
                continue
            self._console.write(line)
            if not self._watch(line):
                continue
            if self.boot_seconds is None and line.strip().startswith(READY):
                self.boot_seconds = time.monotonic() - self._t0
            self._console.flush()
            self._tail.append(line.rstrip("\n"))
            if self._out is not None:
                try:
                    self._out.write(line)
                    self._out.flush()
                except (OSError, ValueError):
                    pass
            for cb in self._line_callbacks:
                cb(line)
        self._console.flush()
