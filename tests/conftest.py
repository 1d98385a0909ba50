"""Shared fixtures for the gpuconv test suite.

Every numerical test takes the ``backend`` fixture and passes ``backend=backend`` explicitly, so adding a
name to ``BACKENDS`` runs the whole suite on that backend too. A backend that cannot run here is skipped with
the reason ``gpuconv._dispatch.backend_status`` gives.

Tolerances, dtypes and activations come from the package's registries (``gpuconv._registry``): the tolerance
table serves this suite, tests/test_kernels.py and tools/gpu_check.py alike, and every parametrization over
dtypes or activations derives from ``DTYPES`` / ``ACTIVATIONS`` here. No test loosens a tolerance.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# The helpers next to this file (reference.py) import as top-level modules, whatever pytest's import mode.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gpuconv import _dispatch, _registry

# Backends the suite runs on; a new backend is one more name here.
BACKENDS = ["numpy", "emulator", "cupy"]

# Backends where one call is expensive (the CPU emulator: ~10 ms a call). Tests size their work with
# ``work_scale`` / ``hypothesis_examples`` so that all emulator tests together stay under about a minute.
SLOW_BACKENDS = {"emulator"}

# ---------------------------------------------------------------------------------------------- tolerances
# Relative tolerances, against the float64 reference computed from the same (already rounded) inputs: the
# registry's DType.rtol (float32's grows linearly with the reduction length past REDUCTION_UNIT terms).
REDUCTION_UNIT = _registry.REDUCTION_UNIT
# The registered dtypes every backend computes here (CUDA kernels instantiated, optional package installed);
# the others (bfloat16 until it has kernels) are tested on each backend that has them by test_precision.py.
_EVERYWHERE = [d for d in _registry.kernel_dtypes() if d.available]
DTYPES = [d.numpy.type for d in _EVERYWHERE]
DTYPE_IDS = [d.name for d in _EVERYWHERE]
# Every activation name, and those whose gradient reads the saved output.
ACTIVATIONS = list(_registry.ACTIVATIONS)
OUTPUT_ACTIVATIONS = [a.name for a in _registry.ACTIVATIONS.values() if a.uses_output]
# The dtypes below float64 (rounded results: their tolerances are far above float64's).
LOW_PRECISION_DTYPES = [t for t in DTYPES if np.dtype(t) != np.float64]

# Finite-difference gradient checks (float64 only): central differences with step FD_STEP, compared with this
# relative tolerance (truncation error ~ h^2 * f''' and cancellation ~ eps / h, both far below it).
FD_STEP = 1e-6
FD_RTOL = 1e-6


tolerance = _registry.tolerance  # (dtype, reduction=1) -> relative tolerance


def to_numpy(a):
    """A host numpy array from a numpy or cupy array."""
    if type(a).__module__.split(".")[0] == "cupy":
        return a.get()
    return np.asarray(a)


def assert_close(actual, expected, dtype, reduction: int = 1, err_msg: str = ""):
    """``actual`` (any backend's array) matches the float64 reference ``expected`` within dtype's tolerance.

    The absolute part of the tolerance is scaled by the largest magnitude in ``expected`` (the scale of the
    sums); NaN must match NaN and infinities must match exactly.
    """
    dtype = np.dtype(dtype)
    actual_np = to_numpy(actual)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual_np.dtype == dtype, f"dtype {actual_np.dtype}, expected {dtype}. {err_msg}"
    assert actual_np.shape == expected.shape, f"shape {actual_np.shape}, expected {expected.shape}. {err_msg}"
    rtol = tolerance(dtype, reduction)
    finite = np.isfinite(expected)
    scale = float(np.max(np.abs(expected[finite]))) if finite.any() else 0.0
    np.testing.assert_allclose(
        actual_np.astype(np.float64),
        expected,
        rtol=rtol,
        atol=rtol * max(scale, 1e-30),
        equal_nan=True,
        err_msg=f"dtype={dtype.name}, reduction={reduction}, rtol={rtol:g}. {err_msg}",
    )


@pytest.fixture
def check():
    """``check(actual, expected, dtype, reduction=1)``: the suite's one comparison (see ``assert_close``)."""
    return assert_close


@pytest.fixture
def asnumpy():
    return to_numpy


# ---------------------------------------------------------------------------------------------- backends
@pytest.fixture(params=BACKENDS)
def backend(request):
    """A backend name from BACKENDS; skipped with the library's own reason when it cannot run here."""
    name = request.param
    reason = _dispatch.backend_status(name)
    if reason is not None:
        pytest.skip(f"backend {name!r} cannot run here: {reason}")
    return name


@pytest.fixture
def xp(backend):
    """The array module of ``backend``'s arrays: cupy for "cupy", numpy otherwise."""
    if backend == "cupy":
        return _dispatch.import_cupy()
    return np


@pytest.fixture
def to_xp(xp):
    """Move a host array into the backend's array module (None stays None)."""

    def convert(a):
        return None if a is None else xp.asarray(a)

    return convert


@pytest.fixture
def work_scale(backend):
    """1.0 on fast backends, smaller on slow ones: multiply example and sample counts by it."""
    return 0.1 if backend in SLOW_BACKENDS else 1.0


def hypothesis_examples(backend: str, fast: int = 60, slow: int = 12) -> int:
    return slow if backend in SLOW_BACKENDS else fast


@pytest.fixture
def n_examples(backend):
    """Hypothesis max_examples for ``backend`` (fewer on slow backends)."""
    return lambda fast=60, slow=12: hypothesis_examples(backend, fast, slow)


# ---------------------------------------------------------------------------------------------- random data
@pytest.fixture
def rng(request):
    """A numpy Generator seeded from the test's node id: fresh per test, reproducible across runs."""
    seed = np.frombuffer(request.node.nodeid.encode(), dtype=np.uint8).astype(np.uint64)
    seed = int((seed * np.arange(1, seed.size + 1, dtype=np.uint64)).sum() % (2**32))
    return np.random.default_rng(seed)


def random_array(rng, shape, dtype=np.float64, low=-1.0, high=1.0):
    """Uniform random values in [low, high) of ``dtype``, never all zeros."""
    a = rng.uniform(low, high, size=shape).astype(dtype)
    if a.size and not np.any(a):
        a.flat[0] = dtype(0.5)
    return a


@pytest.fixture
def rand(rng):
    """``rand(shape, dtype=float64, low=-1, high=1)``: seeded random array (numpy, host)."""
    return lambda shape, dtype=np.float64, low=-1.0, high=1.0: random_array(rng, shape, dtype, low, high)


# ---------------------------------------------------------------------------------------------- global state
@pytest.fixture
def restore_workspace_limit():
    import gpuconv

    before = gpuconv.get_workspace_limit()
    yield
    gpuconv.set_workspace_limit(before)


@pytest.fixture(autouse=True)
def _no_backend_env(monkeypatch):
    """Tests choose the backend explicitly; a GPUCONV_BACKEND set by the caller must not interfere."""
    monkeypatch.delenv("GPUCONV_BACKEND", raising=False)


# ---------------------------------------------------------------------------------------------- hypothesis
settings.register_profile(
    "ci",
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,
    print_blob=True,
)
settings.register_profile("dev", deadline=None, max_examples=200)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# ------------------------------------------------------------------------------------ finite differences
def sample_coordinates(rng, shape, limit):
    """Every index of ``shape`` if there are at most ``limit``, else ``limit`` random distinct ones."""
    size = int(np.prod(shape))
    flat = np.arange(size) if size <= limit else rng.choice(size, limit, replace=False)
    return [np.unravel_index(i, shape) for i in flat]


def fd_gradient(loss, arr, coords):
    """Central differences of loss() at each index in coords of arr (changed in place and restored)."""
    out = []
    for idx in coords:
        old = arr[idx]
        arr[idx] = old + FD_STEP
        lp = loss()
        arr[idx] = old - FD_STEP
        lm = loss()
        arr[idx] = old
        out.append((lp - lm) / (2 * FD_STEP))
    return np.array(out)
