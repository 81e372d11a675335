"""``pyvfio``: the operator CLI (click). Formatting only; the work is in :mod:`pyvfio.services`.

Usage: ``pyvfio [--json] [--backend real|mock] VERB ...`` with the verbs ``ls``, ``group [N]``,
``info BDF``, ``bind BDF``, ``unbind BDF`` and ``doctor``.

With ``--json`` every run prints exactly one JSON document on stdout, errors included
(``{"error": ..., "errno": ..., "op": ..., "hint": ...}``); logs and prompts go to stderr.

Exit codes:
  0  success (doctor: no check failed)
  1  the operation failed (doctor: at least one check failed)
  2  usage error, bad argument, or a destructive verb without confirmation
  3  no such device or group
  4  permission denied
  5  unsupported by this kernel
"""

from __future__ import annotations

import errno as _errno
import json
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, NoReturn

import click

from ..errors import ArgumentError, NotFoundError, PermissionDeniedError, PyvfioError, UnsupportedError
from ..seam import Host, new_backend
from ..services import binding as _binding
from ..services.doctor import DEFAULT_MAPPINGS, Doctor, DoctorOptions, Status, parse_size
from ..services.discovery import (
    DeviceSource,
    HostPaths,
    IommuGroup,
    Viability,
    open_source,
    survey,
    usability,
)
from ..vfio import open_device
from ._common import (
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_PERMISSION,
    EXIT_UNSUPPORTED,
    EXIT_USAGE,
    table,
)
from .dirty import dirty_group

log = logging.getLogger("pyvfio.cli")


# -- the run's environment -------------------------------------------------------------------------
@dataclass
class Env:
    json: bool
    backend_name: str
    paths: HostPaths
    _backend: Any = None
    _source: DeviceSource | None = None
    _core: Any = None
    _host: Host | None = None

    @property
    def backend(self) -> Any:
        if self._backend is None:
            self._backend = new_backend(self.backend_name)
        return self._backend

    @property
    def host(self) -> Host:
        """The machine the paths describe: the backend's host, or the host of a given tree."""
        if self._host is None:
            h = self.backend.host if self._backend is not None else None
            if h is not None and os.path.realpath(self.paths.sys) == os.path.realpath(h.sys):
                self._host = h
            else:
                p = self.paths
                self._host = Host.at(p.sys, p.proc, p.dev, p.state)
        return self._host

    @property
    def source(self) -> DeviceSource:
        if self._source is None:
            self._source = open_source(self.paths.sys)
        return self._source

    @property
    def core(self) -> _binding.DriverCore:
        """Who performs driver-core writes: the host (the kernel, the mock's, or a fake tree's)."""
        if self._core is None:
            self._core = _binding.DriverCore(self.paths, self.host)
        return self._core

    # -- output ---------------------------------------------------------------------------------
    def emit(self, doc: dict[str, Any], text: Callable[[], None], code: int = EXIT_OK) -> NoReturn:
        if self.json:
            click.echo(json.dumps(doc, indent=2, sort_keys=False, default=str))
        else:
            text()
        raise click.exceptions.Exit(code)


def _json_requested(args: list[str]) -> bool:
    for a in args:
        if a == "--":
            break
        if a == "--json":
            return True
    return False


