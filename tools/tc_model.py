"""Predicted times of the tensor-core kernels on an H100 SXM, from their SASS and their launch plans (no GPU).

    python tools/tc_model.py                 markdown table: the ResNet-50 batch-64 layers, every mode
    python tools/tc_model.py --shape rn50-3x3-28 --detail
    python tools/tc_model.py --wgmma         the forward and dx on the wgmma kernels (GPUCONV_WGMMA=1)
    python tools/tc_model.py --sass          the kernels' main loops and registers (docs/performance.md's table)

The model (docs/performance.md says why each term is there; the first GPU run tests it):
- Per SM and clock: 4 warp instructions issued, 128 bytes of shared memory moved, and 2048 (FP16, BF16) or
  1024 (TF32) dense tensor FMAs, of which mma.sync reaches MMA_SYNC_EFFICIENCY (Hopper's full rate needs
  wgmma).
- One reduction step of a block costs max(issue, shared memory, tensor, L2) clocks: issue = warps x the main
  loop's instructions / 4; shared memory = (warps x the loop's LDSM / LDS bytes + the stage's bytes copied
  in) / 128; tensor = warps x the loop's HMMA FMAs / rate; L2 = 132 SMs x the stage's bytes from L2 /
  L2_BYTES_PER_CLOCK (all SMs copying their stages at once). Instruction and load counts come from nvdisasm
  of the NVRTC cubin for sm_90 (gpuconv.cuda.sass), the main loop only.
- The activation copies (x of the forward and dw, dz of dx) are cp.async.ca: L1 serves the pixels that the
  other taps re-read, and the L2 term counts only what an LRU simulation of one block's copies in its share
  of L1 misses (activation_l2_fraction; the shares and carve-outs are assumptions, see L1_SMEM_KB).
- A launch takes ceil(blocks / SMs) x steps x step clocks (each SM works through its share of blocks at full
  throughput; the last, partial round of blocks is what the ceiling charges), plus LAUNCH_US; never less than
  its minimum DRAM traffic at the HBM bandwidth. Small kernels (the NaN/Inf flag, the split sum, the
  activation gradient) are charged their bytes at the bandwidth plus LAUNCH_US. Strict FP32 (the SIMT
  kernels) is a row at the rates measured on an H100, not a model.
- The wgmma forward and dx (--wgmma; kernels/conv_wgmma_*.cu, sm_90a SASS): the same four bounds, its tensor
  term at WGMMA_EFFICIENCY of the dense rate, its shared-memory term every HGMMA's operand bytes (A 64 x 16 and B
  16 x 128 elements, both read from shared memory by the tensor cores) plus the stage's copies; one warpgroup's
  HGMMA (each warp's SASS shows the warpgroup's instruction) count once.
What it leaves out: pipeline bubbles (4 stages are meant to hide the copies), L2 misses on the re-read tiles,
the epilogue, and clocks below boost under load. Expect measured times above these.
"""
from __future__ import annotations

import argparse
import math
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpuconv import _benchdata as bd
from gpuconv._config import make_config
from gpuconv.backends import cuda_tc
from gpuconv.cuda import nvrtc, sass

