"""``pyvfio doctor``: check a host for VFIO passthrough and explain every problem found.

Each check reads the kernel's files through :class:`~pyvfio.services.discovery.HostPaths` (so tests
point it at a fake /sys + /proc + /dev tree) and returns a :class:`CheckResult`: a status
(ok / warn / fail / skip), a one-line summary, the evidence it was based on, and a fix hint.

Checks: ``iommu`` (present and enabled: ACPI DMAR/IVRS vs kernel command line vs
/sys/class/iommu), ``interrupt-remapping`` (IR-* irq chips, allow_unsafe_interrupts),
``modules``, ``group-viability`` (offending sibling named), ``memlock`` (RLIMIT_MEMLOCK against
the guest size), ``dma-entry-limit`` (vfio_iommu_type1 against the planned mapping count),
``hugepages``, ``movable-memory`` (ZONE_MOVABLE/CMA that long-term pinning must migrate out of),
``boot-framebuffer`` (/proc/iomem), ``reset`` (reset_method), ``vfio-nodes`` (/dev/vfio/N
missing or held by another process), ``device-use`` (host use of the devices asked about),
``kernel-log`` (RMRR and IOMMU faults), ``kvm`` (/dev/kvm access).
"""

from __future__ import annotations

import enum
import errno
import os
import platform
import re
from dataclasses import dataclass, field
from typing import Callable

from ..errors import ArgumentError
from ..util.proc import has_cap_ipc_lock, parse_status, status_bytes
from .binding import _read, find_uses, vfio_holders, vfio_nodes
from .discovery import DeviceSource, HostPaths, IommuGroup, PciDevice, is_vfio_driver

GiB = 1 << 30
#: Mapping count assumed when the caller plans none: QEMU without a vIOMMU maps a handful of
#: RAM regions, with a vIOMMU the guest maps per page; 4096 covers a small vIOMMU guest.
DEFAULT_MAPPINGS = 4096
DEFAULT_GUEST_MEMORY = 1 * GiB


