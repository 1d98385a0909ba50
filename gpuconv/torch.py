"""PyTorch autograd for gpuconv: ``gpuconv.torch.conv2d`` (torch.nn.functional.conv2d's signature) and
``gpuconv.torch.Conv2d`` (a torch.nn.Conv2d with gpuconv's kernels and a fused ``activation``).

    import torch, gpuconv.torch
    layer = gpuconv.torch.Conv2d(3, 16, 3, padding=1, activation="relu")
    layer.load_state_dict(torch.nn.Conv2d(3, 16, 3, padding=1).state_dict())   # same keys and shapes
    y = layer(x)                  # x (N, C, H, W) on the CPU (NumPy backend) or CUDA (gpuconv's kernels)
    y.sum().backward()            # dX, dW, db from gpuconv.conv2d_backward

Conventions are PyTorch's: input NCHW (or unbatched CHW), weight OIHW (out_channels, in_channels / groups,
KH, KW), bias (out_channels,); padding an int, a pair, "valid" or "same" ("same" with any stride: output
ceil(H / stride), the odd pixel at the bottom / right, which is PyTorch's split at stride 1); padding_mode
"zeros", "reflect", "replicate" or "circular". The kernels work channels last: a channels_last tensor
(``x.to(memory_format=torch.channels_last)``) reaches them without a copy, and the output follows the input's
memory format, as PyTorch's does. CUDA tensors run on the device that holds them, on torch's current stream.

The backward computes only the gradients autograd asks for (``ctx.needs_input_grad``): a first layer whose
input needs no gradient gets no dX. The backward is not itself differentiable (no double backward).

Importing this module imports torch; ``import gpuconv`` never does.
"""
from __future__ import annotations

from typing import Union

import torch
from torch.autograd.function import once_differentiable

from . import _api, _config

__all__ = ["Conv2d", "conv2d"]

_IntPair = Union[int, tuple[int, int]]


def _nhwc(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 2, 3, 1)  # a view: a channels_last tensor's NHWC view is contiguous


def _hwio(w: torch.Tensor) -> torch.Tensor:
    return w.permute(2, 3, 1, 0)


