"""Turning kernel source into a cached shared library for the emulator.

The source is compiled as it is, with three changes made before g++ sees it (line numbers kept):
``#line 1 "<file>"`` in front, ``extern __shared__ T name[];`` rewritten to a pointer into the block's dynamic
shared memory, and an epilogue appended that lists one entry per kernel (extern "C" kernels found in the text,
plus every name expression). The prelude ``gpuconv_emu.h`` is force-included and the runtime object
(``runtime.cpp``, compiled once per flag set) linked in. Libraries are cached under
``$GPUCONV_CACHE_DIR/emulator`` (default ``~/.cache/gpuconv/emulator``), keyed by a hash of everything that
goes into them.

The cache heals: every cached file (library, runtime object, precompiled header) ends in a trailer holding a
hash of its bytes and its name, checked before use; a truncated file, a foreign one at that path or any other
damage is rebuilt. Files appear by an atomic rename only, so concurrent processes never see a half-written one.
A cache folder that cannot be used (GPUCONV_CACHE_DIR a file, a read-only folder) gives a warning naming
GPUCONV_CACHE_DIR and a private temporary folder for the process instead.
"""
from __future__ import annotations

import atexit
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import warnings
from functools import cache
from pathlib import Path

HERE = Path(__file__).resolve().parent
HEADER = HERE / "gpuconv_emu.h"
RUNTIME = HERE / "runtime.cpp"
STUB_INCLUDE = HERE / "include"

ENV_CXX = "GPUCONV_CXX"
ENV_CACHE = "GPUCONV_CACHE_DIR"
ENV_SANITIZE = "GPUCONV_EMULATOR_SANITIZE"

# -fstack-clash-protection: a frame bigger than a page probes each page, so a huge local array hits the fiber
# stack's guard page (reported as a stack overflow) instead of silently writing into a neighbour's stack.
BASE_FLAGS = ("-std=c++20", "-O2", "-fPIC", "-pthread", "-fno-strict-aliasing", "-fvisibility=hidden", "-w",
              "-fstack-clash-protection")
SANITIZE_FLAGS = {
    "address": ("-std=c++20", "-O1", "-g", "-fPIC", "-pthread", "-fno-strict-aliasing", "-fvisibility=hidden",
                "-w", "-fstack-clash-protection", "-fsanitize=address", "-fno-omit-frame-pointer"),
}
# NVRTC options that mean nothing to g++ (their prefixes); -D, -U and -I are passed on.
IGNORED_OPTIONS = ("-std", "--std", "-arch", "--gpu-architecture", "--use_fast_math", "-use_fast_math",
                   "--fmad", "-fmad", "-lineinfo", "--generate-line-info", "-G", "--device-debug",
                   "-default-device", "--extra-device-vectorization", "-restrict", "--restrict",
                   "--ptxas-options", "-Xptxas", "-maxrregcount", "--maxrregcount", "-dopt", "--dopt",
                   "-dlto", "--device-as-default-execution-space", "-ewp", "--extensible-whole-program")


class CompileError(RuntimeError):
    """g++ rejected a kernel file (the message holds its output)."""


def sanitize_mode() -> str:
    mode = os.environ.get(ENV_SANITIZE, "").strip().lower()
    if mode in ("", "0", "none", "off"):
        return ""
    if mode not in SANITIZE_FLAGS:
        raise ValueError(f"{ENV_SANITIZE}={mode!r}: the supported values are {sorted(SANITIZE_FLAGS)} or empty")
    return mode


def flags() -> tuple:
    mode = sanitize_mode()
    return SANITIZE_FLAGS[mode] if mode else BASE_FLAGS


