"""A pytest selection run inside a guest, and what it vouches for: one implementation for x86 and POWER.

The guest side of vm/pytest_plugin.py writes a JSON report keyed by node id (``report.json``)
into the results folder; :class:`SuiteRun` reads it back with the guest run's GuestResult and
says whether the run can vouch for its tests (:meth:`SuiteRun.error`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .qemu import GuestResult

REPORT = "report.json"
# pytest options of every guest-side run: the plugin (it writes the report), no cache, quiet
GUEST_PYTEST_OPTIONS = ("-p", "vm.pytest_plugin", "-p", "no:cacheprovider", "-q", "-rfEs")


@dataclass
class SuiteRun:
    """A guest pytest run: the GuestResult, the node-id report and the junit path.

    ``who`` names the guest in messages ("guest", "POWER guest").
    """

    result: GuestResult
    report: dict[str, Any] = field(default_factory=dict)
    who: str = "guest"

    @classmethod
    def collect(cls, result: GuestResult, who: str = "guest") -> "SuiteRun":
        """The run's report from ``<results>/report.json`` (empty when the guest wrote none)."""
        path = result.results_dir / REPORT
        report = json.loads(path.read_text()) if path.exists() else {}
        return cls(result=result, report=report, who=who)

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
            return f"{self.who} run failed: {res.describe()}"
        if res.exit_code not in (0, 1):
            return (f"guest pytest exited {res.exit_code} (not 0/1: usage error, internal error, "
                    f"interrupted or no tests); console tail:\n{res.console_tail}")
        if not self.report:
            return f"the {self.who} wrote no pytest report; console tail:\n{res.console_tail}"
        return None

    def summary(self, label: str, count: int, wall: float) -> str:
        """One line for the terminal summary: status, pytest exit, boot and total times."""
        res = self.result
        return (f"[{label}] {res.status}, pytest exit {res.exit_code}: boot "
                f"{res.boot_seconds or 0:.1f} s, total {res.duration:.1f} s (host wall "
                f"{wall:.1f} s) for {count} test(s); results {res.results_dir}")
