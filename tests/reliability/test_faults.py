"""The fault campaign (issue 21): every multi-step operation with each of its syscalls failed
in turn (once, and from then on, with EIO/ENOMEM/EINVAL/EBUSY/EINTR), on the mock kernel.

Each trial must end in a typed error (a PyvfioError with errno and op) or absorb the fault, and
leave nothing behind (tests/reliability/campaign.py says what is checked and how).
``python tools/fault_campaign.py`` prints the same campaign's figures.
"""

from __future__ import annotations

import pytest

from reliability.campaign import OPERATIONS, campaign


@pytest.mark.parametrize("op", OPERATIONS, ids=[op.name for op in OPERATIONS])
def test_fault_campaign(op):
    fig = campaign(op)
    assert fig.trials > 0 and fig.typed > 0
    bad = [f for f in fig.findings if f.kind != "absorbed"]
    assert not bad, "\n".join(f"{op.name}: call {f.n} ({f.call}) {f.errno} {f.mode}: {f.kind}: {f.detail}"
                              for f in bad[:20])
    assert fig.untyped == 0 and fig.leaks == 0