SMS, CLOCK_GHZ = 132, 1.83          # H100 SXM (the clock its dense peaks are quoted at)
HBM_TBS = 3.35                      # H100 SXM; an H200 has 4.8
ISSUE_PER_CLOCK, SMEM_BYTES_PER_CLOCK = 4, 128
DENSE_FMA_PER_CLOCK = {"fp16": 2048, "bf16": 2048, "tf32": 1024}
MMA_SYNC_EFFICIENCY = 0.65          # mma.sync's share of Hopper's dense tensor rate (assumed)
WGMMA_EFFICIENCY = 0.9              # wgmma's (assumed: CUTLASS's Hopper GEMMs reach ~80-90% of the peak)
# L2 -> SM bandwidth, bytes a clock for the whole GPU: A100's published 5120 B/clk, assumed unchanged on H100
# (NVIDIA publishes no H100 figure; 9.4 TB/s at 1.83 GHz). The filter's copies and dw's dz bypass L1
# (cp.async.cg): all of their bytes come from L2; of the activation copies, what L1 misses (below).
L2_BYTES_PER_CLOCK = 5120
LAUNCH_US = 2.0                     # back-to-back launch gap on the GPU
# L1 for the activation copies (cp.async.ca, kernels/gpuconv_tc.cuh gpuconv_tc_copy16_cached): an H100 SM has
# 256 KB of L1 + shared memory, shared memory carved out in these sizes (KB; the driver takes the smallest that
# holds the blocks an SM runs, each with 1 KB reserved), the rest L1, shared evenly by the SM's blocks; 128-byte
# lines of 32-byte sectors, least recently used out first (assumed: NVIDIA documents neither the policy nor
# how blocks share L1).
L1_SMEM_KB, CARVEOUTS_KB = 256, (0, 8, 16, 32, 64, 100, 132, 164, 196, 228)
SMEM_RESERVED, REGS_PER_SM, MAX_THREADS_PER_SM = 1024, 65536, 2048
LINE, SECTOR = 128, 32
SIMT_FP16_DX_TFLOPS = 1.55          # the SIMT direct dx kernel, measured on the batch-8 stem (H100)
# strict FP32 (the SIMT kernels): the rates measured on an H100 for the resnet layer, forward and dx + dw
# (docs/gpu-results/2026-11-26-h100-final.txt); a row at that rate, not a model
SIMT_FP32_TFLOPS = {"fwd": 19.0, "bwd": 12.3}
FP32_PEAK_TFLOPS = 67.0             # H100 SXM, CUDA cores
HMMA_FMA = {"HMMA.16816": 2048, "HMMA.1688": 1024, "HMMA.1684": 512}
SMEM_LOAD_BYTES = {"LDSM.16.M88.4": 512, "LDSM.16.MT88.4": 512, "LDS": 128, "LDS.64": 256, "LDS.128": 512,
                   "LDS.U16": 64}
MODES = {"tf32": (np.dtype(np.float32), "tf32"), "fp16": (np.dtype(np.float16), "highest"),
         "bf16": (cuda_tc.BFLOAT16, "highest")}
DEFAULT_SHAPES = [n for n in bd.SHAPE_NAMES if n.startswith("rn50-")]


def dense_tflops(mode: str) -> float:
    """The dense tensor-core peak of the model's GPU (989 FP16/BF16, 495 TF32 TFLOP/s: an H100 SXM)."""
    return 2 * DENSE_FMA_PER_CLOCK[mode] * SMS * CLOCK_GHZ / 1e3


def _arch(file: str) -> str:
    """The H100 target a kernel file is built for there: sm_90a for the wgmma file, else sm_90."""
    return nvrtc.file_arches(nvrtc.kernel_path(file), ("sm_90",))[0]


def _loop(expr: str, file: str) -> dict:
    rows = {r.kernel: r for r in sass.kernel_sass(file, _arch(file))}
    return rows[expr].loop_opcodes


def _registers(expr: str, file: str) -> int:
    return next(r.registers for r in nvrtc.compile_report(file, _arch(file)) if r.kernel == expr)


def _is_gemm(launch) -> bool:
    return launch.kernel.startswith(("gpuconv_tc_", "gpuconv_wgmma_"))


def _is_wgmma(launch) -> bool:
    return launch.kernel.startswith("gpuconv_wgmma_")


def _as_tc(launch):
    """A wgmma launch as the mma.sync launch of its tile, for what they share: the copies (L1 simulation), the
    reduction steps."""
    if not _is_wgmma(launch):
        return launch
    return launch._replace(kernel=launch.kernel.replace("gpuconv_wgmma_", "gpuconv_tc_"),
                           template=(*cuda_tc.WGMMA_TILE, cuda_tc.WGMMA_STAGES, True))


def _steps_a_trip(ops: dict) -> int:
    """Reduction steps in one trip of a main loop (its opcode counts): a wgmma step is 4 HGMMA (2 row halves x 2
    k steps), and the TF32 register-A loops run two steps a trip (their two register sets); an mma.sync loop,
    one."""
    return sum(n for op, n in ops.items() if op.startswith("HGMMA.")) // 4 or 1


