"""Run a command inside a QEMU (TCG, q35) guest with a vIOMMU, an edu device and the host root.

    >>> from vm.guest import run
    >>> r = run(["python", "-c", "print(1)"], iommu="intel", timeout=120)
    >>> r.exit_code, r.status, r.duration, r.results_dir

The guest boots the pinned Debian kernel (vm/kernel.py) with a busybox initramfs (vm/init.sh),
mounts the host's / read-only over virtio-9p under a tmpfs overlay (writes stay in the guest),
binds the chosen devices to vfio-pci (vm/agent.py) and runs the command as root in the host's
current directory with the host's environment, so the host venv works as is.  Its exit code comes
back through a second, read-write 9p share (the results directory, mounted in the guest at the
same path as on the host).  QEMU dying, a kernel panic or a time-out is a failure
(``status != "ok"``) that carries the tail of the console.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Callable, Sequence

from .initramfs import build_initramfs, find_busybox
from .kernel import Kernel, cached_kernel

VARIANTS = ("intel", "amd", "virtio", "none")
DEVICE_KINDS = ("edu", "e1000e", "nvme")
QEMU = "qemu-system-x86_64"
AGENT = Path(__file__).with_name("agent.py")

# kernel command line pieces per vIOMMU variant
_IOMMU_QEMU = {
    "intel": ["-device", "intel-iommu,intremap=on,caching-mode=on"],
    "amd": ["-device", "amd-iommu"],
    "virtio": ["-device", "virtio-iommu-pci"],
    "none": [],
}
_IOMMU_CMDLINE = {
    "intel": ["intel_iommu=on"],
    "amd": ["amd_iommu=on"],
    "virtio": [],
    "none": ["intel_iommu=off", "amd_iommu=off"],
}
_DEVICE_QEMU = {
    "edu": ["-device", "edu"],
    "e1000e": ["-device", "e1000e"],
    "nvme": ["-drive", "if=none,id=pyvfio-nvm,file=null-co://,format=raw",
             "-device", "nvme,serial=pyvfio0001,drive=pyvfio-nvm"],
}
# host environment variables not passed to the job
_ENV_DROP = {"PWD", "OLDPWD", "SHLVL", "_", "DISPLAY", "SSH_AUTH_SOCK", "SSH_CONNECTION",
             "SSH_CLIENT", "SSH_TTY", "TMUX", "TMUX_PANE", "XDG_RUNTIME_DIR", "DBUS_SESSION_BUS_ADDRESS"}

# QEMU's warning for a NIC without a network backend: the guest's NICs are there to be bound and
# enumerated, never to carry traffic, so they get no backend on purpose
_EXPECTED_QEMU_NOISE = ("has no peer\n",)

EXIT_TIMEOUT = 124  # `python -m vm run` exit code when the guest timed out
EXIT_FAILURE = 125  # ... when the guest failed without an exit code (QEMU died, panic, no boot)


class GuestUnavailable(RuntimeError):
    """No guest can be started here (non-x86 host, QEMU or the kernel missing)."""


@dataclasses.dataclass(frozen=True)
class GuestResult:
    """What a guest run produced.

    status: "ok" (the job ran and returned exit_code), "timeout", "qemu-died" (QEMU ended
    without the job's exit code: killed, crashed, refused its arguments), "panic" (the guest
    kernel panicked).  exit_code is None unless status is "ok".
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


