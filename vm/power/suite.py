"""Run a pytest selection inside the POWER guest and read back its per-test report.

This is what vm/pytest_plugin.py needs for a ``power`` variant: one boot runs the selected node ids
with ``-p vm.pytest_plugin`` (guest side: PYVFIO_IN_GUEST=1, PYVFIO_GUEST=power, a JSON report keyed
by node id written to $PYVFIO_GUEST_REPORT) and a junit XML, both returned in the results folder.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Sequence

from . import initramfs, runner


@dataclass
class SuiteRun:
    """A guest pytest run: the GuestResult, the node-id report and the junit path."""

    result: runner.GuestResult
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def junit(self) -> Path:
        return self.result.results_dir / "junit.xml"

    @property
    def tests(self) -> dict[str, dict[str, Any]]:
        return self.report.get("tests", {})

    def error(self) -> str | None:
        """Why this run cannot vouch for its tests (None when pytest ran and reported)."""
        res = self.result
        if res.status != "ok":
            return f"POWER guest run failed: {res.describe()}"
        if res.exit_code not in (0, 1):
            return (f"guest pytest exited {res.exit_code} (not 0/1: usage error, internal error, "
                    f"interrupted or no tests); console tail:\n{res.console_tail}")
        if not self.report:
            return f"the POWER guest wrote no pytest report; console tail:\n{res.console_tail}"
        return None


def pytest_argv(selection: Sequence[str], *, results: str = runner.GUEST_RESULTS,
                extra: Sequence[str] = ()) -> list[str]:
    """The guest's pytest command line for ``selection`` (node ids or paths relative to /src)."""
    src = initramfs.GUEST_SRC
    # hypothesis's pytest plugin costs ~1.7 s of imports under TCG; @given works without it.
    return ["python3", "-m", "pytest", "-p", "vm.pytest_plugin", "-p", "no:cacheprovider",
            "-p", "no:hypothesispytest", "-q", "-rfEs", "--rootdir", src, "-c", f"{src}/pyproject.toml",
            f"--junitxml={results}/junit.xml", *extra, *selection]


def run_pytest(selection: Sequence[str], *, timeout: float = 300.0,
               results_dir: str | os.PathLike | None = None, stream: IO[str] | None | bool = False,
               extra: Sequence[str] = (), env: dict[str, str] | None = None) -> SuiteRun:
    """Boot the POWER guest once and run pytest on ``selection`` in its /src.

    Raises GuestUnavailable when no POWER guest can start here.
    """
    if results_dir is None:
        results_dir = tempfile.mkdtemp(prefix="pyvfio-guest-power-")
    genv = {"PYVFIO_GUEST_REPORT": f"{runner.GUEST_RESULTS}/report.json", **(env or {})}
    res = runner.run(pytest_argv(selection, extra=extra), timeout=timeout, results_dir=results_dir,
                     stream=stream, env=genv)
    report_path = res.results_dir / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    return SuiteRun(result=res, report=report)
