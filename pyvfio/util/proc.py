"""Readers of /proc/<pid>/status and /proc/<pid>/limits (locked and pinned memory, capabilities),
and of /proc/<pid>/maps and smaps (what backs a range of user memory)."""

from __future__ import annotations

import resource
from dataclasses import dataclass, field

#: Bit of CAP_IPC_LOCK in CapEff.
CAP_IPC_LOCK = 14


def parse_status(text: str) -> dict[str, str]:
    """``/proc/<pid>/status`` text as a dict of field -> raw value (``"VmLck" -> "0 kB"``)."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key] = value.strip()
    return out


def status_bytes(field: str, status: dict[str, str]) -> int | None:
    """A ``kB`` field of a parsed status (VmLck, VmPin...) in bytes; None when absent."""
    value = status.get(field)
    if not value:
        return None
    return int(value.split()[0]) * 1024


def read_status(pid: int | str = "self", proc: str = "/proc") -> dict[str, str]:
    """Parsed ``/proc/<pid>/status``; empty when it cannot be read."""
    try:
        with open(f"{proc}/{pid}/status") as f:
            return parse_status(f.read())
    except OSError:
        return {}


def vm_bytes(field: str, pid: int | str = "self", proc: str = "/proc") -> int:
    """``VmLck``/``VmPin``/... of a process in bytes (0 when unknown).

    >>> vm_bytes("VmLck") >= 0
    True
    """
    return status_bytes(field, read_status(pid, proc)) or 0


def vmlck() -> int:
    """This process's locked memory (VmLck) in bytes."""
    return vm_bytes("VmLck")


def vmpin() -> int:
    """This process's pinned memory (VmPin, what iommufd and io_uring pin) in bytes."""
    return vm_bytes("VmPin")


def cap_eff(status: dict[str, str] | None = None) -> int:
    """The effective capability mask (``CapEff``) of a parsed status (default: this process)."""
    value = (read_status() if status is None else status).get("CapEff")
    return int(value, 16) if value else 0


def has_cap_ipc_lock(status: dict[str, str] | None = None) -> bool:
    """CAP_IPC_LOCK is effective (pins are then not charged against RLIMIT_MEMLOCK)."""
    return bool(cap_eff(status) & (1 << CAP_IPC_LOCK))


def memlock_limit() -> str:
    """This process's soft RLIMIT_MEMLOCK as text (``"unlimited"`` or ``"N bytes"``) for hints."""
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return "unlimited" if soft == resource.RLIM_INFINITY else f"{soft} bytes"


# -- /proc/<pid>/maps and smaps: what backs a range of user memory ---------------------------------


@dataclass(frozen=True)
class VmArea:
    """One line of ``/proc/<pid>/maps`` (a VMA), with its ``smaps`` fields when read from there.

    ``offset`` is the file offset of ``start`` in bytes; ``dev``/``inode`` name the backing file
    (inode 0: anonymous memory); ``fields`` holds the smaps ``kB`` fields in bytes
    (``KernelPageSize``, ``AnonHugePages``, ``Private_Hugetlb``...) and the ``VmFlags`` word list
    is kept as ``flags``.
    """

    start: int
    end: int
    perms: str
    offset: int
    dev: str
    inode: int
    path: str
    fields: dict[str, int] = field(default_factory=dict, compare=False)
    flags: tuple[str, ...] = field(default=(), compare=False)

    @property
    def shared(self) -> bool:
        """MAP_SHARED (``s`` in the permissions): writes reach the backing object."""
        return "s" in self.perms

    @property
    def file_backed(self) -> bool:
        """Backed by a file (a memfd, hugetlbfs, shmem...), not anonymous private memory."""
        return self.inode != 0

    def file_offset(self, addr: int) -> int:
        """The backing file's offset of address ``addr`` (inside this area)."""
        return self.offset + (addr - self.start)


def parse_maps_line(line: str) -> VmArea:
    """One ``maps`` line: ``start-end perms offset dev inode [path]``.

    >>> a = parse_maps_line("7f0000000000-7f0000200000 rw-s 00200000 00:01 1234  /memfd:x (deleted)")
    >>> (hex(a.start), a.shared, a.offset, a.inode, a.path)
    ('0x7f0000000000', True, 2097152, 1234, '/memfd:x (deleted)')
    """
    parts = line.split(None, 5)
    lo, hi = (int(x, 16) for x in parts[0].split("-"))
    path = parts[5].strip() if len(parts) > 5 else ""
    return VmArea(lo, hi, parts[1], int(parts[2], 16), parts[3], int(parts[4]), path)


def _smaps_key(line: str) -> bool:
    head = line.split(None, 1)[0]
    return head.endswith(":")


def read_vm_areas(addr: int, size: int, *, smaps: bool = False, pid: int | str = "self",
                  proc: str = "/proc") -> list[VmArea]:
    """The VMAs overlapping ``[addr, addr+size)``, sorted (``/proc/<pid>/maps``, or ``smaps``
    with its per-area fields when ``smaps=True``). Empty when the file cannot be read."""
    end = addr + size
    out: list[VmArea] = []
    name = "smaps" if smaps else "maps"
    try:
        f = open(f"{proc}/{pid}/{name}")
    except OSError:
        return []
    with f:
        cur: VmArea | None = None
        for line in f:
            if not line.strip():
                continue
            if smaps and _smaps_key(line):
                if cur is None:
                    continue
                key, _, rest = line.partition(":")
                if key == "VmFlags":
                    object.__setattr__(cur, "flags", tuple(rest.split()))
                    continue
                words = rest.split()
                if len(words) == 2 and words[1] == "kB":
                    cur.fields[key] = int(words[0]) * 1024
                elif len(words) == 1 and words[0].isdigit():
                    cur.fields[key] = int(words[0])
                continue
            area = parse_maps_line(line)
            cur = area if area.end > addr and area.start < end else None
            if cur is not None:
                out.append(cur)
    return sorted(out, key=lambda a: a.start)


__all__ = ["CAP_IPC_LOCK", "parse_status", "status_bytes", "read_status", "vm_bytes", "vmlck",
           "vmpin", "cap_eff", "has_cap_ipc_lock", "memlock_limit", "VmArea", "parse_maps_line",
           "read_vm_areas"]
