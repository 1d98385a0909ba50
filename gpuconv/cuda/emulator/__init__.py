"""The CPU emulator: CUDA kernel source, unchanged, compiled with g++ and run on the CPU.

``load_module(source, ...)`` gives an object with ``get_function(name)``, like ``cupy.RawModule``; a kernel is
called like ``cupy.RawKernel``: ``kernel(grid, block, args, shared_mem=0)`` with numpy arrays and numpy scalars.
Each argument is checked against the kernel's parameter types (read from the compiled code): an array's dtype
must match the pointee type, a scalar's dtype the parameter type, and Python ints and floats are refused
(CuPy would pass them as long long / double).

Every CUDA thread of a block is a fiber; blocks run on a few worker threads. Knobs (environment, read at each
launch unless said otherwise):

  GPUCONV_EMULATOR_SCHEDULE   forward (default) | reverse | shuffle: the order the threads of a block run in
                              between barriers (also ``with schedule("reverse"): ...``)
  GPUCONV_EMULATOR_SEED       seed of the shuffle schedule (default 0)
  GPUCONV_EMULATOR_WMMA_LAYOUT  forward | permuted: the element <-> (row, col) mapping of wmma fragments
                              (default: forward under the forward schedule, permuted under the others), so
                              that code relying on the unspecified layout gives other results there
  GPUCONV_EMULATOR_WORKERS    worker threads per launch (default: CPU count, at most 8)
  GPUCONV_EMULATOR_TIMEOUT    seconds a launch may run before the process is aborted with a message naming the
                              kernel (default 300; 0: no limit). Threads are never preempted, so a kernel that
                              spins waiting for another thread or block would otherwise hang
  GPUCONV_EMULATOR_SANITIZE   "address": build and run with AddressSanitizer (python must run with libasan
                              preloaded; see tools/asan_emulator.sh); read when a module is compiled
  GPUCONV_EMULATOR_STACK_KB   fiber stack size (default 256 KiB, 512 under ASan); read by each worker once
  GPUCONV_CACHE_DIR           where compiled libraries are kept (default ~/.cache/gpuconv)
  GPUCONV_CXX                 the C++ compiler (default g++; needs C++20 and x86-64 Linux)
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import threading

import numpy

from . import _compile
from ._buffers import ArgBuffers
from ._compile import CompileError, sanitize_mode, unavailable_reason
from ..._validate import env_number

__all__ = [
    "SCHEDULES",
    "CompileError",
    "EmulatorError",
    "load_module",
    "schedule",
    "unavailable_reason",
]

SCHEDULES = ("forward", "reverse", "shuffle")
ENV_SCHEDULE = "GPUCONV_EMULATOR_SCHEDULE"
ENV_SEED = "GPUCONV_EMULATOR_SEED"
ENV_WORKERS = "GPUCONV_EMULATOR_WORKERS"
ENV_TIMEOUT = "GPUCONV_EMULATOR_TIMEOUT"
ENV_WMMA_LAYOUT = "GPUCONV_EMULATOR_WMMA_LAYOUT"
WMMA_LAYOUTS = ("forward", "permuted")
DEFAULT_TIMEOUT_S = 300.0
MAX_THREADS_PER_BLOCK = 1024
MAX_BLOCK = (1024, 1024, 64)
MAX_GRID = (2**31 - 1, 65535, 65535)
DEFAULT_MAX_DYNAMIC_SHARED = 48 * 1024
_ERRLEN = 4096

_override = threading.local()
_DEFAULT_WORKERS = max(1, min(os.cpu_count() or 1, 8))


class _BadLibrary(RuntimeError):
    """A cached library that loads but is not what its name promises (rebuilt once by load_module)."""


class EmulatorError(RuntimeError):
    """A launch failed (deadlock, divergent barrier, __trap(), failed assert), or a kernel name is unknown."""


@contextlib.contextmanager
def schedule(name: str):
    """Run the launches inside the block (in this thread) with schedule ``name`` (forward, reverse, shuffle)."""
    if name not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {name!r}")
    old = getattr(_override, "name", None)
    _override.name = name
    try:
        yield
    finally:
        _override.name = old


def current_schedule() -> str:
    name = getattr(_override, "name", None) or os.environ.get(ENV_SCHEDULE, "").strip().lower() or "forward"
    if name not in SCHEDULES:
        raise ValueError(f"{ENV_SCHEDULE}={name!r}: must be one of {SCHEDULES}")
    return name


def wmma_layout(schedule_name: str) -> str:
    """The wmma fragment layout of a launch: GPUCONV_EMULATOR_WMMA_LAYOUT, else permuted off the forward schedule."""
    value = os.environ.get(ENV_WMMA_LAYOUT, "").strip().lower()
    if not value:
        return "forward" if schedule_name == "forward" else "permuted"
    if value not in WMMA_LAYOUTS:
        raise ValueError(f"{ENV_WMMA_LAYOUT}={value!r}: must be one of {WMMA_LAYOUTS} or empty")
    return value


def _workers() -> int:
    return env_number(ENV_WORKERS, int, _DEFAULT_WORKERS, minimum=1)


def _timeout() -> float:
    return env_number(ENV_TIMEOUT, float, DEFAULT_TIMEOUT_S, minimum=0)


class _ArgInfo(ctypes.Structure):
    _fields_ = [("kind", ctypes.c_char), ("elem_kind", ctypes.c_char), ("size", ctypes.c_ushort),
                ("elem_size", ctypes.c_ushort), ("type", ctypes.c_char_p)]


class _Entry(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("call", ctypes.c_void_p), ("nargs", ctypes.c_int),
                ("args", ctypes.POINTER(_ArgInfo))]


# Argument tags (gpuconv_emu.h kind_of): every element type has its own, so that a float16 array never passes
# for a bfloat16 or a short one.
_C_TYPES = {
    ("i", 1): "signed char", ("i", 2): "short", ("i", 4): "int", ("i", 8): "long long",
    ("u", 1): "unsigned char", ("u", 2): "unsigned short", ("u", 4): "unsigned int", ("u", 8): "unsigned long long",
    ("f", 4): "float", ("f", 8): "double", ("h", 2): "__half", ("r", 2): "__nv_bfloat16", ("b", 1): "bool",
    ("v", 0): "void",
}


def _type_name(pretty) -> str:
    """The C type out of gpuconv_emu::type_name's "... [with T = const float4]", without cv-qualifiers."""
    text = pretty.decode(errors="replace") if pretty else ""
    name = text.split("T = ", 1)[1].rstrip("]").split(";")[0].strip() if "T = " in text else ""
    words = [w for w in name.split(" ") if w not in ("const", "volatile")]
    return " ".join(words) or "a struct"


