"""What issue 12's NaN/Inf rule and fork gate cost on the NumPy backend (docs/performance.md, "Reliability").

    python tools/reliability_costs.py
"""
import os
import threading
import time

import numpy as np

import gpuconv
from gpuconv.backends import _threads


def best(f, k=5):
    f()
    times = []
    for _ in range(k):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times) * 1e3


def main():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 56, 56, 64), dtype=np.float32)
    w = rng.standard_normal((3, 3, 64, 64), dtype=np.float32)
    dz = rng.standard_normal((16, 56, 56, 64), dtype=np.float32)
    wn = w.copy()
    wn[0, 0, 0, 0] = np.nan
    fin = best(lambda: gpuconv.conv2d_backward_input(dz, w, x.shape, padding=1))
    nan = best(lambda: gpuconv.conv2d_backward_input(dz, wn, x.shape, padding=1))
    chk = best(lambda: np.isfinite(w).all(), 50)
    print(f"dX (16,56,56,64) 3x3 p1 float32: finite w {fin:.1f} ms, a NaN in w {nan:.1f} ms; "
          f"np.isfinite(w).all() {chk * 1e3:.1f} us")

    stop = threading.Event()

    def loop():
        while not stop.is_set():
            gpuconv.conv2d(x[:4], w, padding=1)

    th = threading.Thread(target=loop)
    th.start()
    time.sleep(0.3)
    waits, forks = [], []
    for _ in range(8):
        t = time.perf_counter()
        _threads._before_fork()  # what os.fork runs first: wait for the chunks in flight
        waits.append(time.perf_counter() - t)
        _threads._after_fork_in_parent()
        time.sleep(0.05)
        t = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        forks.append(time.perf_counter() - t)
        os.waitpid(pid, 0)
        time.sleep(0.05)
    stop.set()
    th.join()
    call = best(lambda: gpuconv.conv2d(x[:4], w, padding=1))
    print(f"during conv2d (4,56,56,64)->64 3x3 ({call:.1f} ms a call) in another thread: the fork gate waits "
          f"{min(waits) * 1e3:.1f}-{max(waits) * 1e3:.1f} ms, os.fork() takes {min(forks) * 1e3:.1f}-"
          f"{max(forks) * 1e3:.1f} ms in all")


if __name__ == "__main__":
    main()
