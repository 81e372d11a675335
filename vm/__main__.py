"""python -m vm: the guest test bed's command line.

    python -m vm run [--iommu intel|amd|virtio|none] [--timeout S] [--devices edu,e1000e|nvme]
                     [--bind edu[,e1000e]] [--iommufd] [--quiet] -- CMD...
    python -m vm fetch-kernel [--arch amd64]       download + cache the pinned guest kernel
    python -m vm build-kernel [--dry-run]          build the iommufd kernel (vm/build_kernel.py)
    python -m vm status                            can a guest start here? which kernel?

`run` exits with the job's exit code, 124 when the guest timed out, 125 when it failed without
an exit code (QEMU died, kernel panic); the console tail is printed to stderr then.
"""

from __future__ import annotations

import argparse
import sys

from . import guest, kernel


def _csv(value: str) -> list[str]:
    return [v for v in value.split(",") if v]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vm", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="boot a guest and run CMD in it")
    r.add_argument("--iommu", choices=guest.VARIANTS, default="intel")
    r.add_argument("--timeout", type=float, default=300.0, help="seconds (default 300)")
    r.add_argument("--devices", type=_csv, default=["edu", "e1000e"],
                   help="PCI devices to add, comma separated (edu is always added): "
                        + ", ".join(guest.DEVICE_KINDS))
    r.add_argument("--bind", type=_csv, default=["edu"],
                   help="devices to bind to vfio-pci (default edu)")
    r.add_argument("--iommufd", action="store_true", help="boot the iommufd kernel")
    r.add_argument("--results-dir", default=None)
    r.add_argument("--memory", default="1G")
    r.add_argument("--quiet", action="store_true", help="do not stream the console")
    r.add_argument("command", nargs=argparse.REMAINDER)

    f = sub.add_parser("fetch-kernel", help="download and cache the pinned guest kernel")
    f.add_argument("--arch", default="amd64", choices=sorted(kernel.KERNELS))

    b = sub.add_parser("build-kernel", help="build the iommufd guest kernel (slow)")
    b.add_argument("--dry-run", action="store_true")
    b.add_argument("--jobs", type=int, default=2)

    sub.add_parser("status", help="say whether a guest can start here")

    a = p.parse_args(argv)
    if a.cmd == "run":
        cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
        if not cmd:
            p.error("run needs a command after --")
        try:
            res = guest.run(cmd, iommu=a.iommu, timeout=a.timeout, devices=a.devices,
                            bind=a.bind, iommufd=a.iommufd, results_dir=a.results_dir,
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
    if a.cmd == "fetch-kernel":
        k = kernel.fetch_kernel(a.arch, quiet=False)
        print(k.image)
        return 0
    if a.cmd == "build-kernel":
        from . import build_kernel
        return build_kernel.main(dry_run=a.dry_run, jobs=a.jobs)
    if a.cmd == "status":
        reason = guest.unavailable_reason()
        k = kernel.cached_kernel("amd64")
        print(f"guest: {'available' if reason is None else 'unavailable: ' + reason}")
        print(f"kernel: {k.image if k else 'not cached'} (pin {kernel.KERNELS['amd64'].package}="
              f"{kernel.KERNELS['amd64'].version})")
        from .build_kernel import cached_iommufd_kernel, output_dir
        ik = cached_iommufd_kernel()
        print(f"iommufd kernel: {ik.image if ik else 'not built (python -m vm build-kernel) for ' + str(output_dir())}")
        return 0 if reason is None else 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
