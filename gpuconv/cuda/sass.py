"""The kernels' machine code (SASS) without a GPU: NVRTC's cubins disassembled by nvdisasm, instruction classes
counted per kernel and architecture, and the main loop's mix of math and shared-memory instructions.

Uses nvrtc.py for the compiles and NVIDIA's disassembler from pip (``nvidia-cuda-nvdisasm``; GPUCONV_NVDISASM,
a CUDA toolkit's or one on PATH also do). nvdisasm 13 no longer reads sm_70 cubins: those rows are left out of
the table, and local memory there is checked from ptxas's report (stack frame and spills) instead.

What is counted is what the GPU would execute, read the way CUTLASS's and Triton's developers read SASS:
- classes (``CLASSES``) by the opcode's first word (``LDS.U.128`` is an LDS), HMMA also by its full type
  (``HMMA.1684.F32.TF32``: TF32, ``HMMA.16816.F32.BF16``: BF16, ``HMMA.16816.F32``: FP16 with float
  accumulation); instructions predicated ``@!PT`` (never executed: ptxas's padding) are not counted;
- loops from the branch structure: a branch to a label at or before it closes a loop from that label to the
  branch. The main loop is the innermost loop that holds math (HMMA, HGMMA, FFMA, DFMA), the one with the most
  tensor-core math, then the most math, if several; its ratio is math instructions per shared-memory load (LDS + LDSM).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from pathlib import Path
from typing import NamedTuple

from . import nvrtc
from .._validate import env_path
from .modules import kernel_dirs, kernel_files, kernel_path

ENV_NVDISASM = "GPUCONV_NVDISASM"
# LD / ST: generic loads and stores (any address space, e.g. a shared tile reached through a generic pointer,
# which costs more than LDS / LDSM)
CLASSES = ("HMMA", "HGMMA", "FFMA", "DFMA", "LDS", "STS", "LDSM", "LDG", "STG", "LDGSTS", "LDL", "STL", "LD", "ST", "BAR")
MATH = ("HMMA", "HGMMA", "FFMA", "DFMA")  # HGMMA: Hopper's warpgroup MMA (wgmma)
SHARED_LOADS = ("LDS", "LDSM")
INSTALL_HINT = "pip install nvidia-cuda-nvdisasm (or set GPUCONV_NVDISASM to an nvdisasm binary)"


class NvdisasmError(RuntimeError):
    """nvdisasm failed on a cubin (the message holds its output)."""


class ArchUnsupported(NvdisasmError):
    """This nvdisasm cannot read cubins of that architecture (nvdisasm 13 dropped sm_70)."""


class Instruction(NamedTuple):
    offset: int     # byte offset in the function
    predicate: str  # "" or e.g. "@P0", "@!PT"
    opcode: str     # with its modifiers, e.g. "LDS.U.128"
    operands: str


class Loop(NamedTuple):
    start: int  # offset of the loop's first instruction (the backward branch's target)
    end: int    # offset of its last backward branch


class KernelSass(NamedTuple):
    kernel: str        # name expression, e.g. "gpuconv_conv_fwd<float, 64>" (mangled if not registered)
    arch: str
    counts: dict       # class -> count (every class of CLASSES present, 0 if none)
    hmma: dict         # full HMMA opcode -> count
    loop: Loop | None  # the main loop (None: no loop holds math)
    loop_counts: dict  # class -> count inside the main loop (empty without one)
    loop_opcodes: dict  # full opcode -> count inside the main loop, e.g. {"LDS.128": 32, ...}

    @property
    def loop_math(self) -> int:
        return sum(self.loop_counts.get(c, 0) for c in MATH)

    @property
    def loop_shared_loads(self) -> int:
        return sum(self.loop_counts.get(c, 0) for c in SHARED_LOADS)

    @property
    def loop_ratio(self):
        """Math instructions per shared-memory load in the main loop (None without one or without loads)."""
        return self.loop_math / self.loop_shared_loads if self.loop_shared_loads else None


def nvdisasm_path():
    """The nvdisasm binary: GPUCONV_NVDISASM, the pip wheel, a CUDA toolkit, PATH; None if none is found."""
    candidates = []
    chosen = env_path(ENV_NVDISASM, "exe")  # a value that is no executable is a ValueError naming it
    if chosen:
        candidates.append(chosen)
    try:
        import nvidia

        for base in getattr(nvidia, "__path__", []):
            for sub in ("cu13", "cuda_nvdisasm", "cu12"):  # the wheel's layouts for CUDA 13 and 12
                candidates.append(os.path.join(base, sub, "bin", "nvdisasm"))
    except ImportError:
        pass
    for var in ("CUDA_PATH", "CUDA_HOME"):
        if os.environ.get(var):
            candidates.append(os.path.join(os.environ[var], "bin", "nvdisasm"))
    on_path = shutil.which("nvdisasm")
    if on_path:
        candidates.append(on_path)
    candidates.append("/usr/local/cuda/bin/nvdisasm")
    return next((c for c in candidates if os.path.isfile(c) and os.access(c, os.X_OK)), None)


def unavailable_reason():
    """None if kernels can be compiled and disassembled here, else why not (and what to install)."""
    reason = nvrtc.unavailable_reason()
    if reason is not None:
        return reason
    if nvdisasm_path() is None:
        return f"nvdisasm not found ({INSTALL_HINT})"
    return None


_version_cache: dict = {}


def nvdisasm_version() -> tuple:
    """(major, minor) of the nvdisasm found, e.g. (13, 5)."""
    path = nvdisasm_path()
    if path not in _version_cache:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, check=False).stdout
        m = re.search(r"release (\d+)\.(\d+)", out)
        _version_cache[path] = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    return _version_cache[path]


def disassembles(arch: str) -> bool:
    """Whether this nvdisasm reads cubins for ``arch`` (nvdisasm 13 starts at sm_75)."""
    sm = int(re.fullmatch(r"sm_(\d+)a?", arch).group(1))
    return not (nvdisasm_version()[0] >= 13 and sm < 75)


def disassemble(cubin: bytes, arch: str = "") -> str:
    """nvdisasm's listing of a cubin's code sections."""
    path = nvdisasm_path()
    if path is None:
        raise NvdisasmError(f"nvdisasm not found ({INSTALL_HINT})")
    with tempfile.TemporaryDirectory(prefix="gpuconv-sass-") as d:
        f = Path(d) / "kernel.cubin"
        f.write_bytes(cubin)
        r = subprocess.run([path, "--print-code", "--no-dataflow", str(f)], capture_output=True, text=True,
                           check=False)
    if r.returncode != 0:
        err = (r.stderr or r.stdout).strip()
        cls = ArchUnsupported if "deprecated" in err or "not supported" in err else NvdisasmError
        raise cls(f"nvdisasm {nvdisasm_version()[0]}.{nvdisasm_version()[1]} cannot disassemble the "
                  f"{arch or 'given'} cubin: {err}")
    return r.stdout


_FUNCTION = re.compile(r"^\.text\.(\S+):\s*$")
_LABEL = re.compile(r"^(\.L_x_\d+):\s*$")
_INSTRUCTION = re.compile(r"^\s*/\*([0-9a-f]+)\*/\s+(@!?U?P(?:T|\d+)\s+)?([A-Z][A-Z0-9_.]*(?:x[0-9A-Z_.x]+)?)\s*(.*?)\s*;")
_TARGET = re.compile(r"\.L_x_\d+")


def parse_sass(text: str) -> dict:
    """{mangled function name: (instructions, {label: offset of the instruction after it})}."""
    functions = {}
    instrs = labels = pending = None
    for line in text.splitlines():
        m = _FUNCTION.match(line)
        if m:
            instrs, labels, pending = [], {}, []
            functions[m.group(1)] = (instrs, labels)
            continue
        if instrs is None:
            continue
        m = _LABEL.match(line)
        if m:
            pending.append(m.group(1))
            continue
        m = _INSTRUCTION.match(line)
        if m:
            offset = int(m.group(1), 16)
            for label in pending:
                labels[label] = offset
            pending.clear()
            instrs.append(Instruction(offset, (m.group(2) or "").strip(), m.group(3), m.group(4)))
    return functions


def instruction_class(opcode: str) -> str:
    """The opcode's first word: "LDS.U.128" -> "LDS", "BAR.SYNC.DEFER_BLOCKING" -> "BAR"."""
    return opcode.split(".", 1)[0]


