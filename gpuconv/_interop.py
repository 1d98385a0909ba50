"""Arrays of any library in, the same kind out, on the device and stream of the caller's arrays.

Every public operation is wrapped by ``public`` (below). The wrapper

1. hands dask arrays to gpuconv.dask (``dask_call``): the chunked operation, lazy in and lazy out;
2. imports each array argument without copying where the layout allows: numpy and cupy arrays as they are;
   torch tensors through DLPack (detached first: gradients come from ``gpuconv.torch``), a CPU tensor as a
   numpy view (``np.from_dlpack``), a CUDA tensor as a cupy view (``cupy.from_dlpack``); any other object with
   ``__cuda_array_interface__`` (``cupy.asarray``), ``__dlpack__`` (by its ``__dlpack_device__``) or
   ``__array__`` (``np.asarray``);
3. runs the operation under the device that holds the GPU arrays (``cupy.cuda.Device``; arrays on two devices
   are a ValueError) and, when a torch CUDA tensor came in, on torch's current stream of that device (through
   ``cupy.cuda.ExternalStream``), so the kernels are ordered after the caller's work and before what the caller
   queues next, with no synchronisation added; cupy arrays run on cupy's current stream;
4. hands the result back in the kind of the caller's first array (``like``): torch in, torch out on the same
   device (``torch.from_numpy`` / ``torch.from_dlpack``, zero-copy), JAX in, JAX out; an object known only by
   its protocol gets a numpy (CPU) or cupy (GPU) array.

Layouts (``data_format`` / ``filter_format``) and padding modes are applied between steps 2 and 4 by
``gpuconv._layout`` (``public`` calls it); the operations in ``_api`` see NHWC / HWIO arrays with zero padding
only.

Nothing here imports torch, jax or cupy unless the caller passed an array of theirs (cupy: a GPU array).
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import sys
from typing import Any, Callable, NamedTuple

import numpy as np

from . import _dispatch

# DLPack device types (dlpack.h, DLDeviceType)
DLPACK_CPU = 1
DLPACK_CUDA = 2
DLPACK_CUDA_HOST = 3  # pinned host memory: readable by the CPU
DLPACK_CUDA_MANAGED = 13

# Argument values that are never arrays of a foreign library: a call made only of these (and numpy arrays)
# skips the import / device logic altogether.
_PLAIN = frozenset({np.ndarray, type(None), int, float, bool, str, tuple, list})


class Origin(NamedTuple):
    """Where a caller's array came from: enough to hand a result back in its kind."""

    kind: str  # "numpy", "cupy", "torch", "jax", "host" (other CPU object), "device" (other GPU object)
    device: int | None  # the CUDA device for GPU arrays, None on the host
    torch_device: Any = None  # the torch.device of a torch tensor


NUMPY = Origin("numpy", None)


def library(a) -> str:
    """The top-level package of ``a``'s type ('numpy', 'torch', 'cupy', 'jax', 'dask', ...)."""
    return type(a).__module__.split(".")[0]


def is_dask(a) -> bool:
    return library(a) == "dask"


_dask_loader = None  # set by gpuconv/__init__.py: returns the gpuconv.dask module (which imports dask)


def set_dask_loader(loader: Callable) -> None:
    """Register the function that imports gpuconv.dask (the package does, so that this module, which
    gpuconv.dask's own imports reach, never imports it: no import cycle)."""
    global _dask_loader
    _dask_loader = loader


def dask_call(fname: str, named: dict, arguments: dict):
    """A dask array among the array arguments ``named``: the chunked operation of gpuconv.dask on all of
    ``arguments`` (lazy in, lazy out; a TypeError for an operation it has not), never a silent compute.
    Returns None when there is none (dask is imported only when a dask array came in)."""
    argname = next((k for k, a in named.items() if a is not None and is_dask(a)), None)
    if argname is None:
        return None
    try:
        gpuconv_dask = _dask_loader()
    except ImportError as exc:
        raise TypeError(f"{fname}: argument '{argname}' is a dask array, and gpuconv.dask cannot be imported "
                        f"({exc}); pip install 'gpuconv[dask]'") from None
    return gpuconv_dask.call(fname, argname, arguments)


# -------------------------------------------------------------------------------------------- import
def _torch_device_index(t) -> int | None:
    dev = t.device
    if dev.type == "cuda":
        return dev.index if dev.index is not None else 0
    if dev.type == "cpu":
        return None
    raise TypeError(f"torch tensors on device {dev} are not supported (only cpu and cuda)")


def _dlpack_device(a) -> tuple:
    dev = a.__dlpack_device__()
    return int(dev[0]), int(dev[1])