def _ctype(kind: str, size: int, name: str = "") -> str:
    return _C_TYPES.get((kind, size)) or name or f"a {size}-byte struct"


def _describe_param(kind, size, elem_kind, elem_size, name="") -> str:
    if kind == "p":
        return _ctype(elem_kind, elem_size, name) + "*"
    return _ctype(kind, size, name)


_bf16 = None


def _bfloat16_dtype():
    """numpy.dtype(ml_dtypes.bfloat16), or None when ml_dtypes is not installed (imported on first need)."""
    global _bf16
    if _bf16 is None:
        try:
            import ml_dtypes
        except ImportError:
            _bf16 = False
        else:
            _bf16 = numpy.dtype(ml_dtypes.bfloat16)
    return _bf16 or None


def _dtype_matches(kind: str, size: int, dtype: numpy.dtype) -> bool:
    """Whether numpy dtype is the C type of tag (kind, size): exact, except that signedness may differ."""
    if kind == "v":
        return True
    if dtype.itemsize != size:
        return False
    if kind in "iu":
        return dtype.kind in "iu"
    if kind == "f":
        return dtype.kind == "f"
    if kind == "h":
        return dtype == numpy.float16
    if kind == "r":
        return dtype.name == "bfloat16" and dtype == _bfloat16_dtype()
    if kind == "b":
        return dtype.kind == "b"
    # A struct: a numpy void (structured or raw) dtype of its size.
    return dtype.kind == "V" and issubclass(dtype.type, numpy.void)