def hmma_precision(opcode: str):
    """The input precision of an HMMA or HGMMA opcode: "tf32", "bf16", "fp16" (F32 or F16 accumulation), else
    None."""
    if instruction_class(opcode) not in ("HMMA", "HGMMA"):
        return None
    mods = opcode.split(".")[1:]
    if "TF32" in mods:
        return "tf32"
    if "BF16" in mods:
        return "bf16"
    return "fp16" if mods and mods[-1] in ("F16", "F32") else None


def _executed(instrs):
    return [i for i in instrs if i.predicate != "@!PT"]


def loops(instrs, labels) -> list:
    """Every loop, from the backward branches: one Loop per branch target (ending at its last branch)."""
    ends = {}
    for i in instrs:
        if not i.opcode.startswith("BRA"):
            continue
        for label in _TARGET.findall(i.operands):
            target = labels.get(label)
            if target is not None and target <= i.offset:
                ends[target] = max(ends.get(target, target), i.offset)
    return sorted(Loop(start, end) for start, end in ends.items())


def _inside(instrs, loop):
    return [i for i in instrs if loop.start <= i.offset <= loop.end]


def main_loop(instrs, labels):
    """The innermost loop that holds math, or None: of several, the one with the most tensor-core math (HMMA,
    HGMMA: a kernel's slow exact path may unroll more FFMA than its GEMM issues HGMMA), then the most math."""
    found = loops(instrs, labels)
    classes = {lp: [instruction_class(i.opcode) for i in _executed(_inside(instrs, lp))] for lp in found}
    math = {lp: sum(c in MATH for c in cs) for lp, cs in classes.items()}
    tensor = {lp: sum(c in ("HMMA", "HGMMA") for c in cs) for lp, cs in classes.items()}
    with_math = [lp for lp in found if math[lp]]
    innermost = [lp for lp in with_math
                 if not any(o != lp and lp.start <= o.start and o.end <= lp.end for o in with_math)]
    return max(innermost, key=lambda lp: (tensor[lp], math[lp], lp.end - lp.start), default=None)


