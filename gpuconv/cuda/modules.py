"""Kernel modules behind one interface: ``cupy.RawModule`` on a GPU, the CPU emulator elsewhere.

    module = get_module("emulator", "conv_forward.cu")            # or "cupy"
    kernel = module.get_function("gpuconv_conv_fwd<float>")
    kernel(grid, block, (x, w, y, numpy.int32(n)), shared_mem=0)

Nothing is compiled until ``get_module`` is first called for a (kind, device, file, source, name expressions,
options) combination; the module is then kept for the life of the process (CuPy also keeps binaries on disk in
CUPY_CACHE_DIR, the emulator in GPUCONV_CACHE_DIR).

Name expressions and options: the package's kernel files (kernels/) are compiled with the instantiations that
``gpuconv.backends._plans`` generates from the dtype registry (as CuPy builds ``name_expressions`` in Python)
and with its -D macros (activation codes, launch constants): ``package_build`` gives both, and ``get_module``,
the NVRTC checks and ``gpuconv info --kernels`` all go through it. Any other kernel file may register the
instantiations it needs in comment lines

    // gpuconv-name-expressions: axpy<float>, axpy<double>, axpy<__half>

(several such lines add up; commas inside <> or () do not split). ``get_module`` adds both to the ones it is
given, so callers need not repeat them.
"""
from __future__ import annotations

import hashlib
import os
import re
import threading
from pathlib import Path

KINDS = ("cupy", "emulator")
NAME_EXPRESSIONS_TAG = "gpuconv-name-expressions:"
NVRTC_ARCHES_TAG = "gpuconv-nvrtc-arches:"

_cache: dict = {}
_fast: dict = {}
_lock = threading.Lock()


def kernel_dirs() -> list:
    """Folders searched for kernel files: the installed package's, then a source checkout's."""
    import gpuconv

    pkg = Path(gpuconv.__file__).resolve().parent
    return [pkg / "kernels", pkg.parent / "kernels"]


def kernel_path(filename) -> Path:
    """The path of kernel file ``filename`` (a bare name in kernels/, or an absolute path)."""
    p = Path(filename)
    if p.is_absolute():
        if not p.is_file():
            raise FileNotFoundError(f"kernel file {p} does not exist")
        return p
    if len(p.parts) != 1 or p.name in ("", ".", ".."):
        raise ValueError(f"kernel file name must be a bare name such as 'conv_forward.cu', got {filename!r}")
    dirs = kernel_dirs()
    for d in dirs:
        if (d / p).is_file():
            return d / p
    raise FileNotFoundError(f"kernel file {filename!r} not found in {' or '.join(str(d) for d in dirs)}")


def kernel_source(filename) -> str:
    """The text of kernels/<filename> (installed package first, then the source checkout)."""
    return kernel_path(filename).read_text()


def kernel_files() -> list:
    """Paths of every .cu file in the first kernel folder that has any."""
    for d in kernel_dirs():
        files = sorted(d.glob("*.cu"))
        if files:
            return files
    return []


def _split_top_level(text: str) -> list:
    out, depth, cur = [], 0, []
    for ch in text:
        if ch in "<([":
            depth += 1
        elif ch in ">)]":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return [" ".join(s.split()) for s in out if s.strip()]


def registered_name_expressions(source: str) -> tuple:
    """The name expressions a kernel file registers with `// gpuconv-name-expressions: a<float>, ...` lines."""
    found = []
    for m in re.finditer(r"//\s*" + re.escape(NAME_EXPRESSIONS_TAG) + r"(.*)", source):
        for expr in _split_top_level(m.group(1)):
            if expr not in found:
                found.append(expr)
    return tuple(found)


def declared_arches(source: str) -> tuple:
    """The architectures a kernel file says it is for (`// gpuconv-nvrtc-arches: sm_90a`), or () for all."""
    m = re.search(r"^//\s*" + re.escape(NVRTC_ARCHES_TAG) + r"(.*)$", source, re.MULTILINE)
    return tuple(m.group(1).replace(",", " ").split()) if m else ()


