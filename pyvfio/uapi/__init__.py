"""The uAPI layer: one cffi ``ffi`` in ABI mode holding every declaration, and ``lib`` (libc).

ABI mode: importing this module needs no C compiler. The same declarations are compiled in API
mode against real kernel headers by tests/uapi/test_layout.py, which compares every sizeof,
offsetof, request number and constant.
"""

from __future__ import annotations

import cffi

from . import iommufd, kvm, libc, vfio

CDEF_MODULES = (libc, vfio, iommufd, kvm)

ffi = cffi.FFI()
for _mod in CDEF_MODULES:
    ffi.cdef(_mod.CDEF)
    _packed = getattr(_mod, "PACKED_CDEF", "")
    if _packed:
        ffi.cdef(_packed, packed=True)

lib = ffi.dlopen(None)

__all__ = ["ffi", "lib", "CDEF_MODULES"]