def error_doc(e: BaseException) -> tuple[dict[str, Any], int]:
    """The JSON error document and exit code for an exception."""
    if isinstance(e, PyvfioError):
        doc = e.to_dict()
        if isinstance(e, NotFoundError):
            code = EXIT_NOT_FOUND
        elif isinstance(e, PermissionDeniedError) or e.errno in (_errno.EACCES, _errno.EPERM):
            code = EXIT_PERMISSION
        elif isinstance(e, UnsupportedError):
            code = EXIT_UNSUPPORTED
        else:
            code = EXIT_FAILED
        return doc, code
    if isinstance(e, (ArgumentError, click.UsageError, click.BadParameter)):
        msg = e.format_message() if isinstance(e, click.ClickException) else str(e)
        return {"error": msg, "errno": None, "errno_name": None, "op": None, "path": None,
                "hint": "see --help"}, EXIT_USAGE
    if isinstance(e, click.ClickException):
        return {"error": e.format_message(), "errno": None, "errno_name": None, "op": None,
                "path": None, "hint": None}, e.exit_code
    if isinstance(e, OSError):
        doc = {"error": str(e), "errno": e.errno, "errno_name": _errno.errorcode.get(e.errno or 0),
               "op": None, "path": e.filename, "hint": None}
        code = {_errno.ENOENT: EXIT_NOT_FOUND, _errno.EACCES: EXIT_PERMISSION,
                _errno.EPERM: EXIT_PERMISSION}.get(e.errno or 0, EXIT_FAILED)
        return doc, code
    return {"error": f"{type(e).__name__}: {e}", "errno": None, "errno_name": None, "op": None,
            "path": None, "hint": None}, EXIT_FAILED