def unavailable_reason(kernel: Kernel | None = None) -> str | None:
    """Why no guest can start here, or None when one can."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return f"the x86_64 guest needs an x86_64 host (this is {platform.machine()})"
    if shutil.which(QEMU) is None:
        return f"{QEMU} is not installed: run tools/dev setup"
    if (kernel or cached_kernel("amd64")) is None:
        return "the guest kernel is not cached: run tools/dev setup"
    if find_busybox() is None or shutil.which("cpio") is None:
        return "busybox-static/cpio are not installed: run tools/dev setup"
    return None


def _guest_kernel(iommufd: bool) -> Kernel:
    if iommufd:
        from .build_kernel import cached_iommufd_kernel
        k = cached_iommufd_kernel()
        if k is None:
            raise GuestUnavailable("the iommufd kernel is not built: run python -m vm build-kernel")
        return k
    k = cached_kernel("amd64")
    if k is None:
        raise GuestUnavailable("the guest kernel is not cached: run tools/dev setup")
    return k


def qemu_command(kernel: Kernel, initrd: Path, results_dir: Path, *, iommu: str,
                 devices: Sequence[str], memory: str = "1G", smp: int = 1,
                 python: str, extra_append: Sequence[str] = (), cpu: str = "max") -> list[str]:
    """The QEMU argv for one guest run."""
    if iommu not in VARIANTS:
        raise ValueError(f"iommu must be one of {', '.join(VARIANTS)}, not {iommu!r}")
    for d in devices:
        if d not in _DEVICE_QEMU:
            raise ValueError(f"unknown device {d!r}; known: {', '.join(_DEVICE_QEMU)}")
    modules = kernel.modules_dir if kernel.modules_dir.is_dir() else None
    append = ["console=ttyS0", "quiet", "loglevel=4", "panic=-1", "oops=panic", "mitigations=off",
              "tsc=reliable", "no_timer_check", "rdinit=/init", "pyvfio.variant=" + iommu,
              f"pyvfio.results={results_dir}", f"pyvfio.agent={AGENT}", f"pyvfio.python={python}",
              *_IOMMU_CMDLINE[iommu], *extra_append]
    if modules is not None:
        append.append(f"pyvfio.modules={modules}")
    machine = "q35,kernel-irqchip=split" if iommu in ("intel", "amd") else "q35"
    cmd = [QEMU, "-accel", "tcg", "-cpu", cpu, "-smp", str(smp), "-m", memory,
           "-M", machine, "-nodefaults", "-display", "none", "-no-reboot", "-no-user-config",
           "-chardev", "stdio,id=pyvfio-con,signal=off", "-serial", "chardev:pyvfio-con",
           "-kernel", str(kernel.image), "-initrd", str(initrd), "-append", " ".join(append),
           *_IOMMU_QEMU[iommu]]
    for d in dict.fromkeys(devices):  # ordered, de-duplicated
        cmd += _DEVICE_QEMU[d]
    cmd += ["-fsdev", "local,id=pyvfio-root,path=/,readonly=on,security_model=none,multidevs=remap",
            "-device", "virtio-9p-pci,fsdev=pyvfio-root,mount_tag=hostroot",
            "-fsdev", f"local,id=pyvfio-res,path={results_dir},security_model=none,multidevs=remap",
            "-device", "virtio-9p-pci,fsdev=pyvfio-res,mount_tag=results"]
    return cmd


class GuestRun:
    """One guest run, started with start() and finished with wait() (or run() for both)."""

    def __init__(self, argv: Sequence[str], *, iommu: str = "intel", timeout: float = 300.0,
                 devices: Sequence[str] = ("edu", "e1000e"), bind: Sequence[str] = ("edu",),
                 cwd: str | os.PathLike | None = None, env: dict[str, str] | None = None,
                 results_dir: str | os.PathLike | None = None,
                 stream: IO[str] | None | bool = True, tail_lines: int = 60,
                 iommufd: bool = False, memory: str = "1G", smp: int = 1,
                 python: str | None = None) -> None:
        if not argv:
            raise ValueError("argv must name a command")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        devices = list(dict.fromkeys(["edu", *devices]))
        for b in bind:
            if b not in devices:
                raise ValueError(f"cannot bind {b!r}: it is not among the devices {devices}")
        if iommu not in VARIANTS:
            raise ValueError(f"iommu must be one of {', '.join(VARIANTS)}, not {iommu!r}")
        self.argv = [str(a) for a in argv]
        self.iommu = iommu
        self.timeout = timeout
        self.devices = devices
        self.bind = list(bind)
        self.cwd = str(Path(cwd or os.getcwd()).resolve())
        self.env = env
        self.iommufd = iommufd
        self.memory = memory
        self.smp = smp
        self.python = python or sys.executable
        if results_dir is None:
            self.results_dir = Path(tempfile.mkdtemp(prefix=f"pyvfio-guest-{iommu}-"))
        else:
            self.results_dir = Path(results_dir).resolve()
            self.results_dir.mkdir(parents=True, exist_ok=True)
        if stream is True:
            self._out: IO[str] | None = sys.stdout
        elif stream is False:
            self._out = None
        else:
            self._out = stream
        self._tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self._proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._t0 = 0.0
        self.boot_seconds: float | None = None
        self._line_callbacks: list[Callable[[str], None]] = []

    # -- public --------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        """QEMU's process id once started."""
        return self._proc.pid if self._proc else None

    def on_line(self, callback: Callable[[str], None]) -> None:
        """Call callback(line) for every console line (from the reader thread)."""
        self._line_callbacks.append(callback)

    def start(self) -> "GuestRun":
        reason = unavailable_reason()
        if reason:
            raise GuestUnavailable(reason)
        kernel = _guest_kernel(self.iommufd)
        initrd = build_initramfs(kernel)
        for stale in ("exit_code", "guest-info.json", "restore.json"):
            (self.results_dir / stale).unlink(missing_ok=True)
        env = dict(os.environ if self.env is None else self.env)
        for k in _ENV_DROP:
            env.pop(k, None)
        env.setdefault("HOME", "/root")
        job = {"argv": self.argv, "cwd": self.cwd, "env": env, "variant": self.iommu,
               "bind": self.bind, "results_dir": str(self.results_dir),
               "allow_unsafe_interrupts": self.iommu == "virtio"}
        (self.results_dir / "job.json").write_text(json.dumps(job, indent=1))
        cmd = qemu_command(kernel, initrd, self.results_dir, iommu=self.iommu,
                           devices=self.devices, memory=self.memory, smp=self.smp,
                           python=self.python)
        (self.results_dir / "qemu.cmd").write_text(" ".join(cmd) + "\n")
        self._console = open(self.results_dir / "console.log", "w", errors="replace")
        self._t0 = time.monotonic()
        self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def wait(self) -> GuestResult:
        assert self._proc is not None, "start() first"
        remaining = self.timeout - (time.monotonic() - self._t0)
        timed_out = False
        try:
            self._proc.wait(timeout=max(remaining, 0))
        except subprocess.TimeoutExpired:
            timed_out = True
            self._kill()
        if self._reader:
            self._reader.join(timeout=10)
        duration = time.monotonic() - self._t0
        self._console.close()
        tail = "\n".join(self._tail)
        exit_code = None
        ec = self.results_dir / "exit_code"
        if ec.exists():
            try:
                exit_code = int(ec.read_text().strip())
            except ValueError:
                exit_code = None
        if timed_out:
            status = "timeout"
        elif exit_code is not None:
            status = "ok"
        elif "Kernel panic" in tail:
            status = "panic"
        else:
            status = "qemu-died"
        if status != "ok":
            exit_code = None
        return GuestResult(status=status, exit_code=exit_code, console_tail=tail,
                           duration=duration, results_dir=self.results_dir,
                           qemu_returncode=self._proc.returncode, boot_seconds=self.boot_seconds,
                           variant=self.iommu)

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
        for raw in self._proc.stdout:
            line = raw.decode("utf-8", "replace").replace("\r", "")
            if line.endswith(_EXPECTED_QEMU_NOISE):
                continue
            if self.boot_seconds is None and line.startswith("pyvfio-guest: up"):
                self.boot_seconds = time.monotonic() - self._t0
            self._console.write(line)
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


def run(argv: Sequence[str], **kw) -> GuestResult:
    """Boot a guest, run argv in it, return a GuestResult (see GuestRun for the options)."""
    return GuestRun(argv, **kw).run()