def origin_of(fname: str, name: str, a) -> Origin:
    """Where ``a`` lives, read without converting it."""
    lib = library(a)
    if lib == "numpy" or isinstance(a, np.ndarray):
        return NUMPY
    if lib == "cupy":
        dev = getattr(getattr(a, "device", None), "id", None)
        return Origin("cupy", None if dev is None else int(dev))
    if lib == "torch" and hasattr(a, "device") and hasattr(a, "detach"):
        try:
            index = _torch_device_index(a)
        except TypeError as exc:
            raise TypeError(f"{fname}: argument '{name}': {exc}") from None
        return Origin("torch", index, a.device)
    if hasattr(a, "__cuda_array_interface__"):
        return Origin("jax" if lib == "jax" else "device", _cai_device(a))
    if hasattr(a, "__dlpack__") and hasattr(a, "__dlpack_device__"):
        dev_type, dev_id = _dlpack_device(a)
        if dev_type in (DLPACK_CUDA, DLPACK_CUDA_MANAGED):
            return Origin("jax" if lib == "jax" else "device", dev_id)
        if dev_type in (DLPACK_CPU, DLPACK_CUDA_HOST):
            return Origin("jax" if lib == "jax" else "host", None)
        if not hasattr(a, "__array__"):
            raise TypeError(f"{fname}: argument '{name}' is on DLPack device type {dev_type}, which gpuconv "
                            "cannot read (only the CPU and CUDA devices)")
    return Origin("jax", None) if lib == "jax" else Origin("host", None)


def _cai_device(a) -> int:
    """The device that holds a __cuda_array_interface__ object's memory (asked of CUDA by pointer)."""
    cupy = _dispatch.import_cupy()
    ptr = a.__cuda_array_interface__["data"][0]
    if not ptr:  # an empty array: no memory, any device will do
        return int(cupy.cuda.Device().id)
    attrs = cupy.cuda.runtime.pointerGetAttributes(ptr)
    return int(attrs.device)


def import_array(a, origin: Origin):
    """``a`` as a numpy or cupy array, zero-copy where the memory allows (call under ``context``)."""
    if origin.kind in ("numpy", "cupy"):
        return a
    if origin.kind == "torch":
        return _import_torch(a, origin)
    if origin.device is not None:
        cupy = _dispatch.import_cupy()
        if hasattr(a, "__cuda_array_interface__"):
            return cupy.asarray(a)
        return cupy.from_dlpack(a)
    if hasattr(a, "__dlpack__") and hasattr(a, "__dlpack_device__"):
        try:
            return np.from_dlpack(a)
        except (TypeError, BufferError, RuntimeError):
            if not hasattr(a, "__array__"):  # a dtype numpy's DLPack import lacks, and no other way in
                raise
    return np.asarray(a)


def _import_torch(t, origin: Origin):
    t = t.detach()  # gradients are gpuconv.torch's business; the plain API computes values
    bf16 = str(t.dtype) == "torch.bfloat16"
    if bf16:  # neither numpy's nor cupy's DLPack import knows bfloat16: go through its bits
        t = t.view(sys.modules["torch"].int16)
    if origin.device is None:
        a = np.from_dlpack(t.resolve_conj().resolve_neg())
    else:
        a = _dispatch.import_cupy().from_dlpack(t)
    if bf16:
        import ml_dtypes

        a = a.view(ml_dtypes.bfloat16)
    return a


# -------------------------------------------------------------------------------------------- export
def export_array(result, origin: Origin):
    """``result`` (a numpy or cupy array, or None) in the kind of ``origin`` (call under ``context``)."""
    if result is None or origin.kind in ("numpy", "cupy", "host", "device"):
        return result
    if origin.kind == "torch":
        torch = sys.modules["torch"]
        bf16 = result.dtype.name == "bfloat16"
        if bf16:
            result = result.view(np.int16)
        if origin.device is None:
            t = torch.from_numpy(np.ascontiguousarray(result)) if not result.flags.writeable else \
                torch.from_numpy(result)
        else:
            t = torch.from_dlpack(result)
        return t.view(torch.bfloat16) if bf16 else t
    if origin.kind == "jax":
        return sys.modules["jax"].numpy.from_dlpack(result)
    raise AssertionError(origin)


def export_result(result, origin: Origin):
    """``export_array`` over a result that may be a NamedTuple of arrays (Conv2DGrads)."""
    if isinstance(result, tuple) and hasattr(result, "_fields"):
        return type(result)(*(export_array(r, origin) for r in result))
    return export_array(result, origin)


# -------------------------------------------------------------------------------------------- device, stream
def common_device(fname: str, origins: dict) -> int | None:
    """The one CUDA device of the GPU arrays among ``origins`` (name -> Origin), None if all are on the host."""
    devices = {name: o.device for name, o in origins.items() if o.device is not None}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"'{k}' on device {v}" for k, v in devices.items())
        raise ValueError(f"{fname}: arguments are on different CUDA devices ({listing}); move them to one "
                         "device first")
    return next(iter(devices.values()), None)


def torch_stream_ptr(device: int):
    """The raw pointer of torch's current CUDA stream on ``device``."""
    torch = sys.modules["torch"]
    return torch.cuda.current_stream(device).cuda_stream


