#!/usr/bin/env python3
"""Prove pyvfio's uAPI layer against real kernel headers with a generated C probe.

The probe is generated from pyvfio's own declarations, not from a list kept by hand:
every struct cffi parsed from the cdef modules (every field, recursively through anonymous
members: offset, size, signedness of integer fields, and the struct's sizeof), every request
name of ``ioctls.request_names(arch)`` and every constant of ``ioctls.constants(arch)``. The C
compiler computes each value against a header set; the probe prints them and this module
compares them with what pyvfio computes (cffi's ABI-mode ``ffi`` for layouts, ``ioctls`` for
numbers). One compilation per header set.

Header sets:
  installed       /usr/include (Debian 12: 6.1), host gcc, x86_64
  pinned-amd64    linux-libc-dev pinned in tools/uapi/PINNED_HEADERS, host gcc, x86_64
  pinned-ppc64le  the same package's powerpc64le headers, powerpc64le-linux-gnu-gcc -static,
                  run under qemu-ppc64le(-static); compared with ioctls.for_arch("ppc64le")

A name absent from a header set (an older kernel, or a declaration that is x86-only) is skipped
by name with its reason; nothing is dropped silently.

  python3 tools/uapi/probe.py [-v] [SET...]   print the comparison (-v: every skipped key);
                                              exit 1 on any mismatch
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import cffi  # noqa: E402

from pyvfio import ioctls  # noqa: E402
from pyvfio import uapi  # noqa: E402
from pyvfio.uapi import iommufd, kvm, libc, vfio  # noqa: E402

SETUP_HINT = "run `tools/dev setup` (installs the cross tools and fetches the pinned headers)"

#: cdef module -> the header that declares its names
MODULE_HEADERS = {vfio: "linux/vfio.h", iommufd: "linux/iommufd.h", kvm: "linux/kvm.h"}
CONSTANT_PREFIXES = (("VFIO_", "linux/vfio.h"), ("IOMMUFD_", "linux/iommufd.h"),
                     ("IOMMU_", "linux/iommufd.h"), ("KVM", "linux/kvm.h"))
DEB_ARCH_TRIPLET = {"x86_64": "x86_64-linux-gnu", "ppc64le": "powerpc64le-linux-gnu"}


# ---------------------------------------------------------------------------
# header sets
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class HeaderSet:
    name: str
    arch: str                      # pyvfio arch name the numbers are compared for
    include_root: Path             # directory holding linux/, asm-generic/
    asm_dir: Path                  # directory holding asm/
    compiler: tuple[str, ...]
    runner: tuple[str, ...]        # () to run natively
    expect_version: str | None     # "6.12" -> LINUX_VERSION_CODE must be 6.12.x
    complete: bool                 # every declaration must exist (the pinned set)

    def header(self, rel: str) -> Path:
        if rel.startswith("asm/"):
            return self.asm_dir / rel
        return self.include_root / rel

    def cflags(self) -> list[str]:
        if self.name == "installed":
            return []
        return ["-I", str(self.include_root), "-I", str(self.asm_dir)]


def pinned_version() -> str:
    text = (ROOT / "tools/uapi/PINNED_HEADERS").read_text()
    m = re.search(r"^LINUX_LIBC_DEV_VERSION=(\S+)$", text, re.M)
    if not m:
        raise RuntimeError("tools/uapi/PINNED_HEADERS has no LINUX_LIBC_DEV_VERSION")
    return m.group(1)


def pinned_dir() -> Path:
    cache = os.environ.get("PYVFIO_HEADERS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pyvfio", "headers")
    return Path(cache) / pinned_version()


def header_sets() -> dict[str, HeaderSet]:
    pinned = pinned_dir() / "usr/include"
    upstream = pinned_version().split("-")[0]                  # 6.12.95
    major_minor = ".".join(upstream.split(".")[:2])            # 6.12
    qemu = shutil.which("qemu-ppc64le-static") or shutil.which("qemu-ppc64le") or "qemu-ppc64le-static"
    return {
        "installed": HeaderSet("installed", "x86_64", Path("/usr/include"),
                               Path("/usr/include/x86_64-linux-gnu"), ("gcc",), (), None, False),
        "pinned-amd64": HeaderSet("pinned-amd64", "x86_64", pinned,
                                  pinned / "x86_64-linux-gnu", ("gcc",), (), major_minor, True),
        "pinned-ppc64le": HeaderSet("pinned-ppc64le", "ppc64le", pinned,
                                    pinned / "powerpc64le-linux-gnu",
                                    ("powerpc64le-linux-gnu-gcc", "-static"), (qemu,),
                                    major_minor, True),
    }


def unavailable(hs: HeaderSet) -> str | None:
    """Why this header set cannot be probed on this machine, or None."""
    if not (hs.include_root / "linux/vfio.h").exists():
        return f"{hs.include_root}/linux/vfio.h is missing"
    if not (hs.asm_dir / "asm/ioctl.h").exists():
        return f"{hs.asm_dir}/asm/ioctl.h is missing"
    if shutil.which(hs.compiler[0]) is None:
        return f"{hs.compiler[0]} is not installed"
    if hs.runner and shutil.which(hs.runner[0]) is None:
        return f"{hs.runner[0]} is not installed"
    return None


# ---------------------------------------------------------------------------
# what pyvfio declares
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Item:
    key: str            # printed by the probe and used in reports
    cexpr: str          # C expression whose value the probe prints
    expected: int       # pyvfio's value
    header: str         # header that must declare it
    needs: tuple[tuple[str, ...], ...]  # ("struct", name) / ("field", struct, path...) / ("name", N)
    width_of: str | None = None  # constants: compare at the width of this C expression


def _module_structs() -> dict[str, str]:
    """struct name -> header, from parsing each cdef module on its own."""
    out: dict[str, str] = {}
    for mod, header in MODULE_HEADERS.items():
        f = cffi.FFI()
        f.cdef(libc.CDEF)
        f.cdef(mod.CDEF)
        if getattr(mod, "PACKED_CDEF", ""):
            f.cdef(mod.PACKED_CDEF, packed=True)
        for s in f.list_types()[1]:
            out[s] = header
    return out


def _walk_fields(ctype: Any, prefix: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
    for name, field in ctype.fields:
        path = prefix + (name,)
        yield path, field
        t = field.type
        if t.kind in ("struct", "union") and "$" in t.cname:   # anonymous member type
            yield from _walk_fields(t, path)


def _is_signed(ffi: cffi.FFI, ctype: Any) -> bool | None:
    if ctype.kind != "primitive" or ctype.cname in ("char", "float", "double"):
        return None
    return int(ffi.cast(ctype, -1)) < 0


def layout_items(arch: str) -> tuple[list[Item], dict[str, str]]:
    """Items for every struct and field; and struct-level skips for arch-only structs."""
    ffi = uapi.ffi
    items: list[Item] = []
    skipped: dict[str, str] = {}
    arch_only = {**getattr(vfio, "ARCH_ONLY", {}), **getattr(iommufd, "ARCH_ONLY", {}),
                 **getattr(kvm, "ARCH_ONLY", {})}
    for sname, header in sorted(_module_structs().items()):
        cname = f"struct {sname}"
        only = arch_only.get(cname)
        if only is not None and only != arch:
            skipped[f"sizeof({cname}) and its fields"] = (
                f"declared for {only} only ({header} ARCH_ONLY); {arch} has its own layout")
            continue
        if only is not None:
            header = "asm/kvm.h"
        t = ffi.typeof(cname)
        s_need = (("struct", sname),)
        items.append(Item(f"sizeof({cname})", f"sizeof({cname})", ffi.sizeof(t), header,
                          s_need + tuple(("field", sname) + p for p, _ in _walk_fields(t, ()))))
        for path, field in _walk_fields(t, ()):
            dotted = ".".join(path)
            need = s_need + (("field", sname) + path,)
            member = f"(({cname} *)0)->{dotted}"
            items.append(Item(f"offsetof({cname}, {dotted})", f"offsetof({cname}, {dotted})",
                              ffi.offsetof(t, *path), header, need))
            ft = field.type
            if ft.kind == "array" and ft.length is None:       # flexible array member
                items.append(Item(f"sizeof({cname}.{dotted}[0])", f"sizeof({member}[0])",
                                  ffi.sizeof(ft.item), header, need))
            else:
                items.append(Item(f"sizeof({cname}.{dotted})", f"sizeof({member})",
                                  ffi.sizeof(ft), header, need))
            signed = _is_signed(ffi, field.type)
            if signed is not None:
                items.append(Item(f"signed({cname}.{dotted})",
                                  f"((__typeof__({member}))-1 < (__typeof__({member}))0)",
                                  int(signed), header, need))
    return items, skipped


def _constant_header(name: str) -> str:
    for prefix, header in CONSTANT_PREFIXES:
        if name.startswith(prefix):
            return header
    raise ValueError(f"no header known for constant {name}")


def number_items(arch: str) -> tuple[list[Item], dict[str, str]]:
    items: list[Item] = []
    skipped: dict[str, str] = {}
    reqs = ioctls.requests(arch)
    for name, value in sorted(ioctls.request_names(arch).items()):
        struct = reqs[name].struct
        need: tuple[tuple[str, ...], ...] = (("name", name),)
        if struct and not struct.startswith("__"):
            need += (("struct", struct),)
        items.append(Item(f"request {name}", f"(unsigned long long)({name})", value,
                          _constant_header(name), need))
    for name in sorted(set(ioctls.request_names("x86_64")) - set(ioctls.request_names(arch))):
        skipped[f"request {name}"] = f"x86-only request (ioctls.X86_ONLY), not defined for {arch}"
    for name, value in sorted(ioctls.constants(arch).items()):
        header = "asm/kvm.h" if name in ioctls.ARCH_CONSTANTS else _constant_header(name)
        items.append(Item(f"const {name}", f"(long long)({name})", value, header,
                          (("name", name),), width_of=name))
    return items, skipped


# ---------------------------------------------------------------------------
# what a header set declares (to skip absent names by name, with the reason)
# ---------------------------------------------------------------------------

_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)


class HeaderText:
    def __init__(self, hs: HeaderSet) -> None:
        self.hs = hs
        self._text: dict[str, str | None] = {}

    def text(self, rel: str) -> str | None:
        if rel not in self._text:
            p = self.hs.header(rel)
            self._text[rel] = _COMMENT.sub(" ", p.read_text()) if p.exists() else None
        return self._text[rel]

    def all_text(self) -> str:
        return "\n".join(t for rel in ("linux/vfio.h", "linux/iommufd.h", "linux/kvm.h", "asm/kvm.h")
                         if (t := self.text(rel)) is not None)

    def struct_body(self, name: str) -> str | None:
        text = self.all_text()
        m = re.search(rf"\bstruct\s+{re.escape(name)}\s*\{{", text)
        if not m:
            return None
        depth, i = 0, m.end() - 1
        for j in range(i, len(text)):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    return text[i:j + 1]
        return None

    def missing(self, item: Item) -> str | None:
        """Why the header set cannot answer this item, or None."""
        htext = self.text(item.header)
        if htext is None:
            return f"{item.header} is not in this header set"
        for need in item.needs:
            kind = need[0]
            if kind == "name" and not re.search(rf"\b{re.escape(need[1])}\b", self.all_text()):
                return f"{need[1]} is not declared in {item.header}"
            if kind == "struct" and self.struct_body(need[1]) is None:
                return f"struct {need[1]} is not declared in {item.header}"
            if kind == "field":
                block = self.struct_body(need[1]) or ""
                for depth, part in enumerate(need[2:], start=1):
                    if not _declares(block, part):
                        return f"struct {need[1]} has no member {'.'.join(need[2:])} here"
                    if depth < len(need) - 2:
                        block = _member_block(block, part)
        return None


def _declares(block: str, member: str) -> bool:
    """Whether a struct/union body declares ``member`` (preprocessor lines ignored)."""
    code = re.sub(r"^\s*#.*$", " ", block, flags=re.M)
    return re.search(rf"\b{re.escape(member)}\s*(\[[^\]]*\]\s*)*[;,)]", code) is not None


def _member_block(block: str, member: str) -> str:
    """The ``{...}`` body of the anonymous struct/union type of ``member`` inside ``block``."""
    m = re.search(rf"\}}\s*{re.escape(member)}\s*;", block)
    if not m:
        return ""
    depth, end = 0, m.start()
    for i in range(end, -1, -1):
        if block[i] == "}":
            depth += 1
        elif block[i] == "{":
            depth -= 1
            if depth == 0:
                return block[i:end + 1]
    return ""


# ---------------------------------------------------------------------------
# probe generation, compilation, comparison
# ---------------------------------------------------------------------------

def generate_c(items: list[Item], headers: list[str]) -> str:
    lines = ["/* generated by tools/uapi/probe.py from pyvfio's declarations; do not edit */",
             "#include <stddef.h>", "#include <stdio.h>", "#include <linux/version.h>",
             "#include <linux/types.h>"]
    lines += [f"#include <{h}>" for h in headers]
    lines += ["int main(void)", "{",
              '    printf("LINUX_VERSION_CODE\\t%lld\\t0\\n", (long long)LINUX_VERSION_CODE);']
    for it in items:
        key = it.key.replace("\\", "\\\\").replace('"', '\\"')
        width = f"sizeof({it.width_of})" if it.width_of else "(size_t)0"
        lines.append(f'    printf("{key}\\t%lld\\t%zu\\n", (long long)({it.cexpr}), {width});')
    lines += ["    return 0;", "}", ""]
    return "\n".join(lines)


@dataclasses.dataclass
class Report:
    hs: HeaderSet
    compared: list[str]
    mismatches: list[str]
    skipped: dict[str, str]
    linux_version: str

    def headline(self) -> str:
        return (f"{self.hs.name} ({self.hs.arch}, headers {self.linux_version}, "
                f"{self.hs.include_root}): {len(self.compared)} values compared, "
                f"{len(self.mismatches)} mismatches, {len(self.skipped)} skipped by name")

    def skip_summary(self) -> list[str]:
        """One line per reason: the reason, then every struct or name it skipped."""
        by_reason: dict[str, set[str]] = {}
        for key, why in self.skipped.items():
            m = re.match(r"(?:sizeof|offsetof|signed)\((struct \w+)", key)
            by_reason.setdefault(why, set()).add(m.group(1) if m else key)
        return [f"{why}: {', '.join(sorted(names))}" for why, names in sorted(by_reason.items())]

    def format(self, verbose: bool = False) -> str:
        out = ["== " + self.headline()]
        out += [f"   MISMATCH {m}" for m in self.mismatches]
        if verbose:
            out += [f"   skipped  {k}: {why}" for k, why in sorted(self.skipped.items())]
        else:
            out += [f"   skipped  {line}" for line in self.skip_summary()]
        return "\n".join(out)


def run(hs: HeaderSet, workdir: Path | None = None) -> Report:
    """Generate, compile and run the probe for one header set; compare with pyvfio."""
    why = unavailable(hs)
    if why:
        raise FileNotFoundError(f"header set {hs.name}: {why}; {SETUP_HINT}")
    lay, skipped = layout_items(hs.arch)
    num, skipped2 = number_items(hs.arch)
    skipped.update(skipped2)
    ht = HeaderText(hs)
    items: list[Item] = []
    for it in lay + num:
        reason = ht.missing(it)
        if reason:
            skipped[it.key] = reason
        else:
            items.append(it)
    headers = [h for h in MODULE_HEADERS.values() if ht.text(h) is not None]
    src = generate_c(items, headers)

    with tempfile.TemporaryDirectory(prefix=f"pyvfio-probe-{hs.name}-", dir=workdir) as tmp:
        c, exe = Path(tmp) / "probe.c", Path(tmp) / "probe"
        c.write_text(src)
        cc = [*hs.compiler, "-O0", "-w", *hs.cflags(), "-o", str(exe), str(c)]
        res = subprocess.run(cc, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"compiling the {hs.name} probe failed: {' '.join(cc)}\n{res.stderr[-4000:]}")
        res = subprocess.run([*hs.runner, str(exe)], capture_output=True, text=True, timeout=300)
        if res.returncode != 0:
            raise RuntimeError(f"running the {hs.name} probe failed ({res.returncode}): {res.stderr[-2000:]}")
    got: dict[str, tuple[int, int]] = {}
    for line in res.stdout.splitlines():
        key, value, width = line.split("\t")
        got[key] = (int(value), int(width))

    code = got.pop("LINUX_VERSION_CODE")[0]
    version = f"{code >> 16}.{(code >> 8) & 0xFF}"
    mismatches: list[str] = []
    if hs.expect_version and version != hs.expect_version:
        mismatches.append(f"LINUX_VERSION_CODE says {version}, expected {hs.expect_version}: "
                          f"the probe did not compile against {hs.include_root}")
    compared: list[str] = []
    for it in items:
        if it.key not in got:
            mismatches.append(f"{it.key}: the probe printed no value")
            continue
        c_value, c_width = got[it.key]
        mine = it.expected
        if it.width_of:                    # constants: compare at the C expression's width
            mask = (1 << (8 * c_width)) - 1
            same = (mine & mask) == (c_value & mask)
        else:
            same = mine == c_value
        if not same:
            mismatches.append(f"{it.key}: kernel headers {c_value} ({c_value & ((1 << 64) - 1):#x}), "
                              f"pyvfio {mine} ({mine & ((1 << 64) - 1):#x})")
        compared.append(it.key)
    return Report(hs, compared, mismatches, skipped, version)


def main(argv: list[str]) -> int:
    verbose = "-v" in argv
    argv = [a for a in argv if a != "-v"]
    sets = header_sets()
    names = argv or list(sets)
    rc = 0
    for name in names:
        try:
            rep = run(sets[name])
        except (FileNotFoundError, RuntimeError) as e:
            print(f"== {name}: {e}")
            rc = 1
            continue
        print(rep.format(verbose))
        if rep.mismatches:
            rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
