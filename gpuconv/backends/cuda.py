"""The CUDA backend: launch wrappers for the kernels in ``kernels/*.cu``, written once for both module kinds.

A ``CudaBackend`` is given a module kind ("cupy": cupy.RawModule on a GPU, "emulator": gpuconv's CPU emulator)
and the array module its arrays live in (cupy or numpy). It never knows which one runs the kernels: it gets
kernels from ``gpuconv.cuda.modules.get_module(kind, file)`` (each .cu file registers its template
instantiations, every dtype in one module) and launches them with ``kernel(grid, block, args)``, allocating with
``self.xp``.

Each wrapper does four things in order: allocate the output, take the launch plan (``gpuconv.backends._plans``:
pure functions of the config and dtype giving kernel, template arguments, grid, block and typed scalars), launch,
return. Contiguity is handled once, in ``_contiguous``. Compiled kernels are cached per device.

Limits: pixel counts (N*H*W, N*OH*OW) and the weight count (KH*KW*C/G*M) must be below 2**30, because the
kernels index pixels and weights in int32; element offsets (pixel * channels) are 64-bit, so x, y, dx may hold
far more than 2**31 elements. Larger problems are refused with a ValueError before anything is allocated.

Gradients of the weights and the bias are deterministic: partial sums over a fixed split of the N*OH*OW pixels
go to a workspace, and a second kernel adds the splits in order. No float atomics. The split depends on the
shape only (and, for dw, on ``gpuconv.set_workspace_limit`` when that is below 64 MiB), never on the device.

Paths: few channels per group (< SMALL_CHANNELS, e.g. depthwise) take direct kernels, the rest tiled implicit
GEMMs; dx runs one launch per stride phase, over only the taps that reach it (``_plans.stride_phases``).

Precision: forward, backward_input, backward_weight and backward take ``precision`` ("highest" or "tf32").
float16, bfloat16 and float32 with "tf32" run the tensor-core kernels of kernels/conv_tc_*.cu where the device
has them; their plans are ``gpuconv.backends.cuda_tc`` (pure functions of config, dtype, precision and arch,
tried before the SIMT plans). float32 with "highest" and float64 always take the SIMT kernels. bfloat16 has
only the tensor-core kernels (and three reductions), so it needs sm_80 on a GPU.
``math_path`` (what ``gpuconv info`` prints) and ``rounds_tf32`` say which path a dtype and precision take.
"""
from __future__ import annotations

import functools

import numpy as np

from .. import _registry
from . import _plans, cuda_tc
from ._plans import INDEX_LIMIT, check_limits


@functools.lru_cache(maxsize=None)
def _device_sms(cp, device_id: int) -> int:
    """The SM count of CUDA device ``device_id`` (asked once: a driver call per launch would cost microseconds)."""
    rt = cp.cuda.runtime
    return int(rt.deviceGetAttribute(rt.cudaDevAttrMultiProcessorCount, device_id))


def _contiguous(xp, *arrays):
    return tuple(None if a is None else xp.ascontiguousarray(a) for a in arrays)


def _has_kernels(dtype) -> bool:
    """Whether the kernels are instantiated for ``dtype`` (the registry's entries with kernels, and bfloat16,
    which has the tensor-core kernels; looked up by dtype, so that an optional package such as ml_dtypes is
    imported only for its own arrays)."""
    try:
        entry = _registry.dtype(dtype)
    except TypeError:
        return False
    return entry.kernels or entry.name == "bfloat16"


def _aligned16(*arrays) -> bool:
    """Whether every array's data starts on a 16-byte boundary (the tensor-core kernels' 16-byte copies)."""
    for a in arrays:
        if a is None:
            continue
        iface = getattr(a, "__cuda_array_interface__", None) or a.__array_interface__
        if iface["data"][0] % 16:
            return False
    return True


def _simt_dtype(dtype):
    """The dtype the SIMT plans are sized for in check_limits (bfloat16, which has none, as float32)."""
    return np.float32 if np.dtype(dtype).name == "bfloat16" else dtype


# Which modes of product run on tensor cores, and from which compute capability: gpuconv/backends/cuda_tc.py.
TENSOR_CORE_ARCH = cuda_tc.TENSOR_CORE_ARCH
TENSOR_CORE_MODES = cuda_tc.TENSOR_CORE_MODES
_mode = cuda_tc.mode
uses_tensor_cores = cuda_tc.uses_tensor_cores