def _class_counts(instrs) -> dict:
    counts = Counter(instruction_class(i.opcode) for i in _executed(instrs))
    return {c: counts.get(c, 0) for c in CLASSES}


def analyze(instrs, labels, kernel: str, arch: str) -> KernelSass:
    """The instruction mix of one function's SASS."""
    hmma = Counter(re.sub(r"\.STEP\d+$", "", i.opcode) for i in _executed(instrs)
                   if instruction_class(i.opcode) in ("HMMA", "HGMMA"))
    loop = main_loop(instrs, labels)
    body = _executed(_inside(instrs, loop)) if loop else []
    return KernelSass(kernel, arch, _class_counts(instrs), dict(sorted(hmma.items())), loop,
                      _class_counts(body) if loop else {}, dict(sorted(Counter(i.opcode for i in body).items())))


_cache: dict = {}


def kernel_sass(filename, arch: str) -> list:
    """One KernelSass per kernel of a kernel file (name in kernels/ or absolute path) for ``arch``.

    Cached per process on the file's text (the compile itself is nvrtc.compile_program's). Raises
    ArchUnsupported where this nvdisasm cannot read ``arch``.
    """
    if not disassembles(arch):
        v = nvdisasm_version()
        raise ArchUnsupported(f"nvdisasm {v[0]}.{v[1]} does not read {arch} cubins (it starts at sm_75)")
    path = kernel_path(filename)
    key = (str(path), path.read_text(), arch)
    if key not in _cache:
        compiled = nvrtc.compile_program(str(path), arch)
        rows = []
        for mangled, (instrs, labels) in sorted(parse_sass(disassemble(compiled.cubin, arch)).items()):
            rows.append(analyze(instrs, labels, compiled.lowered.get(mangled, mangled), arch))
        _cache[key] = sorted(rows, key=lambda r: r.kernel)
    return _cache[key]


def sass_table(files=None, arches=nvrtc.ARCHES) -> tuple:
    """(rows (file, KernelSass), skipped {arch: why}) for every kernel file (default: kernels/*.cu)."""
    files = kernel_files() if files is None else [kernel_path(f) for f in files]
    readable = [a for a in arches if disassembles(a)]
    skipped = {a: f"nvdisasm {'.'.join(map(str, nvdisasm_version()))} does not read {a} cubins"
               for a in arches if a not in readable}
    rows = []
    for f in files:
        mine = nvrtc.file_arches(f, readable)
        per_file = [row for arch in mine for row in kernel_sass(str(f), arch)]
        order = {arch: i for i, arch in enumerate(mine)}
        per_file.sort(key=lambda r: (r.kernel, order[r.arch]))
        rows += [(Path(f).name, row) for row in per_file]
    return rows, skipped


def _hmma_text(hmma: dict) -> str:
    return " ".join(f"{name.removeprefix('HMMA.')}:{n}" for name, n in hmma.items()) or "-"  # HGMMA keeps its name


def _loop_text(r: KernelSass) -> str:
    if r.loop is None:
        return "-"
    ratio = r.loop_ratio
    return f"{r.loop_math}:{r.loop_shared_loads}" + (f" = {ratio:.1f}" if ratio is not None else "")


def format_sass_table(files=None, arches=nvrtc.ARCHES) -> str:
    """The instruction-mix table as text (what `gpuconv info --kernels --sass` prints)."""
    reason = unavailable_reason()
    if reason is not None:
        return f"kernel SASS: unavailable ({reason})"
    rows, skipped = sass_table(files, arches)
    if not rows:
        return "kernel SASS: no kernel files (*.cu) found in " + " or ".join(str(d) for d in kernel_dirs())
    counted = [c for c in CLASSES if c != "HMMA"]
    header = ("file", "kernel", "arch", "HMMA", *counted, "loop math:smem ld")
    body = [(f, r.kernel, r.arch, _hmma_text(r.hmma), *(str(r.counts[c]) for c in counted), _loop_text(r))
            for f, r in rows]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    numeric = set(range(4, 4 + len(counted)))

    def fmt(row):
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))

    major, minor = nvrtc.version()
    v = nvdisasm_version()
    title = (f"kernel SASS (NVRTC {major}.{minor}, nvdisasm {v[0]}.{v[1]}): instructions in the code; the main "
             "loop's math (HMMA+FFMA+DFMA) per shared load (LDS+LDSM)")
    lines = [title, fmt(header), fmt(["-" * w for w in widths])]
    lines += [fmt(row) for row in body]
    lines += [f"{arch}: not disassembled ({why}); its local memory shows in the resource table's stack and spills"
              for arch, why in skipped.items()]
    return "\n".join(line.rstrip() for line in lines)