def _wanted(kind: str, size: int, name: str, what: str) -> str:
    """What a parameter takes, in words ('an array of __half (numpy float16)')."""
    ctype = _ctype(kind, size, name)
    extra = {"h": " (numpy float16)", "r": " (ml_dtypes.bfloat16)", "f": f" (numpy float{8 * size})"}.get(kind, "")
    if kind == "o":
        extra = f" (a numpy void or structured dtype of {size} bytes)"
    if kind == "r" and _bfloat16_dtype() is None:
        extra = " (ml_dtypes.bfloat16: pip install ml_dtypes)"
    return f"{what} {ctype}{extra}"


class EmulatorKernel:
    """One kernel of an emulator module; called like cupy.RawKernel."""

    def __init__(self, module, entry, name: str):
        self.module = module
        self.name = name
        self._entry = entry
        self._params = [
            (entry.args[i].kind.decode(), entry.args[i].size, entry.args[i].elem_kind.decode(),
             entry.args[i].elem_size)
            for i in range(entry.nargs)
        ]
        self._names = [_type_name(entry.args[i].type) for i in range(entry.nargs)]
        self.max_dynamic_shared_size_bytes = DEFAULT_MAX_DYNAMIC_SHARED
        self._entry_address = ctypes.addressof(entry)
        n = max(len(self._params), 1)
        self._slots = (ctypes.c_uint64 * n)()  # each argument's value (pointer or scalar bytes)
        self._argv = (ctypes.c_void_p * n)()   # pointers to them, as cuLaunchKernel takes arguments
        self._base = ctypes.addressof(self._slots)

    @property
    def param_types(self) -> tuple:
        """The C types of the kernel's parameters, as the launcher checks them."""
        return tuple(_describe_param(*p, n) for p, n in zip(self._params, self._names))

    def __repr__(self):
        return f"<EmulatorKernel {self.name}({', '.join(self.param_types)})>"

    def _dims(self, value, what, limits):
        if type(value) is tuple and 1 <= len(value) <= 3 and all(type(v) is int and 1 <= v <= lim
                                                                  for v, lim in zip(value, limits)):
            return value + (1,) * (3 - len(value))  # the common case, checked cheaply
        if isinstance(value, (int, numpy.integer)) and not isinstance(value, bool):
            value = (int(value),)
        if not isinstance(value, tuple) or not 1 <= len(value) <= 3:
            raise TypeError(f"{self.name}: {what} must be an int or a tuple of 1 to 3 ints, got {value!r}")
        dims = []
        for v, lim in zip(value, limits):
            if not isinstance(v, (int, numpy.integer)) or isinstance(v, bool) or not 1 <= v <= lim:
                raise ValueError(f"{self.name}: {what} {value!r}: each size must be an int in 1..{lim}")
            dims.append(int(v))
        return tuple(dims) + (1,) * (3 - len(dims))

    def __call__(self, grid, block, args, shared_mem=0):
        g = self._dims(grid, "grid", MAX_GRID)
        b = self._dims(block, "block", MAX_BLOCK)
        if b[0] * b[1] * b[2] > MAX_THREADS_PER_BLOCK:
            raise ValueError(f"{self.name}: block {block!r} has more than {MAX_THREADS_PER_BLOCK} threads")
        if not isinstance(shared_mem, (int, numpy.integer)) or shared_mem < 0:
            raise ValueError(f"{self.name}: shared_mem must be a non-negative int, got {shared_mem!r}")
        if shared_mem > self.max_dynamic_shared_size_bytes:
            raise ValueError(
                f"{self.name}: shared_mem={shared_mem} bytes is over the kernel's limit of "
                f"{self.max_dynamic_shared_size_bytes} (set kernel.max_dynamic_shared_size_bytes, as on a GPU)"
            )
        if not isinstance(args, (tuple, list)):
            raise TypeError(f"{self.name}: args must be a tuple, got {type(args).__name__}")
        params = self._params
        if len(args) != len(params):
            raise TypeError(
                f"{self.name} takes {len(params)} arguments ({', '.join(self.param_types)}), got {len(args)}"
            )
        module = self.module
        sched_name = current_schedule()
        sched = SCHEDULES.index(sched_name) | (256 if wmma_layout(sched_name) == "permuted" else 0)
        seed = env_number(ENV_SEED, int, 0) & 0xFFFFFFFF
        workers, timeout = _workers(), _timeout()
        # One launch at a time per module (the C side serializes them too): the argument buffers are reused.
        with module._lock:
            slots, argv, base = self._slots, self._argv, self._base
            keep = []
            arrays = []  # (argument index, array): copied into guarded, aligned buffers (_buffers.py)
            for i, (a, (kind, size, ekind, esize)) in enumerate(zip(args, params)):
                if kind == "p":
                    if not isinstance(a, numpy.ndarray):
                        raise TypeError(self._arg_error(i, a, "a numpy array"))
                    if not _dtype_matches(ekind, esize, a.dtype):
                        raise TypeError(self._arg_error(i, a, _wanted(ekind, esize, self._names[i], "an array of")))
                    arrays.append((i, a))
                    argv[i] = base + 8 * i
                else:
                    if not isinstance(a, numpy.generic) or not _dtype_matches(kind, size, a.dtype):
                        raise TypeError(self._arg_error(i, a, _wanted(kind, size, self._names[i], "a numpy scalar of")))
                    raw = a.tobytes()
                    if size <= 8:
                        slots[i] = int.from_bytes(raw, "little")
                        argv[i] = base + 8 * i
                    else:
                        holder = ctypes.create_string_buffer(raw, size)
                        keep.append(holder)
                        argv[i] = ctypes.addressof(holder)
            grid3, block3, err = module._grid3, module._block3, module._err
            grid3[0], grid3[1], grid3[2] = g
            block3[0], block3[1], block3[2] = b
            buffers = ArgBuffers(guards=not module.sanitize)
            try:
                for (i, _), ptr in zip(arrays, buffers.place(arrays)):
                    slots[i] = ptr
                ranges, nranges = buffers.ranges()
                rc = module._launch(self._entry_address, grid3, block3, int(shared_mem), argv, sched, seed,
                                    workers, timeout, ranges, nranges, err, _ERRLEN)
            finally:
                oob = buffers.finish()
            if rc != 0:
                msg = err.value.decode(errors="replace")
                raise EmulatorError(msg + (f"; it also wrote out of bounds: {oob}" if oob else ""))
            if oob:
                raise EmulatorError(
                    f"kernel '{self.name}' (grid {g}, block {b}, shared_mem {shared_mem}) wrote out of bounds: {oob}"
                )

    def _arg_error(self, i, a, wanted) -> str:
        if isinstance(a, numpy.ndarray):
            got = f"a numpy array of {a.dtype}"
        elif isinstance(a, numpy.generic):
            got = f"a numpy {a.dtype} scalar"
        elif isinstance(a, (bool, int, float)):
            got = (f"a Python {type(a).__name__} (CuPy would pass it as "
                   f"{'long long' if isinstance(a, int) else 'double'}: give it an explicit numpy dtype)")
        else:
            got = f"{type(a).__module__}.{type(a).__name__}"
        param = _describe_param(*self._params[i], self._names[i])
        return f"{self.name}: argument {i} is {param}, so it takes {wanted}; got {got}"


