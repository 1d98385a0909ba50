"""Backends: objects with the five operations of a convolution layer.

A backend lives in ``gpuconv/backends/<name>.py`` and exposes ``load() -> Backend`` (raising
``gpuconv._dispatch.BackendUnavailable`` with the reason when it cannot run here). The public API has already
validated everything and normalized shapes when it calls a backend, so a backend only computes:

  xp                                          the array module its arrays live in (numpy or cupy)
  forward(x, w, b, cfg, activation)           y = act(conv(x, w) + b); x (N,H,W,C), w (KH,KW,C/G,M), b (M,) or None
  activation_backward(dy, y, activation)      dz = dy * act'(z), from the saved output y
  backward_input(dz, w, cfg)                  dx (N,H,W,C)
  backward_weight(dz, x, cfg)                 dw (KH,KW,C/G,M)
  backward_bias(dz)                           db (M,) = dz summed over (N, OH, OW)

A backend may also offer the fused ``backward(dy, y, x, w, cfg, activation, has_bias) -> (dx, dw, db)``
(y None for the identity; db None without a bias); ``conv2d_backward`` then uses it instead of the five.

Arrays arrive 4-D in the right array module with one dtype of ``gpuconv._registry.DTYPES``, possibly
non-contiguous; results have that same dtype (computed in its accumulator dtype, rounded once).
``cfg`` is a ``gpuconv._config.ConvConfig``; ``activation`` is a name of ``gpuconv._registry.ACTIVATIONS``;
an unknown one raises ValueError in every backend.
"""
from typing import Protocol


class Backend(Protocol):
    name: str
    xp: object

    def forward(self, x, w, b, cfg, activation): ...

    def activation_backward(self, dy, y, activation): ...

    def backward_input(self, dz, w, cfg): ...

    def backward_weight(self, dz, x, cfg): ...

    def backward_bias(self, dz): ...