def _hgmma_fma_and_bytes(opcode: str, size: int) -> tuple:
    """(FMAs, shared bytes read) of one HGMMA.MxNxK opcode with both operands in shared memory. The TF32
    kernels' A (forward and dx) comes from registers, which their LDS load from shared memory: the same bytes,
    counted here."""
    m, n, k = (int(v) for v in opcode.split(".")[1].split("x"))
    return m * n * k, (m * k + k * n) * size


def blocks_per_sm(launch, dtype) -> int:
    """Blocks of a launch an H100 SM holds at once: by registers (allocated 256 a warp), shared memory and
    threads."""
    expr = cuda_tc.name_expression(launch.kernel, dtype, launch.template)
    warps = launch.block[0] // 32
    regs = warps * math.ceil(_registers(expr, launch.file) * 32 / 256) * 256
    smem = launch.shared_mem + SMEM_RESERVED
    return max(1, min(REGS_PER_SM // regs, CARVEOUTS_KB[-1] * 1024 // smem, MAX_THREADS_PER_SM // launch.block[0]))


def l1_bytes_per_block(launch, dtype) -> int:
    blocks = blocks_per_sm(launch, dtype)
    need = blocks * (launch.shared_mem + SMEM_RESERVED)
    carve = next(kb for kb in CARVEOUTS_KB if kb * 1024 >= need)
    return (L1_SMEM_KB - carve) * 1024 // blocks


def _activation_chunks(launch, cfg, dtype):
    """Per reduction step of the launch's middle row block, the byte offsets of the 16-byte activation chunks
    its A loader copies (x for the forward, dz for dx; group 0), as the kernels' VEC loaders compute them."""
    size = np.dtype(dtype).itemsize
    bm = launch.template[0]
    bk, vec = cuda_tc.TC_BYTES_K // size, 16 // size
    rows = (launch.grid[0] // 2) * bm + np.arange(bm)
    ks = np.arange(0, bk, vec)
    if launch.kernel == "gpuconv_tc_fwd":
        rows = rows[rows < cfg.n * cfg.oh * cfg.ow]
        b, rem = np.divmod(rows, cfg.oh * cfg.ow)
        oi, oj = np.divmod(rem, cfg.ow)
        ih0, iw0 = oi * cfg.s1 - cfg.pt, oj * cfg.s2 - cfg.pl
        taps = cfg.kh * cfg.kw
        for kt in range(_steps(launch, cfg, dtype)):
            if cfg.cg % bk == 0:  # taps inside each block of bk channels
                k1, k2 = divmod(kt % taps, cfg.kw)
                n = kt // taps * bk + ks
            else:  # the reduction index's order (k1, k2, n)
                k1, r = np.divmod(kt * bk + ks, cfg.kw * cfg.cg)
                k2, n = np.divmod(r, cfg.cg)
            ih, iw = ih0[:, None] + k1 * cfg.d1, iw0[:, None] + k2 * cfg.d2
            ok = (k1 < cfg.kh) & (ih >= 0) & (ih < cfg.h) & (iw >= 0) & (iw < cfg.w)
            at = (((b[:, None] * cfg.h + ih) * cfg.w + iw) * cfg.c + n) * size
            yield at[np.broadcast_to(ok, at.shape)]
    else:
        (_, hp_, qh0, _, wp_, qw0, _, _, t1, k1b, k1i, _, _, t2, k2b, k2i) = (int(v) for v in launch.scalars[16:32])
        rows = rows[rows < cfg.n * hp_ * wp_]
        b, rem = np.divmod(rows, hp_ * wp_)
        hp, wp = np.divmod(rem, wp_)
        for kt in range(_steps(launch, cfg, dtype)):  # taps inside each block of bk output channels
            i1, i2 = divmod(kt % (t1 * t2), t2)
            mm = kt // (t1 * t2) * bk + ks
            oi = (qh0 + hp)[:, None] - (k1b + i1 * k1i)
            oj = (qw0 + wp)[:, None] - (k2b + i2 * k2i)
            ok = (oi >= 0) & (oi < cfg.oh) & (oj >= 0) & (oj < cfg.ow)
            at = (((b[:, None] * cfg.oh + oi) * cfg.ow + oj) * cfg.m + mm) * size
            yield at[np.broadcast_to(ok, at.shape)]


DW_TILES_SIMULATED, DW_STEPS_SIMULATED = 8, 32  # dw: row tiles (spread over the filter) and steps of each


def _dw_activation_chunks(launch, cfg, dtype):
    """dw's A copies (x), per reduction step, as its VEC loader computes them: for up to DW_TILES_SIMULATED row
    tiles of the first split (each a block of its own, so each starts with an empty L1: yielded as None
    first), the first DW_STEPS_SIMULATED steps. A tile's rows are taps x channels; where Cg < BM they hold
    several taps, whose copies in one step are the same pixels shifted by a tap."""
    size = np.dtype(dtype).itemsize
    bm = launch.template[0]
    bk, vec = cuda_tc.TC_BYTES_K // size, 16 // size
    k = cfg.kh * cfg.kw * cfg.cg
    chunk = int(launch.scalars[-1])
    for rt in sorted({int(v) for v in np.linspace(0, launch.grid[0] - 1, DW_TILES_SIMULATED)}):
        yield None
        r = rt * bm + np.arange(0, bm, vec)
        r = r[r < k]
        kk, n = np.divmod(r, cfg.cg)
        k1, k2 = np.divmod(kk, cfg.kw)
        for kt in range(min(DW_STEPS_SIMULATED, math.ceil(chunk / bk))):
            p = kt * bk + np.arange(bk)
            p = p[p < min(chunk, cfg.n * cfg.oh * cfg.ow)]
            b, rem = np.divmod(p, cfg.oh * cfg.ow)
            oi, oj = np.divmod(rem, cfg.ow)
            ih = (oi * cfg.s1 - cfg.pt)[:, None] + k1 * cfg.d1
            iw = (oj * cfg.s2 - cfg.pl)[:, None] + k2 * cfg.d2
            ok = (ih >= 0) & (ih < cfg.h) & (iw >= 0) & (iw < cfg.w)
            at = (((b[:, None] * cfg.h + ih) * cfg.w + iw) * cfg.c + n) * size
            yield at[ok]


def activation_l2_fraction(launch, cfg, dtype, l1_bytes=None) -> float:
    """The share of a launch's activation copy bytes that L1 misses (and L2 serves), 1.0 where the copies are not
    cached (the generic variants): an LRU simulation of the A copies (the forward's and dx's middle row block,
    dw's row tiles: _dw_activation_chunks) in a block's share of L1 (l1_bytes; default l1_bytes_per_block), a
    miss fetching the chunk's 32-byte sector. The copies of one step are in flight together: a sector that an
    earlier copy of the step fetched counts as a hit (assumed: that L1 merges a miss with one in flight)."""
    if not launch.template[3]:  # VEC
        return 1.0
    lines = (l1_bytes_per_block(launch, dtype) if l1_bytes is None else l1_bytes) // LINE
    dw = launch.kernel == "gpuconv_tc_bwd_weight"
    cache: OrderedDict = OrderedDict()
    copied = missed = 0
    for chunks in (_dw_activation_chunks if dw else _activation_chunks)(launch, cfg, dtype):
        if chunks is None:  # another block: an L1 of its own
            cache.clear()
            continue
        copied += 16 * chunks.size
        for sector in (chunks // SECTOR).tolist():
            line = sector // (LINE // SECTOR)
            held = cache.get(line)
            if held is None:
                held = cache[line] = set()
                if len(cache) > lines:
                    cache.popitem(last=False)
            else:
                cache.move_to_end(line)
            if sector not in held:
                held.add(sector)
                missed += SECTOR
    return min(1.0, missed / copied) if copied else 1.0


def _step_clocks(launch, cfg, dtype, mode: str) -> tuple:
    """(clocks of one reduction step of one block, which bound binds) from the kernel's sm_90 main loop."""
    expr = cuda_tc.name_expression(launch.kernel, dtype, launch.template)
    ops = _loop(expr, launch.file)
    warps = launch.block[0] // 32
    instructions = sum(ops.values())
    size = np.dtype(dtype).itemsize
    if _is_wgmma(launch):  # per warpgroup (the block): its HGMMA once, not once a warp
        hgmma = [(_hgmma_fma_and_bytes(op, size), n) for op, n in ops.items() if op.startswith("HGMMA.")]
        fma, reads, rate = sum(f * n for (f, _), n in hgmma), sum(b * n for (_, b), n in hgmma), WGMMA_EFFICIENCY
        trip = _steps_a_trip(ops)
        instructions, fma, reads = instructions / trip, fma / trip, reads / trip
        bm, bn = cuda_tc.WGMMA_TILE
    else:
        reads = warps * sum(n * SMEM_LOAD_BYTES.get(op, 0) for op, n in ops.items())
        fma = warps * sum(n * f for op, n in ops.items() for prefix, f in HMMA_FMA.items()
                          if op.startswith(prefix + "."))
        rate = MMA_SYNC_EFFICIENCY
        bm, bn = launch.template[:2]
    bk = cuda_tc.TC_BYTES_K // size
    a_in, b_in = (rows * bk * size for rows in (bm, bn))
    l1 = l1_bytes_per_block(launch, dtype)  # the real kernel's blocks an SM share its L1
    from_l2 = a_in * activation_l2_fraction(_as_tc(launch), cfg, dtype, l1) + b_in
    bounds = {"issue": warps * instructions / ISSUE_PER_CLOCK,
              "smem": (reads + a_in + b_in) / SMEM_BYTES_PER_CLOCK,
              "tensor": fma / (DENSE_FMA_PER_CLOCK[mode] * rate),
              "L2": SMS * from_l2 / L2_BYTES_PER_CLOCK}  # every SM copying its stage at once
    which = max(bounds, key=bounds.get)
    return bounds[which], which


def _steps(launch, cfg, dtype) -> int:
    bk = cuda_tc.TC_BYTES_K // np.dtype(dtype).itemsize
    launch = _as_tc(launch)
    if launch.kernel == "gpuconv_tc_fwd":
        return math.ceil(cfg.kh * cfg.kw * cfg.cg / bk)
    if launch.kernel == "gpuconv_tc_bwd_input":
        phase = [int(v) for v in launch.scalars[16:32]]
        return math.ceil(phase[8] * phase[13] * cfg.mg / bk)  # T1 * T2 taps x Mg
    return math.ceil(int(launch.scalars[-1]) / bk)  # dw: one split of `chunk` pixels


def _bytes_us(nbytes: float) -> float:
    return nbytes / (HBM_TBS * 1e12) * 1e6


def launch_us(launch, cfg, dtype, mode: str) -> tuple:
    """(microseconds, what bounds it) of one launch."""
    size = np.dtype(dtype).itemsize
    if not _is_gemm(launch):
        if launch.kernel == "gpuconv_sum_partials":
            return LAUNCH_US + _bytes_us(4 * launch.scalars[0] * (launch.scalars[1] + 1)), "memory"
        if launch.kernel == "gpuconv_nonfinite_flag":
            return LAUNCH_US + _bytes_us(size * int(launch.scalars[0])), "memory"
        if launch.kernel == cuda_tc.TF32_DX_FILTER_KERNEL:  # the flag's read of w, and its rounded copy written
            return LAUNCH_US + _bytes_us(2 * size * int(launch.scalars[0])), "memory"
        if launch.kernel == cuda_tc.TF32_FILTER_KERNEL:  # w read, its transposed copy written
            return LAUNCH_US + _bytes_us(2 * size * int(launch.scalars[0]) * int(launch.scalars[1])), "memory"
        raise ValueError(f"no model for {launch.kernel}")
    clocks, which = _step_clocks(launch, cfg, dtype, mode)
    blocks = launch.grid[0] * launch.grid[1] * launch.grid[2]
    compute = math.ceil(blocks / SMS) * _steps(launch, cfg, dtype) * clocks / (CLOCK_GHZ * 1e3)
    return LAUNCH_US + compute, which


def operation_us(cfg, mode: str, op: str, wgmma: bool = False) -> tuple:
    """(microseconds, bounds, path) of the forward, dx or dw of a layer in a mode, with its DRAM floor; wgmma:
    the forward's and dx's plans with the wgmma kernels allowed."""
    dtype, precision = MODES[mode]
    size = dtype.itemsize
    x = cfg.n * cfg.h * cfg.w * cfg.c
    w = cfg.kh * cfg.kw * cfg.cg * cfg.m
    y = cfg.n * cfg.oh * cfg.ow * cfg.m
    # the C = 3 stem's forward and dw run on x (and w) padded to whole 16-byte runs: one pass that reads x and
    # writes the padded copy, and the kernels of the padded layer
    channels = cuda_tc.padded_channels(cfg, dtype, precision, 90) if op != "dx" else None
    tc_cfg = cuda_tc.with_channels(cfg, channels)
    pad = 0.0 if channels is None else LAUNCH_US + _bytes_us(size * (x + x // cfg.c * channels))
    if op == "fwd":
        plan = cuda_tc.forward_plan(tc_cfg, dtype, precision, 90, "relu", True, wgmma=wgmma)
        floor = _bytes_us(size * (x + w + y))
    elif op == "dx":  # the relu backward: dz from its pass, stored rounded to TF32 in tf32 (DZ_TF32)
        plan = cuda_tc.backward_input_plan(cfg, dtype, precision, 90, w, dz_tf32=True, wgmma=wgmma)
        floor = _bytes_us(size * (y + w + x))
    else:
        plan = cuda_tc.backward_weight_plan(tc_cfg, dtype, precision, 90, dz_tf32=True)
        floor = _bytes_us(size * (y + x) + 4 * w)
    if plan is None:  # the SIMT kernels (float16 dx of the 3-channel stem)
        return 2 * cfg.multiplications / (SIMT_FP16_DX_TFLOPS * 1e12) * 1e6, "SIMT", "SIMT direct"
    total, bounds = pad, []
    for launch in plan:
        t, which = launch_us(launch, tc_cfg, dtype, mode)
        total += t
        if _is_gemm(launch):
            bounds.append(which)
    tc = next(la for la in plan if _is_gemm(la))
    if _is_wgmma(tc):
        path = "wgmma {}x{}".format(*cuda_tc.WGMMA_TILE)
    else:
        path = f"{tc.template[0]}x{tc.template[1]}{'' if tc.template[3] else ' generic'}"
    if channels is not None:
        path += f" (C padded to {channels})"
    if floor > total:
        return floor, "memory", path
    return total, "/".join(sorted(set(bounds))), path


def table(shapes, detail: bool = False, wgmma: bool = False) -> str:
    peak = {m: dense_tflops(m) for m in MODES}
    out = [("| layer | GFLOP | mode | fwd us | dx us | dw us | relu dz + db us | fwd+bwd us | "
            "fwd TFLOP/s (% peak) | bound fwd / dx / dw | tiles fwd / dx / dw |"),
           "|---|---:|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for name in shapes:
        s = bd.SHAPES[name]
        cfg = make_config("model", s.x_shape, s.w_shape, stride=s.stride, padding=s.padding)
        gflop = 2 * cfg.multiplications / 1e9
        f, b = (gflop / SIMT_FP32_TFLOPS[k] * 1e3 for k in ("fwd", "bwd"))
        rate = SIMT_FP32_TFLOPS["fwd"]
        out.append(f"| {name} | {gflop:.1f} | fp32 | {f:.0f} | {b / 2:.0f} | {b / 2:.0f} | (fused) | "
                   f"{f + b:.0f} | {rate:.0f} ({100 * rate / FP32_PEAK_TFLOPS:.0f}%) | measured rate | SIMT |")
        for mode in MODES:
            if MODES[mode][0] is None:
                continue
            res = {op: operation_us(cfg, mode, op, wgmma) for op in ("fwd", "dx", "dw")}
            dz = LAUNCH_US + _bytes_us(3 * MODES[mode][0].itemsize * cfg.n * cfg.oh * cfg.ow * cfg.m)
            tot = sum(r[0] for r in res.values()) + dz
            tflops = gflop / res["fwd"][0] * 1e3
            out.append(f"| {name} | {gflop:.1f} | {mode} | {res['fwd'][0]:.0f} | {res['dx'][0]:.0f} | "
                       f"{res['dw'][0]:.0f} | {dz:.0f} | {tot:.0f} | "
                       f"{tflops:.0f} ({100 * tflops / peak[mode]:.0f}%) | "
                       f"{' / '.join(r[1] for r in res.values())} | "
                       f"{' / '.join(r[2] for r in res.values())} |")
    if detail:
        out.append("")
        out.append(f"model: {SMS} SMs at {CLOCK_GHZ} GHz, HBM {HBM_TBS} TB/s, mma.sync at "
                   f"{MMA_SYNC_EFFICIENCY:.0%} of the dense rate"
                   + (f" (wgmma at {WGMMA_EFFICIENCY:.0%})" if wgmma else "") + f", L2 {L2_BYTES_PER_CLOCK} B/clock, "
                   f"{LAUNCH_US} us per launch")
    return "\n".join(out)


SASS_FILES = (cuda_tc.TC_FORWARD_FILE, cuda_tc.TC_BACKWARD_FILE, cuda_tc.WGMMA_FORWARD_FILE,
              cuda_tc.WGMMA_BACKWARD_FILE)
DTYPES = {c: d for d, c in cuda_tc.TC_CTYPES.items()}  # the kernels' C types -> dtypes


def _template(expr: str) -> tuple:
    """(kernel, [template arguments]) of a name expression."""
    inner = expr[expr.index("<") + 1:expr.rindex(">")]
    return expr[:expr.index("<")], [a.strip() for a in inner.split(",")]


def sass_table() -> str:
    """The markdown table of the tensor-core GEMMs' main loops on the model's H100 (sm_90, sm_90a for the wgmma
    files), per warp and reduction step (a loop of two steps a trip, the TF32 wgmma ones', counted halved), with
    each kernel's registers on every architecture it is built for ("-": its mode has no tensor cores there, the
    body compiles empty) and the launch's dynamic shared memory."""
    out = [("| kernel (main loop, per warp and reduction step) | instructions | HMMA | LDSM | LDS | LD (generic) | "
            "LDGSTS | BAR | registers | dynamic smem (B) |"), "|---|---:|---|---:|---:|---:|---:|---:|---|---:|"]
    for file in SASS_FILES:
        arches = nvrtc.file_arches(nvrtc.kernel_path(file), nvrtc.ARCHES)
        regs = {a: {r.kernel: r.registers for r in nvrtc.compile_report(file, a)} for a in arches}
        for r in sass.kernel_sass(file, _arch(file)):
            if not r.kernel.startswith(("gpuconv_tc_", "gpuconv_wgmma_")):
                continue
            kernel, args = _template(r.kernel)
            dtype = DTYPES[args[0]]
            ops = r.loop_opcodes
            tensor = {op: n for op, n in ops.items() if op.startswith(("HMMA.", "HGMMA."))}
            steps = _steps_a_trip(ops)
            if kernel.startswith("gpuconv_wgmma_"):
                smem = cuda_tc.wgmma_smem_bytes(int(args[1]))
            else:
                smem = cuda_tc.smem_bytes(kernel, dtype, *(int(a) for a in args[1:4]))
            first = cuda_tc.TENSOR_CORE_ARCH[cuda_tc.mode(dtype, "tf32")]
            by_arch = " / ".join(f"{a} {regs[a][r.kernel]}" if int(a[3:5]) >= first else f"{a} -" for a in arches)
            counts = " | ".join(str(r.loop_counts[c] // steps) for c in ("LDSM", "LDS", "LD", "LDGSTS", "BAR"))
            hmma = ", ".join(f"{n // steps} x {op.removeprefix('HMMA.')}" for op, n in tensor.items())
            out.append(f"| `{r.kernel}` | {sum(ops.values()) // steps} | {hmma} | {counts} | {by_arch} | {smem} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", nargs="*", default=DEFAULT_SHAPES, help="shape names of gpuconv/_benchdata.py")
    ap.add_argument("--detail", action="store_true", help="print the model's constants under the table")
    ap.add_argument("--wgmma", action="store_true", help="the forward and dx on wgmma where it applies")
    ap.add_argument("--sass", action="store_true", help="instead: the table of the kernels' main loops (SASS)")
    args = ap.parse_args(argv)
    reason = sass.unavailable_reason()
    if reason:
        print(f"tc_model: needs SASS: {reason}", file=sys.stderr)
        return 1
    print(sass_table() if args.sass else table(args.shape, args.detail, args.wgmma))
    return 0


if __name__ == "__main__":
    sys.exit(main())