@cache
def _compiler_info(cxx: str):
    """(path, version string) of the C++ compiler, or (None, reason)."""
    path = shutil.which(cxx)
    if path is None:
        return None, f"no C++ compiler found (looked for {cxx!r} on PATH; set {ENV_CXX} to choose one)"
    try:
        out = subprocess.run([path, "--version"], check=False, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"the C++ compiler {path} cannot be run: {exc}"
    first = (out.stdout or out.stderr).splitlines()[:1]
    version = first[0] if first else "unknown"
    m = re.search(r"\b(\d+)\.\d+", version)
    if "clang" not in version and m and int(m.group(1)) < 11:
        return None, f"the C++ compiler {path} is too old for the emulator (need g++ 11 or later): {version}"
    return path, version


def compiler():
    """(path, version) of the C++ compiler; path is None and version the reason when there is none."""
    return _compiler_info(os.environ.get(ENV_CXX) or "g++")


def unavailable_reason():
    """None, or why the emulator cannot run here."""
    import platform
    import sys

    if not sys.platform.startswith("linux") or platform.machine() not in ("x86_64", "AMD64"):
        return (f"the emulator's fiber switch is written for x86-64 Linux; this is {sys.platform} "
                f"{platform.machine()}")
    path, why = compiler()
    if path is None:
        return why
    return None


_usable_dirs: dict = {}


def _probe_writable(d: Path) -> None:
    """Raises OSError unless files can be created (and renamed) in d."""
    fd, probe = tempfile.mkstemp(prefix=".probe-", dir=d)
    os.close(fd)
    os.unlink(probe)


def cache_dir() -> Path:
    """The emulator's cache folder; a private temporary one (with a warning) when that cannot be used."""
    root = os.environ.get(ENV_CACHE)
    base = Path(root) if root else Path.home() / ".cache" / "gpuconv"
    d = base / "emulator"
    hit = _usable_dirs.get(str(d))
    if hit is not None:
        return hit
    try:
        d.mkdir(parents=True, exist_ok=True)
        _probe_writable(d)
        result = d
    except OSError as exc:
        result = Path(tempfile.mkdtemp(prefix="gpuconv-emulator-"))
        atexit.register(shutil.rmtree, result, ignore_errors=True)
        where = f"{ENV_CACHE}={root!r}" if root else f"the default cache folder ({ENV_CACHE} unset)"
        warnings.warn(
            f"{where}: the emulator cannot keep compiled kernels in {d} ({type(exc).__name__}: {exc}); using the "
            f"private temporary folder {result} for this process instead (set {ENV_CACHE} to a writable folder "
            "to keep them)",
            RuntimeWarning,
            stacklevel=3,
        )
    _usable_dirs[str(d)] = result
    return result


# ---- cached files: sealed with a trailer, checked before use ----------------------------------------------
_MAGIC = b"gpuconv-emu-v1\0\0"  # 16 bytes; then sha256(file bytes + file name)
_TRAILER = len(_MAGIC) + 32


def _digest(body: bytes, name: str) -> bytes:
    return hashlib.sha256(body + b"\0" + name.encode()).digest()


def _seal(tmp: str, name: str) -> None:
    """Appends the trailer to a freshly built file (ELF loaders, ld and g++'s PCH reader ignore trailing bytes)."""
    body = Path(tmp).read_bytes()
    with open(tmp, "ab") as f:
        f.write(_MAGIC + _digest(body, name))


def intact(path: Path) -> bool:
    """Whether a cached file is whole and was built for its name (not truncated, not a foreign file)."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return False
    if len(data) <= _TRAILER or data[-_TRAILER:-32] != _MAGIC:
        return False
    return _digest(data[:-_TRAILER], Path(path).name) == data[-32:]


def discard(path: Path) -> None:
    """Removes a damaged cache entry (another process may have removed or replaced it already)."""
    try:
        os.unlink(path)
    except OSError:
        pass


def private_copy(path: Path) -> Path:
    """A copy of a cached library under a name no other load used (a private temporary folder)."""
    d = Path(tempfile.mkdtemp(prefix="gpuconv-emulator-reload-"))
    atexit.register(shutil.rmtree, d, ignore_errors=True)
    copy = d / Path(path).name
    shutil.copyfile(path, copy)
    return copy


def _cached(target: Path, build) -> Path:
    """target, built (by build(tmp_path)) and sealed unless an intact copy is there already."""
    if not intact(target):
        _atomic_build(target, lambda tmp: (build(tmp), _seal(tmp, target.name)))
    return target


# ---- source rewriting -----------------------------------------------------------------------------------
_EXTERN_C_KERNEL = re.compile(
    r'extern\s+"C"\s+((?:(?:__\w+__|static|inline)(?:\s*\([^()]*\))?\s+)*)void\s+'
    r"(?:__launch_bounds__\s*\([^()]*\)\s*)?([A-Za-z_]\w*)\s*\("
)
_EXTERN_SHARED = re.compile(r"extern\s+__shared__\s+([^;\[\]{}()]*?(?:\([^()]*\)[^;\[\]{}()]*?)*)\s*\[\s*\]\s*;")
_ALIGN = re.compile(r"__align__\s*\(\s*\d+\s*\)|alignas\s*\(\s*\d+\s*\)")


def strip_comments(source: str) -> str:
    """The source with comments blanked out (newlines kept), strings left alone."""
    def repl(m):
        text = m.group(0)
        if text.startswith(('"', "'")):
            return text
        return re.sub(r"[^\n]", " ", text)

    return re.sub(r""""(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*'|//[^\n]*|/\*.*?\*/""", repl, source,
                  flags=re.DOTALL)


