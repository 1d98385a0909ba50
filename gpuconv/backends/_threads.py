"""Worker threads of the NumPy backend, and the BLAS thread control they need.

Chunks of a convolution are independent, so they run on worker threads, each calling BLAS single-threaded: the
im2col copies, bias, activation and col2im adds (single-threaded in numpy) then run in parallel too, and there is
no BLAS-thread barrier per chunk (costly when the machine is shared). As many workers as BLAS had threads
(OPENBLAS_NUM_THREADS / threadpoolctl limits are respected). This needs threadpoolctl to set BLAS to one thread;
without it, or with one BLAS thread, chunks run one after another in the calling thread.

    for result in map_tasks(fn, tasks, workers()):   # results in task order
        ...
"""
from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

try:  # imported with the backend, not on a worker's first call (a fork then would inherit its import lock)
    from threadpoolctl import ThreadpoolController
except ImportError:
    ThreadpoolController = None

# os.cpu_count() reads /sys on every call (~20 us here): once is enough
_CPUS = os.cpu_count() or 1

_pool_lock = threading.Lock()
_pool = None
_controller = None
_blas_users = 0  # calls now inside _single_threaded_blas, from any thread
_blas_limiter = None


def blas_controller():
    """threadpoolctl's controller of the BLAS numpy uses, or None (threadpoolctl missing, BLAS not found)."""
    global _controller
    if _controller is None:
        try:
            if ThreadpoolController is None:
                raise ImportError("threadpoolctl is not installed")

            ctl = ThreadpoolController().select(user_api="blas")
            _controller = ctl if ctl.lib_controllers else False
        except Exception:  # noqa: BLE001 - not installed, or a BLAS it does not know: run serially
            _controller = False
    return _controller or None


def workers() -> int:
    """How many chunks to run at once: the BLAS thread count, when BLAS can be made single-threaded."""
    ctl = blas_controller()
    if ctl is None:
        return 1
    with _pool_lock:
        if _blas_users:  # another call holds BLAS at one thread: it knows the real count, and has the pool
            return 1
        threads = max(lib.num_threads for lib in ctl.lib_controllers)
    return max(1, min(threads, _CPUS))


@contextlib.contextmanager
def _single_threaded_blas():
    """BLAS at one thread while worker threads run; counted, so that overlapping calls restore it once.

    Calls each library's set_num_threads directly: threadpoolctl's limit() costs ~0.05 ms more per call.
    """
    global _blas_users, _blas_limiter
    with _section(), _pool_lock:  # a fork-safe section (below): no fork while BLAS changes its thread count
        if _blas_users == 0:
            _blas_limiter = [(lib, lib.num_threads) for lib in blas_controller().lib_controllers]
            for lib, _ in _blas_limiter:
                lib.set_num_threads(1)
        _blas_users += 1
    try:
        yield
    finally:
        with _section(), _pool_lock:
            _blas_users -= 1
            if _blas_users == 0:
                for lib, threads in _blas_limiter:
                    lib.set_num_threads(threads)


def map_tasks(fn, tasks, workers: int):
    """fn(task) for every task, results in task order: on worker threads when there are several.

    With workers > 1, every BLAS call runs single-threaded, a lone task (in the calling thread) included: once
    BLAS has run its own threads they spin for a while after the call, and take the cores from the workers.
    Each task runs inside a fork-safe section (below).
    """
    global _pool
    fn = _fork_safe(fn)
    if workers <= 1:
        yield from map(fn, tasks)
        return
    with _single_threaded_blas():
        if len(tasks) == 1:
            yield fn(tasks[0])
            return
        with _pool_lock:
            if _pool is None or _pool._max_workers < workers:
                _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gpuconv-numpy")
            pool = _pool
        yield from pool.map(fn, tasks)


# ---- fork safety -------------------------------------------------------------------------------------------
# A fork while another thread is inside BLAS can hang: OpenBLAS's own pthread_atfork handler shuts its thread
# pool down inside fork(), under the lock that an in-flight BLAS call (or set_num_threads) holds; and a child
# forked while a worker held one of gpuconv's locks, or while BLAS was held at one thread for a call, would
# inherit that state. So every task that calls BLAS, and every change of BLAS's thread count, runs in a
# *section*; os.fork() first waits (in a before-fork handler, GIL released while it waits) until no section
# runs and lets none start until the fork is done. The fork then happens with no BLAS call of gpuconv in
# flight and BLAS at its own thread count; the child starts with a fresh pool, fresh locks and no sections.
# A fork waits at most for the chunks in flight (one chunk per worker: a few ms).
_fork_cv = threading.Condition(threading.Lock())
_in_flight = 0  # sections running now, in any thread
_forking = False  # a fork is waiting for the sections to finish: no new one starts


@contextlib.contextmanager
def _section():
    global _in_flight
    with _fork_cv:
        while _forking:
            _fork_cv.wait()
        _in_flight += 1
    try:
        yield
    finally:
        with _fork_cv:
            _in_flight -= 1
            if _in_flight == 0 and _forking:
                _fork_cv.notify_all()


def _fork_safe(fn):
    def run(task):
        with _section():
            return fn(task)

    return run


def _before_fork():
    global _forking
    with _fork_cv:
        _forking = True
        while _in_flight:
            _fork_cv.wait()


def _after_fork_in_parent():
    global _forking
    with _fork_cv:
        _forking = False
        _fork_cv.notify_all()


def _after_fork_in_child():
    # the pool's threads do not exist in a forked child, and a lock another thread held at the fork stays held
    # there: start afresh (a new pool on first use). BLAS is at its own thread count (no section ran at the fork)
    # unless a call was between its sections: then give BLAS its count back, as that call would have.
    global _pool, _pool_lock, _blas_users, _fork_cv, _in_flight, _forking
    if _blas_users and _blas_limiter:
        for lib, threads in _blas_limiter:
            lib.set_num_threads(threads)
    _pool, _pool_lock, _blas_users = None, threading.Lock(), 0
    _fork_cv, _in_flight, _forking = threading.Condition(threading.Lock()), 0, False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)




def blas_description():
    """Which BLAS numpy runs and with how many threads (through threadpoolctl), or None; for quoting CPU numbers."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    infos = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    if not infos:
        return None
    i = infos[0]
    return (f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture')}), "
            f"{i.get('num_threads')} threads")