_MODE_NAMES = {"tf32": "TF32", "float16": "FP16", "bfloat16": "BF16"}
DEFAULT_DYNAMIC_SHARED = 48 * 1024  # what a kernel may take without raising its attribute (every architecture)


def math_path(dtype, precision: str, arch, wgmma: bool = False) -> str:
    """Which units compute the products of ``dtype`` in ``precision`` on a device of compute capability
    ``arch`` (e.g. 90; None for the CPU emulator), in words, for ``gpuconv info``; wgmma: the wgmma kernels
    asked for (cuda_tc.WGMMA_ENV)."""
    dtype = np.dtype(dtype)
    if not _has_kernels(dtype):
        return f"no {dtype.name} kernels in this build (use backend='numpy')"
    mode = _mode(dtype, precision)
    where = f"GPU sm_{arch}" if arch is not None else "CPU emulator running the CUDA kernels"
    if uses_tensor_cores(dtype, precision, arch):
        return (f"{where}: tensor cores ({cuda_tc.instructions(arch, dtype, wgmma)}), "
                f"{_MODE_NAMES.get(mode, mode)} products, float32 accumulation")
    what = {"float32": "strict FP32", "float64": "FP64"}.get(dtype.name, f"{dtype.name} products in float32")
    text = f"{where}: CUDA cores, {what}"
    if mode == "tf32":
        why = ("this build has no TF32 kernels" if mode not in TENSOR_CORE_MODES
               else f"sm_{arch} has no TF32 tensor cores (sm_80 and later have)")
        text += f"; tf32 asked for, but {why}: the results are the 'highest' ones"
    elif arch is not None and mode in TENSOR_CORE_ARCH and arch >= TENSOR_CORE_ARCH[mode]:
        text += f" (this GPU has {mode} tensor cores; this build does not use them)"
    return text


