"""The VFIO container (/dev/vfio/vfio): API version, extensions, and the IOMMU choice.

A container holds groups; once at least one group is attached, :meth:`Container.set_iommu`
selects the IOMMU model (type1v2 on x86, sPAPR TCE on POWER...) and returns the IOMMU object
that maps memory for every device of every attached group. Close order (enforced by
:meth:`Container.close`): mappings → device fds → group detach → group fds → container fd.

Example (mock)::

    >>> from pyvfio.seam.mock import MockBackend
    >>> from pyvfio.vfio import Container, Group
    >>> with Container(backend=MockBackend()) as c:
    ...     g = c.attach(Group(3, backend=c.backend))
    ...     iommu = c.set_iommu()
    ...     iommu.info().iova_pgsizes
    1075843072
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any, Iterator

from .. import ioctls
from ..errors import ArgumentError, StateError, UnsupportedError, register_hint
from ..seam import Backend, get_backend
from ..core.fd import FdObject
from ..uapi.names import IOMMU_TYPES as IOMMU_TYPE_NAMES
from ..uapi.names import VFIO_EXTENSIONS
from .group import Group


CONTAINER_PATH = "/dev/vfio/vfio"

#: Extension numbers by name (VFIO_CHECK_EXTENSION / VFIO_SET_IOMMU arguments).
EXTENSIONS: dict[str, int] = dict(VFIO_EXTENSIONS)


class IommuBase:
    """Base of the IOMMU objects :meth:`Container.set_iommu` returns.

    Subclasses register the IOMMU types they implement with :func:`register_iommu`. They get
    the container and the type; ``close()`` must drop every mapping they made (it runs before
    the container lets go of its groups).

    Threads: see each subclass; the base holds no mutable state of its own.
    """

    #: The VFIO_SET_IOMMU arguments this class implements.
    TYPES: tuple[int, ...] = ()

    def __init__(self, container: "Container", iommu_type: int) -> None:
        self.container = container
        self.type = iommu_type
        self.backend = container.backend

    def _ioctl(self, request: ioctls.Request, arg: Any = 0, *, hint: str | None = None) -> int:
        """Issue an IOMMU request on the container fd; errors name ``request.name`` as op."""
        return self.backend.ioctl(self.container.fileno(), request, arg, hint=hint)

    #: The same, public: a raw request on the container fd (what tests of the kernel's rules use).
    ioctl = _ioctl

    @property
    def closed(self) -> bool:
        return self.container.closed or self.container.iommu is not self

    def close(self) -> None:
        """Release what this IOMMU object holds (mappings); idempotent."""


#: VFIO_SET_IOMMU type -> IOMMU class. Filled by the modules that define the IOMMU classes
#: (type1, spapr) through :func:`register_iommu`; ``pyvfio.vfio`` imports them, so the registry is
#: complete whenever this module is in use.
IOMMU_TYPES: dict[int, type[IommuBase]] = {}


def register_iommu(cls: type[IommuBase]) -> type[IommuBase]:
    """Class decorator: make ``cls`` the IOMMU object for each type in ``cls.TYPES``."""
    for t in cls.TYPES:
        IOMMU_TYPES[t] = cls
    return cls


class Container(FdObject):
    """An open VFIO container.

    Issues VFIO_GET_API_VERSION at open and refuses a kernel whose API version is not
    ``VFIO_API_VERSION`` (UnsupportedError). ``backend`` is a Backend or "real"/"mock".

    Errors: NotFoundError (no /dev/vfio/vfio: vfio module not loaded), PermissionDeniedError.

    Threads: queries (``api_version``, ``check_extension``, ``extensions``) may run concurrently
    with anything. ``attach``, ``set_iommu`` and ``close`` change :attr:`groups` / :attr:`iommu`
    without a lock: call them from one thread, before or after the threads that use the IOMMU.
    """

    def __init__(self, *, backend: Backend | str | None = None, path: str = CONTAINER_PATH) -> None:
        be = get_backend(backend)
        self._fd = -1
        self._adopt_fd(be, be.open(path), path)
        self.groups: list[Group] = []
        self.iommu: IommuBase | None = None
        try:
            version = self.api_version()
            if version != ioctls.VFIO_API_VERSION:
                raise UnsupportedError(
                    errno.EPROTO, f"VFIO API version {version}, pyvfio speaks {ioctls.VFIO_API_VERSION}",
                    op=ioctls.VFIO_GET_API_VERSION.name, path=path)
        except BaseException:
            self._close_fd()
            raise

    # -- queries ------------------------------------------------------------------------------
    def api_version(self) -> int:
        """VFIO_GET_API_VERSION: the kernel's VFIO API version (0 on every released kernel)."""
        return self._ioctl(ioctls.VFIO_GET_API_VERSION, 0)

    def check_extension(self, ext: int | str) -> int:
        """VFIO_CHECK_EXTENSION: >0 when ``ext`` is supported (a number or a name in any case:
        "TYPE1v2", "type1v2", "VFIO_TYPE1v2_IOMMU", "UNMAP_ALL"; ArgumentError for others).

        Before SET_IOMMU every IOMMU driver is asked; afterwards only the one in use.
        """
        num = VFIO_EXTENSIONS.resolve(ext)
        return self._ioctl(ioctls.VFIO_CHECK_EXTENSION, num)

    def extensions(self) -> dict[str, int]:
        """Every known extension name -> VFIO_CHECK_EXTENSION's answer."""
        return {name: self.check_extension(num) for name, num in EXTENSIONS.items()}

    # -- groups ---------------------------------------------------------------------------------
    def attach(self, group: "Group | int | str") -> "Group":
        """VFIO_GROUP_SET_CONTAINER: attach ``group`` to this container; returns the group.

        ``group``: an open :class:`Group`, or a group number or a device's BDF, which opens
        the group on this container's backend (children inherit their parent's backend).
        ArgumentError for a Group opened on another backend (another kernel, mock or real), or
        for something that is neither a Group, a number nor a BDF, before any syscall (nothing
        closed).

        The container owns the group from the call on: if the attach fails (EPERM: not viable,
        EINVAL/EBUSY: already in a container), the group (given or opened here) is closed before
        the error propagates, so its fd is not leaked and a retry can open the group again (a
        group file opens only once system-wide).
        """
        if not isinstance(group, Group):
            if isinstance(group, bool) or not isinstance(group, (int, str)):
                raise ArgumentError(f"attach takes a Group, a group number or a BDF, not {group!r}")
            group = (Group.from_bdf(group, backend=self.backend) if isinstance(group, str)
                     else Group(group, backend=self.backend))
        elif getattr(group, "backend", self.backend) is not self.backend:
            raise ArgumentError(
                f"{group!r} was opened on {group.backend!r}, this container on {self.backend!r}: a "
                "group must live in its container's kernel; open it with backend=container.backend, "
                "or pass container.attach() the BDF or group number")
        try:
            group.set_container(self)
        except BaseException:
            group.close()
            raise
        return group

    # -- IOMMU ----------------------------------------------------------------------------------
    def set_iommu(self, iommu_type: int | str = ioctls.VFIO_TYPE1v2_IOMMU) -> IommuBase:
        """VFIO_SET_IOMMU: pick the IOMMU model; returns its IOMMU object (e.g. Type1Iommu).

        ``iommu_type``: a number or a name in any case ("TYPE1v2", "type1v2",
        "VFIO_TYPE1v2_IOMMU", "SPAPR_TCE_v2"). ArgumentError for another name, listing the IOMMU
        types. Needs at least one attached group. Errors: EINVAL (no group yet, or already set),
        ENODEV (no driver for that type), EPERM (type1 without interrupt remapping: see hint).
        """
        num = IOMMU_TYPE_NAMES.resolve(iommu_type)
        cls = IOMMU_TYPES.get(num)
        if cls is None:
            known = ", ".join(IOMMU_TYPE_NAMES.name_of(t) or str(t) for t in sorted(IOMMU_TYPES))
            raise ArgumentError(f"pyvfio has no IOMMU class for type {iommu_type!r} "
                                f"({IOMMU_TYPE_NAMES.name_of(num) or num}); it drives: {known}")
        if self.iommu is not None:
            raise StateError(f"{self.path}: the IOMMU is already set (type {self.iommu.type})")
        if not self.groups:
            raise StateError("VFIO_SET_IOMMU needs a group attached to the container first "
                             "(the kernel answers EINVAL otherwise)")
        self._ioctl(ioctls.VFIO_SET_IOMMU, num)
        self.iommu = cls(self, num)
        return self.iommu

    def _release_iommu(self) -> None:
        """The last group is leaving: the kernel drops the IOMMU and all mappings with it."""
        if self.iommu is not None:
            iommu, self.iommu = self.iommu, None
            iommu.close()

    # -- lifetime ---------------------------------------------------------------------------
    def close(self) -> None:
        """Close in order: IOMMU mappings, each group (its devices, detach, fd), the container."""
        if self.closed:
            return
        errors: list[BaseException] = []
        if self.iommu is not None:
            try:
                self.iommu.close()
            except Exception as e:  # keep unwinding; report the first error
                errors.append(e)
        for g in list(self.groups):
            try:
                g.close()
            except Exception as e:
                errors.append(e)
        self.iommu = None
        self._close_fd()
        if errors:
            raise errors[0]

    def __iter__(self) -> Iterator["Group"]:
        return iter(list(self.groups))

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._fd}"
        return f"<Container {state} groups={[g.number for g in self.groups]} iommu={self.iommu!r}>"


register_hint(
    ioctls.VFIO_SET_IOMMU.name, errno.EPERM,
    "the IOMMU lacks interrupt remapping (dmesg: 'No interrupt remapping support'); enable it "
    "(intel-iommu intremap=on, amd-iommu) or, accepting the risk, set "
    "/sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts to Y before SET_IOMMU")
register_hint(
    ioctls.VFIO_SET_IOMMU.name, errno.EINVAL,
    "VFIO_SET_IOMMU needs at least one group attached (VFIO_GROUP_SET_CONTAINER) and can be "
    "issued only once per container")
register_hint(
    ioctls.VFIO_SET_IOMMU.name, errno.ENODEV,
    "no loaded IOMMU driver supports that type (modprobe vfio_iommu_type1, or check the "
    "container's extensions)")
