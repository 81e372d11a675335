"""The package's layers, checked on its source with the AST so they stay true.

Imports point down only::

    11  pyvfio (the package face), pyvfio.testing, pyvfio.cli.__main__
    10  cli, demo
     9  services
     8  iommufd                  (its cdev Device is a vfio Device)
     7  vfio, kvm                (peers: neither imports the other)
     6  eventfd
     5  core                     (fd ownership, mappings, IOVA ranges, buffers, bitmaps, host memory)
     4  seam                     (real and mock backends, the host facade)
     3  mockkernel               (beside the real kernel: uAPI, errors and util only)
     2  uapi
     1  util                     (BDFs, /proc readers, sysfs paths, interval index)
     0  errors, ioctls

A module may import its own package and anything of a lower rank, never a peer package of its own
rank nor anything above. Besides: no function-local import of a pyvfio module (the sign of a cycle
being dodged), and no kernel object imports fcntl or names a backend class (kernel objects go
through the seam and never ask which backend they have).
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "pyvfio"

RANKS: dict[str, int] = {
    "errors": 0, "ioctls": 0,
    "util": 1,
    "uapi": 2,
    "mockkernel": 3,
    "seam": 4,
    "core": 5,
    "eventfd": 6,
    "vfio": 7, "kvm": 7,
    "iommufd": 8,
    "services": 9,
    "cli": 10, "demo": 10,
    "": 11, "testing": 11, "cli.__main__": 11,
}
KERNEL_OBJECTS = ("core", "eventfd", "vfio", "kvm", "iommufd")
BACKEND_CLASSES = {"RealBackend", "MockBackend"}


@dataclass(frozen=True)
class Violation:
    module: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.module}:{self.line}: {self.what}"


def unit_of(module: str) -> str:
    """The layer unit of a dotted module name below the package ("vfio.type1" -> "vfio")."""
    parts = module.split(".")
    if ".".join(parts[:2]) in RANKS:
        return ".".join(parts[:2])
    return parts[0] if parts[0] in RANKS else ""


def _modules(root: Path) -> dict[str, Path]:
    out = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _resolve(module: str, is_pkg: bool, node: ast.ImportFrom | ast.Import,
             known: dict[str, Path], package: str) -> list[str]:
    """The package-relative modules an import statement reaches ("" is the package itself)."""
    if isinstance(node, ast.Import):
        return [n.name[len(package) + 1:] if n.name != package else ""
                for n in node.names if n.name == package or n.name.startswith(package + ".")]
    if node.level == 0:
        if node.module is None or not (node.module == package or node.module.startswith(package + ".")):
            return []
        base = node.module[len(package) + 1:] if node.module != package else ""
    else:
        here = module.split(".") if module else []
        if not is_pkg:
            here = here[:-1]
        up = node.level - 1
        if up > len(here):
            return [""]
        here = here[: len(here) - up]
        base = ".".join(here + ([node.module] if node.module else []))
    targets = []
    for alias in node.names:
        sub = f"{base}.{alias.name}" if base else alias.name
        targets.append(sub if sub in known else base)
    return targets


def _in_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def check_tree(root: Path, package: str = "pyvfio") -> list[Violation]:
    """Every layer rule broken under ``root`` (the package directory)."""
    known = _modules(root)
    found: list[Violation] = []
    for module, path in known.items():
        tree = ast.parse(path.read_text(), str(path))
        is_pkg = path.name == "__init__.py"
        unit = unit_of(module)
        rank = RANKS[unit]

        def visit(node: ast.AST, in_function: bool, typing_only: bool) -> None:
            for child in ast.iter_child_nodes(node):
                func = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                typing = typing_only or (isinstance(child, ast.If) and _in_type_checking(child))
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    check_import(child, in_function, typing_only)
                if unit in KERNEL_OBJECTS and isinstance(child, ast.Name) and child.id in BACKEND_CLASSES:
                    found.append(Violation(module, child.lineno, f"kernel object names {child.id}"))
                visit(child, func, typing)

        def check_import(node: ast.Import | ast.ImportFrom, in_function: bool, typing_only: bool) -> None:
            if unit in KERNEL_OBJECTS:
                stdlib = [n.name for n in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                if "fcntl" in stdlib and getattr(node, "level", 0) == 0:
                    found.append(Violation(module, node.lineno, "kernel object imports fcntl"))
                if isinstance(node, ast.ImportFrom) and any(a.name in BACKEND_CLASSES for a in node.names):
                    found.append(Violation(module, node.lineno, "kernel object imports a backend class"))
            for target in _resolve(module, is_pkg, node, known, package):
                if in_function:
                    found.append(Violation(module, node.lineno, f"function-local import of {package}.{target}".rstrip(".")))
                if typing_only:
                    continue  # annotations only: no import happens at run time
                tunit = unit_of(target)
                if tunit == unit:
                    continue
                trank = RANKS[tunit]
                if trank > rank or (trank == rank):
                    what = "peer" if trank == rank else "higher layer"
                    found.append(Violation(module, node.lineno,
                                           f"{unit or package} (rank {rank}) imports {what} "
                                           f"{package}.{target}".rstrip(".") + f" (rank {trank})"))

        visit(tree, False, False)
    return found


def test_pyvfio_layers_point_down() -> None:
    violations = check_tree(ROOT)
    assert not violations, "\n".join(map(str, violations))


def test_every_module_has_a_layer() -> None:
    for module in _modules(ROOT):
        assert unit_of(module) in RANKS, module


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pyvfio"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    for d in [root, *[p for p in root.rglob("*") if p.is_dir()]]:
        (d / "__init__.py").touch()
    return root


@pytest.mark.parametrize(("files", "expect"), [
    ({"mockkernel/pci.py": "from ..vfio.device import Device\n", "vfio/device.py": ""},
     "mockkernel (rank 3) imports higher layer pyvfio.vfio.device"),
    ({"kvm/vm.py": "from ..services import bitmap\n", "services/bitmap.py": ""},
     "kvm (rank 7) imports higher layer pyvfio.services.bitmap"),
    ({"kvm/vm.py": "from ..vfio import group\n", "vfio/group.py": ""},
     "kvm (rank 7) imports peer pyvfio.vfio.group"),
    ({"vfio/container.py": "def f():\n    from . import type1\n", "vfio/type1.py": ""},
     "function-local import of pyvfio.vfio.type1"),
    ({"vfio/type1.py": "import fcntl\n"}, "kernel object imports fcntl"),
    ({"vfio/type1.py": "from ..seam.real import RealBackend\n", "seam/real.py": ""},
     "kernel object imports a backend class"),
    ({"vfio/type1.py": "def f(b):\n    return type(b) is RealBackend\n"}, "kernel object names RealBackend"),
    ({"uapi/vfio.py": "from .. import Container\n"}, "uapi (rank 2) imports higher layer pyvfio"),
    ({"seam/mock.py": "import pyvfio.cli\n", "cli/__init__.py": ""}, "imports higher layer pyvfio.cli"),
])
def test_checker_catches(tmp_path: Path, files: dict[str, str], expect: str) -> None:
    found = [str(v) for v in check_tree(_package(tmp_path, files))]
    assert any(expect in v for v in found), found


def test_checker_allows_downward_and_typing_imports(tmp_path: Path) -> None:
    root = _package(tmp_path, {
        "vfio/type1.py": """\
            from typing import TYPE_CHECKING
            from ..core import mapping
            from .. import ioctls
            if TYPE_CHECKING:
                from ..iommufd.ioas import Ioas
            def f():
                import os
            """,
        "core/mapping.py": "from ..seam import base\n",
        "seam/base.py": "from ..mockkernel import core\n",
        "mockkernel/core.py": "from ..uapi import ffi\nfrom .. import ioctls\n",
        "iommufd/ioas.py": "from ..vfio.type1 import f\n",
        "ioctls.py": "",
    })
    assert check_tree(root) == []