class Status(str, enum.Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check."""

    name: str
    status: Status
    summary: str
    evidence: tuple[str, ...] = ()
    hint: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {"check": self.name, "status": self.status.value, "summary": self.summary,
                "evidence": list(self.evidence), "hint": self.hint}


@dataclass
class DoctorOptions:
    guest_memory: int = DEFAULT_GUEST_MEMORY
    mappings: int = DEFAULT_MAPPINGS
    #: Process whose limits and capabilities are checked ("self": the doctor itself).
    pid: str = "self"
    #: Devices the operator means to pass through (besides those already on vfio-pci).
    devices: list[str] = field(default_factory=list)


@dataclass
class Report:
    results: list[CheckResult]

    @property
    def worst(self) -> Status:
        order = [Status.FAIL, Status.WARN, Status.OK, Status.SKIP]
        for s in order:
            if any(r.status is s for r in self.results):
                return s
        return Status.SKIP

    @property
    def failed(self) -> bool:
        return any(r.status is Status.FAIL for r in self.results)

    def by_name(self, name: str) -> CheckResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(name)

    def to_dict(self) -> dict[str, object]:
        counts = {s.value: sum(r.status is s for r in self.results) for s in Status}
        return {"ok": not self.failed, "worst": self.worst.value, "counts": counts,
                "checks": [r.to_dict() for r in self.results]}


# -- helpers ---------------------------------------------------------------------------------------
def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def _param(paths: HostPaths, module: str, name: str) -> str | None:
    v = _read(os.path.join(paths.sys, "module", module, "parameters", name))
    return None if v is None else v.strip()


def _yes(v: str | None) -> bool:
    return (v or "").strip().upper() in ("Y", "1")


def human(n: int) -> str:
    """Bytes as a short binary-unit string (``1.5 GiB``)."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            v = n / size
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{n} B"


def read_kmsg(path: str) -> list[str] | None:
    """The kernel log's messages from /dev/kmsg (records ``prio,seq,ts,flags;text``), or None
    when it cannot be read (no root, dmesg_restrict). A plain file in the same format works too."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    out: list[str] = []
    try:
        chunks = []
        while True:
            try:
                data = os.read(fd, 8192)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.EPIPE:  # record overwritten while reading: go on
                    continue
                if e.errno == errno.EINVAL:
                    break
                return None
            if not data:
                break
            chunks.append(data)
        for line in b"".join(chunks).decode("utf-8", "replace").splitlines():
            if not line or line.startswith(" "):  # continuation (KEY=value) lines
                continue
            out.append(line.split(";", 1)[1] if ";" in line else line)
    finally:
        os.close(fd)
    return out


# -- the checks -------------------------------------------------------------------------------------
class Doctor:
    """Runs the checks against one host (real or fake)."""

    def __init__(
        self,
        source: DeviceSource,
        paths: HostPaths,
        options: DoctorOptions | None = None,
        *,
        node_exists: Callable[[int], bool] | None = None,
        kernel_log: Callable[[], list[str] | None] | None = None,
        machine: str | None = None,
        interrupt_remapping: Callable[[], bool] | None = None,
    ) -> None:
        self.source = source
        self.paths = paths
        self.opts = options or DoctorOptions()
        self.node_exists = node_exists or (lambda n: os.path.exists(os.path.join(paths.dev, "vfio", str(n))))
        self.kernel_log = kernel_log or (lambda: read_kmsg(os.path.join(paths.dev, "kmsg")))
        self.machine = machine or platform.machine()
        #: Overrides how IR is detected (the mock kernel knows it per group; no /proc/interrupts).
        self.interrupt_remapping = interrupt_remapping
        self._log: list[str] | None | bool = False
        self.devices = source.devices()
        self.groups = source.groups()

    def log(self) -> list[str] | None:
        if self._log is False:
            self._log = self.kernel_log()
        return self._log  # type: ignore[return-value]

    def vfio_devices(self) -> list[PciDevice]:
        return [d for d in self.devices if is_vfio_driver(d.driver)]

    def wanted(self) -> list[PciDevice]:
        """Devices on vfio plus those the operator named, in BDF order."""
        named = [self.source.device(b) for b in self.opts.devices]
        seen = {d.bdf for d in named}
        return sorted(named + [d for d in self.vfio_devices() if d.bdf not in seen], key=lambda d: d.bdf)

    def run(self, only: list[str] | None = None) -> Report:
        checks: list[tuple[str, Callable[[], CheckResult]]] = [
            ("iommu", self.check_iommu),
            ("interrupt-remapping", self.check_interrupt_remapping),
            ("modules", self.check_modules),
            ("group-viability", self.check_group_viability),
            ("memlock", self.check_memlock),
            ("dma-entry-limit", self.check_dma_entry_limit),
            ("hugepages", self.check_hugepages),
            ("movable-memory", self.check_movable_memory),
            ("boot-framebuffer", self.check_boot_framebuffer),
            ("reset", self.check_reset),
            ("vfio-nodes", self.check_vfio_nodes),
            ("device-use", self.check_device_use),
            ("kernel-log", self.check_kernel_log),
            ("kvm", self.check_kvm),
        ]
        results = []
        for name, fn in checks:
            if only and name not in only:
                continue
            try:
                results.append(fn())
            except Exception as e:  # a broken check must not hide the others
                results.append(CheckResult(name, Status.SKIP, f"check could not run: {e}", (repr(e),)))
        return Report(results)

    # 1. IOMMU present and enabled
    def check_iommu(self) -> CheckResult:
        p = self.paths
        tables = _listdir(os.path.join(p.sys, "firmware", "acpi", "tables"))
        acpi = [t for t in ("DMAR", "IVRS", "VIOT") if t in tables]
        cmdline = (_read(os.path.join(p.proc, "cmdline")) or "").split()
        iommu_args = [a for a in cmdline if re.match(r"(intel_iommu|amd_iommu|iommu|iommu\.\w+)=", a)]
        units = _listdir(os.path.join(p.sys, "class", "iommu"))
        groups = _listdir(os.path.join(p.sys, "kernel", "iommu_groups"))
        noiommu = _yes(_param(p, "vfio", "enable_unsafe_noiommu_mode"))
        ev = [f"ACPI tables: {', '.join(acpi) or 'no DMAR/IVRS/VIOT'}",
              f"kernel command line IOMMU options: {' '.join(iommu_args) or 'none'}",
              f"/sys/class/iommu: {', '.join(units) or 'empty'}",
              f"IOMMU groups: {len(groups)}"]
        if noiommu:
            ev.append("vfio enable_unsafe_noiommu_mode=Y")
        if units and groups:
            extra = " (iommu=pt: host devices bypass translation, VFIO groups are still isolated)" \
                if "iommu=pt" in cmdline else ""
            return CheckResult("iommu", Status.OK, f"IOMMU enabled: {', '.join(units)}, {len(groups)} groups{extra}", tuple(ev))
        if groups and noiommu:
            return CheckResult("iommu", Status.WARN, "no IOMMU; VFIO runs in unsafe no-IOMMU mode (no DMA isolation)",
                               tuple(ev), "enable the IOMMU (see below) and set enable_unsafe_noiommu_mode=N")
        if groups:
            return CheckResult("iommu", Status.OK, f"{len(groups)} IOMMU groups present", tuple(ev))
        off = [a for a in iommu_args if a.endswith("=off")]
        if off and acpi:
            return CheckResult("iommu", Status.FAIL, f"IOMMU disabled on the kernel command line ({' '.join(off)})",
                               tuple(ev), f"remove {' '.join(off)} from the kernel command line and reboot")
        if "DMAR" in acpi:
            return CheckResult("iommu", Status.FAIL, "firmware has an Intel VT-d unit (ACPI DMAR) but the kernel did not enable it",
                               tuple(ev), "add intel_iommu=on to the kernel command line (GRUB_CMDLINE_LINUX) and reboot")
        if "IVRS" in acpi:
            return CheckResult("iommu", Status.FAIL, "firmware has an AMD-Vi unit (ACPI IVRS) but the kernel did not enable it",
                               tuple(ev), "add amd_iommu=on iommu=pt to the kernel command line; check the module/firmware IOMMU option")
        also = f"; then remove {' '.join(off)} from the kernel command line" if off else ""
        return CheckResult("iommu", Status.FAIL, "no IOMMU: the firmware describes none and the kernel found none",
                           tuple(ev), "enable VT-d / AMD-Vi (\"IOMMU\") in the firmware setup; in a QEMU guest add "
                                      "-device intel-iommu,intremap=on (q35, kernel-irqchip=split), amd-iommu or "
                                      "virtio-iommu-pci" + also)

    # 2. interrupt remapping
    def check_interrupt_remapping(self) -> CheckResult:
        p = self.paths
        name = "interrupt-remapping"
        if not _listdir(os.path.join(p.sys, "kernel", "iommu_groups")):
            return CheckResult(name, Status.SKIP, "no IOMMU, nothing to remap with")
        unsafe = {m: _param(p, m, "allow_unsafe_interrupts") for m in ("vfio_iommu_type1", "iommufd")}
        ev = [f"{m} allow_unsafe_interrupts={v}" for m, v in unsafe.items() if v is not None]
        if self.interrupt_remapping is not None:
            if self.interrupt_remapping():
                return CheckResult(name, Status.OK, "interrupt remapping enabled (reported by the kernel)", tuple(ev))
            chips: list[str] = []
        elif self.machine not in ("x86_64", "i686", "i386"):
            return CheckResult(name, Status.SKIP, f"MSI isolation on {self.machine} is not read from IR irq chips",
                               tuple(ev))
        else:
            irq = _read(os.path.join(p.proc, "interrupts"))
            chips = sorted({w for w in (irq or "").split() if w.startswith("IR-")})
        log = self.log() or []
        ir_log = [m for m in log if re.search(r"Enabled IRQ remapping|Interrupt remapping enabled|IRQ remapping", m)]
        ev += [f"/proc/interrupts IR chips: {', '.join(chips) or 'none'}"] + ir_log[-2:]
        if chips or any("Enabled IRQ remapping" in m or "remapping enabled" in m for m in ir_log):
            return CheckResult(name, Status.OK, "interrupt remapping enabled", tuple(ev))
        if any(_yes(v) for v in unsafe.values()):
            return CheckResult(name, Status.WARN, "no interrupt remapping; VFIO allowed anyway (allow_unsafe_interrupts=Y): "
                               "an assigned device can inject arbitrary MSIs into the host", tuple(ev),
                               "use an IOMMU with interrupt remapping (intel-iommu intremap=on, AMD-Vi) and set "
                               "allow_unsafe_interrupts=N where the devices are not fully trusted")
        return CheckResult(name, Status.FAIL, "no interrupt remapping: VFIO_SET_IOMMU will fail with EPERM "
                           "(dmesg: \"No interrupt remapping support\")", tuple(ev),
                           "enable interrupt remapping (do not boot with intremap=off or nox2apic; QEMU: "
                           "-device intel-iommu,intremap=on). Unsafe, trusted devices only: echo 1 > "
                           "/sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts")

    # 3. modules
    def check_modules(self) -> CheckResult:
        p = self.paths
        mods = {m: os.path.isdir(os.path.join(p.sys, "module", m))
                for m in ("vfio", "vfio_pci", "vfio_iommu_type1", "iommufd")}
        ev = tuple(f"{m}: {'loaded' if v else 'not loaded'}" for m, v in mods.items())
        missing = [m for m in ("vfio", "vfio_pci") if not mods[m]]
        if not mods["vfio_iommu_type1"] and not mods["iommufd"]:
            missing.append("vfio_iommu_type1")
        if missing:
            return CheckResult("modules", Status.WARN, f"not loaded: {', '.join(missing)}", ev,
                               "modprobe vfio-pci vfio_iommu_type1 (or list them in /etc/modules-load.d/vfio.conf)")
        return CheckResult("modules", Status.OK, "vfio, vfio_pci and an IOMMU backend are loaded", ev)

    # 4. group viability
    def check_group_viability(self) -> CheckResult:
        name = "group-viability"
        want = self.wanted()
        nums = sorted({d.iommu_group for d in want if d.iommu_group is not None})
        if not want:
            return CheckResult(name, Status.SKIP, "no device on vfio-pci and none named with --device")
        ev, bad = [], []
        for d in want:
            if d.iommu_group is None:
                bad.append(f"{d.bdf} has no IOMMU group")
        for n in nums:
            g: IommuGroup = self.groups[n]
            v = g.viability
            members = ", ".join(f"{m.bdf} ({m.driver or 'no driver'})" for m in g.devices)
            ev.append(f"group {n}: {members}"
                      f" -> {'viable' if v.viable else 'NOT viable'}")
            if not v.viable:
                named = {x.bdf for x in want}
                # named devices will be rebound by the operator; only the others block
                blockers = [b for b in v.blockers if b.bdf not in named or is_vfio_driver(b.driver)]
                for b in blockers or v.blockers:
                    bad.append(f"group {n}: sibling {b.bdf} ({b.ids}, {b.class_name}) is on host driver {b.driver}")
        if bad:
            return CheckResult(name, Status.FAIL, "; ".join(bad), tuple(ev),
                               "bind every member of the group to vfio-pci (`pyvfio bind --whole-group BDF`) or "
                               "unbind the sibling; if the sibling is unrelated hardware, move the card to a slot "
                               "with its own group (ACS)")
        return CheckResult(name, Status.OK, f"groups {', '.join(map(str, nums))} viable", tuple(ev))

    # 5. RLIMIT_MEMLOCK
    def check_memlock(self) -> CheckResult:
        name = "memlock"
        pid = self.opts.pid
        limits = _read(os.path.join(self.paths.proc, pid, "limits"))
        status = parse_status(_read(os.path.join(self.paths.proc, pid, "status")) or "")
        need = self.opts.guest_memory
        if limits is None:
            return CheckResult(name, Status.SKIP, f"cannot read /proc/{pid}/limits")
        soft: int | None = None
        for line in limits.splitlines():
            if line.startswith("Max locked memory"):
                f = line[len("Max locked memory"):].split()
                soft = None if f[0] == "unlimited" else int(f[0])
                hard = f[1]
                break
        else:
            return CheckResult(name, Status.SKIP, "no 'Max locked memory' line in limits")
        vmlck = status_bytes("VmLck", status)
        has_cap = has_cap_ipc_lock(status)
        ev = (f"process {pid}: RLIMIT_MEMLOCK soft {'unlimited' if soft is None else human(soft)}, hard "
              f"{hard if hard == 'unlimited' else human(int(hard))}",
              f"CAP_IPC_LOCK: {'yes' if has_cap else 'no'}",
              f"VmLck: {'?' if vmlck is None else human(vmlck)}",
              f"guest memory to pin: {human(need)}")
        if soft is None or soft >= need:
            return CheckResult(name, Status.OK, f"RLIMIT_MEMLOCK allows pinning {human(need)}", ev)
        if has_cap:
            return CheckResult(name, Status.OK, f"RLIMIT_MEMLOCK {human(soft)} < {human(need)}, but the process has "
                               "CAP_IPC_LOCK, so VFIO does not enforce it", ev,
                               "a VMM without CAP_IPC_LOCK (libvirt's qemu user) needs the limit raised")
        return CheckResult(name, Status.FAIL, f"RLIMIT_MEMLOCK {human(soft)} is below the {human(need)} VFIO must pin: "
                           "VFIO_IOMMU_MAP_DMA will fail with ENOMEM", ev,
                           f"raise it to at least {human(need)}: `ulimit -l unlimited`, `prlimit --memlock="
                           f"{need}:{need} --pid PID`, LimitMEMLOCK= in the systemd unit, or a memlock line in "
                           "/etc/security/limits.conf")

    # 6. dma_entry_limit
    def check_dma_entry_limit(self) -> CheckResult:
        name = "dma-entry-limit"
        v = _param(self.paths, "vfio_iommu_type1", "dma_entry_limit")
        if v is None:
            return CheckResult(name, Status.SKIP, "vfio_iommu_type1 not loaded", (),
                               "modprobe vfio_iommu_type1")
        limit = int(v)
        want = self.opts.mappings
        ev = (f"vfio_iommu_type1 dma_entry_limit={limit}", f"planned mappings: {want}")
        if limit < want:
            return CheckResult(name, Status.FAIL, f"dma_entry_limit {limit} is below the {want} planned mappings: "
                               "MAP_DMA will fail with ENOSPC", ev,
                               f"echo {max(want, 65535)} > /sys/module/vfio_iommu_type1/parameters/dma_entry_limit "
                               f"(persist: options vfio_iommu_type1 dma_entry_limit={max(want, 65535)} in /etc/modprobe.d/)")
        return CheckResult(name, Status.OK, f"dma_entry_limit {limit} >= {want} planned mappings", ev)

    # 7. hugepages
    def check_hugepages(self) -> CheckResult:
        name = "hugepages"
        base = os.path.join(self.paths.sys, "kernel", "mm", "hugepages")
        sizes = []
        for d in _listdir(base):
            m = re.match(r"hugepages-(\d+)kB", d)
            if m:
                free = int((_read(os.path.join(base, d, "free_hugepages")) or "0").strip() or 0)
                total = int((_read(os.path.join(base, d, "nr_hugepages")) or "0").strip() or 0)
                sizes.append((int(m.group(1)) * 1024, total, free))
        if not sizes:
            info = _read(os.path.join(self.paths.proc, "meminfo")) or ""
            kv = {k.strip(): v.split() for k, v in (ln.split(":", 1) for ln in info.splitlines() if ":" in ln)}
            if "Hugepagesize" in kv:
                sizes.append((int(kv["Hugepagesize"][0]) * 1024, int(kv.get("HugePages_Total", ["0"])[0]),
                              int(kv.get("HugePages_Free", ["0"])[0])))
        if not sizes:
            return CheckResult(name, Status.SKIP, "the kernel reports no hugepage sizes")
        free_bytes = sum(s * f for s, _, f in sizes)
        ev = tuple(f"{human(s)} pages: {t} reserved, {f} free" for s, t, f in sizes)
        need = self.opts.guest_memory
        if free_bytes >= need:
            return CheckResult(name, Status.OK, f"{human(free_bytes)} of hugepages free for a {human(need)} guest", ev)
        hint = (f"reserve {human(need)} of hugepages: echo {need // sizes[0][0]} > /proc/sys/vm/nr_hugepages, or "
                "hugepagesz=1G hugepages=N on the kernel command line (boot-time pages stay outside ZONE_MOVABLE)")
        if free_bytes == 0:
            return CheckResult(name, Status.WARN, "no free hugepages: guest RAM on 4 KiB pages pins and maps more "
                               "slowly and needs more IOMMU entries", ev, hint)
        return CheckResult(name, Status.WARN, f"only {human(free_bytes)} of hugepages free for a {human(need)} guest", ev, hint)

    # 8. ZONE_MOVABLE / CMA
    def check_movable_memory(self) -> CheckResult:
        name = "movable-memory"
        zi = _read(os.path.join(self.paths.proc, "zoneinfo"))
        info = _read(os.path.join(self.paths.proc, "meminfo")) or ""
        if zi is None and not info:
            return CheckResult(name, Status.SKIP, "no /proc/zoneinfo or /proc/meminfo")
        movable = 0
        zone = None
        for line in (zi or "").splitlines():
            m = re.match(r"Node\s+(\d+),\s+zone\s+(\w+)", line)
            if m:
                zone = m.group(2)
                continue
            f = line.split()
            if zone == "Movable" and len(f) == 2 and f[0] == "present":
                movable += int(f[1]) * 4096
        cma = 0
        for line in info.splitlines():
            if line.startswith("CmaTotal:"):
                cma = int(line.split()[1]) * 1024
        ev = (f"ZONE_MOVABLE present: {human(movable)}", f"CMA total: {human(cma)}")
        if movable or cma:
            return CheckResult(name, Status.WARN, f"{human(movable + cma)} of ZONE_MOVABLE/CMA memory: long-term pins "
                               "(VFIO MAP_DMA) must migrate such pages out first, which is slow and fails with ENOMEM "
                               "when no other memory is free", ev,
                               "avoid movablecore=/kernelcore=/movable_node and large cma= unless needed; back the guest "
                               "with hugepages reserved at boot (not movable)")
        return CheckResult(name, Status.OK, "no ZONE_MOVABLE or CMA memory", ev)

    # 9. boot framebuffer owning a BAR
    def check_boot_framebuffer(self) -> CheckResult:
        name = "boot-framebuffer"
        iomem = _read(os.path.join(self.paths.proc, "iomem"))
        if iomem is None:
            return CheckResult(name, Status.SKIP, "cannot read /proc/iomem")
        stack: list[tuple[int, str, str]] = []
        hits = []
        zero = True
        for line in iomem.splitlines():
            m = re.match(r"^(\s*)([0-9a-fA-F]+)-([0-9a-fA-F]+) : (.*)$", line)
            if not m:
                continue
            depth = len(m.group(1))
            rng, label = f"{m.group(2)}-{m.group(3)}", m.group(4).strip()
            if int(m.group(3), 16):
                zero = False
            while stack and stack[-1][0] >= depth:
                stack.pop()
            if re.search(r"BOOTFB|efifb|vesafb|simplefb|simple-framebuffer", label, re.I):
                owner = next((s[2] for s in reversed(stack) if re.match(r"^[0-9a-f]{4}:[0-9a-f]{2}:", s[2])), None)
                if owner:
                    hits.append((owner, label, rng))
            stack.append((depth, rng, label))
        if iomem.strip() and zero:
            return CheckResult(name, Status.SKIP, "/proc/iomem shows no addresses (not root)", (), "run as root")
        if not hits:
            return CheckResult(name, Status.OK, "no boot framebuffer inside a PCI BAR")
        want = {d.bdf for d in self.wanted()}
        ev = tuple(f"{rng} {label} inside a BAR of {owner}" for owner, label, rng in hits)
        bad = [h for h in hits if h[0] in want]
        hint = ("vfio-pci cannot reserve that BAR (dmesg: \"BAR N: can't reserve [mem ...]\"): boot with "
                "video=efifb:off (or initcall_blacklist=sysfb_init), or make another GPU the boot display")
        if bad:
            return CheckResult(name, Status.FAIL, f"the boot framebuffer ({bad[0][1]}) owns a BAR of {bad[0][0]}", ev, hint)
        return CheckResult(name, Status.WARN, f"the boot framebuffer owns a BAR of {hits[0][0]} (not on vfio-pci now)", ev, hint)

    # 10. reset methods
    def check_reset(self) -> CheckResult:
        name = "reset"
        want = self.wanted()
        if not want:
            return CheckResult(name, Status.SKIP, "no device on vfio-pci and none named with --device")
        ev = []
        bad = []
        for d in want:
            methods = ("none (no reset_method attribute)" if not d.has_reset else "reset attribute only") if d.reset_methods is None else (" ".join(d.reset_methods) or "none")
            ev.append(f"{d.bdf} ({d.ids}): reset methods {methods}")
            if not d.resettable:
                bad.append(d.bdf)
        if bad:
            return CheckResult(name, Status.WARN, f"no usable reset method for {', '.join(bad)}: device state can leak "
                               "between users and VFIO_DEVICE_RESET fails", tuple(ev),
                               "look for FLR support (lspci -vv: FLReset+), a bus reset (device alone behind its bridge) "
                               "or a vendor reset quirk; `echo METHOD > .../reset_method` selects among those the kernel has")
        return CheckResult(name, Status.OK, "every device has a reset method", tuple(ev))

    # 11. /dev/vfio/N busy or missing
    def check_vfio_nodes(self) -> CheckResult:
        name = "vfio-nodes"
        ev = []
        ctl = os.path.join(self.paths.dev, "vfio", "vfio")
        bad: list[str] = []
        warn: list[str] = []
        want = self.wanted()
        if not os.path.exists(ctl):
            (bad if want else warn).append("/dev/vfio/vfio is missing (vfio not loaded?)")
        elif self.paths.is_live and not os.access(ctl, os.R_OK | os.W_OK):
            bad.append("/dev/vfio/vfio is not readable and writable by this user")
        named = set(self.opts.devices)
        for n in sorted({d.iommu_group for d in want if d.iommu_group is not None and is_vfio_driver(d.driver)}):
            node = os.path.join(self.paths.dev, "vfio", str(n))
            if not self.node_exists(n):
                bad.append(f"/dev/vfio/{n} is missing although a member is bound to vfio-pci")
                continue
            if self.paths.is_live and os.path.exists(node) and not os.access(node, os.R_OK | os.W_OK):
                bad.append(f"/dev/vfio/{n} is not readable and writable by this user")
            members = [d for d in want if d.iommu_group == n]
            nodes = sorted({x for d in members for x in vfio_nodes(d)})
            holders, denied = vfio_holders(self.paths, nodes)
            ev.append(f"/dev/vfio/{n}: present, {len(holders)} other holder(s)"
                      + (f", {denied} processes unreadable" if denied else ""))
            for h in holders:
                msg = f"/dev/vfio/{n} is held open by pid {h.pid} ({h.comm}): another open gets EBUSY"
                (bad if any(d.bdf in named for d in members) else warn).append(msg)
        if bad:
            return CheckResult(name, Status.FAIL, "; ".join(bad), tuple(ev),
                               "modprobe vfio-pci; check the probe in dmesg; stop the process holding the group "
                               "(or use it through that process); fix the node's owner/mode (udev rule or chown)")
        if warn:
            return CheckResult(name, Status.WARN, "; ".join(warn), tuple(ev),
                               "stop the process holding the group if it should not be using the device")
        return CheckResult(name, Status.OK, "VFIO nodes present and free", tuple(ev))

    # 12. host use of the devices asked about
    def check_device_use(self) -> CheckResult:
        name = "device-use"
        if not self.opts.devices:
            return CheckResult(name, Status.SKIP, "no device named with --device")
        uses = []
        for b in self.opts.devices:
            d = self.source.device(b)
            if not is_vfio_driver(d.driver):
                uses += find_uses(self.paths, d)
        if uses:
            return CheckResult(name, Status.FAIL, "in use by the host: " + "; ".join(u.what for u in uses),
                               tuple(u.what for u in uses),
                               "umount / swapoff / remove the addresses and routes first; binding would pull it from the host")
        return CheckResult(name, Status.OK, "the host does not use the named devices")

    # 13. kernel log
    def check_kernel_log(self) -> CheckResult:
        name = "kernel-log"
        log = self.log()
        if log is None:
            return CheckResult(name, Status.SKIP, "cannot read the kernel log (/dev/kmsg)", (),
                               "run as root, or set kernel.dmesg_restrict=0")
        rmrr_block = [m for m in log if "RMRR" in m and ("ineligible" in m or "not supported" in m)]
        no_ir = [m for m in log if "No interrupt remapping support" in m]
        faults = [m for m in log if re.search(r"DMAR: \[DMA (Read|Write)|DRHD: handling fault|IO_PAGE_FAULT|"
                                             r"page fault from EP|fault reason|AMD-Vi: Event logged|"
                                             r"arm-smmu.*fault|Unhandled context fault", m)]
        bar = [m for m in log if re.search(r"vfio-pci.*can't reserve|BAR \d+: can't reserve", m)]
        other = [m for m in log if re.search(r"(DMAR|AMD-Vi|iommu|IOMMU).*(error|failed|Failed|broken)", m)
                 and m not in faults]
        ev = tuple((rmrr_block + no_ir + bar + faults + other)[-12:])
        if rmrr_block:
            return CheckResult(name, Status.FAIL, "a device is ineligible for assignment because the firmware "
                               "reserves memory for it (RMRR)", ev,
                               "the platform requires identity-mapped DMA for this device; use another slot/device, "
                               "or a firmware option that drops the RMRR")
        if no_ir:
            return CheckResult(name, Status.FAIL, "VFIO refused an IOMMU without interrupt remapping", ev,
                               "see the interrupt-remapping check")
        if faults or bar or other:
            what = []
            if faults:
                what.append(f"{len(faults)} IOMMU fault(s)")
            if bar:
                what.append("BAR reservation failure")
            if other:
                what.append(f"{len(other)} IOMMU error message(s)")
            return CheckResult(name, Status.WARN, "kernel log shows " + ", ".join(what), ev,
                               "a DMA fault means a device used an IOVA that was not mapped (or without the permission): "
                               "check the DMA mappings of the process driving it")
        return CheckResult(name, Status.OK, f"no RMRR conflicts or IOMMU faults in {len(log)} log messages")

    # 14. /dev/kvm
    def check_kvm(self) -> CheckResult:
        name = "kvm"
        node = os.path.join(self.paths.dev, "kvm")
        if not os.path.exists(node):
            return CheckResult(name, Status.WARN, "/dev/kvm is missing: VFIO works, but no VM can use the device",
                               (), "modprobe kvm_intel (or kvm_amd) and enable VT-x/AMD-V in the firmware")
        if not os.access(node, os.R_OK | os.W_OK):
            return CheckResult(name, Status.FAIL, "/dev/kvm is not readable and writable by this user", (),
                               "add the user to the kvm group (usermod -aG kvm USER) and log in again")
        return CheckResult(name, Status.OK, "/dev/kvm is accessible")


def parse_size(text: str) -> int:
    """``4G``, ``512M``, ``1.5GiB``, ``65536`` -> bytes (binary units)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.I)
    if not m:
        raise ArgumentError(f"{text!r} is not a size: use a number with an optional K/M/G/T suffix")
    mult = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[m.group(2).upper()]
    return int(float(m.group(1)) * mult)


__all__ = ["Doctor", "DoctorOptions", "CheckResult", "Report", "Status", "read_kmsg", "parse_size", "human"]
