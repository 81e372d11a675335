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

import json
import os
import platform
import shutil
import sys
from pathlib import Path
from typing import IO, Sequence

from .build_kernel import cached_iommufd_kernel
from .initramfs import build_initramfs, find_busybox
from .kernel import GENERATIONS, Kernel, cached_kernel, cached_newest, pin_of
from .qemu import EXIT_FAILURE, EXIT_TIMEOUT, GuestResult, GuestUnavailable, QemuRun

__all__ = ["GuestRun", "run", "unavailable_reason", "qemu_command", "GuestResult",
           "GuestUnavailable", "guest_kernel", "EXIT_FAILURE", "EXIT_TIMEOUT", "VARIANTS", "DEVICE_KINDS"]

VARIANTS = ("intel", "amd", "virtio", "none")
DEVICE_KINDS = ("edu", "e1000e", "nvme", "igb")
QEMU = "qemu-system-x86_64"
AGENT = Path(__file__).with_name("agent.py")

#: 2 MiB hugetlbfs pages every x86 guest reserves at boot (vm/README.md: huge pages)
HUGEPAGES_2M = 32

#: variants whose vIOMMU offers no interrupt remapping: vfio_iommu_type1 (and iommufd) refuse
#: SET_IOMMU / attach with EPERM there unless allow_unsafe_interrupts=Y, which the agent sets
UNSAFE_INTERRUPTS = ("amd", "virtio")

