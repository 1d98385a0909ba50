"""NVRTC compile checks and the kernels' resource table (no GPU needed).

Uses NVRTC from pip (``cuda-bindings`` + ``nvidia-cuda-nvrtc-cu12``). Each kernel file is compiled to a cubin
for one architecture with ``--ptxas-options=-v``; any error or warning raises ``NvrtcError`` with the
program log, and ptxas's report gives registers, shared memory, spills and stack per kernel.

``cuda_fp16.h`` is not built into NVRTC 12.9: it comes from the CUDA runtime headers (the
``nvidia-cuda-runtime-cu12`` wheel, or a CUDA toolkit), and ``mma.h``'s ``crt/mma.h`` from a toolkit or the
``nvidia-cuda-nvcc-cu12`` wheel. ``cuda_include_dirs()`` finds them (GPUCONV_CUDA_INCLUDE first) and both this
module and the cupy module path pass those folders as ``-I``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

from ._headers import ENV_INCLUDE, cuda_include_dirs
from .modules import build_inputs, declared_arches, kernel_dirs, kernel_files, kernel_path

ARCHES = ("sm_70", "sm_80", "sm_90")


class NvrtcError(RuntimeError):
    """NVRTC reported an error or a warning (the message holds the program log)."""


class KernelResources(NamedTuple):
    kernel: str
    arch: str
    registers: int
    shared_mem_bytes: int
    spill_stores: int
    spill_loads: int
    stack_bytes: int


def _nvrtc():
    from cuda.bindings import nvrtc

    return nvrtc


def unavailable_reason():
    """None if NVRTC can be used here, else why not."""
    try:
        nvrtc = _nvrtc()
        err, _major, _minor = nvrtc.nvrtcVersion()
    except Exception as exc:  # noqa: BLE001 - ImportError, or the shared library failing to load
        return f"NVRTC is not usable: {type(exc).__name__}: {exc} (pip install cuda-bindings nvidia-cuda-nvrtc-cu12)"
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        return f"NVRTC is not usable: nvrtcVersion returned {err}"
    return None


def version() -> tuple:
    _err, major, minor = _nvrtc().nvrtcVersion()
    return major, minor


def _check(result, what, log=""):
    nvrtc = _nvrtc()
    err = result[0] if isinstance(result, tuple) else result
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        _, msg = nvrtc.nvrtcGetErrorString(err)
        raise NvrtcError(f"{what}: {msg.decode() if isinstance(msg, bytes) else msg}\n{log}")
    return result[1:] if isinstance(result, tuple) and len(result) > 1 else None


def _program_log(prog) -> str:
    nvrtc = _nvrtc()
    (size,) = _check(nvrtc.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
    buf = b" " * size
    _check(nvrtc.nvrtcGetProgramLog(prog, buf), "nvrtcGetProgramLog")
    return buf.rstrip(b"\0 ").decode(errors="replace")


_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(\w+)'")
_PROPS = re.compile(r"Function properties for (\S+)")
_STACK = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas(log: str) -> dict:
    """{mangled name: {registers, shared_mem_bytes, spill_stores, spill_loads, stack_bytes}} of entry functions."""
    entries, props = {}, {}
    current = props_of = None
    for line in log.splitlines():
        m = _ENTRY.search(line)
        if m:
            current = m.group(1)
            entries[current] = {"registers": 0, "shared_mem_bytes": 0, "spill_stores": 0, "spill_loads": 0,
                                "stack_bytes": 0}
            continue
        m = _PROPS.search(line)
        if m:
            props_of = m.group(1)
            continue
        m = _STACK.search(line)
        if m and props_of is not None:
            props[props_of] = tuple(int(v) for v in m.groups())
            props_of = None
            continue
        m = _USED.search(line)
        if m and current is not None:
            entries[current]["registers"] = int(m.group(1))
            s = _SMEM.search(line)
            entries[current]["shared_mem_bytes"] = int(s.group(1)) if s else 0
    for name, row in entries.items():
        if name in props:
            row["stack_bytes"], row["spill_stores"], row["spill_loads"] = props[name]
    return entries


# NVRTC 12.9 warns that sm_70 is deprecated on every sm_70 compile (no option silences it): a notice about
# the target we chose to check, not about the kernel source, so it is the one warning let through.
_TARGET_NOTICES = (re.compile(r"nvrtc: warning: Architectures prior to .* are deprecated"),)


def _warnings(log: str) -> list:
    return [line for line in log.splitlines()
            if re.search(r"\bwarning\b", line, re.IGNORECASE) and not any(p.search(line) for p in _TARGET_NOTICES)]


class Compiled(NamedTuple):
    """One NVRTC compile of a kernel file for one architecture."""
    path: Path
    arch: str
    log: str       # the program log (ptxas -v report included)
    lowered: dict  # {mangled name: name expression}
    cubin: bytes   # the SASS binary (nvdisasm reads it: see sass.py)


_compiled: dict = {}  # successful compiles of this process, keyed by everything that goes into them


def compile_program(filename, arch, name_expressions=(), options=()) -> Compiled:
    """Compiles a kernel file (name in kernels/ or absolute path) for ``arch`` to a cubin.

    The name expressions and options of ``modules.build_inputs`` (the package's generated instantiations and -D
    macros for kernels/, a file's own ``// gpuconv-name-expressions:`` lines) are added to the given ones.
    Raises NvrtcError on any compile error or warning. A compile is kept for the life of the process, keyed by
    the source text, architecture, name expressions and options (the resource and SASS tables share it).
    """
    if arch not in ARCHES and not re.fullmatch(r"sm_\d+a?", arch):
        raise ValueError(f"arch must look like 'sm_80' (checked: {ARCHES}), got {arch!r}")
    nvrtc = _nvrtc()
    path = kernel_path(filename)
    source, exprs, options = build_inputs(path, name_expressions, options)
    opts = [f"--gpu-architecture={arch}", "--ptxas-options=-v", "-std=c++17", f"-I{path.parent}"]
    opts += [f"-I{d}" for d in cuda_include_dirs()]
    opts += list(options)
    key = (str(path), source, arch, exprs, tuple(opts))
    if key in _compiled:
        return _compiled[key]
    (prog,) = _check(nvrtc.nvrtcCreateProgram(source.encode(), path.name.encode(), 0, [], []),
                     "nvrtcCreateProgram")
    try:
        for expr in exprs:
            _check(nvrtc.nvrtcAddNameExpression(prog, expr.encode()), f"nvrtcAddNameExpression({expr!r})")
        result = nvrtc.nvrtcCompileProgram(prog, len(opts), [o.encode() for o in opts])
        log = _program_log(prog)
        if result[0] != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            hint = ""
            if "cuda_fp16.h" in log and not cuda_include_dirs():
                hint = (f"\n(cuda_fp16.h is not built into NVRTC: pip install nvidia-cuda-runtime-cu12, or set "
                        f"{ENV_INCLUDE} to a CUDA include folder)")
            raise NvrtcError(f"{path.name} does not compile for {arch} "
                             f"(nvrtc {' '.join(opts)}):\n{log}{hint}")
        warnings = _warnings(log)
        if warnings:
            raise NvrtcError(f"{path.name} compiles for {arch} with warnings:\n" + "\n".join(warnings) +
                             f"\n--- full log ---\n{log}")
        lowered = {}
        for expr in exprs:
            (name,) = _check(nvrtc.nvrtcGetLoweredName(prog, expr.encode()), f"nvrtcGetLoweredName({expr!r})")
            lowered[name.decode() if isinstance(name, bytes) else name] = expr
        (size,) = _check(nvrtc.nvrtcGetCUBINSize(prog), "nvrtcGetCUBINSize")
        cubin = b" " * size
        _check(nvrtc.nvrtcGetCUBIN(prog, cubin), "nvrtcGetCUBIN")
    finally:
        nvrtc.nvrtcDestroyProgram(prog)
    _compiled[key] = Compiled(path, arch, log, lowered, cubin)
    return _compiled[key]


def compile_report(filename, arch, name_expressions=(), options=()) -> list:
    """Compiles a kernel file (see ``compile_program``) for ``arch``; one KernelResources per kernel."""
    c = compile_program(filename, arch, name_expressions, options)
    rows = []
    for mangled, r in sorted(parse_ptxas(c.log).items()):
        rows.append(KernelResources(c.lowered.get(mangled, mangled), arch, r["registers"], r["shared_mem_bytes"],
                                    r["spill_stores"], r["spill_loads"], r["stack_bytes"]))
    return rows


def file_arches(path, arches=ARCHES) -> list:
    """The architectures of ``arches`` that a kernel file is for: those its `// gpuconv-nvrtc-arches:` line
    names (its architecture-specific ones, such as sm_90a, always), else all of them."""
    declared = declared_arches(Path(path).read_text())
    return [a for a in declared if a in arches or a.endswith("a")] if declared else list(arches)


def resource_table(files=None, arches=ARCHES) -> list:
    """Rows (file, KernelResources) for every kernel file (default: every .cu in kernels/) and arch it is for."""
    files = kernel_files() if files is None else [kernel_path(f) for f in files]
    rows = []
    for f in files:
        mine = file_arches(f, arches)
        per_file = [row for arch in mine for row in compile_report(str(f), arch)]
        order = {arch: i for i, arch in enumerate(mine)}
        per_file.sort(key=lambda r: (r.kernel, order[r.arch]))
        rows += [(Path(f).name, row) for row in per_file]
    return rows


def format_resource_table(files=None, arches=ARCHES, rows=None) -> str:
    """The resource table as text (what `gpuconv info --kernels` prints); ``rows`` from ``resource_table`` if
    the caller has them already (nothing is compiled again)."""
    reason = unavailable_reason()
    if reason is not None:
        return f"kernel resources: unavailable ({reason})"
    rows = resource_table(files, arches) if rows is None else rows
    if not rows:
        return "kernel resources: no kernel files (*.cu) found in " + " or ".join(str(d) for d in kernel_dirs())
    header = ("file", "kernel", "arch", "regs", "smem B", "spill st B", "spill ld B", "stack B")
    body = [(f, r.kernel, r.arch, str(r.registers), str(r.shared_mem_bytes), str(r.spill_stores),
             str(r.spill_loads), str(r.stack_bytes)) for f, r in rows]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    numeric = {3, 4, 5, 6, 7}

    def fmt(row):
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))

    major, minor = version()
    lines = [f"kernel resources (NVRTC {major}.{minor}, ptxas -v)", fmt(header), fmt(["-" * w for w in widths])]
    lines += [fmt(row) for row in body]
    return "\n".join(line.rstrip() for line in lines)