@contextlib.contextmanager
def context(device: int | None, torch_stream: bool):
    """Run under CUDA device ``device`` (None: the host, nothing to set) and, with ``torch_stream``, on
    torch's current stream there (cupy's current stream otherwise)."""
    if device is None:
        yield
        return
    cupy = _dispatch.import_cupy()
    with cupy.cuda.Device(device):
        if torch_stream:
            with _external_stream(cupy, torch_stream_ptr(device), device):
                yield
        else:
            yield


def _external_stream(cupy, ptr: int, device: int):
    """cupy.cuda.ExternalStream over torch's stream (CuPy before 13 takes no device_id: the current device,
    set by the caller, is the stream's)."""
    try:
        return cupy.cuda.ExternalStream(ptr, device)
    except TypeError:
        return cupy.cuda.ExternalStream(ptr)


# -------------------------------------------------------------------------------------------- the wrapper
def _direct_kind(args, kwvalues) -> str | None:
    """"numpy" when every argument is plain (numpy arrays, Python scalars, strings, tuples, lists, None),
    "cupy" when some are cupy arrays and the rest plain, else None (an array to import)."""
    kind = "numpy"
    for vals in (args, kwvalues):
        for v in vals:
            if type(v) in _PLAIN:
                continue
            if not _dispatch.is_cupy_array(v):
                return None
            kind = "cupy"
    return kind


def _on_current_device(args, kwvalues) -> bool:
    """Every cupy array among the arguments is on CUDA's current device (so there is no device to set)."""
    ids = {getattr(getattr(v, "device", None), "id", None) for vals in (args, kwvalues) for v in vals
           if type(v) not in _PLAIN}
    return len(ids) == 1 and None not in ids and ids == {_dispatch.import_cupy().cuda.runtime.getDevice()}


def public(*, arrays: tuple, like: str, layout=None):
    """Decorate a public operation whose array arguments are ``arrays`` (parameter names) so that it accepts
    any array (module docstring) and answers in the kind of argument ``like``.

    ``layout``, when given, is a ``gpuconv._layout.Roles``: the operation then also takes ``data_format``,
    ``filter_format`` (and ``padding_mode`` where it has a padding), applied by ``gpuconv._layout``.
    """

    def decorate(fn: Callable) -> Callable:
        from . import _layout

        sig = inspect.signature(fn)
        extra = _layout.extra_parameters(layout)
        public_sig = sig.replace(parameters=[*sig.parameters.values(), *extra]) if extra else sig
        extra_names = frozenset(p.name for p in extra)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if extra_names.isdisjoint(kwargs):
                kind = _direct_kind(args, kwargs.values())
                if kind == "numpy" or (kind == "cupy" and _on_current_device(args, kwargs.values())):
                    # numpy arrays (or cupy arrays on the current device) and plain options: nothing to
                    # import, set or rearrange (a few hundred ns instead of the ~10 us of _call)
                    return fn(*args, **kwargs)
            return _call(fn, sig, public_sig, arrays, like, layout, args, kwargs)

        wrapper.__signature__ = public_sig
        if extra:
            wrapper.__doc__ = (fn.__doc__ or "") + _layout.doc(layout)
        return wrapper

    return decorate


def _call(fn, sig, public_sig, arrays, like, layout, args, kwargs):
    from . import _layout

    fname = fn.__name__
    try:
        bound = public_sig.bind(*args, **kwargs)
    except TypeError as exc:
        raise TypeError(f"{fname}: {exc}") from None
    named = {k: bound.arguments.get(k) for k in arrays}
    lazy = dask_call(fname, named, bound.arguments)
    if lazy is not None:
        return lazy
    origins = {k: origin_of(fname, k, v) for k, v in named.items() if v is not None}
    device = common_device(fname, origins)
    torch_stream = device is not None and any(o.kind == "torch" for o in origins.values())
    out_origin = origins.get(like, NUMPY)
    with context(device, torch_stream):
        for k in origins:
            try:
                bound.arguments[k] = import_array(named[k], origins[k])
            except (ValueError, TypeError) as exc:  # a ragged list, ...: say which argument
                raise TypeError(f"{fname}: argument '{k}' cannot be made an array: {exc}") from None
        options = {p: bound.arguments.pop(p, public_sig.parameters[p].default)
                   for p in public_sig.parameters if p not in sig.parameters}
        plan = _layout.prepare(fname, layout, bound.arguments, options) if layout is not None else None
        result = fn(**bound.arguments)
        if plan is not None:
            result = plan.finish(result)
        return export_result(result, out_origin)


def host_view(a):
    """``a`` as a numpy or cupy array (zero-copy where possible), for reading its shape and dtype."""
    if a is None or type(a) is np.ndarray:
        return a
    if not (hasattr(a, "__dlpack__") or hasattr(a, "__cuda_array_interface__") or hasattr(a, "__array__")):
        return np.asarray(a)
    return import_array(a, origin_of("", "", a))
