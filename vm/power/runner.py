"""Run a command inside an emulated POWER9 pseries guest (TCG) where VFIO uses the SPAPR TCE IOMMU.

    >>> from vm.power import run
    >>> r = run(["python3", "-c", "import pyvfio.ioctls as i; print(hex(i.VFIO_GET_API_VERSION))"])
    >>> r.status, r.exit_code, r.results_dir

The guest boots the pinned ppc64el kernel (vm/kernel.py) with an initramfs holding a Debian ppc64el
userland (python3.11, pytest, cffi, numpy, ...; vm/power/fetch.py) and, appended per run, the
project's pyvfio/, tests/ and vm/ under /src with host-compiled .pyc.  /init (vm/power/init.sh)
loads VFIO, binds the edu device to vfio-pci and runs the command in /src as root; the command may
write files (junit XML, logs) to $PYVFIO_RESULTS (/results).  There is no 9p with x-vof, so
everything comes back on the console (hvc0): the results folder as base64 between marker lines,
then ``PYVFIO-EXIT=<n>``.  QEMU dying, a kernel panic, a failed /init or a time-out is a failure
(``status != "ok"``) carrying the tail of the console.  The result is vm.qemu's GuestResult with
``variant="power"``.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import shlex
import shutil
import tarfile
import tempfile
import time
from pathlib import Path
from typing import IO, Sequence

from ..kernel import cached_kernel
from ..qemu import EXIT_FAILURE, EXIT_TIMEOUT, GuestResult, GuestUnavailable, QemuRun
from . import fetch, initramfs, pins

__all__ = ["PowerRun", "run", "unavailable_reason", "qemu_command", "GuestResult",
           "GuestUnavailable", "EXIT_FAILURE", "EXIT_TIMEOUT", "VARIANT"]

VARIANT = "power"
GUEST_RESULTS = "/results"
REPO = Path(__file__).resolve().parents[2]
EXIT_RE = re.compile(r"^PYVFIO-EXIT=(\d+)\s*$")
BEGIN, END, INIT_ERROR = "PYVFIO-RESULTS-BEGIN", "PYVFIO-RESULTS-END", "PYVFIO-INIT-ERROR"


def unavailable_reason() -> str | None:
    """Why no POWER guest can start here, or None when one can."""
    if shutil.which(pins.QEMU) is None:
        return f"{pins.QEMU} is not installed: run tools/dev setup (package qemu-system-ppc)"
    if not fetch.is_ready():
        return f"the POWER guest userland is not prepared in {pins.cache_dir()}: run tools/dev setup"
    if cached_kernel("ppc64el") is None:
        return "the ppc64el guest kernel is not cached: run tools/dev setup"
    return None


def qemu_command(vmlinux: Path, initrd: Path, *, memory: str = "1G", edu: bool = True,
                 extra_append: Sequence[str] = ()) -> list[str]:
    """The QEMU argv of one POWER guest run (pseries with the x-vof firmware)."""
    append = ["console=hvc0", "quiet", "panic=-1", "oops=panic", "rdinit=/init", *extra_append]
    cmd = [pins.QEMU, "-accel", "tcg", "-M", pins.MACHINE, "-cpu", "power9", "-m", memory,
           "-smp", "1", "-nodefaults", "-display", "none", "-no-reboot", "-no-user-config",
           "-chardev", "stdio,id=pyvfio-con,signal=off", "-serial", "chardev:pyvfio-con",
           "-kernel", str(vmlinux), "-initrd", str(initrd), "-append", " ".join(append)]
    if edu:
        cmd += ["-device", pins.EDU_DEVICE]
    return cmd


class PowerRun(QemuRun):
    """One POWER guest run: start() then wait(), or run() for both."""

    def __init__(self, argv: Sequence[str], *, timeout: float = 180.0,
                 results_dir: str | os.PathLike | None = None, env: dict[str, str] | None = None,
                 stream: IO[str] | None | bool = True, tail_lines: int = 60,
                 repo: str | os.PathLike | None = None, memory: str = "1G", edu: bool = True,
                 shell: bool = False, bind: Sequence[str] = ("edu",)) -> None:
        """``argv`` runs in the guest's /src (``shell=True``: argv is one shell command line).

        ``env`` is added to the guest's environment (the host's environment is not passed: the
        guest is another architecture).
        """
        if shell and argv and len(argv) != 1:
            raise ValueError("shell=True takes exactly one command line")
        super().__init__(argv, timeout=timeout, variant=VARIANT, results_dir=results_dir,
                         stream=stream, tail_lines=tail_lines)
        self.command = str(argv[0]) if shell else shlex.join(str(a) for a in argv)
        self.argv = list(argv)
        self.env = dict(env or {})
        self.repo = Path(repo or REPO)
        self.memory = memory
        self.edu = edu
        self.bind = tuple(bind) if edu else ()
        self.exit_code: int | None = None
        self.init_error: str | None = None
        self._b64: list[str] | None = None
        self._results_b64: str | None = None
        self._initrd: Path | None = None

    def job(self) -> dict:
        """vm/agent.py's job description: it binds edu, runs ``sh /run/pyvfio/cmd`` in /src."""
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8",
               "TERM": "dumb", "PYTHONPATH": initramfs.GUEST_SRC, "PYTHONUNBUFFERED": "1",
               "PYTHONDONTWRITEBYTECODE": "1", "PYVFIO_RESULTS": GUEST_RESULTS, **self.env}
        return {"argv": ["sh", f"{initramfs.GUEST_RUN}/cmd"], "cwd": initramfs.GUEST_SRC,
                "env": env, "variant": VARIANT, "bind": list(self.bind),
                "results_dir": GUEST_RESULTS, "allow_unsafe_interrupts": False}

    # -- the POWER machine ---------------------------------------------------------------------
    def unavailable_reason(self) -> str | None:
        return unavailable_reason()

    def _prepare(self) -> list[str]:
        cache = fetch.prepare()
        base = initramfs.base_archive(cache)
        payload = initramfs.payload_archive(self.repo, self.command, self.job())
        for stale in cache.glob("initrd-*.cpio"):  # left by a killed run (each ~100 MB)
            try:
                if time.time() - stale.stat().st_mtime > 3 * 3600:
                    stale.unlink()
            except OSError:
                pass
        fd, name = tempfile.mkstemp(prefix="initrd-", suffix=".cpio", dir=cache)
        os.close(fd)
        self._initrd = Path(name)
        initramfs.write_initrd(base, payload, self._initrd)
        for stale_name in ("exit_code", "console.log"):
            (self.results_dir / stale_name).unlink(missing_ok=True)
        (self.results_dir / "job.sh").write_text(self.command + "\n")
        return qemu_command(fetch.vmlinux(), self._initrd, memory=self.memory, edu=self.edu)

    def _watch(self, line: str) -> bool:
        """The hvc0 protocol: results payload (hidden), init errors, the exit line."""
        s = line.strip()
        if self._b64 is not None:
            if s == END:
                self._results_b64 = "".join(self._b64)
                self._b64 = None
            else:
                self._b64.append(s)
            return False
        if s == BEGIN:
            self._b64 = []
            return False
        if s.startswith(INIT_ERROR):
            self.init_error = s
        m = EXIT_RE.match(s)
        if m:
            self.exit_code = int(m.group(1))
        return True

    def _cleanup(self) -> None:
        if self._initrd is not None:
            self._initrd.unlink(missing_ok=True)

    def _collect(self) -> None:
        extract_error = self._extract_results()
        if extract_error:
            self._tail.append(f"[host] results payload unusable: {extract_error}")

    def _job_exit_code(self) -> int | None:
        return self.exit_code

    def _early_failure(self) -> str | None:
        return "guest-init-failed" if self.init_error is not None else None

    def _finish(self, status: str, exit_code: int | None) -> None:
        if exit_code is not None:
            (self.results_dir / "exit_code").write_text(f"{exit_code}\n")

    def _extract_results(self) -> str | None:
        if self._results_b64 is None:
            return None if self.exit_code is None else "no results payload before the exit line"
        try:
            raw = base64.b64decode(self._results_b64, validate=True)
            with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
                tar.extractall(self.results_dir, filter="data")
        except (binascii.Error, tarfile.TarError, OSError, EOFError) as e:
            return f"{type(e).__name__}: {e}"
        return None


def run(argv: Sequence[str], **kw) -> GuestResult:
    """Boot the POWER guest, run argv in its /src, return a GuestResult (see PowerRun)."""
    return PowerRun(argv, **kw).run()
