"""Issue 12 case 7: a fork at any moment of a gpuconv call completes, the child computes correctly and exits,
and the parent's calls finish.

The scenario runs in a subprocess with a time limit, so that a hang fails the test instead of the suite: two
threads loop over calls large enough for the NumPy backend's worker threads (and small ones, where BLAS runs
its own threads), while the main thread forks repeatedly (os.fork and multiprocessing's "fork" context); each
child runs a convolution and checks it against the parent's result.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

SCENARIO = textwrap.dedent(
    """
    import multiprocessing, os, sys, threading, time
    import numpy as np

    started = threading.Event()

    def first_call_in_a_thread():
        # the first call imports and sets up the backend in this thread, while the main thread forks
        import gpuconv
        started.set()
        gpuconv.conv2d(np.ones((1, 4, 4, 1)), np.ones((2, 2, 1, 1)))

    threading.Thread(target=first_call_in_a_thread).start()
    started.wait()
    pid = os.fork()
    if pid == 0:
        import gpuconv
        os._exit(0 if gpuconv.conv2d(np.ones((1, 4, 4, 1)), np.ones((2, 2, 1, 1)))[0, 0, 0, 0] == 4 else 3)
    assert os.waitpid(pid, 0)[1] == 0, "child of a fork during the first call failed"

    import gpuconv
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 56, 56, 64), dtype=np.float32)
    w = rng.standard_normal((3, 3, 64, 64), dtype=np.float32)
    small = x[:1, :8]
    want = gpuconv.conv2d(x, w, padding=1)
    want_small = gpuconv.conv2d(small, w, padding=1)
    dz = np.ones_like(want)
    stop, calls, bad = threading.Event(), [0, 0], []

    def loop(k):
        while not stop.is_set():
            if not np.array_equal(gpuconv.conv2d(x, w, padding=1), want):
                bad.append("large")
            gpuconv.conv2d_backward(dz, x, w, padding=1)
            if not np.array_equal(gpuconv.conv2d(small, w, padding=1), want_small):
                bad.append("small")
            calls[k] += 1

    threads = [threading.Thread(target=loop, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()

    def child_check():
        ok = np.array_equal(gpuconv.conv2d(small, w, padding=1), want_small)
        ok &= np.array_equal(gpuconv.conv2d(x[:2], w, padding=1), want[:2])  # large enough for workers
        return ok

    def child_main():
        os._exit(0 if child_check() else 3)

    forks = int(sys.argv[1])
    ctx = multiprocessing.get_context("fork")
    t0 = time.monotonic()
    for i in range(forks):
        time.sleep(0.003 * (i % 7))  # land the forks at different moments of the calls
        if i % 2:
            p = ctx.Process(target=child_main)
            p.start()
            p.join(20)
            assert p.exitcode == 0, f"multiprocessing child {i}: exit code {p.exitcode}"
        else:
            pid = os.fork()
            if pid == 0:
                child_main()
            assert os.waitpid(pid, 0)[1] == 0, f"os.fork child {i} failed"
    while min(calls) < 1:  # the parent's calls go on and finish
        time.sleep(0.01)
    stop.set()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "a parent thread did not finish"
    assert not bad, bad
    print(f"forks={forks} calls={calls} seconds={time.monotonic() - t0:.2f}")
    """
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork on this platform")
def test_case7_fork_during_calls_completes():
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    env.pop("GPUCONV_BACKEND", None)
    try:
        proc = subprocess.run([sys.executable, "-c", SCENARIO, "12"], capture_output=True, text=True, env=env,
                              timeout=120, check=False, cwd=REPO_ROOT)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the fork scenario hung (killed after {exc.timeout} s)")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "forks=12" in proc.stdout, proc.stdout
