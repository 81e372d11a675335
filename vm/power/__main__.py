"""python -m vm.power: the POWER guest test bed's command line.

    python -m vm.power setup [--force]                        fetch + prepare kernel and userland
    python -m vm.power run [--timeout S] [--results-dir D] [--quiet] [--shell] -- CMD...
    python -m vm.power status                                 can a POWER guest start here?

`run` executes CMD in the guest's /src (a copy of pyvfio/, tests/, vm/) and exits with its exit
code; 124 when the guest timed out, 125 when it failed without one (QEMU died, panic, /init
failed), with the console tail on stderr.  Files the command writes to $PYVFIO_RESULTS come back
into the results folder.
"""

from __future__ import annotations

import argparse
import sys

from . import fetch, pins, runner


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vm.power", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("setup", help="fetch and prepare the guest kernel and userland (idempotent)")
    s.add_argument("--force", action="store_true", help="re-extract even when ready")
    r = sub.add_parser("run", help="boot the POWER guest and run CMD in it")
    r.add_argument("--timeout", type=float, default=180.0, help="seconds (default 180)")
    r.add_argument("--results-dir", default=None)
    r.add_argument("--memory", default="1G")
    r.add_argument("--quiet", action="store_true", help="do not stream the console")
    r.add_argument("--shell", action="store_true", help="CMD is one shell command line")
    r.add_argument("command", nargs=argparse.REMAINDER)
    sub.add_parser("status", help="say whether a POWER guest can start here")

    a = p.parse_args(argv)
    if a.cmd == "setup":
        try:
            fetch.prepare(force=a.force)
        except (fetch.FetchError, RuntimeError) as e:
            print(f"vm.power setup: {e}", file=sys.stderr)
            return 1
        return 0
    if a.cmd == "run":
        cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
        if not cmd:
            p.error("run needs a command after --")
        if a.shell:
            cmd = [" ".join(cmd)]
        try:
            res = runner.run(cmd, timeout=a.timeout, results_dir=a.results_dir, memory=a.memory,
                             stream=not a.quiet, shell=a.shell)
        except (runner.GuestUnavailable, ValueError) as e:
            print(f"vm.power run: {e}", file=sys.stderr)
            return runner.EXIT_FAILURE
        extra = "" if res.status != "ok" else (
            f" (boot {res.boot_seconds or 0:.1f} s; results in {res.results_dir})")
        print(f"vm.power run: {res.describe()}{extra}", file=sys.stderr)
        return res.host_exit_code()
    if a.cmd == "status":
        reason = runner.unavailable_reason()
        print(f"power guest: {'available' if reason is None else 'unavailable: ' + reason}")
        print(f"kernel pin: {pins.KERNEL.package}={pins.KERNEL.version}; cache {pins.cache_dir()}")
        return 0 if reason is None else 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