class CudaBackend:
    """The five operations of a convolution layer on gpuconv's CUDA kernels (GPU or emulator alike)."""

    def __init__(self, kind: str, xp, get_module=None, device_id=None):
        self.name = kind  # "cupy" or "emulator"
        self.kind = kind
        self.xp = xp
        # None: gpuconv.cuda.modules.get_module / device_id (tests may inject others)
        self._get_module = get_module
        self._device_id = device_id
        self._kernels: dict = {}  # (device, file, name expression) -> compiled function

    def __repr__(self) -> str:
        return f"CudaBackend({self.kind!r}, {self.xp.__name__})"

    def synchronize(self) -> None:
        """Wait for the kernels queued on the current stream (the emulator runs them synchronously)."""
        if self.xp is not np:
            self.xp.cuda.get_current_stream().synchronize()

    def to_host(self, a) -> np.ndarray:
        """``a`` as a host numpy array (cupy's asnumpy synchronizes the copy)."""
        return np.asarray(a) if self.xp is np else self.xp.asnumpy(a)

    def _arch(self):
        """The current CUDA device's compute capability (e.g. 90), None on the emulator."""
        return int(self.xp.cuda.Device().compute_capability) if self.kind == "cupy" else None

    def _wgmma(self):
        """Whether the forward and dx (FP16 / BF16 / TF32) may take the wgmma kernels (cuda_tc.WGMMA_ENV; sm_90
        only)."""
        return cuda_tc.wgmma_enabled()

    def _sms(self):
        """The current CUDA device's SM count (the tensor-core plans' rounds of blocks), None on the emulator."""
        return _device_sms(self.xp, self.xp.cuda.Device().id) if self.kind == "cupy" else None

    def math_path(self, dtype, precision: str) -> str:
        """``math_path`` on this backend's device."""
        return math_path(dtype, precision, self._arch(), self._wgmma())

    def rounds_tf32(self) -> bool:
        """Whether precision="tf32" really rounds float32 operands to TF32 here (else it runs strict FP32)."""
        return uses_tensor_cores(np.float32, "tf32", self._arch())

    def dtype_reason(self, dtype):
        """None if the kernels are built for ``dtype``, else why not (the public API raises it as a TypeError)."""
        if not _has_kernels(dtype):
            return (f"the {self.name} backend has no {np.dtype(dtype).name} kernels in this build; use "
                    f"backend='numpy', or one of {', '.join(d.name for d in _registry.kernel_dtypes())}")
        arch = self._arch()
        if np.dtype(dtype).name == "bfloat16" and not uses_tensor_cores(dtype, "highest", arch):
            return (f"the {self.name} backend runs bfloat16 on tensor cores only (sm_80 and later), and this GPU "
                    f"is sm_{arch}; use backend='numpy', or float16 / float32")
        return None

    def _kernel(self, launch, dtype):
        """The compiled function of ``launch`` for ``dtype`` on the current device (compiled on first use)."""
        device_id = self._device_id
        if device_id is None:
            from ..cuda.modules import device_id
        expr = cuda_tc.name_expression(launch.kernel, dtype, launch.template)
        file = cuda_tc.kernel_file(launch.file, dtype)
        key = (device_id(self.kind), file, expr)
        fn = self._kernels.get(key)
        if fn is None:
            get_module = self._get_module
            if get_module is None:
                from ..cuda.modules import get_module
            fn = get_module(self.kind, file).get_function(expr)
            # Past 48 KB, dynamic shared memory is opt-in per kernel; an instantiation's need is fixed (its tile).
            if launch.shared_mem > DEFAULT_DYNAMIC_SHARED:
                fn.max_dynamic_shared_size_bytes = launch.shared_mem
            self._kernels[key] = fn
        return fn

    def _run(self, launch, dtype, *arrays):
        self._kernel(launch, dtype)(launch.grid, launch.block, (*arrays, *launch.scalars),
                                    shared_mem=launch.shared_mem)

    # -- forward ------------------------------------------------------------------------------------------
    def forward(self, x, w, b, cfg, activation, precision="highest"):
        """y = act(conv(x, w) + b), one fused kernel (on tensor cores where ``cuda_tc.forward_plan`` says)."""
        check_limits(self.name, cfg, _simt_dtype(x.dtype))
        x, w, b = _contiguous(self.xp, x, w, b)
        y = self.xp.empty(cfg.y_shape, x.dtype)
        tc_cfg, xt, wt = self._pad_channels(cfg, x.dtype, precision, x, w)
        plan = cuda_tc.forward_plan(tc_cfg, x.dtype, precision, self._arch(), activation, b is not None,
                                    _aligned16(xt, wt), self._sms(), self._wgmma())
        if plan is not None:
            x, w = xt, wt
        for launch in plan or _plans.forward(cfg, activation, b is not None):
            if launch.kernel == cuda_tc.TF32_FILTER_KERNEL:  # the TF32 wgmma forward's w: transposed, rounded
                w_kmajor = self.xp.empty(w.size, w.dtype)
                self._run(launch, x.dtype, w, w_kmajor)
                w = w_kmajor
                continue
            self._run(launch, x.dtype, x, w, w if b is None else b, y)
        return y

    def _pad_channels(self, cfg, dtype, precision, x, w=None):
        """(config, x, w) of the tensor-core launches: x and w with zero channels appended where
        cuda_tc.padded_channels asks for them (the C = 3 stem), else as they are."""
        c = cuda_tc.padded_channels(cfg, dtype, precision, self._arch())
        if c is None:
            return cfg, x, w
        x = self.xp.pad(x, ((0, 0), (0, 0), (0, 0), (0, c - cfg.c)))
        if w is not None:
            w = self.xp.pad(w, ((0, 0), (0, 0), (0, c - cfg.c), (0, 0)))
        return cuda_tc.with_channels(cfg, c), x, w

    # -- backward -----------------------------------------------------------------------------------------
    def activation_backward(self, dy, y, activation, tf32=False):
        """dz = dy * act'(z) from the saved output y, elementwise (any shape). tf32 (float32 only): dz stored
        rounded to TF32, for the DZ_TF32 tensor-core kernels."""
        if not _registry.activation(activation, f"{self.name} backend").uses_output:
            return dy.copy()
        dy, y = _contiguous(self.xp, dy, y)
        dz = self.xp.empty(dy.shape, dy.dtype)
        for launch in _plans.activation_backward(dz.size, activation, tf32):
            self._run(launch, dy.dtype, dy, y, dz)
        return dz

    def backward_input(self, dz, w, cfg, precision="highest", b=None, activation="identity"):
        """dx: the transposed convolution of dz with w; with a bias b (C,) and an activation (conv2d_transpose)
        the kernels' epilogue computes act(dx + b) as they store."""
        return self.backward_input_fused(dz, None, w, cfg, "identity", b, activation, precision)

    def backward_weight(self, dz, x, cfg, precision="highest"):
        """dw: dz correlated with the input windows, summed over batch and pixels (deterministic)."""
        return self.backward_weight_fused(dz, None, x, cfg, "identity", precision)

    def backward_bias(self, dz):
        """db: dz summed over every axis but the last (deterministic)."""
        return self.backward_bias_fused(dz, None, "identity")

    def backward(self, dy, y, x, w, cfg, activation, has_bias=True, precision="highest", grads=("dx", "dw")):
        """(dx, dw, db) straight from dy and the saved output y: each SIMT gradient kernel applies the activation
        gradient as it loads, so dz = dy * act'(z) is never written to memory; the tensor-core kernels read a dz
        written once for both (with db, by db's pass). Only the gradients named in grads are computed (dx, dw;
        db where has_bias), the others are None."""
        want_dx, want_dw = "dx" in grads, "dw" in grads
        dz = db = None  # the tensor-core kernels read dz: computed once here for both (with db, in db's pass)
        # In TF32 that pass stores dz rounded to TF32 already, so that dx and dw take it as it is (DZ_TF32)
        tf32 = _mode(dy.dtype, precision) == "tf32"
        if ((want_dx or want_dw) and _registry.activation(activation, f"{self.name} backend").uses_output
                and uses_tensor_cores(dy.dtype, precision, self._arch())):
            if has_bias:
                dz = self.xp.empty(dy.shape, dy.dtype)
                db = self.backward_bias_fused(dy, y, activation, dz_out=dz, dz_tf32=tf32)
            else:
                dz = self.activation_backward(dy, y, activation, tf32)
        dx = dw = None  # (dz_tf32 counts only with a dz: the fused methods compute their own from dy otherwise)
        if want_dx:
            dx = self.backward_input_fused(dy, y, w, cfg, activation, precision=precision, dz=dz, dz_tf32=tf32)
        if want_dw:
            dw = self.backward_weight_fused(dy, y, x, cfg, activation, precision, dz, tf32)
        if has_bias and db is None:
            db = self.backward_bias_fused(dy, y, activation)
        return dx, dw, db

    def _dz(self, dy, y, activation, dz):
        """dz for the tensor-core kernels: dy itself for activations without a gradient factor, else the given
        dz or one gpuconv_act_bwd pass."""
        if not _registry.activation(activation, f"{self.name} backend").uses_output:
            return dy
        return self.activation_backward(dy, y, activation) if dz is None else self.xp.ascontiguousarray(dz)

    def backward_input_fused(self, dy, y, w, cfg, activation, b=None, out_activation="identity",
                             precision="highest", dz=None, dz_tf32=False):
        """dx from dy (and the saved output y unless activation is identity): one launch per stride phase.
        b and out_activation: the epilogue act(dx + b) of a transposed convolution. Tensor cores: from dz (the
        given one, or dy * act'(z) computed here); dz_tf32: the given dz holds TF32 values (backward's pass)."""
        check_limits(self.name, cfg, _simt_dtype(dy.dtype))
        dy, y, w, b = _contiguous(self.xp, dy, y, w, b)
        dx = self.xp.empty(cfg.x_shape, dy.dtype)
        tc = dict(has_bias=b is not None, out_activation=out_activation, sms=self._sms(),
                  dz_tf32=dz_tf32 and dz is not None, wgmma=self._wgmma())
        plan = cuda_tc.backward_input_plan(cfg, dy.dtype, precision, self._arch(), w.size, **tc)
        if plan is not None:
            dz = self._dz(dy, y, activation, dz)
            if not _aligned16(dz, w):  # the element loads, or (float16 with few channels) the SIMT kernels
                plan = cuda_tc.backward_input_plan(cfg, dy.dtype, precision, self._arch(), w.size, False, **tc)
        if plan is not None:
            # The first launch sets flag if w holds inf / NaN; the dx launches then sum only the taps that
            # reach an output pixel (the NaN rule), decided on the device without a host sync.
            flag = self.xp.zeros((1,), np.int32)
            if plan[0].kernel == cuda_tc.TF32_DX_FILTER_KERNEL:  # the TF32 wgmma dx's w: rounded, as it flags
                w_rounded = self.xp.empty(w.size, w.dtype)
                self._run(plan[0], dy.dtype, w, flag, w_rounded)
                w = w_rounded
            else:
                self._run(plan[0], dy.dtype, w, flag)
            for launch in plan[1:]:
                self._run(launch, dy.dtype, dz, w, flag, dx, w if b is None else b)
            return dx
        flag = None
        bias = w if b is None else b
        for launch in _plans.backward_input(cfg, activation, b is not None, out_activation):
            if launch.kernel == "gpuconv_nonfinite_flag":  # NaN/Inf in w, set and read on the device
                flag = self.xp.zeros(1, np.int32)
                self._run(launch, dy.dtype, w, flag)
            elif launch.kernel == "gpuconv_conv_bwd_input_exact":
                self._run(launch, dy.dtype, dy, dy if y is None else y, w, flag, dx, bias)
            else:
                self._run(launch, dy.dtype, dy, dy if y is None else y, w, dx, bias)
        return dx

    def backward_weight_fused(self, dy, y, x, cfg, activation, precision="highest", dz=None, dz_tf32=False):
        """dw from dy (and y), x: partial sums per split in a workspace, then the splits added in order
        (tensor cores: from dz, the given one or dy * act'(z) computed here; dz_tf32: the given dz holds TF32
        values)."""
        check_limits(self.name, cfg, _simt_dtype(dy.dtype))
        dy, y, x = _contiguous(self.xp, dy, y, x)
        if cuda_tc.backward_weight_plan(cfg, dy.dtype, precision, self._arch()) is not None:
            dz_tf32 = dz_tf32 and dz is not None  # only a given dz can hold TF32 values
            dz = self._dz(dy, y, activation, dz)
            tc_cfg, x, _ = self._pad_channels(cfg, dy.dtype, precision, x)
            partial, total = cuda_tc.backward_weight_plan(tc_cfg, dy.dtype, precision, self._arch(),
                                                          _aligned16(dz, x), dz_tf32=dz_tf32)
            ws = self.xp.empty(_plans.partials_shape(total), _registry.accumulator(dy.dtype))
            dw = self.xp.empty(tc_cfg.w_shape, dy.dtype)
            self._run(partial, dy.dtype, dz, x, ws)
            self._run(total, dy.dtype, ws, dw)
            return dw if tc_cfg is cfg else self.xp.ascontiguousarray(dw[:, :, :cfg.c])
        dw = self.xp.empty(cfg.w_shape, dy.dtype)
        partial, total = _plans.backward_weight(cfg, dy.dtype, activation)
        ws = self.xp.empty(_plans.partials_shape(total), _registry.dtype(dy.dtype).acc)
        self._run(partial, dy.dtype, dy, dy if y is None else y, x, ws)
        self._run(total, dy.dtype, ws, dw)
        return dw

    def backward_bias_fused(self, dy, y, activation, dz_out=None, dz_tf32=False):
        """db from dy (and y): column sums of the (P, M) view, split as for dw. dz_out (an array like dy): the
        same pass also stores dz = dy * act'(z) there, as activation_backward would (one read of dy and y for
        both); dz_tf32 (float32): rounded to TF32, as activation_backward(tf32=True). db sums the unrounded
        values either way."""
        m = dy.shape[-1]
        p = dy.size // m
        if p >= INDEX_LIMIT:
            raise ValueError(f"{self.name} backend: {p} rows of dz to sum is at or above 2**30; "
                             "split the batch, or use backend='numpy'")
        dy, y = _contiguous(self.xp, dy, y)
        db = self.xp.empty((m,), dy.dtype)
        partial, total = _plans.backward_bias(p, m, activation, store_dz=dz_out is not None, tf32=dz_tf32)
        ws = self.xp.empty(_plans.partials_shape(total), _registry.accumulator(dy.dtype))
        self._run(partial, dy.dtype, dy, dy if y is None else y, ws, dy if dz_out is None else dz_out)
        self._run(total, dy.dtype, ws, db)
        return db
