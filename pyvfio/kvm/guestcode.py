"""Tiny x86 real-mode guest programs: store bytes to chosen guest-physical addresses, port I/O, HLT.

The output runs on a real vCPU (16-bit real mode, see :meth:`Vcpu.setup_real_mode`) and is also
what the mock kernel's vCPU decodes: these instruction forms, and only these, are its ISA:

=========================  ==================  =======================
instruction                bytes               meaning
=========================  ==================  =======================
``mov ax, imm16``          B8 iw               ax = imm16
``mov ds, ax``             8E D8               ds = ax (base = ax << 4)
``mov byte [imm16], imm8`` C6 06 iw ib         write imm8 at ds:imm16
``mov al, imm8``           B0 ib               al = imm8
``out imm8, al``           E6 ib               port write of al
``hlt``                    F4                  stop (KVM_EXIT_HLT)
``nop``                    90
=========================  ==================  =======================

Reachable guest-physical addresses: below 0x10FFF0 (segment:offset).
"""

from __future__ import annotations

from typing import Iterable

MAX_GPA = 0xFFFF * 16 + 0xFFFF


def store_byte(gpa: int, value: int = 0xA5) -> bytes:
    """``mov ax, gpa >> 4; mov ds, ax; mov byte [gpa & 15], value`` (10 bytes)."""
    if not 0 <= gpa <= MAX_GPA:
        raise ValueError(f"gpa {gpa:#x} is not reachable in real mode (max {MAX_GPA:#x})")
    seg, off = min(gpa >> 4, 0xFFFF), gpa - (min(gpa >> 4, 0xFFFF) << 4)
    return (bytes([0xB8]) + seg.to_bytes(2, "little") + bytes([0x8E, 0xD8, 0xC6, 0x06])
            + off.to_bytes(2, "little") + bytes([value & 0xFF]))


def out(port: int, value: int) -> bytes:
    """``mov al, value; out port, al`` (4 bytes)."""
    if not 0 <= port <= 0xFF:
        raise ValueError("out imm8 reaches ports 0..255")
    return bytes([0xB0, value & 0xFF, 0xE6, port])


HLT = b"\xf4"


def write_pages(gpas: Iterable[int], value: int = 0xA5) -> bytes:
    """A program storing ``value`` at each address in ``gpas``, then ``hlt``."""
    return b"".join(store_byte(g, value) for g in gpas) + HLT