class PyvfioGroup(click.Group):
    """The top-level group: turns every error into the documented exit code (and JSON document)."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        as_json = _json_requested(argv)
        try:
            rc = super().main(argv, prog_name or "pyvfio", complete_var, standalone_mode=False, **extra)
        except click.exceptions.Exit as e:
            rc = e.exit_code
        except click.exceptions.Abort:
            if as_json:
                click.echo(json.dumps({"error": "aborted", "errno": None, "op": None, "hint": None}))
            else:
                click.echo("Aborted.", err=True)
            rc = EXIT_FAILED
        except BaseException as e:  # noqa: BLE001 - every error becomes a document + exit code
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            doc, rc = error_doc(e)
            if isinstance(e, click.UsageError) and not as_json:
                e.show()
            elif as_json:
                click.echo(json.dumps(doc, indent=2, default=str))
            else:
                click.echo(f"pyvfio: error: {doc['error']}", err=True)
                if doc.get("hint") and doc["hint"] not in doc["error"]:
                    click.echo(f"  hint: {doc['hint']}", err=True)
            if not isinstance(e, (PyvfioError, ArgumentError, click.ClickException, OSError)):
                log.debug("unexpected error", exc_info=True)
        if not standalone_mode:
            return rc
        sys.exit(rc if isinstance(rc, int) else 0)


def _stdin_is_tty() -> bool:
    try:
        return sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


def confirm_or_refuse(env: Env, question: str, yes: bool) -> None:
    """Ask before a destructive action; refuse (exit 2) instead of hanging when there is no TTY."""
    if yes:
        return
    if not _stdin_is_tty():
        raise ArgumentError(f"{question.rstrip('?')}: refusing without confirmation because stdin is not "
                            "a terminal; pass --yes (or --dry-run to see the plan)")
    if not click.confirm(question, default=False, err=True):
        raise click.exceptions.Abort()


# -- the app ------------------------------------------------------------------------------------------
@click.group(cls=PyvfioGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON document on stdout.")
@click.option("--backend", type=click.Choice(["real", "mock"]), default=None,
              help="Kernel to talk to: the real one, or pyvfio's mock kernel (default: $PYVFIO_BACKEND or real).")
@click.option("-v", "--verbose", count=True, help="Log to stderr (-vv for debug).")
@click.option("--sysfs-root", hidden=True, help="Read a sysfs-shaped tree instead of /sys (tests).")
@click.option("--root", "fake_root", hidden=True,
              help="A fake host root holding sys/, proc/, dev/ and run/pyvfio (tests).")
@click.pass_context
def cli(ctx: click.Context, as_json: bool, backend: str | None, verbose: int, sysfs_root: str | None,
        fake_root: str | None) -> None:
    """Inspect and prepare a host for VFIO device passthrough.

    \b
    Exit codes: 0 ok, 1 operation failed (doctor: a check failed), 2 usage or
    missing confirmation, 3 not found, 4 permission denied, 5 unsupported.
    bind remembers original drivers in $PYVFIO_STATE_DIR (default /run/pyvfio).
    """
    if verbose:
        logging.basicConfig(level=logging.DEBUG if verbose > 1 else logging.INFO, stream=sys.stderr,
                            format="%(name)s: %(message)s")
    name = backend or os.environ.get("PYVFIO_BACKEND", "real")
    if name not in ("real", "mock"):
        raise ArgumentError(f"unknown backend {name!r} in PYVFIO_BACKEND: use real or mock")
    paths = HostPaths.under(fake_root) if fake_root else HostPaths.real()
    if os.environ.get("PYVFIO_STATE_DIR"):
        paths = HostPaths(paths.sys, paths.proc, paths.dev, os.environ["PYVFIO_STATE_DIR"])
    env = Env(as_json, name, paths)
    if sysfs_root:
        env.paths = HostPaths(sysfs_root, paths.proc, paths.dev, paths.state)
    elif name == "mock" and not fake_root:
        h = env.backend.host  # the mock's machine: its /sys, /proc and /dev
        env.paths = HostPaths(h.sys, h.proc, h.dev, h.state)
    ctx.obj = env


cli.add_command(dirty_group)


def _yesno(b: bool | None) -> str:
    return "-" if b is None else ("yes" if b else "no")


@cli.command("ls")
@click.option("--vfio", "only_vfio", is_flag=True, help="Only devices VFIO can use now.")
@click.option("-l", "--long", "long_", is_flag=True, help="Add NUMA node, reset methods, SR-IOV and why not usable.")
@click.pass_obj
def ls_cmd(env: Env, only_vfio: bool, long_: bool) -> None:
    """List PCI devices: BDF, vendor:device, class, driver, IOMMU group, VFIO-usable."""
    rows = survey(env.source)
    if only_vfio:
        rows = [r for r in rows if r.usability.usable]
    doc = {"devices": [r.to_dict() for r in rows]}

    def text() -> None:
        header = ["BDF", "IDS", "CLASS", "DRIVER", "GROUP", "VFIO"]
        if long_:
            header += ["NUMA", "RESET", "SRIOV", "WHY"]
        out = []
        for r in rows:
            d = r.device
            line = [d.bdf, d.ids, d.class_name, d.driver or "-",
                    "-" if d.iommu_group is None else str(d.iommu_group), _yesno(r.usability.usable)]
            if long_:
                sriov = (f"PF {d.sriov_numvfs}/{d.sriov_totalvfs}" if d.sriov_totalvfs
                         else (f"VF of {d.physfn}" if d.physfn else "-"))
                line += ["-" if d.numa_node is None else str(d.numa_node),
                         (",".join(d.reset_methods) if d.reset_methods else ("yes" if d.has_reset else "none")),
                         sriov, "" if r.usability.usable else r.usability.reason]
            out.append(line)
        click.echo(table(out, header) if out else "no PCI devices")

    env.emit(doc, text)


def _group_doc(env: Env, g: IommuGroup) -> dict[str, Any]:
    doc = g.to_dict()
    node_exists = env.core.node_exists(g.number)
    nodes = sorted({n for d in g.devices for n in _binding.vfio_nodes(d)})
    holders, _ = _binding.vfio_holders(env.paths, nodes) if node_exists else ([], 0)
    doc["members"] = [{"bdf": d.bdf, "ids": d.ids, "class_name": d.class_name, "driver": d.driver,
                       "dma_safe": _binding.is_dma_safe_driver(d.driver)} for d in g.devices]
    doc["vfio_node"] = f"/dev/vfio/{g.number}"
    doc["vfio_node_exists"] = node_exists
    doc["holders"] = [h.to_dict() for h in holders]
    return doc


@cli.command("group")
@click.argument("number", required=False, type=int)
@click.pass_obj
def group_cmd(env: Env, number: int | None) -> None:
    """Show IOMMU groups: members, viability and why (NUMBER: one group in detail)."""
    if number is not None:
        g = env.source.group(number)
        doc = _group_doc(env, g)

        def text1() -> None:
            v = g.viability
            click.echo(f"IOMMU group {g.number}" + (f" (type {g.type})" if g.type else ""))
            click.echo(f"  viable: {_yesno(v.viable)} - {v.reason}")
            click.echo(f"  node:   {doc['vfio_node']} ({'present' if doc['vfio_node_exists'] else 'absent'})"
                       + "".join(f"; held by pid {h['pid']} ({h['comm']})" for h in doc["holders"]))
            rows = [[m["bdf"], m["ids"], m["class_name"], m["driver"] or "-",
                     "ok" if m["dma_safe"] else "BLOCKS"] for m in doc["members"]]
            rows += [[o, "-", "(not PCI)", "-", "?"] for o in g.others]
            click.echo("\n".join("  " + ln for ln in table(rows, ["BDF", "IDS", "CLASS", "DRIVER", "VIABILITY"]).splitlines()))
            for b in v.blockers:
                click.echo(f"  fix: `pyvfio bind --whole-group {b.bdf}` or unbind {b.bdf} from {b.driver}")

        env.emit({"group": doc}, text1)
    groups = env.source.groups()
    docs = [g.to_dict() for g in groups.values()]

    def text() -> None:
        if not groups:
            click.echo("no IOMMU groups (is the IOMMU enabled? run `pyvfio doctor`)")
            return
        rows = []
        for g in groups.values():
            v = g.viability
            members = " ".join(f"{d.bdf}[{d.driver or '-'}]" for d in g.devices) or "-"
            rows.append([str(g.number), _yesno(v.viable), members, "" if v.viable else v.reason])
        click.echo(table(rows, ["GROUP", "VIABLE", "MEMBERS", "WHY"]))

    env.emit({"groups": docs}, text)


def _flags(f: Any) -> str:
    """An IntFlag as ``A|B`` (its set members), or hex when no member is named."""
    names = [m.name for m in type(f) if m.name and m.value and (f & m) == m]
    return "|".join(names) if names else f"{int(f):#x}"


def _vfio_details(env: Env, bdf: str) -> dict[str, Any]:
    """Open ``bdf`` through VFIO (container, group, type1v2, device fd) and describe it."""
    out: dict[str, Any] = {}
    with open_device(bdf, backend=env.backend) as od:
        dev, cont, iommu = od.device, od.container, od.iommu
        di = dev.info
        out["device"] = {"flags": _flags(di.flags), "num_regions": di.num_regions, "num_irqs": di.num_irqs,
                         "reset_supported": di.reset_supported, "caps": [c.id for c in di.caps]}
        out["regions"] = [
            {"index": r.index, "name": r.name, "size": r.size, "offset": r.offset, "flags": _flags(r.flags),
             "readable": r.readable, "writable": r.writable, "mappable": r.mappable,
             "mmap_areas": [{"offset": a.offset, "size": a.size} for a in r.mmap_areas()],
             "type": r.type, "subtype": r.subtype}
            for r in dev.regions() if r.size or r.flags]
        out["irqs"] = [{"index": q.index, "name": q.name, "count": q.count, "flags": _flags(q.flags)}
                       for q in dev.irqs()]
        try:
            caps = dev.config.capabilities()
            out["pci_capabilities"] = [{"name": c.name, "id": c.id, "offset": c.offset, "extended": c.extended}
                                       for c in caps]
        except PyvfioError as e:
            out["pci_capabilities_error"] = str(e)
        out["container"] = {"api_version": cont.api_version(), "extensions": cont.extensions(),
                            "iommu_type": type(iommu).__name__}
        info_fn = getattr(iommu, "info", None)
        if info_fn is not None:
            ti = info_fn()
            out["iommu"] = {
                "iova_pgsizes": f"{getattr(ti, 'iova_pgsizes', 0):#x}",
                "iova_ranges": [{"start": f"{r.start:#x}", "end": f"{r.end:#x}"} for r in getattr(ti, "iova_ranges", ())],
                "dma_avail": getattr(ti, "dma_avail", None),
                "migration": None if getattr(ti, "migration", None) is None else {
                    "pgsize_bitmap": f"{ti.migration.pgsize_bitmap:#x}",
                    "max_dirty_bitmap_size": ti.migration.max_dirty_bitmap_size},
            }
    return out


@cli.command("info")
@click.argument("bdf")
@click.pass_obj
def info_cmd(env: Env, bdf: str) -> None:
    """Describe BDF: sysfs facts, and through VFIO its regions, IRQs, capabilities and IOMMU."""
    dev = env.source.device(bdf)
    group = env.source.group(dev.iommu_group) if dev.iommu_group is not None else None
    use = usability(dev, group)
    doc: dict[str, Any] = {**dev.to_dict(), "vfio_usable": use.usable, "vfio_reason": use.reason,
                           "group": None if group is None else group.to_dict(), "vfio": None}
    code = EXIT_OK
    if use.usable:
        try:
            doc["vfio"] = _vfio_details(env, dev.bdf)
        except PyvfioError as e:
            err, code = error_doc(e)
            doc["vfio_error"] = err

    def text() -> None:
        click.echo(f"{dev.bdf}  {dev.ids}  {dev.class_name} (class {dev.class_code:06x})")
        click.echo(f"  driver {dev.driver or '-'}, IOMMU group {dev.iommu_group if dev.iommu_group is not None else '-'}, "
                   f"NUMA node {dev.numa_node if dev.numa_node is not None else '-'}")
        rm = ",".join(dev.reset_methods) if dev.reset_methods else ("yes" if dev.has_reset else "none")
        click.echo(f"  reset methods: {rm}")
        if dev.sriov_totalvfs:
            click.echo(f"  SR-IOV: {dev.sriov_numvfs}/{dev.sriov_totalvfs} VFs: {' '.join(dev.virtfns) or '-'}")
        if dev.physfn:
            click.echo(f"  VF of {dev.physfn}")
        click.echo(f"  VFIO usable: {_yesno(use.usable)} ({use.reason})")
        v = doc.get("vfio")
        if doc.get("vfio_error"):
            click.echo(f"  cannot open through VFIO: {doc['vfio_error']['error']}")
        if not v:
            return
        d = v["device"]
        click.echo(f"  device: {d['num_regions']} regions, {d['num_irqs']} IRQ types, flags {d['flags']}, "
                   f"reset {'yes' if d['reset_supported'] else 'no'}")
        rows = [[str(r["index"]), r["name"], f"{r['size']:#x}", f"{r['offset']:#x}",
                 ("r" if r["readable"] else "-") + ("w" if r["writable"] else "-") + ("m" if r["mappable"] else "-")]
                for r in v["regions"]]
        click.echo("\n".join("  " + ln for ln in table(rows, ["#", "REGION", "SIZE", "OFFSET", "RWM"]).splitlines()))
        rows = [[str(q["index"]), q["name"], str(q["count"]), q["flags"]] for q in v["irqs"]]
        click.echo("\n".join("  " + ln for ln in table(rows, ["#", "IRQ", "COUNT", "FLAGS"]).splitlines()))
        if v.get("pci_capabilities"):
            click.echo("  PCI capabilities: " + ", ".join(f"{c['name']}@{c['offset']:#x}" for c in v["pci_capabilities"]))
        c = v["container"]
        click.echo(f"  container: API {c['api_version']}, {c['iommu_type']}, extensions "
                   + ", ".join(k for k, val in c["extensions"].items() if val))
        if v.get("iommu"):
            i = v["iommu"]
            click.echo(f"  IOMMU: page sizes {i['iova_pgsizes']}, DMA mappings available {i['dma_avail']}, ranges "
                       + ", ".join(f"{r['start']}-{r['end']}" for r in i["iova_ranges"]))

    env.emit(doc, text, code)


def _bind_text(res: _binding.BindResult) -> Callable[[], None]:
    def text() -> None:
        pre = "would " if res.dry_run else ""
        for c in res.changes:
            click.echo(f"{c.bdf} ({c.ids}): {pre}{c.before or 'no driver'} -> "
                       f"{(c.target if res.dry_run else c.after) or 'no driver'}")
        if res.dry_run:
            for s in res.steps:
                click.echo(f"  step: {s.bdf} {s.action}: {s.detail}")
        for u in res.uses:
            click.echo(f"  in use: {u.what}")
        if res.vfio_node:
            click.echo(f"  {res.vfio_node} ready")
        for w in res.warnings:
            click.echo(f"  warning: {w}", err=True)
    return text


@cli.command("bind")
@click.argument("bdf")
@click.option("--driver", default=_binding.VFIO_PCI, show_default=True, help="Driver to bind to.")
@click.option("--whole-group", is_flag=True, help="Bind every group member on a host driver too.")
@click.option("--partial", is_flag=True, help="Bind this device even if a sibling keeps the group non-viable.")
@click.option("--force", is_flag=True, help="Bind even if the host uses the device (mounts, swap, addresses, open fds).")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("-n", "--dry-run", is_flag=True, help="Show what would be done; change nothing.")
@click.option("--timeout", type=float, default=5.0, show_default=True,
              help="Seconds to wait for the driver and /dev/vfio/N.")
@click.pass_obj
def bind_cmd(env: Env, bdf: str, driver: str, whole_group: bool, partial: bool, force: bool, yes: bool,
             dry_run: bool, timeout: float) -> None:
    """Bind BDF to vfio-pci (driver_override + drivers_probe), remembering its driver."""
    kw = dict(paths=env.paths, core=env.core, driver=driver, whole_group=whole_group, partial=partial,
              force=force, timeout=timeout)
    # The plan first: refusals (in use, non-viable) come before any question.
    plan = _binding.bind(env.source, bdf, dry_run=True, **kw)  # type: ignore[arg-type]
    if not dry_run:
        if plan.uses and not force:
            raise _binding.DeviceInUseError(plan.bdf, plan.uses)
        if plan.viable is False and not partial:
            g = env.source.group(plan.group)  # type: ignore[arg-type]
            raise _binding.GroupNotViableError(plan.bdf, g, Viability(False, tuple(plan.blockers), ""))
        if all(c.before == c.target for c in plan.changes):
            res = plan
            res.dry_run = False
            res.warnings.append(f"already bound to {driver}")
            env.emit(res.to_dict(), _bind_text(res))
        moves = ", ".join(f"{c.bdf} ({c.before or 'no driver'})" for c in plan.changes if c.before != c.target)
        confirm_or_refuse(env, f"Bind {moves} to {driver}?", yes)
        res = _binding.bind(env.source, bdf, dry_run=False, **kw)  # type: ignore[arg-type]
    else:
        res = plan
    env.emit(res.to_dict(), _bind_text(res))


@cli.command("unbind")
@click.argument("bdf")
@click.option("--whole-group", is_flag=True, help="Unbind every group member on vfio too.")
@click.option("--no-restore", is_flag=True, help="Leave the device without a driver.")
@click.option("--force", is_flag=True, help="Unbind even if a process holds /dev/vfio/N (the unbind then waits for it).")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("-n", "--dry-run", is_flag=True, help="Show what would be done; change nothing.")
@click.option("--timeout", type=float, default=5.0, show_default=True,
              help="Seconds to wait for the original driver to take it back.")
@click.pass_obj
def unbind_cmd(env: Env, bdf: str, whole_group: bool, no_restore: bool, force: bool, yes: bool,
               dry_run: bool, timeout: float) -> None:
    """Unbind BDF from its driver and give it back to its original driver."""
    kw = dict(paths=env.paths, core=env.core, whole_group=whole_group, force=force,
              restore=not no_restore, timeout=timeout)
    plan = _binding.unbind(env.source, bdf, dry_run=True, **kw)  # type: ignore[arg-type]
    if dry_run:
        env.emit(plan.to_dict(), _bind_text(plan))
    if plan.uses and not force:
        raise _binding.DeviceInUseError(plan.bdf, plan.uses)
    what = ", ".join(f"{c.bdf} ({c.before or 'no driver'})" for c in plan.changes)
    back = "" if no_restore else " and restore the original driver"
    confirm_or_refuse(env, f"Unbind {what}{back}?", yes)
    res = _binding.unbind(env.source, bdf, dry_run=False, **kw)  # type: ignore[arg-type]
    env.emit(res.to_dict(), _bind_text(res))


@cli.command("doctor")
@click.option("--guest-memory", default="1G", show_default=True,
              help="Guest RAM VFIO will pin (checks RLIMIT_MEMLOCK and hugepages).")
@click.option("--mappings", type=click.IntRange(min=1), default=None,
              help="Planned DMA mapping count (checks dma_entry_limit); default 4096.")
@click.option("--pid", type=click.IntRange(min=1), default=None,
              help="Check this process's limits (e.g. the VMM's) instead of the doctor's own.")
@click.option("--device", "devices", multiple=True, help="A device you mean to pass through (repeatable).")
@click.option("--check", "only", multiple=True, help="Run only this check (repeatable).")
@click.pass_obj
def doctor_cmd(env: Env, guest_memory: str, mappings: int | None, pid: int | None, devices: tuple[str, ...],
               only: tuple[str, ...]) -> None:
    """Check the host for VFIO passthrough; explain each problem with a fix hint."""
    opts = DoctorOptions(guest_memory=parse_size(guest_memory), mappings=mappings or DEFAULT_MAPPINGS,
                         pid=str(pid) if pid else "self", devices=list(devices))
    host = env.host  # a machine that keeps its own log or knows its IR says so
    doc_ = Doctor(env.source, env.paths, opts, node_exists=env.core.node_exists, kernel_log=host.dmesg,
                  interrupt_remapping=host.interrupt_remapping)
    report = doc_.run(list(only) or None)
    if only:
        unknown = set(only) - {r.name for r in report.results}
        if unknown:
            raise ArgumentError(f"unknown check(s): {', '.join(sorted(unknown))}")
    marks = {Status.OK: "ok", Status.WARN: "WARN", Status.FAIL: "FAIL", Status.SKIP: "skip"}

    def text() -> None:
        rows = [[marks[r.status], r.name, r.summary] for r in report.results]
        click.echo(table(rows, ["STATUS", "CHECK", "FINDING"]))
        for r in report.results:
            if r.status in (Status.WARN, Status.FAIL) and r.hint:
                click.echo(f"\n{r.name}: {r.hint}")
                for e in r.evidence:
                    click.echo(f"  - {e}")
        click.echo("\nall clear" if report.worst in (Status.OK, Status.SKIP) else
                   f"\n{sum(r.status is Status.FAIL for r in report.results)} failed, "
                   f"{sum(r.status is Status.WARN for r in report.results)} warnings")

    env.emit(report.to_dict(), text, EXIT_FAILED if report.failed else EXIT_OK)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``pyvfio``)."""
    cli.main(args=argv, prog_name="pyvfio")


__all__ = ["cli", "main", "table", "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "EXIT_NOT_FOUND",
           "EXIT_PERMISSION", "EXIT_UNSUPPORTED"]
