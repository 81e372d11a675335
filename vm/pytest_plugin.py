"""pytest integration of the guest test bed: ``@pytest.mark.guest`` tests run inside QEMU guests.

Marking::

    @pytest.mark.guest                              # variants intel, amd, virtio (the default)
    @pytest.mark.guest(variants=["none"])           # only the no-vIOMMU guest
    @pytest.mark.guest(bind=["edu", "e1000e"])      # bind more than edu to vfio-pci
    @pytest.mark.guest(iommufd=True)                # boot the iommufd kernel (vm/build_kernel.py)
    @pytest.mark.power_guest                        # the POWER (pseries) guest, vm/power/

Each guest test is parametrized by IOMMU variant (ids ``test_x[intel]``, ``[amd]``, ...; the value
is the ``guest_variant`` fixture).  Then:

* On the host, every such item is replaced by a *twin* that does not run the test body.  When the
  first twin of a variant runs, the plugin boots ONE guest for that variant (and bind set) and runs
  ``python -m pytest -p vm.pytest_plugin <all selected node ids of that variant>`` inside it, with
  PYVFIO_IN_GUEST=1 and a junit file and a JSON report (keyed by node id) in the results share.
  Each twin then reports the outcome of its guest test: passed, failed (with the guest's failure
  text), skipped (with the guest's reason).  A twin FAILS when the guest did not boot, timed out,
  died, or did not report that test: a guest problem never passes silently.
* Inside the guest (PYVFIO_IN_GUEST=1, PYVFIO_GUEST=<variant>), only the current variant's items are
  kept and they run for real.
* Where no guest can start (QEMU or the kernel missing, non-x86 host) guest tests SKIP with the
  reason and "run tools/dev setup"; with PYVFIO_REQUIRE_GUEST=1 (tools/dev test, CI) they FAIL.

Options: ``--guest-variants=intel,amd`` (or env PYVFIO_GUEST_VARIANTS) limits the variants;
``--guest-timeout=S`` (env PYVFIO_GUEST_TIMEOUT, default 420) bounds each guest run.  With ``-s``
the guest console is streamed; otherwise it is in ``<results>/console.log`` and its tail is shown
on failure.  Fixtures: ``guest_variant``, ``guest_info`` (the agent's guest-info JSON, in the
guest), ``guest_available`` (host: skip/fail like guest tests when no guest can start).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from vm.suite import GUEST_PYTEST_OPTIONS, REPORT, SuiteRun

DEFAULT_VARIANTS = ("intel", "amd", "virtio")
ALL_VARIANTS = ("intel", "amd", "virtio", "none")
SESSION_DEVICES = ("edu", "e1000e", "nvme")
_DROP_MARKERS = {"skip", "skipif", "xfail", "usefixtures", "parametrize", "filterwarnings"}


def in_guest() -> bool:
    return os.environ.get("PYVFIO_IN_GUEST") == "1"


def _require_guest() -> bool:
    return os.environ.get("PYVFIO_REQUIRE_GUEST") == "1"


def _marker_variants(marker: pytest.Mark) -> tuple[str, ...]:
    variants = marker.kwargs.get("variants") or (marker.args[0] if marker.args else DEFAULT_VARIANTS)
    if isinstance(variants, str):
        variants = (variants,)
    bad = [v for v in variants if v not in ALL_VARIANTS]
    if bad:
        raise pytest.UsageError(f"pytest.mark.guest: unknown variant(s) {bad}; known {ALL_VARIANTS}")
    return tuple(variants)


def _marker_bind(marker: pytest.Mark) -> tuple[str, ...]:
    bind = marker.kwargs.get("bind", ("edu",))
    return tuple(sorted(set(("edu", *bind))))


# --- hooks common to host and guest ---------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("pyvfio-guest", "pyvfio QEMU guest test bed")
    g.addoption("--guest-variants", default=os.environ.get("PYVFIO_GUEST_VARIANTS", ""),
                help="comma-separated IOMMU variants to run guest tests for (default: all a "
                     "test asks for)")
    g.addoption("--guest-timeout", type=float,
                default=float(os.environ.get("PYVFIO_GUEST_TIMEOUT", "420")),
                help="seconds allowed for one guest run (boot + suite)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "guest(variants=None, bind=None, iommufd=False): real-kernel VFIO test run inside a QEMU guest "
        "per IOMMU variant (vm/pytest_plugin.py)")
    if in_guest():
        report = os.environ.get("PYVFIO_GUEST_REPORT")
        if report:
            config.pluginmanager.register(_GuestReporter(Path(report)), "pyvfio-guest-reporter")
    else:
        config.pluginmanager.register(_HostController(config), "pyvfio-guest-controller")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("guest")
    if marker is None:
        return
    if "guest_variant" not in metafunc.fixturenames:
        metafunc.fixturenames.append("guest_variant")
    variants = _marker_variants(marker)
    metafunc.parametrize("guest_variant", variants, ids=list(variants), scope="function")


@pytest.fixture
def guest_variant(request: pytest.FixtureRequest) -> str:
    """The IOMMU variant this guest test runs under (intel, amd, virtio, none)."""
    return getattr(request, "param", os.environ.get("PYVFIO_GUEST", ""))


@pytest.fixture
def guest_info() -> dict[str, Any]:
    """The guest-info JSON written by vm/agent.py (bound devices, groups, variant)."""
    path = os.environ.get("PYVFIO_GUEST_INFO")
    if not path:
        pytest.fail("guest_info used outside a pyvfio guest (no PYVFIO_GUEST_INFO)", pytrace=False)
    with open(path) as f:
        return json.load(f)


@pytest.fixture
def guest_available() -> None:
    """Skip (or fail under PYVFIO_REQUIRE_GUEST=1) when no guest can be started here."""
    from vm.guest import unavailable_reason

    reason = unavailable_reason()
    if reason:
        msg = _no_guest_message(reason)
        if _require_guest():
            pytest.fail(f"PYVFIO_REQUIRE_GUEST=1 but {msg}", pytrace=False)
        pytest.skip(msg)


def _no_guest_message(reason: str) -> str:
    msg = f"no QEMU guest here: {reason}"
    return msg if "tools/dev setup" in msg else msg + " (run tools/dev setup)"


def _skip_at_item(msg: str) -> None:
    """pytest.skip, reported at the test's location instead of this file's."""
    try:
        from _pytest.outcomes import Skipped

        raise Skipped(msg, _use_item_location=True)
    except TypeError:  # older pytest without _use_item_location
        pytest.skip(msg)


def _variant_of(item: pytest.Item) -> str | None:
    if _is_power(item):
        return "power"
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("guest_variant") if callspec else None


def _is_power(item: pytest.Item) -> bool:
    """``@pytest.mark.power_guest`` (also as a ``pytest.param`` mark): runs in the POWER guest."""
    return item.get_closest_marker("power_guest") is not None


def _is_guest_item(item: pytest.Item) -> bool:
    return item.get_closest_marker("guest") is not None or _is_power(item)


def _allowed_variants(config: pytest.Config) -> set[str] | None:
    raw = config.getoption("--guest-variants")
    return {v for v in raw.split(",") if v} if raw else None


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    allowed = _allowed_variants(config)
    current = os.environ.get("PYVFIO_GUEST") if in_guest() else None
    keep, drop = [], []
    for item in items:
        if not _is_guest_item(item):
            keep.append(item)
            continue
        v = _variant_of(item)
        marker = item.get_closest_marker("guest")
        wants_iommufd = bool(marker.kwargs.get("iommufd", False)) if marker else False
        if (allowed is not None and v not in allowed) or (current is not None and v != current) \
                or (current is not None and wants_iommufd and not os.path.exists("/dev/iommu")):
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
    if not in_guest():
        controller: _HostController = config.pluginmanager.get_plugin("pyvfio-guest-controller")
        keep = [controller.twin(i) if _is_guest_item(i) else i for i in keep]
    items[:] = keep


# --- guest side: a JSON report keyed by node id ---------------------------------------------


class _GuestReporter:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.tests: dict[str, dict[str, Any]] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        t = self.tests.setdefault(report.nodeid, {"outcome": "passed", "text": "", "duration": 0.0})
        t["duration"] += report.duration
        if hasattr(report, "wasxfail"):
            t["outcome"] = "xfailed" if report.skipped else "xpassed"
            t["text"] = str(report.wasxfail)
        elif report.failed:
            t["outcome"] = "failed" if report.when == "call" else "error"
            t["text"] += f"[{report.when}] {report.longreprtext}\n"
        elif report.skipped and t["outcome"] == "passed":
            t["outcome"] = "skipped"
            lr = report.longrepr
            t["text"] = lr[2] if isinstance(lr, tuple) and len(lr) == 3 else str(lr)
        for name, content in report.sections:
            if report.failed and content:
                t["text"] += f"--- {name} ---\n{content[-4000:]}\n"
        if report.when == "teardown":
            self._write()

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self._write(exitstatus=int(exitstatus))

    def _write(self, exitstatus: int | None = None) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"exitstatus": exitstatus, "tests": self.tests}, indent=1))
        os.replace(tmp, self.path)


# --- host side: twins and one guest run per (variant, bind set) -----------------------------


class GuestTestFailure(Exception):
    """A guest test failed, or its guest run did."""


class GuestTwin(pytest.Item):
    """Host stand-in for a guest test: reports the outcome of the same node id in the guest."""

    def __init__(self, *, original: pytest.Item, variant: str, bind: tuple[str, ...],
                 iommufd: bool, controller: "_HostController", **kw: Any) -> None:
        super().__init__(**kw)
        self.original = original
        self.variant = variant
        self.bind = bind
        self.iommufd = iommufd
        self.controller = controller
        self.own_markers.extend(m for m in original.own_markers if m.name not in _DROP_MARKERS)
        self.keywords.update({k: v for k, v in original.keywords.items()
                              if k not in _DROP_MARKERS})

    def runtest(self) -> None:
        self.controller.report(self)

    def reportinfo(self):
        return self.original.reportinfo()

    def repr_failure(self, excinfo, style=None):  # type: ignore[override]
        if isinstance(excinfo.value, GuestTestFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo)


class _GuestSession:
    def __init__(self, result: Any = None, report: dict | None = None, error: str | None = None):
        self.result = result
        self.report = report or {}
        self.error = error


class _HostController:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.sessions: dict[tuple[str, tuple[str, ...], bool], _GuestSession] = {}
        self.timings: list[str] = []
        self._unavailable: str | None | bool = False  # False = not checked yet

    def unavailable(self) -> str | None:
        if self._unavailable is False:
            from vm.guest import unavailable_reason

            self._unavailable = unavailable_reason()
        return self._unavailable  # type: ignore[return-value]

    def twin(self, item: pytest.Item) -> GuestTwin:
        marker = item.get_closest_marker("guest")
        if marker is None:  # a power item: the POWER guest binds edu
            assert _is_power(item)
            return GuestTwin.from_parent(item.parent, name=item.name, original=item,
                                         variant="power", bind=("edu",), iommufd=False,
                                         controller=self)
        return GuestTwin.from_parent(item.parent, name=item.name, original=item,
                                     variant=_variant_of(item) or "intel",
                                     bind=_marker_bind(marker),
                                     iommufd=bool(marker.kwargs.get("iommufd", False)),
                                     controller=self)

    def pytest_report_header(self, config: pytest.Config) -> str:
        why = self.unavailable()
        return "pyvfio guest: " + ("available (QEMU TCG)" if why is None else f"UNAVAILABLE: {why}")

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.timings:
            terminalreporter.section("pyvfio guest runs")
            for line in self.timings:
                terminalreporter.write_line(line)

    # -- running -------------------------------------------------------------------------------
    def report(self, twin: GuestTwin) -> None:
        if twin.variant == "power":
            from vm.power import unavailable_reason as power_unavailable

            why = power_unavailable()
        else:
            why = self.unavailable()
        if why is None and twin.iommufd:
            from vm.build_kernel import cached_iommufd_kernel

            if cached_iommufd_kernel() is None:
                why = ("the iommufd guest kernel is not built: run python -m vm build-kernel "
                       "(about 12 min; tools/dev setup builds it under CI=true)")
        if why is not None:
            msg = _no_guest_message(why)
            if _require_guest():
                raise GuestTestFailure(f"PYVFIO_REQUIRE_GUEST=1 but {msg}")
            _skip_at_item(msg)
        key = (twin.variant, twin.bind, twin.iommufd)
        if key not in self.sessions:
            self.sessions[key] = self._run(twin.session, key)
        sess = self.sessions[key]
        entry = sess.report.get("tests", {}).get(twin.nodeid)
        if sess.error:
            seen = f" (in the guest this test {entry['outcome']} before that)" if entry else ""
            raise GuestTestFailure(f"{sess.error}{seen}")
        if entry is None:
            raise GuestTestFailure(
                f"the {twin.variant} guest did not report {twin.nodeid}; console tail:\n"
                f"{sess.result.console_tail if sess.result else ''}")
        outcome, text = entry["outcome"], entry["text"]
        if outcome == "passed":
            return
        if outcome in ("skipped", "xfailed"):
            text = text.removeprefix("Skipped: ")
            if outcome == "xfailed":
                pytest.xfail(f"in the {twin.variant} guest: {text}")
            _skip_at_item(f"in the {twin.variant} guest: {text}")
        raise GuestTestFailure(f"in the {twin.variant} guest, {outcome}:\n{text}")

    def _say(self, text: str) -> None:
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        capman = self.config.pluginmanager.get_plugin("capturemanager")
        if tr is None:
            return
        if capman is not None:
            with capman.global_and_fixture_disabled():
                tr.write_line(text)
        else:
            tr.write_line(text)

    def _run(self, session: pytest.Session, key: tuple[str, tuple[str, ...], bool]) -> _GuestSession:
        """One guest boot for every selected twin of ``key``, read back through vm/suite.py."""
        from vm.guest import GuestRun, GuestUnavailable
        from vm.power.suite import run_pytest

        variant, bind, iommufd = key
        nodeids = [i.nodeid for i in session.items
                   if isinstance(i, GuestTwin) and (i.variant, i.bind, i.iommufd) == key]
        results = Path(tempfile.mkdtemp(prefix=f"pyvfio-guest-{variant}-"))
        timeout = self.config.getoption("--guest-timeout")
        stream = sys.stdout if self.config.getoption("capture") == "no" else False
        start: Callable[[], SuiteRun]
        if variant == "power":
            # the POWER guest runs its own copy of the project (vm/power/suite.py)
            label, who = "power", "POWER guest"

            def start() -> SuiteRun:
                return run_pytest(nodeids, timeout=timeout, results_dir=results, stream=stream)
        else:
            label, who = f"{variant}{'+iommufd' if iommufd else ''}", "guest"
            rootdir = str(self.config.rootpath)
            argv = [sys.executable, "-m", "pytest", *GUEST_PYTEST_OPTIONS, "--color=no",
                    "-o", "faulthandler_timeout=120", "--rootdir", rootdir,
                    f"--junitxml={results / 'junit.xml'}"]
            if self.config.inipath:
                argv += ["-c", str(self.config.inipath)]
            argv += nodeids
            env = dict(os.environ)
            # entry-point plugin discovery reads every dist-info over 9p: 10 s under TCG; the guest
            # run loads only this plugin (and the conftest files)
            env.update(PYVFIO_GUEST_REPORT=str(results / REPORT),
                       PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
            env.pop("PYTEST_ADDOPTS", None)

            def start() -> SuiteRun:
                res = GuestRun(argv, iommu=variant, timeout=timeout, devices=SESSION_DEVICES,
                               bind=bind, cwd=rootdir, env=env, results_dir=results,
                               stream=stream, iommufd=iommufd).run()
                return SuiteRun.collect(res, who=who)
        self._say(f"\npyvfio guest [{label}]: booting for {len(nodeids)} test(s), "
                  f"bind {','.join(bind)}; console in {results / 'console.log'}")
        t0 = time.monotonic()
        try:
            run = start()
        except GuestUnavailable as e:
            return _GuestSession(error=f"{who} could not start: {e}")
        line = run.summary(label, len(nodeids), time.monotonic() - t0)
        self.timings.append(line)
        self._say(f"pyvfio guest {line}")
        return _GuestSession(result=run.result, report=run.report, error=run.error())