def extern_c_kernels(source: str) -> list:
    """Names of the extern "C" __global__ functions defined or declared in the source."""
    names = []
    for m in _EXTERN_C_KERNEL.finditer(strip_comments(source)):
        if "__global__" in m.group(1) and m.group(2) not in names:
            names.append(m.group(2))
    return names


def _rewrite_extern_shared(m) -> str:
    decl = _ALIGN.sub(" ", m.group(1)).strip()
    parts = decl.rsplit(None, 1)
    if len(parts) != 2 or not re.fullmatch(r"[A-Za-z_]\w*", parts[1]):
        return m.group(0)
    ctype, name = parts
    newlines = "\n" * m.group(0).count("\n")
    return f"{ctype}* const {name} = reinterpret_cast<{ctype}*>(::gpuconv_emu::tl.dyn_smem);{newlines}"


def rewrite_source(source: str) -> str:
    """Rewrites `extern __shared__ T name[];` (in a function) to a pointer into the block's dynamic shared memory."""
    code = re.sub(r""""(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*'""", lambda m: " " * len(m.group(0)),
                  strip_comments(source))
    for m in _EXTERN_SHARED.finditer(code):
        depth = code.count("{", 0, m.start()) - code.count("}", 0, m.start())
        if depth <= 0:
            line = code.count("\n", 0, m.start()) + 1
            raise CompileError(
                f"line {line}: `{' '.join(m.group(0).split())}` at file scope: the emulator supports "
                "extern __shared__ arrays declared inside a function (declare it in the kernel, or pass the "
                "pointer to device functions)"
            )
    return _EXTERN_SHARED.sub(_rewrite_extern_shared, source)


def generate(source: str, display_name: str, name_expressions) -> tuple:
    """(translation unit text, entry names in order)."""
    names = extern_c_kernels(source)
    for expr in name_expressions:
        if expr not in names:
            names.append(expr)
    lines = [f"#line 1 {_c_string(display_name)}", rewrite_source(source), "",
             '#line 1 "<gpuconv emulator entries>"']
    lines.append('extern "C" __attribute__((visibility("default"))) const ::gpuconv_emu::KernelEntry '
                 "gpuconv_emu_entries[] = {")
    for name in names:
        lines.append(f"    ::gpuconv_emu::make_entry<&{name} >({_c_string(name)}),")
    if not names:
        lines.append("    {nullptr, nullptr, 0, nullptr},")
    lines.append("};")
    lines.append(f'extern "C" __attribute__((visibility("default"))) const int gpuconv_emu_num_entries = '
                 f"{len(names)};")
    return "\n".join(lines) + "\n", names


def _c_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def split_options(options) -> tuple:
    """g++ arguments for the NVRTC-style options (-D, -U, -I are kept; NVRTC-only ones dropped)."""
    out, include_dirs = [], []
    it = iter(options)
    for opt in it:
        if not isinstance(opt, str):
            raise TypeError(f"compile options must be strings, got {opt!r}")
        if opt in ("-D", "-U", "-I", "--define-macro", "--undefine-macro", "--include-path"):
            value = next(it, None)
            if value is None:
                raise ValueError(f"compile option {opt} needs a value")
            opt = {"--define-macro": "-D", "--undefine-macro": "-U", "--include-path": "-I"}.get(opt, opt) + value
        for long, short in (("--define-macro=", "-D"), ("--undefine-macro=", "-U"), ("--include-path=", "-I")):
            if opt.startswith(long):
                opt = short + opt[len(long):]
        if opt.startswith("-I"):
            include_dirs.append(opt[2:])
            out.append(opt)
        elif opt.startswith(("-D", "-U")):
            out.append(opt)
        elif opt.split("=", 1)[0] in IGNORED_OPTIONS or opt.startswith(("-arch=", "--gpu-architecture=")):
            continue
        else:
            raise ValueError(
                f"compile option {opt!r} has no meaning under the emulator (it takes -D, -U and -I, and ignores "
                f"NVRTC code-generation options such as {', '.join(IGNORED_OPTIONS[:4])} ...)"
            )
    return out, include_dirs