# QEMU and kernel command line pieces per vIOMMU variant
_IOMMU_QEMU = {
    # QEMU 10 defaults: intel aw-bits=48 (7.2: 39), kept at 39 so the reported IOVA ranges stay
    # 0..0x7fffffffff; virtio aw-bits pinned at 64 (ranges end at 2^64-1, as on 7.2)
    "intel": ["-device", "intel-iommu,intremap=on,caching-mode=on,aw-bits=39"],
    # QEMU 10's amd-iommu with interrupt remapping on (its default, auto) loses the IOAPIC-routed
    # serial interrupt: the console stays silent until power-off. Without remapping, vfio needs
    # allow_unsafe_interrupts (as under virtio-iommu). pt=off: translated DMA for every device.
    "amd": ["-device", "amd-iommu,intremap=off,pt=off"],
    "virtio": ["-device", "virtio-iommu-pci,aw-bits=64"],
    "none": [],
}
_IOMMU_CMDLINE = {
    "intel": ["intel_iommu=on"],
    "amd": ["amd_iommu=on"],
    "virtio": [],
    "none": ["intel_iommu=off", "amd_iommu=off"],
}
_DEVICE_QEMU = {
    # a full 64-bit DMA mask: QEMU's default is 28 bits and it clamps higher addresses silently
    # (EduDevice still assumes 28 bits unless told: EduDevice(dev, dma_mask=...))
    "edu": ["-device", "edu,dma_mask=0xffffffffffffffff"],
    # igb (QEMU 8+): a PF with SR-IOV (7 VFs), behind its own PCIe root port so that a secondary
    # bus reset (VFIO_DEVICE_PCI_HOT_RESET) has a device to reset and its VFs a bus to sit on
    "igb": ["-device", "pcie-root-port,id=pyvfio-rp1,chassis=1,slot=1",
            "-device", "igb,bus=pyvfio-rp1"],
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


def unavailable_reason(kernel: Kernel | None = None) -> str | None:
    """Why no guest can start here, or None when one can."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return f"the x86_64 guest needs an x86_64 host (this is {platform.machine()})"
    if shutil.which(QEMU) is None:
        return f"{QEMU} is not installed: run tools/dev setup"
    if (kernel or cached_kernel("amd64")) is None:
        return "the guest kernel is not cached: run tools/dev setup"
    if find_busybox() is None:
        return "busybox-static is not installed: run tools/dev setup"
    return None


def guest_kernel(generation: str = "stable") -> Kernel:
    """The cached kernel of a generation: ``stable`` (Debian's pinned stable-series kernel),
    ``newest`` (the newest Debian series, vm/kernel.py NEWEST) or ``built`` (ours,
    vm/build_kernel.py: iommufd, the compat container, mdev samples, IOMMUFD_TEST, debugfs)."""
    if generation not in GENERATIONS:
        raise ValueError(f"kernel generation must be one of {', '.join(GENERATIONS)}, not {generation!r}")
    if generation == "built":
        k = cached_iommufd_kernel()
        if k is None:
            raise GuestUnavailable("our kernel is not built: run python -m vm build-kernel")
        return k
    k = cached_kernel("amd64") if generation == "stable" else cached_newest()
    if k is None:
        raise GuestUnavailable(f"the {generation} guest kernel is not cached: run tools/dev setup")
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
              # 32 x 2 MiB hugetlbfs pages reserved at boot (1 GiB pages need more guest memory)
              "hugepagesz=2M", f"hugepages={HUGEPAGES_2M}",
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


class GuestRun(QemuRun):
    """One x86 guest run, started with start() and finished with wait() (or run() for both)."""

    def __init__(self, argv: Sequence[str], *, iommu: str = "intel", timeout: float = 300.0,
                 devices: Sequence[str] = ("edu", "e1000e"), bind: Sequence[str] = ("edu",),
                 cwd: str | os.PathLike | None = None, env: dict[str, str] | None = None,
                 results_dir: str | os.PathLike | None = None,
                 stream: IO[str] | None | bool = True, tail_lines: int = 60,
                 iommufd: bool = False, kernel: str | None = None, memory: str = "1G",
                 smp: int = 1, python: str | None = None) -> None:
        devices = list(dict.fromkeys(["edu", *devices]))
        for b in bind:
            if b not in devices:
                raise ValueError(f"cannot bind {b!r}: it is not among the devices {devices}")
        if iommu not in VARIANTS:
            raise ValueError(f"iommu must be one of {', '.join(VARIANTS)}, not {iommu!r}")
        super().__init__(argv, timeout=timeout, variant=iommu, results_dir=results_dir,
                         stream=stream, tail_lines=tail_lines)
        self.argv = [str(a) for a in argv]
        self.iommu = iommu
        self.devices = devices
        self.bind = list(bind)
        self.cwd = str(Path(cwd or os.getcwd()).resolve())
        self.env = env
        # iommufd=True is the older spelling of kernel="built"
        self.kernel = kernel or ("built" if iommufd else "stable")
        if self.kernel not in GENERATIONS:
            raise ValueError(f"kernel must be one of {', '.join(GENERATIONS)}, not {self.kernel!r}")
        self.iommufd = self.kernel == "built"
        self.memory = memory
        self.smp = smp
        self.python = python or sys.executable

    # -- the x86 machine -----------------------------------------------------------------------
    def unavailable_reason(self) -> str | None:
        return unavailable_reason()

    def _prepare(self) -> list[str]:
        kernel = guest_kernel(self.kernel)
        initrd = build_initramfs(kernel)
        for stale in ("exit_code", "guest-info.json", "restore.json"):
            (self.results_dir / stale).unlink(missing_ok=True)
        env = dict(os.environ if self.env is None else self.env)
        for k in _ENV_DROP:
            env.pop(k, None)
        env.setdefault("HOME", "/root")
        env["PYVFIO_GUEST_KERNEL"] = self.kernel
        job = {"argv": self.argv, "cwd": self.cwd, "env": env, "variant": self.iommu,
               "kernel_generation": self.kernel, "kernel_pin": pin_of(kernel),
               "bind": self.bind, "results_dir": str(self.results_dir),
               "allow_unsafe_interrupts": self.iommu in UNSAFE_INTERRUPTS}
        (self.results_dir / "job.json").write_text(json.dumps(job, indent=1))
        return qemu_command(kernel, initrd, self.results_dir, iommu=self.iommu,
                            devices=self.devices, memory=self.memory, smp=self.smp,
                            python=self.python)

    def _drop(self, line: str) -> bool:
        return line.endswith(_EXPECTED_QEMU_NOISE)

    def _job_exit_code(self) -> int | None:
        """The agent's ``exit_code`` file in the results share (written last, atomically)."""
        ec = self.results_dir / "exit_code"
        if not ec.exists():
            return None
        try:
            return int(ec.read_text().strip())
        except ValueError:
            return None


def run(argv: Sequence[str], **kw) -> GuestResult:
    """Boot a guest, run argv in it, return a GuestResult (see GuestRun for the options)."""
    return GuestRun(argv, **kw).run()
