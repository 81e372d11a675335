"""pyvfio.core.bitmap against a naive per-bit reference (hypothesis property tests)."""

from __future__ import annotations

import mmap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvfio.errors import AlignmentError, ArgumentError, RangeError
from pyvfio.core.bitmap import DirtyBitmap, bytes_for, merge, words_for


# -- the naive reference: the kernel's definition, one bit at a time ------------------------------
def ref_bits(raw: bytes, npages: int) -> list[int]:
    return [(raw[i // 8] >> (i % 8)) & 1 for i in range(npages)]


def ref_pages(raw: bytes, npages: int) -> list[int]:
    return [i for i, b in enumerate(ref_bits(raw, npages)) if b]


def ref_ranges(raw: bytes, npages: int) -> list[list[int]]:
    out: list[list[int]] = []
    for p in ref_pages(raw, npages):
        if out and out[-1][0] + out[-1][1] == p:
            out[-1][1] += 1
        else:
            out.append([p, 1])
    return out


@st.composite
def raw_bitmaps(draw, max_pages: int = 1200):
    npages = draw(st.integers(0, max_pages))
    nbytes = bytes_for(npages)
    style = draw(st.sampled_from(["random", "sparse", "runs", "full", "empty"]))
    if style == "random":
        raw = bytearray(draw(st.binary(min_size=nbytes, max_size=nbytes)))
    elif style == "full":
        raw = bytearray(b"\xff" * nbytes)
    elif style == "empty":
        raw = bytearray(nbytes)
    else:
        raw = bytearray(nbytes)
        if npages:
            n = draw(st.integers(0, 20))
            for _ in range(n):
                a = draw(st.integers(0, npages - 1))
                ln = 1 if style == "sparse" else draw(st.integers(1, max(1, npages - a)))
                for i in range(a, min(npages, a + ln)):
                    raw[i // 8] |= 1 << (i % 8)
    # bits past npages may be garbage in a caller's buffer: they must be ignored
    if npages % 64 and draw(st.booleans()):
        for i in range(npages, words_for(npages) * 64):
            raw[i // 8] |= 1 << (i % 8)
    return bytes(raw), npages


@settings(max_examples=300, deadline=None)
@given(raw_bitmaps(), st.sampled_from([4096, 65536]), st.integers(0, 1 << 40))
def test_queries_match_reference(data, page_size, base):
    raw, npages = data
    base -= base % page_size
    bm = DirtyBitmap.from_buffer(raw, npages, page_size=page_size, base=base)
    pages = ref_pages(raw, npages)
    assert bm.count() == len(pages)
    assert bm.any() == bool(pages)
    assert bm.pages().tolist() == pages
    assert bm.addresses().tolist() == [base + p * page_size for p in pages]
    ranges = ref_ranges(raw, npages)
    assert bm.ranges().tolist() == ranges
    assert bm.byte_ranges().tolist() == [[base + a * page_size, n * page_size] for a, n in ranges]
    for p in range(0, npages, 97):
        assert bm.test(p) == (p in set(pages))


@settings(max_examples=150, deadline=None)
@given(st.lists(raw_bitmaps(max_pages=700), min_size=1, max_size=4), st.integers(0, 700))
def test_merge_is_or(datas, npages):
    bms = []
    for raw, n in datas:
        raw = (raw + bytes(bytes_for(npages)))[: bytes_for(npages)]
        bms.append(DirtyBitmap.from_buffer(raw, npages))
    expected = sorted(set().union(*(set(b.pages().tolist()) for b in bms)))
    assert merge(*bms).pages().tolist() == expected
    acc = DirtyBitmap.zeros(npages)
    for b in bms:
        acc |= b
    assert acc.pages().tolist() == expected
    # in place into the first one, inputs otherwise untouched
    before = [b.pages().tolist() for b in bms[1:]]
    first = bms[0].copy()
    merge(first, *bms[1:], out=first)
    assert first.pages().tolist() == expected
    assert [b.pages().tolist() for b in bms[1:]] == before


@settings(max_examples=150, deadline=None)
@given(raw_bitmaps(max_pages=2000), st.integers(1, 8))
def test_windows_are_zero_copy_and_cover(data, k):
    raw, npages = data
    buf = bytearray(raw)
    bm = DirtyBitmap.from_buffer(buf, npages)
    window = 64 * k
    seen: list[int] = []
    covered = 0
    for w in bm.windows(window):
        assert w.first_page == covered
        assert np.shares_memory(w.words, bm.words) or w.words.size == 0
        seen += (w.pages() + w.first_page).tolist()
        covered += w.npages
    assert covered == npages
    assert seen == ref_pages(raw, npages)


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 1000), st.data())
def test_set_clear_range_and_pages(npages, data):
    bm = DirtyBitmap.zeros(npages)
    ref = [0] * npages
    for _ in range(data.draw(st.integers(1, 6))):
        a = data.draw(st.integers(0, npages - 1))
        n = data.draw(st.integers(0, npages - a))
        op = data.draw(st.sampled_from(["set_range", "clear_range", "set_pages", "clear_pages"]))
        if op == "set_range":
            bm.set_range(a, n)
            ref[a:a + n] = [1] * n
        elif op == "clear_range":
            bm.clear_range(a, n)
            ref[a:a + n] = [0] * n
        else:
            ps = data.draw(st.lists(st.integers(0, npages - 1), max_size=10))
            getattr(bm, op)(ps)
            for p in ps:
                ref[p] = 1 if op == "set_pages" else 0
    assert bm.pages().tolist() == [i for i, b in enumerate(ref) if b]


def test_writes_reach_the_buffer_and_kernel_address():
    mm = mmap.mmap(-1, 4096)
    bm = DirtyBitmap.from_buffer(mm, 4096 * 8)
    bm.set_pages([0, 9, 32767])
    assert mm[0] == 1 and mm[1] == 2 and mm[4095] == 0x80
    assert bm.nbytes == 4096
    # ones(): tail bits of the last word stay clear (kernel buffers have them clear too)
    o = DirtyBitmap.ones(70)
    assert int(o.words[1]) == (1 << 6) - 1 and o.count() == 70
    assert bm.address == np.frombuffer(mm, dtype=np.uint8).ctypes.data
    del bm, o


def test_bad_arguments():
    with pytest.raises(RangeError):
        DirtyBitmap(np.zeros(1, dtype="<u8"), 65)
    with pytest.raises(ArgumentError):
        DirtyBitmap(np.zeros(1, dtype=np.uint32), 10)
    bm = DirtyBitmap.zeros(128)
    with pytest.raises(AlignmentError):
        bm.window(10, 5)
    with pytest.raises(AlignmentError):
        list(bm.windows(100))
    with pytest.raises(RangeError):
        bm.set_pages([128])
    with pytest.raises(RangeError):
        bm.test(-1)
    with pytest.raises(ArgumentError):
        merge(bm, DirtyBitmap.zeros(64))
    with pytest.raises(AlignmentError):
        DirtyBitmap.from_buffer(bytes(16), 64, offset=4)


def test_large_sparse_bitmap_scan():
    """A 32 MiB bitmap (256 Mi pages, the benchmark size): sparse pages and runs across words."""
    npages = 32 * 1024 * 1024 * 8
    bm = DirtyBitmap.zeros(npages)
    pages = np.array([0, 1, 63, 64, 65, 1 << 20, (1 << 20) + 1, npages - 2, npages - 1])
    bm.set_pages(pages)
    assert bm.count() == pages.size
    assert bm.pages().tolist() == pages.tolist()
    assert bm.ranges().tolist() == [[0, 2], [63, 3], [1 << 20, 2], [npages - 2, 2]]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["empty", "sparse", "dense", "full", "runs"]), st.integers(1, 6)),
                min_size=1, max_size=8),
       st.sampled_from([16, 32, 48]), st.data())
def test_ranges_adaptive_chunks(segments, chunk, data):
    """ranges() switches between its sparse (compare) and dense (popcount) chunk paths as the
    bitmap changes character: sequences of sparse/dense/full/empty stretches of whole chunks,
    against the naive reference."""
    from pyvfio.core import bitmap as B

    words: list[int] = []
    for kind, n in segments:
        for _ in range(n * chunk):
            if kind == "empty":
                words.append(0)
            elif kind == "full":
                words.append((1 << 64) - 1)
            elif kind == "sparse":
                words.append(1 << data.draw(st.integers(0, 63)) if data.draw(st.integers(0, 40)) == 0 else 0)
            elif kind == "dense":
                words.append(data.draw(st.integers(0, (1 << 64) - 1)))
            else:
                words.append(data.draw(st.sampled_from([0, (1 << 64) - 1, 0xFFFF0000, 0x1])))
    raw = np.array(words, dtype="<u8").tobytes()
    npages = len(words) * 64 - data.draw(st.integers(0, 63))
    saved = B._CHUNK
    B._CHUNK = chunk
    try:
        got = DirtyBitmap.from_buffer(raw, npages).ranges().tolist()
    finally:
        B._CHUNK = saved
    assert got == ref_ranges(raw, npages)
