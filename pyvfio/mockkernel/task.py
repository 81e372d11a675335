"""The calling process as the mock kernel's memory accounting sees it (locked and pinned memory)."""

from __future__ import annotations

import resource
from dataclasses import dataclass

from ..util import proc


@dataclass
class MockTask:
    """The task's ``locked_vm``, RLIMIT_MEMLOCK and CAP_IPC_LOCK, shared by type1, sPAPR and iommufd.

    ``rlimit_memlock`` and ``cap_ipc_lock`` default to the real process's values (read at each
    call), so a child that lowers its RLIMIT_MEMLOCK or drops CAP_IPC_LOCK sees the same outcome
    on the mock as on the real kernel. ``pinned`` is what the mock's IOMMUs pinned; the
    ``locked_vm`` the limit is checked against is the real VmLck plus ``pinned``.
    """

    pinned: int = 0
    rlimit_override: int | None = None
    cap_ipc_lock_override: bool | None = None

    def rlimit_memlock(self) -> int:
        if self.rlimit_override is not None:
            return self.rlimit_override
        soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
        return (1 << 64) - 1 if soft == resource.RLIM_INFINITY else soft

    def cap_ipc_lock(self) -> bool:
        if self.cap_ipc_lock_override is not None:
            return self.cap_ipc_lock_override
        return proc.has_cap_ipc_lock()

    @staticmethod
    def has_cap(bit: int) -> bool:
        """The real process has capability ``bit`` effective."""
        return bool(proc.cap_eff() & (1 << bit))

    def locked_vm(self) -> int:
        return proc.vmlck() + self.pinned


__all__ = ["MockTask"]