def package_build(path) -> tuple:
    """(name expressions, options) a kernel file of the package is always compiled with; ((), ()) for others."""
    path = Path(path)
    if path.parent.resolve() not in {d.resolve() for d in kernel_dirs()}:
        return (), ()
    from ..backends import _plans

    return _plans.name_expressions(path.name), _plans.kernel_defines()


def build_inputs(path, name_expressions=(), options=()) -> tuple:
    """All the name expressions and options ``path`` compiles with: the caller's, the package's, its own."""
    source = Path(path).read_text()
    exprs, defines = package_build(path)
    exprs = tuple(dict.fromkeys((*name_expressions, *exprs, *registered_name_expressions(source))))
    return source, exprs, (*defines, *options)


def emulator_unavailable_reason():
    """None if the CPU emulator can compile and run kernels here, else why not."""
    from .emulator import unavailable_reason

    return unavailable_reason()


def device_id(kind):
    """The current CUDA device for "cupy"; for the emulator, its compile mode (GPUCONV_EMULATOR_SANITIZE).
    Every cache of compiled kernels is keyed by it."""
    if kind == "cupy":
        from .._dispatch import import_cupy

        return import_cupy().cuda.Device().id
    from .emulator import sanitize_mode

    return f"cpu{'-' + sanitize_mode() if sanitize_mode() else ''}"


def get_module(kind: str, filename: str, *, name_expressions=(), options=()):
    """The compiled module of kernels/<filename> for ``kind`` ("cupy" or "emulator"), built on first use."""
    if kind not in KINDS:
        raise ValueError(f"module kind must be one of {KINDS}, got {kind!r}")
    if isinstance(name_expressions, str) or isinstance(options, str):
        raise TypeError("name_expressions and options must be sequences of strings, not a string")
    options = tuple(options)
    device = device_id(kind)
    # Fast path for the launch wrappers, which ask on every call: same arguments and an unchanged file.
    fast_key = (kind, device, filename, tuple(name_expressions), options)
    hit = _fast.get(fast_key)
    if hit is not None:
        path, stamp, module = hit
        try:
            st = os.stat(path)
        except OSError:
            st = None
        if st is not None and (st.st_mtime_ns, st.st_size) == stamp:
            return module
    path = kernel_path(filename)
    st = os.stat(path)
    source, exprs, all_options = build_inputs(path, name_expressions, options)
    key = (kind, device, str(path), hashlib.sha256(source.encode()).hexdigest(), exprs, all_options)
    with _lock:
        module = _cache.get(key)
    if module is not None:
        _fast[fast_key] = (path, (st.st_mtime_ns, st.st_size), module)
        return module
    if kind == "emulator":
        from . import emulator

        module = emulator.load_module(source, filename=str(path), name_expressions=exprs, options=all_options,
                                      include_dirs=(str(path.parent),))
    else:
        module = _cupy_module(source, path, exprs, all_options)
    with _lock:
        module = _cache.setdefault(key, module)
    _fast[fast_key] = (path, (st.st_mtime_ns, st.st_size), module)
    return module


def _cupy_module(source, path, exprs, options):
    from .._dispatch import import_cupy
    from ._headers import cuda_include_dirs

    cupy = import_cupy()
    opts = list(options)
    # A file for an architecture-specific target (sm_90a: wgmma) is built for it on that GPU. CuPy appends its own
    # -arch (sm_90 or compute_90) after ours; of two -arch options NVRTC 12.9 keeps the last, but keeps sm_90a
    # over sm_90 / compute_90 in either order (measured: kernels/README.md, Conventions). Elsewhere the
    # file compiles for CuPy's target, with empty kernels.
    here = f"sm_{cupy.cuda.Device().compute_capability}"
    opts[:0] = [f"-arch={a}" for a in declared_arches(source) if a.endswith("a") and a[:-1] == here][:1]
    opts.append(f"-I{path.parent}")
    for d in cuda_include_dirs():
        if f"-I{d}" not in opts:
            opts.append(f"-I{d}")
    if not any(o.startswith(("-std", "--std")) for o in opts):
        opts.append("-std=c++17")
    return cupy.RawModule(code=source, options=tuple(opts), name_expressions=exprs or None)
