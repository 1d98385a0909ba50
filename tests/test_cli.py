"""The command line (``python -m gpuconv ...``, also installed as ``gpuconv``), run in a subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gpuconv

REPO_ROOT = Path(__file__).resolve().parents[1]

WORKED_X = np.array(
    [[0, 0, 0, 0, 0], [0, 3, 3, 3, 0], [0, 3, 2, 3, 0], [0, 3, 2, 3, 0], [0, 0, 0, 0, 0]], dtype=np.float64
)
WORKED_W = np.array([[1, -1], [1, -1]], dtype=np.float64)


def run_cli(*args, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    env.pop("GPUCONV_BACKEND", None)
    proc = subprocess.run(
        [sys.executable, "-m", "gpuconv", *args],
        capture_output=True,
        check=False,  # the tests read the return code and the output
        text=True,
        env=env,
        timeout=timeout,
        cwd=REPO_ROOT,
    )
    return proc


def ok_output(*args):
    proc = run_cli(*args)
    assert proc.returncode == 0, (
        f"gpuconv {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    )
    return proc.stdout


def number(v):
    """A regex for the number v printed as an int or a float ("6", "6.", "6.0", "-6.000", "6e+00")."""
    sign = "-" if v < 0 else ""
    return rf"(?<![\d.]){sign}{abs(int(v))}(?:\.0*)?(?:e\+?0+)?(?![\d.])"


def location(i, j):
    return rf"[\(\[]\s*{i}\s*,\s*{j}\s*[\)\]]"


def thousands(n):
    """n written with thousands separators or plain."""
    return rf"(?<![\d,])(?:{n:,}|{n})(?![\d,])"


def worked_z():
    z = np.zeros((4, 4))
    for i in range(4):
        for j in range(4):
            z[i, j] = sum(WORKED_W[a, b] * WORKED_X[i + a, j + b] for a in range(2) for b in range(2))
    return z


# ------------------------------------------------------------------------------------------ demo
@pytest.fixture(scope="module")
def demo_proc():
    return run_cli("demo")


def stdout_of(proc):
    """The stdout of a finished CLI run; asserting here (in the test) makes a broken command fail, not error
    (a failing fixture would be an error)."""
    assert proc.returncode == 0, (
        f"gpuconv {' '.join(proc.args[3:])} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    )
    return proc.stdout


def test_demo_worked_example_z(demo_proc):
    demo_output = stdout_of(demo_proc)
    z = worked_z()
    for row in z:
        pattern = r"[\s,\[\]]+".join(number(v) for v in row)
        assert re.search(pattern, demo_output), f"row {row} of Z not printed:\n{demo_output}"


def test_demo_worked_example_size_extremes_zeros(demo_proc):
    demo_output = stdout_of(demo_proc)
    z = worked_z()
    assert re.search(r"4\s*[x×,]\s*4", demo_output), "the size of Z (4x4) is not printed"
    top, bottom = z.max(), z.min()
    assert top == 6 and bottom == -6
    for value in (top, bottom):
        assert re.search(number(value), demo_output)
    for i, j in zip(*np.nonzero(z == top)):
        assert re.search(location(i, j), demo_output), f"max location {(i, j)} missing"
    for i, j in zip(*np.nonzero(z == bottom)):
        assert re.search(location(i, j), demo_output), f"min location {(i, j)} missing"
    for i, j in zip(*np.nonzero(z == 0)):
        assert re.search(location(i, j), demo_output), f"zero location {(i, j)} missing"


def test_demo_layer_info_and_forward(demo_proc):
    demo_output = stdout_of(demo_proc)
    assert re.search(r"46\D{1,3}62\D{1,3}20", demo_output), "output shape (46, 62, 20) not printed"
    assert re.search(thousands(5_133_600), demo_output)
    assert re.search(thousands(1_820), demo_output)
    assert re.search(r"relu", demo_output, re.IGNORECASE)


def test_demo_gradient_check(demo_proc):
    demo_output = stdout_of(demo_proc)
    assert re.search("sigmoid", demo_output, re.IGNORECASE)
    floats = r"[-+]?\d+\.\d*(?:[eE][-+]?\d+)?|[-+]?\d+[eE][-+]?\d+"
    for name in ("dZ", "dW", "db", "dX"):
        lines = [line for line in demo_output.splitlines() if re.search(rf"(?<!\w){name}(?!\w)", line)]
        assert lines, f"no line mentions {name}"
        values = [float(v) for line in lines for v in re.findall(floats, line)]
        assert values and min(abs(v) for v in values) < 1e-4, f"no small relative error for {name}: {lines}"


def test_demo_says_backend(demo_proc):
    demo_output = stdout_of(demo_proc)
    assert "numpy" in demo_output.lower()


def test_demo_exact_values_in_library(backend, to_xp, asnumpy):
    """What the demo prints is what conv2d computes: the worked example's exact Z."""
    np.testing.assert_array_equal(
        asnumpy(gpuconv.conv2d(to_xp(WORKED_X), to_xp(WORKED_W), backend=backend)), worked_z()
    )


# ------------------------------------------------------------------------------------------ summary
@pytest.mark.parametrize(
    "extra,kernel,shape,mults,params",
    [
        ([], "3x3x10x20", (46, 62, 20), 5_133_600, 1_820),
        (["--no-bias"], "3x3x10x20", (46, 62, 20), 5_133_600, 1_800),
        (["--stride", "2"], "3x3x10x20", (23, 31, 20), 1_283_400, 1_820),
        (["--dilation", "2"], "3x3x10x20", (44, 60, 20), 44 * 60 * 20 * 90, 1_820),
        (["--groups", "2"], "3x3x5x20", (46, 62, 20), 2_566_800, 920),
        (["--padding", "same"], "3x3x10x20", (48, 64, 20), None, 1_820),
    ],
    ids=["default", "no-bias", "stride", "dilation", "groups", "same"],
)
def test_summary(extra, kernel, shape, mults, params):
    out = ok_output("summary", "--input", "48x64x10", "--kernel", kernel, *extra)
    assert re.search(r"\D{1,3}".join(str(s) for s in shape), out), f"output shape {shape} missing:\n{out}"
    if mults is not None:
        assert re.search(thousands(mults), out), f"{mults:,} multiplications missing:\n{out}"
    assert re.search(thousands(params), out), f"{params:,} parameters missing:\n{out}"
    assert re.search(r"multipl", out, re.IGNORECASE) and re.search(r"param", out, re.IGNORECASE)


def test_summary_matches_conv2d_info():
    info = gpuconv.conv2d_info((48, 64, 10), (3, 3, 10, 20))
    out = ok_output("summary", "--input", "48x64x10", "--kernel", "3x3x10x20")
    assert re.search(thousands(info.multiplications), out) and re.search(thousands(info.parameters), out)


# ------------------------------------------------------------------------------------------ info
def test_info_prints_show_config(capsys):
    out = ok_output("info")
    gpuconv.show_config()
    expected = capsys.readouterr().out
    assert gpuconv.__version__ in out
    for name in ("numpy", "cupy"):
        assert name in out
    # the same report as show_config (the first lines: versions and platform)
    assert out.splitlines()[0] == expected.splitlines()[0]


def test_cli_main_is_importable():
    from gpuconv import cli

    assert callable(cli.main)
