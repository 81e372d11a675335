"""Run a pytest selection inside the POWER guest and read back its per-test report.

This is what vm/pytest_plugin.py needs for a ``power`` variant: one boot runs the selected node ids
with ``-p vm.pytest_plugin`` (guest side: PYVFIO_IN_GUEST=1, PYVFIO_GUEST=power, a JSON report keyed
by node id written to $PYVFIO_GUEST_REPORT) and a junit XML, both returned in the results folder
and read back by vm/suite.py's SuiteRun, the same as for the x86 guests.
"""

from __future__ import annotations

import os
import tempfile
from typing import IO, Sequence

from ..suite import GUEST_PYTEST_OPTIONS, REPORT, SuiteRun
from . import initramfs, runner

__all__ = ["SuiteRun", "pytest_argv", "run_pytest"]


def pytest_argv(selection: Sequence[str], *, results: str = runner.GUEST_RESULTS,
                extra: Sequence[str] = ()) -> list[str]:
    """The guest's pytest command line for ``selection`` (node ids or paths relative to /src)."""
    src = initramfs.GUEST_SRC
    # hypothesis's pytest plugin costs ~1.7 s of imports under TCG; @given works without it.
    return ["python3", "-m", "pytest", *GUEST_PYTEST_OPTIONS, "-p", "no:hypothesispytest",
            "--rootdir", src, "-c", f"{src}/pyproject.toml", f"--junitxml={results}/junit.xml",
            *extra, *selection]


def run_pytest(selection: Sequence[str], *, timeout: float = 300.0,
               results_dir: str | os.PathLike | None = None, stream: IO[str] | None | bool = False,
               extra: Sequence[str] = (), env: dict[str, str] | None = None) -> SuiteRun:
    """Boot the POWER guest once and run pytest on ``selection`` in its /src.

    Raises GuestUnavailable when no POWER guest can start here.
    """
    if results_dir is None:
        results_dir = tempfile.mkdtemp(prefix="pyvfio-guest-power-")
    genv = {"PYVFIO_GUEST_REPORT": f"{runner.GUEST_RESULTS}/{REPORT}", **(env or {})}
    res = runner.run(pytest_argv(selection, extra=extra), timeout=timeout, results_dir=results_dir,
                     stream=stream, env=genv)
    return SuiteRun.collect(res, who="POWER guest")
