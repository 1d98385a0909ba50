"""GPU checks for gpuconv's CUDA kernels (called by tools/gpu_check.sh), and the NVRTC resource table.

  python tools/gpu_check.py resources   registers / shared memory / spills per kernel and arch (no GPU needed)
  python tools/gpu_check.py accuracy    each kernel vs the NumPy float64 reference on the cupy backend
  python tools/gpu_check.py determinism dw / db bitwise-equal over repeated runs on the cupy backend
  python tools/gpu_check.py sanitize    one pass of every kernel, small shapes (run under compute-sanitizer)
  python tools/gpu_check.py bench       forward / backward timings of the benchmark shapes, next to cuDNN
"""
from __future__ import annotations

import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

ARCHES = ("sm_70", "sm_80", "sm_90")


def _fp16_include_dirs():
    """Folders holding cuda_fp16.h for NVRTC (it has no built-in copy)."""
    dirs = []
    for base in (os.environ.get("CUDA_PATH", ""), "/usr/local/cuda", "/usr/local/cuda-13.0", "/usr/local/cuda-12"):
        inc = os.path.join(base, "include")
        if base and os.path.exists(os.path.join(inc, "cuda_fp16.h")):
            dirs.append(inc)
    return dirs[:1]


def nvrtc_resources(arches=ARCHES):
    """[(file, kernel, arch, registers, shared bytes, spill stores, spill loads)] from ptxas -v through NVRTC."""
    from cuda.bindings import nvrtc

    from gpuconv.cuda.modules import registered_name_expressions

    kdir = os.path.join(ROOT, "kernels")
    rows = []
    for fname in sorted(f for f in os.listdir(kdir) if f.endswith(".cu")):
        text = open(os.path.join(kdir, fname)).read()
        src = text.encode()
        exprs = list(registered_name_expressions(text))
        for arch in arches:
            err, prog = nvrtc.nvrtcCreateProgram(src, fname.encode(), 0, [], [])
            for e in exprs:
                nvrtc.nvrtcAddNameExpression(prog, e.encode())
            opts = [f"-arch={arch}".encode(), b"-std=c++17", f"-I{kdir}".encode(), b"--ptxas-options=-v"]
            opts += [f"-I{d}".encode() for d in _fp16_include_dirs()]
            (res,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
            _, n = nvrtc.nvrtcGetProgramLogSize(prog)
            log = b" " * n
            nvrtc.nvrtcGetProgramLog(prog, log)
            log = log.decode(errors="replace")
            if res != nvrtc.nvrtcResult.NVRTC_SUCCESS:
                raise RuntimeError(f"NVRTC failed on {fname} for {arch}:\n{log}")
            lowered = {}
            for e in exprs:
                _, low = nvrtc.nvrtcGetLoweredName(prog, e.encode())
                lowered[low.decode()] = e
            for block in re.split(r"ptxas info\s*: Compiling entry function ", log)[1:]:
                mangled = block.split("'")[1]
                regs = re.search(r"Used (\d+) registers", block)
                smem = re.search(r"(\d+) bytes smem", block)
                spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", block)
                rows.append((fname, lowered.get(mangled, mangled), arch, int(regs.group(1)) if regs else -1,
                             int(smem.group(1)) if smem else 0, int(spill.group(1)), int(spill.group(2))))
    return rows


def print_resources():
    rows = nvrtc_resources()
    print(f"{'kernel':44s} {'arch':6s} {'regs':>5s} {'smem':>6s} {'spill st/ld':>12s}")
    for f, k, arch, regs, smem, ss, sl in rows:
        print(f"{k:44s} {arch:6s} {regs:5d} {smem:6d} {ss:5d}/{sl:<6d}")
    spills = [r for r in rows if r[5] or r[6]]
    print("spills:", "none" if not spills else spills)
    return 1 if spills else 0


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else "resources"
    sys.exit({"resources": print_resources}[cmd]())
