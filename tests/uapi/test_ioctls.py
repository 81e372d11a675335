"""ioctl request encoding per architecture, and pyvfio's tables against its own cdefs."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyvfio import ioctls
from pyvfio.uapi import ffi

X86 = ioctls.for_arch("x86_64")
PPC = ioctls.for_arch("ppc64le")
ARM = ioctls.for_arch("aarch64")


def test_vfio_get_api_version_per_arch() -> None:
    assert X86.VFIO_GET_API_VERSION == 0x3B64
    assert ARM.VFIO_GET_API_VERSION == 0x3B64
    assert PPC.VFIO_GET_API_VERSION == 0x20003B64


def test_dirty_pages_and_spapr_register_memory_share_a_number() -> None:
    assert X86.VFIO_IOMMU_DIRTY_PAGES == X86.VFIO_IOMMU_SPAPR_REGISTER_MEMORY == 0x3B75
    assert PPC.VFIO_IOMMU_DIRTY_PAGES == PPC.VFIO_IOMMU_SPAPR_REGISTER_MEMORY == 0x20003B75
    names = ioctls.names_for_request(0x3B75, "x86_64")
    assert {"VFIO_IOMMU_DIRTY_PAGES", "VFIO_IOMMU_SPAPR_REGISTER_MEMORY"} <= set(names)


def test_vfio_requests_are_all_IO() -> None:
    for name, req in ioctls.requests("x86_64").items():
        if name.startswith(("VFIO_", "IOMMU_")):
            assert req.dir_kind == "IO" and ioctls.GENERIC.decode(int(req))[3] == 0, name


@pytest.mark.parametrize(("name", "x86", "ppc"), [
    # _IOW/_IOR/_IOWR: the direction bits and the size field width differ on powerpc
    ("KVM_SET_USER_MEMORY_REGION", 0x4020AE46, 0x8020AE46),
    ("KVM_GET_DIRTY_LOG", 0x4010AE42, 0x8010AE42),
    ("KVM_CLEAR_DIRTY_LOG", 0xC018AEC0, 0xC018AEC0),
    ("KVM_CREATE_DEVICE", 0xC00CAEE0, 0xC00CAEE0),
    ("KVM_RUN", 0xAE80, 0x2000AE80),
    ("IOMMU_IOAS_MAP", 0x3B85, 0x20003B85),
])
def test_known_numbers(name: str, x86: int, ppc: int) -> None:
    assert getattr(X86, name) == x86
    assert getattr(PPC, name) == ppc
    assert ioctls.request_names("x86_64")[name] == x86
    assert ioctls.request_names("ppc64le")[name] == ppc


def test_x86_only_requests_absent_elsewhere() -> None:
    assert X86.KVM_GET_REGS == 0x8090AE81
    for name in ioctls.X86_ONLY:
        assert not hasattr(PPC, name) and name not in ioctls.request_names("ppc64le")
        assert not hasattr(ARM, name)


def test_module_names_are_the_running_machine() -> None:
    native = ioctls.for_arch(ioctls.ARCH)
    for name, value in ioctls.request_names().items():
        assert getattr(ioctls, name) == value == getattr(native, name)


def test_constants_identical_on_every_arch_except_declared_ones() -> None:
    base = ioctls.constants("x86_64")
    for arch in ("ppc64le", "aarch64"):
        other = ioctls.constants(arch)
        assert other.keys() == base.keys()
        differ = {k for k in base if base[k] != other[k]}
        assert differ <= set(ioctls.ARCH_CONSTANTS), differ
    assert ioctls.VFIO_SPAPR_TCE_IOMMU == 2 and ioctls.VFIO_SPAPR_TCE_v2_IOMMU == 7
    assert ioctls.VFIO_NOIOMMU_IOMMU == 8


def test_sizes_in_request_numbers_match_the_cdefs() -> None:
    for struct, size in ioctls.SIZEOF.items():
        ctype = struct if struct.startswith("__") else f"struct {struct}"
        assert ffi.sizeof(ctype) == size, struct
    for name, req in ioctls.requests("x86_64").items():
        if req.struct:
            assert ioctls.GENERIC.decode(int(req))[3] == ffi.sizeof(
                req.struct if req.struct.startswith("__") else f"struct {req.struct}"), name


def test_arg_structs_name_declared_types() -> None:
    assert set(ioctls.ARG_STRUCTS) == set(ioctls.request_names("x86_64"))
    for name, struct in ioctls.ARG_STRUCTS.items():
        if struct and struct not in ("int", "char") and not struct.startswith("__"):
            ffi.sizeof(f"struct {struct}")  # raises if undeclared


def test_encode_rejects_fields_that_do_not_fit() -> None:
    with pytest.raises(ValueError):
        ioctls.POWERPC.encode(ioctls.POWERPC.read, 0xAE, 1, 1 << 13)
    ioctls.GENERIC.encode(ioctls.GENERIC.read, 0xAE, 1, (1 << 14) - 1)
    with pytest.raises(ioctls.UnsupportedArchError):
        ioctls.for_arch("mips")


LAYOUTS = st.sampled_from([ioctls.GENERIC, ioctls.POWERPC])


@given(layout=LAYOUTS, data=st.data())
def test_encode_decode_round_trip(layout: ioctls.IocLayout, data: st.DataObject) -> None:
    d = data.draw(st.sampled_from([layout.none, layout.read, layout.write, layout.read | layout.write]))
    t = data.draw(st.integers(0, 255))
    nr = data.draw(st.integers(0, 255))
    size = data.draw(st.integers(0, (1 << layout.sizebits) - 1))
    number = layout.encode(d, t, nr, size)
    assert 0 <= number < 1 << 32
    assert layout.decode(number) == (d, t, nr, size)


@given(number=st.integers(0, (1 << 32) - 1))
def test_decode_encode_round_trip(number: int) -> None:
    for layout in (ioctls.GENERIC, ioctls.POWERPC):
        assert layout.encode(*layout.decode(number)) == number


def test_import_needs_no_compiler() -> None:
    """ABI mode: importing the uAPI layer works with no C compiler on PATH."""
    code = ("import pyvfio.uapi, pyvfio.ioctls; "
            "print(pyvfio.uapi.ffi.sizeof('struct kvm_run'), hex(pyvfio.ioctls.VFIO_IOMMU_MAP_DMA))")
    out = subprocess.run([sys.executable, "-c", code], env={"PATH": "/nonexistent"},
                         capture_output=True, text=True, check=True, cwd=str(__import__("pathlib").Path(__file__).parents[2]))
    assert out.stdout.split() == ["2352", hex(ioctls.VFIO_IOMMU_MAP_DMA)]
