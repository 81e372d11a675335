"""Issue 12, item 7: the README's "Using it" example runs (on the mock kernel)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pyvfio import seam
from pyvfio.mockkernel.vfio import shutdown

README = Path(__file__).resolve().parents[2] / "README.md"


def _using_it_examples() -> list[str]:
    text = README.read_text()
    section = text.split("## Using it", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def _using_it_example() -> str:
    return _using_it_examples()[0]


def test_example_is_short_and_does_the_round_trip() -> None:
    code = _using_it_example()
    assert len(code.strip().splitlines()) <= 25
    for step in ('pyvfio.open("0000:00:03.0"', "DmaBuffer", "to_device", "from_device", 'enable_irq("MSI")'):
        assert step in code, step


def test_example_runs(monkeypatch) -> None:
    monkeypatch.setattr(seam, "_singletons", {})  # a fresh process-wide mock kernel
    code = _using_it_example()
    try:
        exec(compile(code, str(README), "exec"), {"__name__": "readme_example"})
    finally:
        be = seam._singletons.get("mock")
        if be is not None:
            shutdown(be.kernel)  # type: ignore[attr-defined]


@pytest.mark.parametrize("where", ["mock", pytest.param("real", marks=pytest.mark.kvm)])
def test_kvm_dirty_log_example_runs(where, monkeypatch) -> None:
    """The second example, on the mock and (as written with ``get_backend("real")``) on the
    host's /dev/kvm."""
    monkeypatch.setattr(seam, "_singletons", {})
    code = _using_it_examples()[1]
    assert len(code.strip().splitlines()) <= 25 and "get_dirty_log" in code
    if where == "real":
        code = code.replace('pyvfio.get_backend("mock")', 'pyvfio.get_backend("real")')
        assert 'get_backend("real")' in code
    exec(compile(code, str(README), "exec"), {"__name__": "readme_kvm_example"})
