"""python -m vm: the guest test bed's command line (x86 guests, and the POWER guest under ``power``).

    python -m vm run [--iommu intel|amd|virtio|none] [--timeout S] [--devices edu,e1000e|nvme]
                     [--bind edu[,e1000e]] [--kernel stable|newest|built] [--quiet] -- CMD...
    python -m vm fetch-kernel [--arch amd64]       download + cache the pinned guest kernel
    python -m vm fetch-kernel --newest             ... the newest build of the newest series (sid)
    python -m vm build-kernel [--dry-run]          build the iommufd kernel (vm/build_kernel.py)
    python -m vm status                            can an x86 guest start here? which kernel?
    python -m vm power setup [--force]             fetch + prepare the POWER kernel and userland
    python -m vm power run [--timeout S] [--results-dir D] [--quiet] [--shell] -- CMD...
    python -m vm power status                      can a POWER guest start here?

`run` exits with the job's exit code, 124 when the guest timed out, 125 when it failed without
an exit code (QEMU died, kernel panic, POWER /init failed); the console tail is printed to
stderr then.  `power run` executes CMD in the POWER guest's /src (a copy of pyvfio/, tests/, vm/);
files the command writes to $PYVFIO_RESULTS come back into the results folder.
``python -m vm.power ...`` is the same as ``python -m vm power ...``.
"""

from __future__ import annotations

import argparse
import sys

from . import build_kernel, guest, kernel
from .power import fetch, pins, runner


def _csv(value: str) -> list[str]:
    return [v for v in value.split(",") if v]


def _command(p: argparse.ArgumentParser, command: list[str]) -> list[str]:
    cmd = command[1:] if command[:1] == ["--"] else command
    if not cmd:
        p.error("run needs a command after --")
    return cmd


def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    p = argparse.ArgumentParser(prog="python -m vm", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="boot an x86 guest and run CMD in it")
    r.add_argument("--iommu", choices=guest.VARIANTS, default="intel")
    r.add_argument("--timeout", type=float, default=300.0, help="seconds (default 300)")
    r.add_argument("--devices", type=_csv, default=["edu", "e1000e"],
                   help="PCI devices to add, comma separated (edu is always added): "
                        + ", ".join(guest.DEVICE_KINDS))
    r.add_argument("--bind", type=_csv, default=["edu"],
                   help="devices to bind to vfio-pci (default edu)")
    r.add_argument("--iommufd", action="store_true", help="boot our kernel (= --kernel built)")
    r.add_argument("--kernel", choices=kernel.GENERATIONS, default=None,
                   help="kernel generation: stable (default), newest, built")
    r.add_argument("--results-dir", default=None)
    r.add_argument("--memory", default="1G")
    r.add_argument("--quiet", action="store_true", help="do not stream the console")
    r.add_argument("command", nargs=argparse.REMAINDER)

    f = sub.add_parser("fetch-kernel", help="download and cache the pinned guest kernel")
    f.add_argument("--arch", default="amd64", choices=sorted(kernel.KERNELS))
    f.add_argument("--newest", action="store_true",
                   help=f"the newest build of the {kernel.NEWEST.series} series ({kernel.NEWEST.suite})")

    b = sub.add_parser("build-kernel", help="build the iommufd guest kernel (slow)")
    b.add_argument("--dry-run", action="store_true")
    b.add_argument("--jobs", type=int, default=2)

    sub.add_parser("status", help="say whether an x86 guest can start here")

    pw = sub.add_parser("power", help="the POWER (pseries, SPAPR TCE) guest")
    psub = pw.add_subparsers(dest="power_cmd", required=True)
    s = psub.add_parser("setup", help="fetch and prepare the guest kernel and userland (idempotent)")
    s.add_argument("--force", action="store_true", help="re-extract even when ready")
    pr = psub.add_parser("run", help="boot the POWER guest and run CMD in it")
    pr.add_argument("--timeout", type=float, default=180.0, help="seconds (default 180)")
    pr.add_argument("--results-dir", default=None)
    pr.add_argument("--memory", default="1G")
    pr.add_argument("--quiet", action="store_true", help="do not stream the console")
    pr.add_argument("--shell", action="store_true", help="CMD is one shell command line")
    pr.add_argument("command", nargs=argparse.REMAINDER)
    psub.add_parser("status", help="say whether a POWER guest can start here")
    return p, {"run": r, "power run": pr}


