"""The syscall seam: real backend errors, mock kernel dispatch, selection."""

from __future__ import annotations

import errno
import os

import pytest

from pyvfio import errors, ioctls
from pyvfio.mockkernel import KernelError, MockFile, MockKernel, handles
from pyvfio.seam import Backend, get_backend
from pyvfio.seam.mock import MockBackend
from pyvfio.seam.real import RealBackend
from pyvfio.uapi import ffi
from pyvfio.testing import machine


def _closed_fd() -> int:
    fd = os.open("/dev/null", os.O_RDONLY)
    os.close(fd)
    return fd


def test_real_bad_fd_raises_ebadf_with_op():
    be = RealBackend()
    arg = ffi.new("struct vfio_group_status *", {"argsz": ffi.sizeof("struct vfio_group_status")})
    with pytest.raises(errors.BadFileError) as ei:
        be.ioctl(_closed_fd(), ioctls.VFIO_GROUP_GET_STATUS, arg)
    e = ei.value
    assert e.errno == errno.EBADF
    assert e.op == "VFIO_GROUP_GET_STATUS"
    assert isinstance(e, OSError) and isinstance(e, errors.PyvfioError)
    assert "VFIO_GROUP_GET_STATUS" in str(e) and "EBADF" in str(e)


def test_real_open_missing_node_is_filenotfound():
    with pytest.raises(FileNotFoundError) as ei:
        RealBackend().open("/dev/vfio/does-not-exist-4242")
    assert ei.value.op == "open" and ei.value.path == "/dev/vfio/does-not-exist-4242"


def test_real_ioctl_returns_the_ioctls_own_value():
    """An int-returning ioctl gives its value back, not the argument buffer (KVM is on the host)."""
    if not os.path.exists("/dev/kvm"):
        pytest.skip("no /dev/kvm: cannot observe a real ioctl return value")
    be = RealBackend()
    fd = be.open("/dev/kvm")
    try:
        assert be.ioctl(fd, ioctls.KVM_GET_API_VERSION, 0) == 12
    finally:
        be.close(fd)


def test_real_mmap_anonymous_roundtrip():
    be = RealBackend()
    addr = be.mmap(8192, 3, 0x22)  # PROT_READ|WRITE, MAP_PRIVATE|ANONYMOUS
    buf = ffi.buffer(ffi.cast("char *", addr), 8192)
    buf[0:4] = b"abcd"
    assert buf[0:4] == b"abcd"
    be.munmap(addr, 8192)


class _Echo(MockFile):
    @handles("VFIO_GET_API_VERSION")
    def api(self, arg):
        return 0

    @handles("VFIO_CHECK_EXTENSION")
    def ext(self, arg):
        if int(arg) == 999:
            raise KernelError(errno.EINVAL, "bad extension")
        return 1


class _EchoSubsystem:
    @staticmethod
    def install(kernel: MockKernel) -> None:
        kernel.route(r"/dev/echo", lambda k, m, flags: _Echo(k, "/dev/echo"))


@pytest.fixture
def echo():
    be = MockBackend(MockKernel(subsystems=[_EchoSubsystem]))
    fd = be.open("/dev/echo")
    yield be, fd
    if fd in machine(be).files:
        be.close(fd)


def test_mock_unknown_request_is_enotty(echo):
    be, fd = echo
    with pytest.raises(errors.UnsupportedError) as ei:
        be.ioctl(fd, ioctls.VFIO_IOMMU_MAP_DMA, 0)
    assert ei.value.errno == errno.ENOTTY and ei.value.path == "/dev/echo"


def test_mock_dispatches_by_request_number(echo):
    be, fd = echo
    assert be.ioctl(fd, ioctls.VFIO_GET_API_VERSION, 0) == 0
    assert be.ioctl(fd, ioctls.VFIO_CHECK_EXTENSION, 3) == 1
    with pytest.raises(errors.InvalidArgumentError):
        be.ioctl(fd, ioctls.VFIO_CHECK_EXTENSION, 999)
    assert "bad extension" in machine(be).dmesg[-1]


def test_mock_open_unknown_path_enoent():
    be = MockBackend(MockKernel(subsystems=[_EchoSubsystem]))
    with pytest.raises(errors.NotFoundError):
        be.open("/dev/vfio/77")


def test_mock_fds_are_real_and_released(echo):
    be, fd = echo
    assert os.readlink(f"/proc/self/fd/{fd}") == "/dev/null"
    f = machine(be).file(fd)
    be.close(fd)
    assert f.released and fd not in machine(be).files
    with pytest.raises(errors.BadFileError):
        be.ioctl(fd, ioctls.VFIO_GET_API_VERSION, 0)


def test_mock_bad_fd_same_errno_as_real():
    be = MockBackend(MockKernel(subsystems=[]))
    fd = _closed_fd()
    with pytest.raises(errors.BadFileError):
        be.ioctl(fd, ioctls.VFIO_GET_API_VERSION, 0)


def test_shared_request_number_must_be_dispatched_in_one_handler():
    assert ioctls.VFIO_IOMMU_DIRTY_PAGES == ioctls.VFIO_IOMMU_SPAPR_REGISTER_MEMORY
    with pytest.raises(TypeError, match="shares request number"):

        class _Bad(MockFile):
            @handles("VFIO_IOMMU_DIRTY_PAGES")
            def a(self, arg):
                return 0

            @handles("VFIO_IOMMU_SPAPR_REGISTER_MEMORY")
            def b(self, arg):
                return 0


def test_backend_selection(monkeypatch):
    monkeypatch.setenv("PYVFIO_BACKEND", "mock")
    assert get_backend().name == "mock"
    assert get_backend("real").name == "real"
    mine = MockBackend(MockKernel(subsystems=[]))
    assert get_backend(mine) is mine
    assert isinstance(mine, Backend) and isinstance(RealBackend(), Backend)
    with pytest.raises(errors.ArgumentError):
        get_backend("nope")
