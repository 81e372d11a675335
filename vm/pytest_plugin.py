"""pytest integration of the guest test bed: ``@pytest.mark.guest`` tests run inside QEMU guests.

Marking::

    @pytest.mark.guest                              # variants intel, amd, virtio (the default)
    @pytest.mark.guest(variants=["none"])           # only the no-vIOMMU guest
    @pytest.mark.guest(bind=["e1000e"])             # bind more than edu and igb to vfio-pci
    @pytest.mark.guest(kernels=["stable", "newest", "built"])   # kernel generations (below)
    @pytest.mark.guest(iommufd=True)                # = kernels=["built"]: our kernel, with iommufd
    @pytest.mark.power_guest                        # the POWER (pseries) guest, vm/power/

Each guest test is parametrized by IOMMU variant and kernel generation (ids ``test_x[intel]`` on
the stable kernel, ``test_x[intel@newest]``, ``test_x[amd@built]``...; the values are the
``guest_variant`` and ``guest_kernel`` fixtures).  The generations (vm/kernel.py GENERATIONS):
``stable`` (Debian's 6.12, legacy type1 container), ``newest`` (the newest Debian series, 7.x,
legacy type1 container), ``built`` (ours from the newest linux-source: iommufd with the device
cdev, /dev/vfio/vfio served by iommufd, no-IOMMU mode, mdev samples, IOMMUFD_TEST, IOMMU
debugfs).  The default is ``stable`` and ``newest``.  Then:

* On the host, every such item is replaced by a *twin* that does not run the test body.  The
  plugin boots ONE guest per (variant, kernel, bind set) and runs
  ``python -m pytest -p vm.pytest_plugin <all selected node ids of that key>`` inside it, with
  PYVFIO_IN_GUEST=1 and a junit file and a JSON report (keyed by node id) in the results share.
  Each twin then reports the outcome of its guest test: passed, failed (with the guest's failure
  text), skipped (with the guest's reason).  A twin FAILS when the guest did not boot, timed out,
  died, or did not report that test: a guest problem never passes silently.
  Guest runs start when collection ends and go on in the background, ``--guest-jobs`` (default 2)
  at a time, the biggest first, while the host runs its own tests; the twins are moved after the
  host's tests, and each waits for its run.
* Inside the guest (PYVFIO_IN_GUEST=1, PYVFIO_GUEST=<variant>, PYVFIO_GUEST_KERNEL=<generation>),
  only the current variant's and kernel's items are kept and they run for real.
* Where no guest can start (QEMU or the kernel missing, non-x86 host) guest tests SKIP with the
  reason and "run tools/dev setup"; with PYVFIO_REQUIRE_GUEST=1 (tools/dev test, CI) they FAIL.

Options: ``--guest-variants=intel,amd`` (or env PYVFIO_GUEST_VARIANTS) limits the variants;
``--guest-kernels=stable,built`` (PYVFIO_GUEST_KERNELS) the kernel generations;
``--guest-jobs=N`` (PYVFIO_GUEST_JOBS, default 2) how many guests run at once;
``--guest-timeout=S`` (env PYVFIO_GUEST_TIMEOUT, default 420) bounds each guest run.  With ``-s``
the guest console is streamed; otherwise it is in ``<results>/console.log`` and its tail is shown
on failure.  Fixtures: ``guest_variant``, ``guest_kernel``, ``guest_info`` (the agent's guest-info JSON, in the
guest), ``guest_available`` (host: skip/fail like guest tests when no guest can start).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from vm.kernel import GENERATIONS
from vm.suite import GUEST_PYTEST_OPTIONS, REPORT, SuiteRun

DEFAULT_VARIANTS = ("intel", "amd", "virtio")
DEFAULT_KERNELS = ("stable", "newest")
ALL_VARIANTS = ("intel", "amd", "virtio", "none")
SESSION_DEVICES = ("edu", "e1000e", "nvme", "igb")
DEFAULT_BIND = ("edu", "igb")
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


def _marker_kernels(marker: pytest.Mark) -> tuple[str, ...]:
    """``kernels=[...]``; ``iommufd=True`` means ``["built"]``; default DEFAULT_KERNELS."""
    kernels = marker.kwargs.get("kernels")
    if kernels is None:
        kernels = ("built",) if marker.kwargs.get("iommufd") else DEFAULT_KERNELS
    if isinstance(kernels, str):
        kernels = (kernels,)
    bad = [k for k in kernels if k not in GENERATIONS]
    if bad:
        raise pytest.UsageError(f"pytest.mark.guest: unknown kernel(s) {bad}; known {GENERATIONS}")
    return tuple(kernels)


def guest_id(variant: str, kernel: str) -> str:
    """The parameter id of a (variant, kernel) pair: ``intel`` (stable), ``intel@built``."""
    return variant if kernel == "stable" else f"{variant}@{kernel}"


def _marker_bind(marker: pytest.Mark) -> tuple[str, ...]:
    """What the agent binds to vfio-pci for the test: ``bind=`` plus DEFAULT_BIND (one boot
    serves the edu tests and the igb/SR-IOV tests alike)."""
    bind = marker.kwargs.get("bind", ())
    return tuple(sorted(set((*DEFAULT_BIND, *bind))))


# --- hooks common to host and guest ---------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("pyvfio-guest", "pyvfio QEMU guest test bed")
    g.addoption("--guest-variants", default=os.environ.get("PYVFIO_GUEST_VARIANTS", ""),
                help="comma-separated IOMMU variants to run guest tests for (default: all a "
                     "test asks for)")
    g.addoption("--guest-kernels", default=os.environ.get("PYVFIO_GUEST_KERNELS", ""),
                help="comma-separated kernel generations (stable, newest, built) to run guest "
                     "tests on (default: all a test asks for)")
    g.addoption("--guest-jobs", type=int, default=int(os.environ.get("PYVFIO_GUEST_JOBS", "2")),
                help="guests run at once, in the background (default 2)")
    g.addoption("--guest-timeout", type=float,
                default=float(os.environ.get("PYVFIO_GUEST_TIMEOUT", "420")),
                help="seconds allowed for one guest run (boot + suite)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "guest(variants=None, kernels=None, bind=None, iommufd=False): real-kernel VFIO test "
        "run inside a QEMU guest per IOMMU variant and kernel generation (vm/pytest_plugin.py)")
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
    for name in ("guest_variant", "guest_kernel"):
        if name not in metafunc.fixturenames:
            metafunc.fixturenames.append(name)
    pairs = [(v, k) for k in _marker_kernels(marker) for v in _marker_variants(marker)]
    metafunc.parametrize(("guest_variant", "guest_kernel"), pairs,
                         ids=[guest_id(v, k) for v, k in pairs], scope="function")


@pytest.fixture
def guest_variant(request: pytest.FixtureRequest) -> str:
    """The IOMMU variant this guest test runs under (intel, amd, virtio, none)."""
    return getattr(request, "param", os.environ.get("PYVFIO_GUEST", ""))


@pytest.fixture
def guest_kernel(request: pytest.FixtureRequest) -> str:
    """The kernel generation this guest test runs on (stable, newest, built)."""
    return getattr(request, "param", os.environ.get("PYVFIO_GUEST_KERNEL", "stable"))


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


def _kernel_of(item: pytest.Item) -> str:
    callspec = getattr(item, "callspec", None)
    if callspec is not None and "guest_kernel" in callspec.params:
        return callspec.params["guest_kernel"]
    marker = item.get_closest_marker("guest")
    if marker is None:
        return "stable"
    kernels = _marker_kernels(marker)
    if len(kernels) != 1:  # a guest mark given per parameter names one kernel (tests/conftest.py)
        raise pytest.UsageError(f"{item.nodeid}: a guest mark without guest_kernel must name one kernel")
    return kernels[0]


def _is_power(item: pytest.Item) -> bool:
    """``@pytest.mark.power_guest`` (also as a ``pytest.param`` mark): runs in the POWER guest."""
    return item.get_closest_marker("power_guest") is not None


def _is_guest_item(item: pytest.Item) -> bool:
    return item.get_closest_marker("guest") is not None or _is_power(item)


def _allowed(config: pytest.Config, option: str) -> set[str] | None:
    raw = config.getoption(option)
    return {v for v in raw.split(",") if v} if raw else None


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    allowed = _allowed(config, "--guest-variants")
    allowed_kernels = _allowed(config, "--guest-kernels")
    current = os.environ.get("PYVFIO_GUEST") if in_guest() else None
    current_kernel = os.environ.get("PYVFIO_GUEST_KERNEL", "stable") if in_guest() else None
    keep, drop = [], []
    for item in items:
        if not _is_guest_item(item):
            keep.append(item)
            continue
        v = _variant_of(item)
        k = None if v == "power" else _kernel_of(item)
        if (allowed is not None and v not in allowed) or (current is not None and v != current) \
                or (k is not None and allowed_kernels is not None and k not in allowed_kernels) \
                or (current_kernel is not None and k is not None and k != current_kernel):
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
    if not in_guest():
        controller: _HostController = config.pluginmanager.get_plugin("pyvfio-guest-controller")
        keep = [controller.twin(i) if _is_guest_item(i) else i for i in keep]
        # host tests first: they run while the guests boot and test in the background, and the
        # twins, which wait for their guest, come last
        keep = ([i for i in keep if not isinstance(i, GuestTwin)]
                + [i for i in keep if isinstance(i, GuestTwin)])
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

    def __init__(self, *, original: pytest.Item, variant: str, kernel: str, bind: tuple[str, ...],
                 controller: "_HostController", **kw: Any) -> None:
        super().__init__(**kw)
        self.original = original
        self.variant = variant
        self.kernel = kernel
        self.bind = bind
        self.controller = controller
        self.own_markers.extend(m for m in original.own_markers if m.name not in _DROP_MARKERS)
        self.keywords.update({k: v for k, v in original.keywords.items()
                              if k not in _DROP_MARKERS})

    @property
    def key(self) -> "Key":
        return (self.variant, self.kernel, self.bind)

    def runtest(self) -> None:
        self.controller.report(self)

    def reportinfo(self):
        return self.original.reportinfo()

    def repr_failure(self, excinfo, style=None):  # type: ignore[override]
        if isinstance(excinfo.value, GuestTestFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo)


#: one guest boot: (variant, kernel generation, bind set); the POWER guest is ("power", "stable", ...)
Key = tuple[str, str, tuple[str, ...]]


class _GuestSession:
    def __init__(self, result: Any = None, report: dict | None = None, error: str | None = None,
                 line: str | None = None):
        self.result = result
        self.report = report or {}
        self.error = error
        self.line = line  # the summary line, said once when the first twin reads the session


def _label(key: Key) -> str:
    variant, kernel, _ = key
    return "power" if variant == "power" else guest_id(variant, kernel)


class _HostController:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.sessions: dict[Key, _GuestSession] = {}
        self.futures: dict[Key, concurrent.futures.Future[_GuestSession]] = {}
        self.pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.timings: list[str] = []
        self._unavailable: str | None | bool = False  # False = not checked yet
        # the environment the guests get, taken now: guest runs start in background threads
        # while host tests run, and a host test's monkeypatched variables (PYVFIO_BACKEND=mock
        # in a doctest...) must not leak into a guest; the guest always runs on its real kernel
        self.environ = {k: v for k, v in os.environ.items() if k != "PYVFIO_BACKEND"}

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
                                         variant="power", kernel="stable", bind=("edu",),
                                         controller=self)
        return GuestTwin.from_parent(item.parent, name=item.name, original=item,
                                     variant=_variant_of(item) or "intel", kernel=_kernel_of(item),
                                     bind=_marker_bind(marker), controller=self)

    def pytest_report_header(self, config: pytest.Config) -> str:
        why = self.unavailable()
        return "pyvfio guest: " + ("available (QEMU TCG)" if why is None else f"UNAVAILABLE: {why}")

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.timings:
            terminalreporter.section("pyvfio guest runs")
            for line in self.timings:
                terminalreporter.write_line(line)

    # -- scheduling ----------------------------------------------------------------------------
    def why_not(self, key: Key) -> str | None:
        """Why the guest of ``key`` cannot start here (None: it can)."""
        variant, kernel, _ = key
        if variant == "power":
            from vm.power import unavailable_reason as power_unavailable

            return power_unavailable()
        why = self.unavailable()
        if why is None:
            from vm.guest import GuestUnavailable, guest_kernel

            try:
                guest_kernel(kernel)
            except GuestUnavailable as e:
                why = str(e)
        return why

    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        """Start every guest run in the background, in the order the twins will ask for them."""
        if self.config.option.collectonly or not hasattr(self.config.option, "guest_jobs"):
            return
        count: dict[Key, int] = {}
        for i in session.items:
            if isinstance(i, GuestTwin):
                count[i.key] = count.get(i.key, 0) + 1
        # the biggest runs first, so that the last ones to finish are short
        keys = sorted((k for k in count if self.why_not(k) is None), key=lambda k: -count[k])
        if not keys:
            return
        jobs = max(1, self.config.getoption("--guest-jobs"))
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=jobs,
                                                          thread_name_prefix="pyvfio-guest")
        for key in keys:
            self.futures[key] = self.pool.submit(self._run, session, key)
        self._say(f"pyvfio guest: {len(keys)} guest run(s) started in the background, {jobs} at a "
                  f"time: {', '.join(_label(k) for k in keys)}")

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        if self.pool is not None:
            for f in self.futures.values():
                f.cancel()
            from vm.qemu import kill_all

            kill_all()
            self.pool.shutdown(wait=True, cancel_futures=True)

    def session(self, twin: GuestTwin) -> _GuestSession:
        key = twin.key
        if key not in self.sessions:
            fut = self.futures.get(key)
            self.sessions[key] = fut.result() if fut is not None else self._run(twin.session, key)
        sess = self.sessions[key]
        if sess.line is not None:
            self.timings.append(sess.line)
            self._say(f"pyvfio guest {sess.line}")
            sess.line = None
        return sess

    # -- running -------------------------------------------------------------------------------
    def report(self, twin: GuestTwin) -> None:
        why = self.why_not(twin.key) if twin.key not in self.sessions else None
        if why is not None:
            msg = _no_guest_message(why)
            if _require_guest():
                raise GuestTestFailure(f"PYVFIO_REQUIRE_GUEST=1 but {msg}")
            _skip_at_item(msg)
        sess = self.session(twin)
        where = f"{_label(twin.key)} guest"
        entry = sess.report.get("tests", {}).get(twin.nodeid)
        if sess.error:
            seen = f" (in the guest this test {entry['outcome']} before that)" if entry else ""
            raise GuestTestFailure(f"{sess.error}{seen}")
        if entry is None:
            raise GuestTestFailure(
                f"the {where} did not report {twin.nodeid}; console tail:\n"
                f"{sess.result.console_tail if sess.result else ''}")
        outcome, text = entry["outcome"], entry["text"]
        if outcome == "passed":
            return
        if outcome in ("skipped", "xfailed"):
            text = text.removeprefix("Skipped: ")
            if outcome == "xfailed":
                pytest.xfail(f"in the {where}: {text}")
            _skip_at_item(f"in the {where}: {text}")
        raise GuestTestFailure(f"in the {where}, {outcome}:\n{text}")

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

    def _run(self, session: pytest.Session, key: Key) -> _GuestSession:
        """One guest boot for every selected twin of ``key``, read back through vm/suite.py.
        Runs in a worker thread: it must not write to the terminal."""
        from vm.guest import GuestRun, GuestUnavailable
        from vm.power.suite import run_pytest

        variant, kernel, bind = key
        nodeids = [i.nodeid for i in session.items if isinstance(i, GuestTwin) and i.key == key]
        label = _label(key)
        results = Path(tempfile.mkdtemp(prefix=f"pyvfio-guest-{label.replace('@', '-')}-"))
        timeout = self.config.getoption("--guest-timeout")
        stream = sys.stdout if self.config.getoption("capture") == "no" else False
        start: Callable[[], SuiteRun]
        if variant == "power":
            # the POWER guest runs its own copy of the project (vm/power/suite.py)
            who = "POWER guest"

            def start() -> SuiteRun:
                return run_pytest(nodeids, timeout=timeout, results_dir=results, stream=stream)
        else:
            who = f"{label} guest"
            rootdir = str(self.config.rootpath)
            argv = [sys.executable, "-m", "pytest", *GUEST_PYTEST_OPTIONS, "--color=no",
                    "-o", "faulthandler_timeout=120", "--rootdir", rootdir,
                    f"--junitxml={results / 'junit.xml'}"]
            if self.config.inipath:
                argv += ["-c", str(self.config.inipath)]
            argv += nodeids
            env = dict(self.environ)
            # entry-point plugin discovery reads every dist-info over 9p: 10 s under TCG; the guest
            # run loads only this plugin (and the conftest files)
            env.update(PYVFIO_GUEST_REPORT=str(results / REPORT),
                       PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
            env.pop("PYTEST_ADDOPTS", None)

            def start() -> SuiteRun:
                res = GuestRun(argv, iommu=variant, timeout=timeout, devices=SESSION_DEVICES,
                               bind=bind, cwd=rootdir, env=env, results_dir=results,
                               stream=stream, kernel=kernel).run()
                return SuiteRun.collect(res, who=who)
        t0 = time.monotonic()
        try:
            run = start()
        except GuestUnavailable as e:
            return _GuestSession(error=f"{who} could not start: {e}")
        except Exception as e:  # a bug in the runner: the twins fail with it, the session goes on
            return _GuestSession(error=f"{who} run raised {type(e).__name__}: {e}")
        line = (run.summary(label, len(nodeids), time.monotonic() - t0)
                + f"; bind {','.join(bind)}; console {results / 'console.log'}")
        return _GuestSession(result=run.result, report=run.report, error=run.error(), line=line)