def _x86_run(a: argparse.Namespace, cmd: list[str]) -> int:
    try:
        res = guest.run(cmd, iommu=a.iommu, timeout=a.timeout, devices=a.devices,
                        bind=a.bind, iommufd=a.iommufd, kernel=a.kernel, results_dir=a.results_dir,
                        memory=a.memory, stream=not a.quiet)
    except (guest.GuestUnavailable, ValueError) as e:
        print(f"vm run: {e}", file=sys.stderr)
        return guest.EXIT_FAILURE
    if res.status != "ok":
        print(f"vm run: {res.describe()}", file=sys.stderr)
    else:
        print(f"vm run: {res.describe()} (boot {res.boot_seconds or 0:.1f} s; "
              f"results in {res.results_dir})", file=sys.stderr)
    return res.host_exit_code()


def _x86_status() -> int:
    reason = guest.unavailable_reason()
    k = kernel.cached_kernel("amd64")
    print(f"guest: {'available' if reason is None else 'unavailable: ' + reason}")
    print(f"stable kernel: {k.image if k else 'not cached'} (pin {kernel.KERNELS['amd64'].package}="
          f"{kernel.KERNELS['amd64'].version})")
    nk = kernel.cached_newest()
    print(f"newest kernel: {nk.image if nk else 'not cached (python -m vm fetch-kernel --newest)'} "
          f"(series {kernel.NEWEST.series} from {kernel.NEWEST.suite})")
    ik = build_kernel.cached_iommufd_kernel()
    print(f"built kernel: {ik.image if ik else 'not built (python -m vm build-kernel) for ' + str(build_kernel.output_dir())}")
    return 0 if reason is None else 1


def _power(a: argparse.Namespace, run_parser: argparse.ArgumentParser) -> int:
    if a.power_cmd == "setup":
        try:
            fetch.prepare(force=a.force)
        except (fetch.FetchError, RuntimeError) as e:
            print(f"vm power setup: {e}", file=sys.stderr)
            return 1
        return 0
    if a.power_cmd == "run":
        cmd = _command(run_parser, a.command)
        if a.shell:
            cmd = [" ".join(cmd)]
        try:
            res = runner.run(cmd, timeout=a.timeout, results_dir=a.results_dir, memory=a.memory,
                             stream=not a.quiet, shell=a.shell)
        except (runner.GuestUnavailable, ValueError) as e:
            print(f"vm power run: {e}", file=sys.stderr)
            return runner.EXIT_FAILURE
        extra = "" if res.status != "ok" else (
            f" (boot {res.boot_seconds or 0:.1f} s; results in {res.results_dir})")
        print(f"vm power run: {res.describe()}{extra}", file=sys.stderr)
        return res.host_exit_code()
    if a.power_cmd == "status":
        reason = runner.unavailable_reason()
        print(f"power guest: {'available' if reason is None else 'unavailable: ' + reason}")
        print(f"kernel pin: {pins.KERNEL.package}={pins.KERNEL.version}; cache {pins.cache_dir()}")
        return 0 if reason is None else 1
    return 2


def main(argv: list[str] | None = None) -> int:
    p, parsers = _parser()
    a = p.parse_args(argv)
    if a.cmd == "run":
        return _x86_run(a, _command(parsers["run"], a.command))
    if a.cmd == "fetch-kernel":
        k = kernel.fetch_newest(quiet=False) if a.newest else kernel.fetch_kernel(a.arch, quiet=False)
        print(k.image)
        return 0
    if a.cmd == "build-kernel":
        return build_kernel.main(dry_run=a.dry_run, jobs=a.jobs)
    if a.cmd == "status":
        return _x86_status()
    if a.cmd == "power":
        return _power(a, parsers["power run"])
    return 2
