"""help() shows pyvfio's own documentation, not inherited boilerplate."""

from __future__ import annotations

import pydoc

import pytest

import pyvfio


@pytest.mark.parametrize("cls", [pyvfio.PciIrq, pyvfio.PciRegion])
def test_index_enums_document_their_members_not_int(cls) -> None:
    text = pydoc.render_doc(cls, renderer=pydoc.plaintext)
    assert "bit_length" not in text and "__add__" not in text
    assert all(name in text for name in cls.__members__)
    assert len(text.splitlines()) < 80
    assert cls(1) + 1 == 2 and isinstance(cls(1), int)  # still ints


def test_help_starts_with_the_first_hour_map() -> None:
    text = pydoc.render_doc(pyvfio, renderer=pydoc.plaintext)
    head = "\n".join(text.splitlines()[:40])
    assert "pyvfio.open" in head
    assert "bit_length" not in text
