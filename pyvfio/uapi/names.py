"""Names for the kernel's numbers: one resolver for every place that takes an IOMMU type, an
interrupt or region index, a PCI capability, a KVM capability or a device feature.

A :class:`NameTable` maps the short names (``"TYPE1v2"``, ``"MSI"``, ``"BAR0"``) and the kernel's
macro names (``"VFIO_TYPE1v2_IOMMU"``, ``"VFIO_PCI_MSI_IRQ_INDEX"``, ``"KVM_CAP_NR_MEMSLOTS"``)
to their values, case-insensitively (``-`` and ``_`` are ignored, so ``"MSI-X"`` is ``"MSIX"``).
:meth:`NameTable.resolve` passes numbers through (``operator.index``: an IntEnum, a numpy int) and
raises :class:`~pyvfio.errors.ArgumentError` listing the valid names of that kind otherwise.
Values come from :mod:`pyvfio.ioctls`, which the layout test checks against the headers.

Example::

    >>> IOMMU_TYPES.resolve("type1v2"), IOMMU_TYPES.resolve("VFIO_TYPE1v2_IOMMU"), IOMMU_TYPES.resolve(3)
    (3, 3, 3)
    >>> IRQ_INDEXES.resolve("msi-x"), IRQ_INDEXES.name_of(1)
    (2, 'MSI')
    >>> REGION_INDEXES.resolve("bar9")
    Traceback (most recent call last):
    ...
    pyvfio.errors.ArgumentError: unknown vfio-pci region 'bar9'; valid names: BAR0, BAR1, BAR2, BAR3, BAR4, BAR5, ROM, CONFIG, VGA (case-insensitive; VFIO_PCI_<name>_REGION_INDEX also works), or a number
"""

from __future__ import annotations

import operator
import re
from typing import Iterable, Iterator, Mapping

from .. import ioctls
from ..errors import ArgumentError

__all__ = ["NameTable", "IOMMU_TYPES", "VFIO_EXTENSIONS", "IRQ_INDEXES", "REGION_INDEXES",
           "KVM_CAPS", "DEVICE_FEATURES", "resolve"]


def _squash(text: str) -> str:
    return text.strip().upper().replace("-", "").replace("_", "").replace(" ", "")


class NameTable(Mapping[str, int]):
    """The names of one kind of kernel number: ``kind`` (for messages), ``names`` (short name ->
    value, in the order messages list them) and the macro form ``prefix + name + suffix``.

    A Mapping of the short names; :meth:`resolve` is what call sites use.
    """

    def __init__(self, kind: str, names: Mapping[str, int], *, prefix: str = "", suffix: str = "",
                 aliases: Mapping[str, int] | None = None) -> None:
        self.kind = kind
        self.prefix = prefix
        self.suffix = suffix
        self._names = dict(names)
        self._by_key: dict[str, int] = {}
        self._name_of: dict[int, str] = {}
        for name, value in [*self._names.items(), *(aliases or {}).items()]:
            for form in (name, prefix + name + suffix):
                key = _squash(form)
                if self._by_key.get(key, value) != value:
                    raise ValueError(f"{kind} names collide: {form!r}")
                self._by_key[key] = value
            self._name_of.setdefault(value, name)

    @classmethod
    def from_constants(cls, kind: str, prefix: str, suffix: str = "", *,
                       exclude: Iterable[str] = ()) -> "NameTable":
        """The table of every :mod:`pyvfio.ioctls` constant named ``prefix<NAME>suffix``."""
        pat = re.compile(re.escape(prefix) + r"(.+)" + re.escape(suffix) + r"$")
        skip = set(exclude)
        names = {}
        for full, value in ioctls.constants().items():
            m = pat.match(full)
            if m and m.group(1) not in skip:
                names[m.group(1)] = value
        return cls(kind, names, prefix=prefix, suffix=suffix)

    # -- Mapping ------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> int:
        return self._names[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    # -- resolution ---------------------------------------------------------------------------
    def lookup(self, name: str) -> int | None:
        """The value of ``name`` (any accepted spelling), None when unknown."""
        return self._by_key.get(_squash(name))

    def resolve(self, value: "int | str") -> int:
        """``value`` as a number: a name of this kind (any case, short or kernel macro) or an int.

        ArgumentError for an unknown name or a value that is neither (bool and float included).
        """
        if type(value) is int:
            return value
        if isinstance(value, str):
            found = self.lookup(value)
            if found is None:
                raise ArgumentError(f"unknown {self.kind} {value!r}; {self.valid()}")
            return found
        if isinstance(value, bool):
            raise ArgumentError(f"{self.kind} {value!r} must be a name or an int, not a bool")
        try:
            return operator.index(value)
        except TypeError:
            raise ArgumentError(f"{self.kind} {value!r} must be a name or an int; "
                                f"{self.valid()}") from None

    def name_of(self, value: int) -> str | None:
        """The short name of ``value`` (None when this table has none)."""
        return self._name_of.get(value)

    def valid(self) -> str:
        """The sentence error messages end with: the valid names and the macro form."""
        macro = f"{self.prefix}<name>{self.suffix}" if self.prefix or self.suffix else ""
        tail = f"; {macro} also works" if macro else ""
        return f"valid names: {', '.join(self._names)} (case-insensitive{tail}), or a number"

    def __repr__(self) -> str:
        return f"<NameTable {self.kind}: {len(self)} names>"


#: VFIO_SET_IOMMU types (``VFIO_<name>_IOMMU``).
IOMMU_TYPES = NameTable.from_constants("VFIO IOMMU type", "VFIO_", "_IOMMU")
#: VFIO_CHECK_EXTENSION arguments: the IOMMU types and the other extensions.
VFIO_EXTENSIONS = NameTable("VFIO extension", dict(sorted({
    **IOMMU_TYPES, "EEH": ioctls.VFIO_EEH, "UNMAP_ALL": ioctls.VFIO_UNMAP_ALL,
    "UPDATE_VADDR": ioctls.VFIO_UPDATE_VADDR}.items(), key=lambda kv: kv[1])), prefix="VFIO_",
    aliases={f"{n}_IOMMU": v for n, v in IOMMU_TYPES.items()})
#: vfio-pci interrupt indexes (``VFIO_PCI_<name>_IRQ_INDEX``).
IRQ_INDEXES = NameTable.from_constants("vfio-pci interrupt index", "VFIO_PCI_", "_IRQ_INDEX")
#: vfio-pci region indexes (``VFIO_PCI_<name>_REGION_INDEX``).
REGION_INDEXES = NameTable.from_constants("vfio-pci region", "VFIO_PCI_", "_REGION_INDEX")
#: KVM_CHECK_EXTENSION / KVM_ENABLE_CAP capabilities (``KVM_CAP_<name>``).
KVM_CAPS = NameTable.from_constants("KVM capability", "KVM_CAP_")
#: VFIO_DEVICE_FEATURE numbers (``VFIO_DEVICE_FEATURE_<name>``; the GET/SET/PROBE flags,
#: the mask and BUS_MASTER's arguments are not features).
DEVICE_FEATURES = NameTable.from_constants(
    "VFIO device feature", "VFIO_DEVICE_FEATURE_",
    exclude=("MASK", "GET", "SET", "PROBE", "CLEAR_MASTER", "SET_MASTER"))


def resolve(table: NameTable, value: "int | str") -> int:
    """``table.resolve(value)`` (the function form)."""
    return table.resolve(value)