class EmulatorModule:
    """A compiled kernel file: ``get_function(name)`` as with cupy.RawModule."""

    def __init__(self, path, names, display_name: str):
        self.path = str(path)
        self.display_name = display_name
        self.sanitize = sanitize_mode()
        self._lock = threading.Lock()
        self._grid3 = (ctypes.c_uint * 3)()
        self._block3 = (ctypes.c_uint * 3)()
        self._err = ctypes.create_string_buffer(_ERRLEN)
        self._lib = ctypes.CDLL(self.path, mode=os.RTLD_NOW | os.RTLD_LOCAL)
        try:  # the symbols every emulator library has (a foreign library at a cache path has not)
            self._launch = self._lib.gpuconv_emu_launch
            count = ctypes.c_int.in_dll(self._lib, "gpuconv_emu_num_entries").value
        except (AttributeError, ValueError) as exc:
            raise _BadLibrary(f"{self.path} is not an emulator library of {display_name}: {exc}") from None
        self._launch.restype = ctypes.c_int
        self._launch.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_uint),
                                 ctypes.c_ulonglong, ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_uint,
                                 ctypes.c_int, ctypes.c_double, ctypes.POINTER(ctypes.c_ulonglong), ctypes.c_int,
                                 ctypes.c_char_p, ctypes.c_ulonglong]
        entries = (_Entry * max(count, 1)).in_dll(self._lib, "gpuconv_emu_entries")
        self._kernels = {}
        for i in range(count):
            name = entries[i].name.decode()
            self._kernels[name] = EmulatorKernel(self, entries[i], name)
        if list(self._kernels) != list(names):
            raise _BadLibrary(f"{self.path} holds the kernels {list(self._kernels)}, not the expected {list(names)}")

    @property
    def kernel_names(self) -> tuple:
        return tuple(self._kernels)

    @property
    def static_shared_bytes(self) -> int:
        """Bytes of static __shared__ memory of all kernels of the file together."""
        fn = self._lib.gpuconv_emu_static_smem
        fn.restype = ctypes.c_ulonglong
        return int(fn())

    def get_function(self, name: str) -> EmulatorKernel:
        try:
            return self._kernels[name]
        except KeyError:
            raise EmulatorError(
                f"{self.display_name} has no kernel {name!r} under the emulator; it has: "
                f"{', '.join(self._kernels) or 'none'} (extern \"C\" __global__ functions and the name "
                "expressions given, spelled exactly as given)"
            ) from None

    def __repr__(self):
        return f"<EmulatorModule {self.display_name}: {', '.join(self._kernels)}>"


_modules: dict = {}
_modules_lock = threading.Lock()


def load_module(source: str, *, filename: str = "<kernel>.cu", name_expressions=(), options=(),
                include_dirs=()) -> EmulatorModule:
    """Compile (or find in the cache) and load kernel source for the emulator."""
    reason = unavailable_reason()
    if reason is not None:
        from ..._dispatch import BackendUnavailable

        raise BackendUnavailable(f"the CUDA emulator is unavailable: {reason}")
    path, names = _compile.build_library(source, filename, tuple(name_expressions), tuple(options),
                                         tuple(include_dirs))
    with _modules_lock:
        module = _modules.get(str(path))
        if module is None:
            try:
                module = EmulatorModule(path, names, filename)
            except (OSError, _BadLibrary):
                # The cache checked the file's trailer, so this is a damaged entry that still looked whole:
                # rebuild it, and load the new file under a name of its own (dlopen may hold the old one).
                _compile.discard(path)
                path, names = _compile.build_library(source, filename, tuple(name_expressions), tuple(options),
                                                     tuple(include_dirs))
                module = EmulatorModule(_compile.private_copy(path), names, filename)
            _modules[str(path)] = module
    return module
