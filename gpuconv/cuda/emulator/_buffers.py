"""Argument buffers of a launch: every array is copied into a fresh buffer, as a GPU kernel sees device memory.

- Alignment as with CuPy: an array that owns its memory starts 256-byte aligned; a view keeps its offset from
  the start of the array it views (mod 256). wmma loads and cp.async copies check alignment, so this matters.
- Out-of-bounds writes: in the default build each buffer has guard bytes before and after it, filled with a
  canary (NaN as half, float and double, so stray reads give NaN too) and checked after the launch: a changed
  byte is an EmulatorError naming the kernel and the argument. Under AddressSanitizer a buffer has exactly the
  array's bytes (no guards: ASan reports the access with its source line).
- Arrays whose bytes overlap (the same array twice, overlapping views) share one buffer, so that a kernel sees
  one memory as on the GPU. Results are copied back into writeable arrays after the launch.
"""
from __future__ import annotations

import ctypes

import numpy

ALIGN = 256
CANARY = bytes.fromhex("5afef57f")  # little-endian 0x7FF5FE5A: NaN as float, as both halves, as double
MIN_GUARD = 4096
MAX_GUARD = 64 * 1024

_libc = None
_pattern = None  # the canary repeated over the largest guard (ctypes buffer, made once)


def _canary():
    global _pattern
    if _pattern is None:
        _pattern = ctypes.create_string_buffer(CANARY * ((MAX_GUARD + 2 * ALIGN) // len(CANARY)))
    return _pattern


def _c():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None)
        _libc.memcmp.restype = ctypes.c_int
        _libc.memcmp.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        _libc.malloc.restype = ctypes.c_void_p
        _libc.malloc.argtypes = [ctypes.c_size_t]
        _libc.free.argtypes = [ctypes.c_void_p]
        _libc.posix_memalign.restype = ctypes.c_int
        _libc.posix_memalign.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_size_t]
    return _libc


def byte_span(a: numpy.ndarray):
    """(offset of the lowest byte from a's data pointer (<= 0), bytes spanned) for any strides."""
    if a.size == 0:
        return 0, 0
    if a.flags.c_contiguous:
        return 0, a.nbytes
    lo = sum((n - 1) * s for n, s in zip(a.shape, a.strides) if s < 0)
    hi = sum((n - 1) * s for n, s in zip(a.shape, a.strides) if s > 0)
    return lo, hi - lo + a.itemsize


def _root_address(a: numpy.ndarray) -> int:
    """Data address of the array that owns a's memory (a itself when it owns it)."""
    root = a
    while isinstance(root.base, numpy.ndarray):
        root = root.base
    return root.__array_interface__["data"][0]


def guard_size(span: int) -> int:
    g = min(max(MIN_GUARD, span // 4), MAX_GUARD)
    return (g + ALIGN - 1) // ALIGN * ALIGN


class _Region:
    __slots__ = ("start", "end", "args", "writeable", "mis", "raw", "base", "guard")

    def __init__(self, start, end, arg, writeable, mis):
        self.start, self.end, self.args, self.writeable, self.mis = start, end, [arg], writeable, mis


class ArgBuffers:
    """Copies of a launch's array arguments. ``place(arrays)`` gives the device pointers; ``finish()`` checks
    the guards, copies results back and frees (returning a message for out-of-bounds writes, or None)."""

    def __init__(self, guards: bool):
        self.guards = guards
        self.regions = []

    def place(self, arrays) -> list:
        """arrays: [(argument index, ndarray)]; returns the device address of each, in order."""
        spans = []
        for i, a in arrays:
            ptr = a.__array_interface__["data"][0]
            lo, span = byte_span(a)
            start = ptr + lo
            mis = 0 if a.base is None else (start - _root_address(a)) % ALIGN
            spans.append((start, start + span, i, a, mis, ptr))
        order = sorted(range(len(spans)), key=lambda j: spans[j][0])
        region_of = [None] * len(spans)
        for j in order:
            start, end, i, a, mis, _ = spans[j]
            last = self.regions[-1] if self.regions else None
            if last is not None and start < last.end and end > last.start:
                last.end = max(last.end, end)
                last.args.append((i, a))
                last.writeable = last.writeable and a.flags.writeable
            else:
                last = _Region(start, end, (i, a), a.flags.writeable, mis)
                self.regions.append(last)
            region_of[j] = last
        libc = _c()
        for r in self.regions:
            span = r.end - r.start
            r.guard = guard_size(span) if self.guards else 0
            if self.guards:
                size = r.guard + 2 * ALIGN + span + r.guard  # room to align, plus the misalignment kept
                r.raw = libc.malloc(size)
            else:  # ASan: exactly the bytes of the region, its end where the allocation ends
                size = r.mis + span
                out = ctypes.c_void_p()
                r.raw = out.value if libc.posix_memalign(ctypes.byref(out), ALIGN, size or 1) == 0 else None
            if not r.raw:
                self.finish()
                raise MemoryError(f"the emulator cannot allocate {size} bytes for a kernel argument")
            # base: where the region's first byte goes: ALIGN-aligned plus the region's own misalignment.
            aligned = (r.raw + r.guard + ALIGN - 1) // ALIGN * ALIGN if self.guards else r.raw
            r.base = aligned + r.mis
            if self.guards:
                pattern = _canary()
                ctypes.memmove(r.raw, pattern, r.base - r.raw)
                ctypes.memmove(r.base + span, pattern, r.guard)
            if span:
                ctypes.memmove(r.base, r.start, span)
        return [region_of[j].base + (spans[j][5] - region_of[j].start) for j in range(len(spans))]

    def ranges(self):
        """(ctypes array of [start, end) address pairs of the buffers, count): global memory for cp.async checks."""
        flat = [x for r in self.regions for x in (r.base, r.base + (r.end - r.start))]
        return (ctypes.c_ulonglong * max(len(flat), 1))(*flat), len(self.regions)

    def _check(self, r) -> str | None:
        span = r.end - r.start
        front = r.base - r.raw
        libc, pattern = _c(), _canary()
        if libc.memcmp(r.raw, pattern, front) == 0 and libc.memcmp(r.base + span, pattern, r.guard) == 0:
            return None
        before = ctypes.string_at(r.raw, front)
        after = ctypes.string_at(r.base + span, r.guard)
        want = pattern.raw
        parts = []
        bad_after = [k for k in range(len(after)) if after[k] != want[k]]
        if bad_after:
            parts.append(f"{bad_after[0]} bytes past the end")
        bad_before = [front - k for k in range(front) if before[k] != want[k]]
        if bad_before:
            parts.append(f"{bad_before[0]} bytes before the start")
        return f"{' and '.join(parts)} of the {span}-byte buffer of argument(s) {', '.join(str(i) for i, _ in r.args)}"

    def finish(self) -> str | None:
        libc = _c()
        problems = []
        for r in self.regions:
            if not r.raw:
                continue
            try:
                if self.guards:
                    msg = self._check(r)
                    if msg:
                        problems.append(msg)
                if r.writeable and r.end > r.start:
                    ctypes.memmove(r.start, r.base, r.end - r.start)
            finally:
                libc.free(r.raw)
                r.raw = None
        self.regions = []
        return "; ".join(problems) or None