def _hash_include_dirs(h, dirs):
    for d in dirs:
        p = Path(d)
        if not p.is_dir():
            continue
        for f in sorted(p.iterdir()):
            if f.is_file() and f.suffix in (".cuh", ".h", ".hpp", ".inc", ".cu"):
                h.update(f.name.encode())
                h.update(f.read_bytes())


def _run(cmd, what):
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        raise CompileError(f"{what} failed (exit {proc.returncode}):\n{' '.join(cmd)}\n{proc.stderr}{proc.stdout}")


def _atomic_build(target: Path, build):
    """Runs build(tmp_path) and moves the result to target (safe when processes race for the same key)."""
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        build(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def runtime_object() -> Path:
    """The compiled runtime for the current flags (cached)."""
    cxx, version = compiler()
    if cxx is None:
        raise CompileError(version)
    fl = flags()
    h = hashlib.sha256()
    for part in (version, " ".join(fl), HEADER.read_text(), RUNTIME.read_text()):
        h.update(part.encode())
        h.update(b"\0")
    target = cache_dir() / f"runtime-{h.hexdigest()[:20]}.o"
    return _cached(target, lambda tmp: _run(
        [cxx, *fl, "-c", "-I", str(HERE), str(RUNTIME), "-o", tmp], "compiling the emulator runtime"))


def precompiled_header() -> Path:
    """A cached folder holding gpuconv_emu.h and its precompiled .gch for the current flags (halves compiles).

    g++ uses the .gch when the flags match and silently reads the header text otherwise."""
    cxx, version = compiler()
    fl = flags()
    h = hashlib.sha256()
    for part in (version, " ".join(fl), HEADER.read_text()):
        h.update(part.encode())
        h.update(b"\0")
    d = cache_dir() / f"pch-{h.hexdigest()[:20]}"
    if d.exists() and not d.is_dir():
        d.unlink()
    d.mkdir(exist_ok=True)
    header = d / HEADER.name
    text = HEADER.read_bytes()
    try:
        same = header.read_bytes() == text
    except OSError:
        same = False
    if not same:
        _atomic_build(header, lambda tmp: shutil.copyfile(HEADER, tmp))
    _cached(d / (HEADER.name + ".gch"), lambda tmp: _run(
        [cxx, *fl, "-x", "c++-header", str(header), "-o", tmp], "precompiling the emulator header"))
    return header


def build_library(source: str, display_name: str, name_expressions=(), options=(), include_dirs=()):
    """Compiles the kernel source into a cached shared library; returns (path, entry names)."""
    cxx, version = compiler()
    if cxx is None:
        raise CompileError(version)
    fl = flags()
    extra, option_dirs = split_options(options)
    dirs = [str(d) for d in include_dirs] + option_dirs
    text, names = generate(source, display_name, tuple(name_expressions))
    h = hashlib.sha256()
    for part in (version, " ".join(fl), " ".join(extra), " ".join(dirs), HEADER.read_text(), RUNTIME.read_text(),
                 text):
        h.update(part.encode())
        h.update(b"\0")
    _hash_include_dirs(h, [str(STUB_INCLUDE), *dirs])  # the emulator's own headers (mma.h ...) too
    key = h.hexdigest()[:24]
    target = cache_dir() / f"{Path(display_name).stem}-{key}.so"
    if not intact(target):
        rt = runtime_object()
        # The precompiled header pays off over several files; a sanitize build usually compiles one or two.
        prelude = HEADER if sanitize_mode() else precompiled_header()
        cmd = [cxx, *fl, "-shared", "-include", str(prelude), "-I", str(STUB_INCLUDE)]
        for d in include_dirs:
            cmd += ["-I", str(d)]
        cmd += extra

        def build(tmp):
            # The generated source under a name of this process's own (another may compile the same key).
            fd, src = tempfile.mkstemp(prefix=f"{Path(display_name).stem}-{key}.", suffix=".cpp", dir=target.parent)
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(text)
                _run([*cmd, src, str(rt), "-o", tmp], f"compiling {display_name} for the emulator")
            finally:
                os.unlink(src)

        _cached(target, build)
    return target, names
