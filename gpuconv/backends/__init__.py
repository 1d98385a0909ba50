"""Backends: objects with the five operations of a convolution layer.

A backend lives in ``gpuconv/backends/<name>.py`` and exposes ``load() -> Backend`` (raising
``gpuconv._dispatch.BackendUnavailable`` with the reason when it cannot run here). The public API has already
validated everything and normalized shapes when it calls a backend, so a backend only computes:

  xp                                          the array module its arrays live in (numpy or cupy)
  forward(x, w, b, cfg, activation, precision="highest")
                                              y = act(conv(x, w) + b); x (N,H,W,C), w (KH,KW,C/G,M), b (M,) or None
  activation_backward(dy, y, activation)      dz = dy * act'(z), from the saved output y
  backward_input(dz, w, cfg, precision="highest")   dx (N,H,W,C)
  backward_weight(dz, x, cfg, precision="highest")  dw (KH,KW,C/G,M)
  backward_bias(dz)                           db (M,) = dz summed over (N, OH, OW)
  synchronize()                               wait for the work queued so far (a no-op on the CPU)
  to_host(a)                                  a as a host numpy array (synchronizing as needed)

A backend may also offer the fused ``backward(dy, y, x, w, cfg, activation, has_bias, precision="highest")
-> (dx, dw, db)`` (y None for the identity; db None without a bias); ``conv2d_backward`` then uses it instead of
the five. ``precision`` is always passed by keyword: "highest" (strict, today's results bit for bit) or "tf32"
(float32 only: both operands of each product rounded to TF32, float32 accumulation); other dtypes ignore it.
A backend without kernels for some dtype offers ``dtype_reason(dtype) -> None | str`` (the public API raises
the reason as a TypeError before calling it).

Arrays arrive 4-D in the right array module with one float dtype (one of ``gpuconv._registry.DTYPES``, or
bfloat16), possibly non-contiguous; results have that same dtype (float16 and bfloat16 are computed in float32
and rounded once, to nearest even).
``cfg`` is a ``gpuconv._config.ConvConfig``; ``activation`` is a name of ``gpuconv._registry.ACTIVATIONS``;
an unknown one raises ValueError in every backend.
"""
from typing import Protocol


class Backend(Protocol):
    name: str
    xp: object

    def forward(self, x, w, b, cfg, activation, precision="highest"): ...

    def activation_backward(self, dy, y, activation): ...

    def backward_input(self, dz, w, cfg, precision="highest"): ...

    def backward_weight(self, dz, x, cfg, precision="highest"): ...

    def backward_bias(self, dz): ...

    def synchronize(self) -> None: ...

    def to_host(self, a): ...