def _follow_format(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t`` in the memory format PyTorch's convolution would give for input ``like``."""
    if like.is_contiguous(memory_format=torch.channels_last) and not like.is_contiguous():
        return t  # already channels_last: the kernels' own layout
    return t.contiguous()


class _Conv2dFunction(torch.autograd.Function):
    """act(conv2d(input, weight) + bias) on gpuconv, NCHW / OIHW, with gpuconv's gradients."""

    @staticmethod
    def forward(ctx, input, weight, bias, options):
        y = _api.conv2d(_nhwc(input), _hwio(weight), bias, **options)  # NHWC, C-contiguous
        out = _follow_format(y.permute(0, 3, 1, 2), input)
        keep = out if _config.needs_output(_config.activation_name("conv2d", options["activation"])) else None
        ctx.save_for_backward(input, weight, keep)
        ctx.options, ctx.has_bias = options, bias is not None
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        input, weight, out = ctx.saved_tensors
        want = tuple(g for g, need in zip(_api.GRADS, ctx.needs_input_grad[:3]) if need)
        if not want:
            return None, None, None, None
        g = _api.conv2d_backward(_nhwc(grad_output), _nhwc(input), _hwio(weight),
                                 None if out is None else _nhwc(out), has_bias=ctx.has_bias, grads=want,
                                 **ctx.options)
        dx = None if g.dx is None else _follow_format(g.dx.permute(0, 3, 1, 2), input)
        dw = None if g.dw is None else g.dw.permute(3, 2, 0, 1).contiguous()
        return dx, dw, g.db, None


def conv2d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           stride: _IntPair = 1, padding: str | _IntPair = 0, dilation: _IntPair = 1, groups: int = 1,
           activation: str | None = None, padding_mode: str = "zeros", *, backend: str = "auto",
           precision: str | None = None) -> torch.Tensor:
    """torch.nn.functional.conv2d on gpuconv, differentiable, with a fused ``activation``.

    input (N, C, H, W) or (C, H, W); weight (out_channels, C / groups, KH, KW); bias (out_channels,) or None.
    padding: int, (ph, pw), "valid" or "same" (any stride); padding_mode: "zeros", "reflect", "replicate",
    "circular"; activation: None or a gpuconv activation name ("relu", "sigmoid", ...). backend and precision
    are gpuconv's (``gpuconv.conv2d``). Returns act(conv2d(input, weight) + bias) like ``input``.
    """
    fname = "gpuconv.torch.conv2d"
    for name, t in (("input", input), ("weight", weight), ("bias", bias)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"{fname}: argument '{name}' must be a torch.Tensor, got {type(t).__name__}")
    if input.dim() not in (3, 4):
        raise ValueError(f"{fname}: argument 'input' must be 3-D (C, H, W) or 4-D (N, C, H, W), "
                         f"got shape {tuple(input.shape)}")
    if weight.dim() != 4:
        raise ValueError(f"{fname}: argument 'weight' must be 4-D (out_channels, in_channels / groups, KH, KW), "
                         f"got shape {tuple(weight.shape)}")
    if isinstance(padding, str) and padding not in ("valid", "same"):
        raise ValueError(f"{fname}: argument 'padding' must be an int, a pair, 'valid' or 'same', "
                         f"got {padding!r}")
    _config.activation_name(fname, activation)
    options = {"stride": _as_option(stride), "padding": _as_option(padding), "dilation": _as_option(dilation),
               "groups": groups, "activation": activation, "padding_mode": padding_mode, "backend": backend,
               "precision": precision}
    unbatched = input.dim() == 3
    x = input.unsqueeze(0) if unbatched else input
    y = _Conv2dFunction.apply(x, weight, bias, options)
    return y.squeeze(0) if unbatched else y


def _as_option(v):
    """torch's size arguments (ints, tuples, lists, torch.Size) as gpuconv takes them."""
    return tuple(v) if isinstance(v, (list, torch.Size)) else v


class Conv2d(torch.nn.Conv2d):
    """torch.nn.Conv2d on gpuconv's kernels, plus ``activation`` fused into the forward pass.

    The constructor, attributes (weight (out_channels, in_channels / groups, KH, KW), bias, in_channels,
    out_channels, kernel_size, stride, padding, dilation, groups, padding_mode), parameter initialisation and
    state_dict are torch.nn.Conv2d's (it is a subclass), so ``load_state_dict`` takes a torch.nn.Conv2d's.
    Differences: padding="same" is accepted with any stride, and ``activation`` / ``backend`` /
    ``precision`` are gpuconv's options.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: _IntPair, stride: _IntPair = 1,
                 padding: str | _IntPair = 0, dilation: _IntPair = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, *, activation: str | None = None,
                 backend: str = "auto", precision: str | None = None) -> None:
        strided_same = padding == "same" and torch.nn.modules.utils._pair(stride) != (1, 1)
        super().__init__(in_channels, out_channels, kernel_size, stride, 0 if strided_same else padding,
                         dilation, groups, bias, padding_mode, device, dtype)
        if strided_same:  # torch refuses "same" with a stride; gpuconv takes TensorFlow's rule there
            self.padding = "same"
        _config.activation_name("gpuconv.torch.Conv2d", activation)
        self.activation, self.backend, self.precision = activation, backend, precision

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """act(conv2d(input, weight) + bias) on gpuconv (input (N, C, H, W) or (C, H, W))."""
        return conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups,
                      self.activation, self.padding_mode, backend=self.backend, precision=self.precision)

    def extra_repr(self) -> str:
        """torch.nn.Conv2d's description, with the activation when there is one."""
        text = super().extra_repr()
        return text if self.activation is None else f"{text}, activation={self.activation!r}"
