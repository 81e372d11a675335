"""Readers of /proc/<pid>/status and /proc/<pid>/limits (locked and pinned memory, capabilities)."""

from __future__ import annotations

import resource

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


__all__ = ["CAP_IPC_LOCK", "parse_status", "status_bytes", "read_status", "vm_bytes", "vmlck",
           "vmpin", "cap_eff", "has_cap_ipc_lock", "memlock_limit"]
