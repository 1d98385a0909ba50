"""gpuconv.torch: torch.autograd.gradcheck (float64) on every path, and gpuconv.torch.Conv2d against
torch.nn.Conv2d after load_state_dict from one, on random options (hypothesis), on numpy and the emulator."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import hypothesis_examples
from hypothesis import given, note, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

import gpuconv
import gpuconv.torch as gt
from gpuconv import _api, _registry

MODES = ["zeros", "reflect", "replicate", "circular"]
ACTIVATIONS = [None, *sorted(_registry.ACTIVATIONS)]

# (input shape, weight shape, options): each path of the Function once
GRADCHECK = {
    "plain": ((2, 3, 5, 4), (2, 3, 3, 2), {}),
    "stride-pad-dilation": ((1, 2, 7, 6), (3, 2, 2, 3), {"stride": (2, 1), "padding": (1, 2), "dilation": (1, 2)}),
    "groups-same": ((1, 4, 5, 5), (4, 2, 3, 3), {"groups": 2, "padding": "same"}),
    "same-strided": ((1, 2, 6, 5), (2, 2, 3, 2), {"padding": "same", "stride": 2}),
    "valid-unbatched": ((2, 5, 4), (3, 2, 2, 2), {"padding": "valid"}),
    "reflect": ((1, 2, 5, 5), (2, 2, 3, 3), {"padding": 2, "padding_mode": "reflect"}),
    "replicate": ((1, 2, 4, 5), (2, 2, 3, 3), {"padding": (1, 2), "padding_mode": "replicate"}),
    "circular": ((1, 2, 4, 4), (2, 2, 3, 2), {"padding": 1, "padding_mode": "circular", "stride": 2}),
}


def _gradcheck_backend(backend):
    if backend == "cupy":
        pytest.skip("gradcheck runs on CPU tensors (numpy and emulator backends)")
    return backend


@pytest.mark.parametrize("case", list(GRADCHECK))
def test_gradcheck_every_path(backend, rng, case):
    _gradcheck_backend(backend)
    x_shape, w_shape, opts = GRADCHECK[case]
    x = torch.from_numpy(rng.uniform(-1, 1, x_shape)).requires_grad_()
    w = torch.from_numpy(rng.uniform(-1, 1, w_shape)).requires_grad_()
    b = torch.from_numpy(rng.uniform(-1, 1, w_shape[0])).requires_grad_()
    assert torch.autograd.gradcheck(lambda *a: gt.conv2d(*a, **opts, backend=backend), (x, w, b), eps=1e-6,
                                    atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("activation", [a for a in ACTIVATIONS if a is not None])
def test_gradcheck_activations(backend, rng, activation):
    _gradcheck_backend(backend)
    for _ in range(100):  # relu: every pre-activation away from the kink at 0 (finite differences)
        x, w, b = (torch.from_numpy(rng.uniform(-1, 1, s)) for s in ((1, 2, 4, 4), (3, 2, 2, 2), (3,)))
        if activation != "relu" or torch.nn.functional.conv2d(x, w, b).abs().min() > 1e-3:
            break
    x, w, b = (t.requires_grad_() for t in (x, w, b))
    assert torch.autograd.gradcheck(lambda *a: gt.conv2d(*a, activation=activation, backend=backend), (x, w, b),
                                    eps=1e-6, atol=1e-7, rtol=1e-6)


def test_gradcheck_without_bias_and_channels_last(backend, rng):
    _gradcheck_backend(backend)
    x = torch.from_numpy(rng.uniform(-1, 1, (2, 3, 5, 5))).to(memory_format=torch.channels_last)
    x.requires_grad_()
    w = torch.from_numpy(rng.uniform(-1, 1, (4, 3, 2, 2))).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, w: gt.conv2d(x, w, padding=1, backend=backend), (x, w), eps=1e-6,
                                    atol=1e-7, rtol=1e-6)


def test_only_needed_gradients_are_computed(rng, monkeypatch):
    asked = []
    real = _api.conv2d_backward

    def spy(*args, grads, **kwargs):
        asked.append(tuple(grads))
        return real(*args, grads=grads, **kwargs)

    monkeypatch.setattr(_api, "conv2d_backward", spy)
    x = torch.from_numpy(rng.uniform(-1, 1, (1, 2, 5, 5)))  # a first layer: the input needs no gradient
    w = torch.from_numpy(rng.uniform(-1, 1, (3, 2, 3, 3))).requires_grad_()
    b = torch.from_numpy(rng.uniform(-1, 1, 3)).requires_grad_()
    gt.conv2d(x, w, b).sum().backward()
    assert asked == [("dw", "db")] and w.grad is not None and b.grad is not None
    w.grad = None
    b.requires_grad_(False)
    x.requires_grad_()
    gt.conv2d(x, w, b).sum().backward()
    assert asked[-1] == ("dx", "dw") and b.grad is not None  # b's gradient is still the first one's


def test_channels_last_reaches_the_kernels_without_a_copy(rng, monkeypatch):
    seen = []
    be = gpuconv._dispatch.load_backend("numpy")
    real = be.forward

    def spy(x, w, b, cfg, activation, **kw):
        seen.append(x)
        return real(x, w, b, cfg, activation, **kw)

    monkeypatch.setattr(be, "forward", spy)
    x = torch.from_numpy(rng.uniform(-1, 1, (2, 3, 6, 5))).to(memory_format=torch.channels_last)
    y = gt.conv2d(x, torch.from_numpy(rng.uniform(-1, 1, (4, 3, 3, 3))))
    (xk,) = seen
    assert xk.flags.c_contiguous and xk.__array_interface__["data"][0] == x.data_ptr()
    assert y.is_contiguous(memory_format=torch.channels_last)  # the output follows the input's format
    y2 = gt.conv2d(x.contiguous(), torch.from_numpy(rng.uniform(-1, 1, (4, 3, 3, 3))))
    assert y2.is_contiguous()


# ------------------------------------------------------------------------------- Conv2d against nn.Conv2d
@st.composite
def layers(draw):
    groups = draw(st.integers(1, 2))
    cin, cout = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    mode = draw(st.sampled_from(MODES))
    stride = draw(st.sampled_from([1, 2, (1, 2)]))
    padding = draw(st.sampled_from([0, 1, (1, 2), "valid"] + (["same"] if stride == 1 else [])))
    dilation = draw(st.sampled_from([1, 2, (2, 1)]))
    return {"in_channels": cin, "out_channels": cout, "kernel_size": k, "stride": stride, "padding": padding,
            "dilation": dilation, "groups": groups, "bias": draw(st.booleans()), "padding_mode": mode,
            "x": (draw(st.integers(1, 2)), cin, draw(st.integers(5, 8)), draw(st.integers(5, 8))),
            "channels_last": draw(st.booleans()), "seed": draw(st.integers(0, 2**32 - 1))}


def test_conv2d_module_matches_torch(backend):
    if backend == "cupy":
        pytest.skip("CPU tensors here; tools/gpu_check.sh runs the CUDA bridge")

    @settings(max_examples=hypothesis_examples(backend, 40, 8))
    @given(layers())
    def run(p):
        note(p)
        torch.manual_seed(p["seed"] % 2**31)
        args = {k: p[k] for k in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
                                  "groups", "bias", "padding_mode")}
        ref = torch.nn.Conv2d(**args, dtype=torch.float64)
        mine = gt.Conv2d(**args, dtype=torch.float64, backend=backend)
        mine.load_state_dict(ref.state_dict())
        x = torch.randn(p["x"], dtype=torch.float64)
        if p["channels_last"]:
            x = x.to(memory_format=torch.channels_last)
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        try:
            y_ref = ref(x1)
        except RuntimeError:  # the layer does not fit this input (output below 1): gpuconv refuses too
            with pytest.raises(ValueError):
                mine(x2)
            return
        y = mine(x2)
        torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
        dy = torch.randn_like(y_ref)
        y_ref.backward(dy)
        y.backward(dy)
        torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(mine.weight.grad, ref.weight.grad, rtol=1e-10, atol=1e-10)
        if p["bias"]:
            torch.testing.assert_close(mine.bias.grad, ref.bias.grad, rtol=1e-10, atol=1e-10)

    run()


@pytest.mark.parametrize("activation", [a for a in ACTIVATIONS if a is not None])
def test_conv2d_module_activation_and_attributes(rng, activation):
    ref = torch.nn.Conv2d(4, 6, (3, 2), stride=2, padding=1, groups=2, dtype=torch.float64)
    mine = gt.Conv2d(4, 6, (3, 2), stride=2, padding=1, groups=2, dtype=torch.float64, activation=activation)
    assert isinstance(mine, torch.nn.Conv2d) and set(mine.state_dict()) == set(ref.state_dict())
    for name in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                 "padding_mode"):
        assert getattr(mine, name) == getattr(ref, name), name
    assert mine.weight.shape == ref.weight.shape == (6, 2, 3, 2)
    mine.load_state_dict(ref.state_dict())
    x = torch.from_numpy(rng.uniform(-1, 1, (2, 4, 7, 6)))
    torch_name = _registry.ACTIVATIONS[activation].torch
    fn = (lambda v: v) if torch_name is None else getattr(torch, torch_name)
    torch.testing.assert_close(mine(x), fn(ref(x)), rtol=1e-10, atol=1e-10)
    assert f"activation={activation!r}" in repr(mine)


def test_same_with_stride_follows_tensorflow(rng):
    m = gt.Conv2d(2, 3, 3, stride=2, padding="same", dtype=torch.float64)
    x = torch.from_numpy(rng.uniform(-1, 1, (1, 2, 7, 6)))
    y = m(x)
    assert y.shape == (1, 3, 4, 3) and m.padding == "same"
    want = gpuconv.conv2d(x.numpy(), m.weight.detach().numpy(), m.bias.detach().numpy(), stride=2,
                          padding="same", data_format="NCHW", filter_format="OIHW")
    np.testing.assert_allclose(y.detach().numpy(), want, rtol=1e-12)


def test_bad_input():
    w = torch.zeros(2, 3, 3, 3, dtype=torch.float64)
    x = torch.zeros(1, 3, 5, 5, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"gpuconv.torch.conv2d: argument 'input' must be a torch.Tensor"):
        gt.conv2d(np.zeros((1, 3, 5, 5)), w)
    with pytest.raises(ValueError, match=r"gpuconv.torch.conv2d: argument 'input' must be 3-D .* or 4-D"):
        gt.conv2d(torch.zeros(5, 5, dtype=torch.float64), w)
    with pytest.raises(ValueError, match=r"gpuconv.torch.conv2d: argument 'weight' must be 4-D"):
        gt.conv2d(x, torch.zeros(3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"gpuconv.torch.conv2d: argument 'padding' must be"):
        gt.conv2d(x, w, padding="full")
    with pytest.raises(ValueError, match=r"gpuconv.torch.conv2d: argument 'activation'"):
        gt.conv2d(x, w, activation="gelu")
    with pytest.raises(ValueError, match=r"conv2d: argument 'padding_mode'"):
        gt.conv2d(x, w, padding_mode="mirror")
    with pytest.raises(TypeError, match=r"conv2d: argument 'w' has dtype float32 but 'x' has float64"):
        gt.conv2d(x, w.float())
    with pytest.raises(ValueError, match=r"gpuconv.torch.Conv2d: argument 'activation'"):
        gt.Conv2d(3, 2, 3, activation="swish")
    with pytest.raises(ValueError, match="padding_mode"):  # torch's own constructor check
        gt.Conv2d(3, 2, 3, padding_mode="mirror")
    with pytest.raises(ValueError, match=r"conv2d: argument 'backend' must be 'auto' or one of"):
        gt.conv2d(x, w, backend="tpu")
    with pytest.raises(ValueError, match=r"conv2d: argument 'precision'"):
        gt.conv2d(x, w, precision="fp8")
    with pytest.raises(ValueError, match=r"conv2d: argument 'groups'|conv2d: argument 'x' has 3 channels"):
        gt.conv2d(x, w, groups=2)
