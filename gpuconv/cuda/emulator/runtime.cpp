// gpuconv CPU emulator runtime: fibers, barriers and the launch entry point.
//
// Linked into every kernel library (one copy per library, so every library has its own worker pool and
// its own TLS block). A launch hands blocks to workers (the calling thread plus pool threads); a worker runs
// the CUDA threads of one block as fibers, switched by the small x86-64 routine below, with a scheduler
// loop that resumes runnable fibers in the chosen order (forward, reverse, or shuffled every pass).
//
// Barriers: a block barrier completes when every thread that has not exited waits at it (exited threads
// drop out, as on Volta and later); reaching it from two different source lines in one block is reported.
// Warp barriers (shuffles, votes, __syncwarp) complete when every running lane named in the mask waits at
// one. A scheduling pass that resumes nobody is a deadlock: the launch fails with a description.
#include "gpuconv_emu.h"

#include <assert.h>
#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>


#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define GPUCONV_ASAN 1
#else
#define GPUCONV_ASAN 0
#endif
// The code that switches stacks is not instrumented: ASan's bookkeeping of the current stack is only right
// again after __sanitizer_finish_switch_fiber, and a no-return call there would make it unpoison the wrong one.
#define GPUCONV_NO_ASAN __attribute__((no_sanitize_address))

extern "C" {
void gpuconv_emu_switch(void** save_sp, void* new_sp) GPUCONV_EMU_HIDDEN;
void gpuconv_emu_fiber_start() GPUCONV_EMU_HIDDEN;
void gpuconv_emu_fiber_main() GPUCONV_EMU_HIDDEN;
}

// Saves the callee-saved registers on the current stack, stores the stack pointer to *save_sp, loads new_sp
// and restores the same from there. A new fiber's stack is laid out so that the final `ret` enters
// gpuconv_emu_fiber_start with a 16-byte aligned stack. MXCSR and the x87 control word are not switched
// (fnstcw/fldcw cost more than the rest of the switch): kernels must not change rounding modes.
asm(R"(
    .text
    .globl gpuconv_emu_switch
    .hidden gpuconv_emu_switch
    .type gpuconv_emu_switch, @function
gpuconv_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size gpuconv_emu_switch, .-gpuconv_emu_switch

    .globl gpuconv_emu_fiber_start
    .hidden gpuconv_emu_fiber_start
    .type gpuconv_emu_fiber_start, @function
gpuconv_emu_fiber_start:
    call gpuconv_emu_fiber_main
    ud2
    .size gpuconv_emu_fiber_start, .-gpuconv_emu_fiber_start
)");

namespace gpuconv_emu {

__thread State tl;

// The runtime uses only C and pthreads (no <thread>, <string>, <vector>): it compiles in a fraction of the time.
enum FiberState : unsigned char { RUNNABLE, WAIT_BLOCK, WAIT_WARP, DONE };
enum Schedule { FORWARD = 0, REVERSE = 1, SHUFFLE = 2 };
const char* const kBarrierKinds[] = {"__syncwarp", "a warp shuffle", "a warp vote", "a wmma operation",
                                     "an ldmatrix / mma.sync instruction", "a wgmma instruction"};
constexpr int kMaxThreads = 1024;
constexpr int kErrLen = 1024;

// An asynchronous copy (cuda_pipeline.h) not performed yet: it happens at the __pipeline_wait_prior that
// covers its group; until then the destination holds poison.
struct PendingCopy {
    void* dst;
    const void* src;
    unsigned size, zfill, group, line;
    const char* what;  // the copy's name in messages: __pipeline_memcpy_async or gpuconv_cp_async_ca16
};

struct Fiber {
    void* sp;
    char* stack_lo;  // usable stack [stack_lo, stack_lo + stack_size); guard page just below
    size_t stack_size;
    size_t color;    // bytes left unused at the top of the stack
    void* asan_fake;
    uint3 tid;
    FiberState state;
    unsigned gen;                  // block barrier generation waited on
    unsigned wmask, wline, bline;  // warp barrier mask/line, block barrier line
    int wkind;
    PendingCopy* copies;  // this thread's pending asynchronous copies, in issue order
    int ncopies, capcopies;
    unsigned commits;     // __pipeline_commit calls so far: the group the next copy joins
};

struct Warp {
    unsigned live, waiting;
    alignas(16) unsigned char slots[32][16];
};

struct Launch {
    const KernelEntry* kernel;
    dim3 grid, block;
    unsigned long long shmem;
    void** args;
    int schedule;
    bool wmma_permuted;  // the wmma fragment layout (mma.h): forward or permuted
    unsigned seed;
    long nblocks;
    long next;         // next block to take (__atomic)
    int failed;        // set once (__atomic) by the first block that fails, whose worker writes error
    int helpers_left;  // pool threads that may still join (__atomic)
    double timeout_s;
    const unsigned long long* ranges;  // the argument buffers [start, end) pairs: global memory
    int nranges;
    char error[kErrLen];
};

struct Worker {
    Fiber fibers[kMaxThreads];
    int order[kMaxThreads];
    Warp warps[kMaxThreads / 32];
    int nfibers;  // fibers with a stack so far
    void* sched_sp;
    const void* sched_bottom;
    size_t sched_size;
    char* tls_lo;
    size_t tls_size;
    size_t stack_size;
    Launch* launch;
    uint3 block;
    int nthreads, live;
    unsigned bar_gen, bar_arrived, bar_line;
    int bar_first;
    int bar_count[2];
    bool failed;
    unsigned rng;
    BlockExtension ext;  // gpuconv_wgmma.h's state of this block
    char error[kErrLen];
};

size_t page_size() { return size_t(sysconf(_SC_PAGESIZE)); }

size_t env_stack_size() {
    const char* s = getenv("GPUCONV_EMULATOR_STACK_KB");
    long kb = s ? atol(s) : 0;
    if (kb <= 0) kb = GPUCONV_ASAN ? 512 : 256;
    size_t ps = page_size();
    return (size_t(kb) * 1024 + ps - 1) / ps * ps;
}

struct TlsSearch { const void* probe; char* lo; size_t size; };

int find_tls(struct dl_phdr_info* info, size_t, void* data) {
    auto* s = static_cast<TlsSearch*>(data);
    if (!info->dlpi_tls_data) return 0;
    for (int i = 0; i < info->dlpi_phnum; ++i) {
        const auto& ph = info->dlpi_phdr[i];
        if (ph.p_type != PT_TLS) continue;
        char* lo = static_cast<char*>(info->dlpi_tls_data);
        if (static_cast<const char*>(s->probe) >= lo && static_cast<const char*>(s->probe) < lo + ph.p_memsz) {
            s->lo = lo;
            s->size = ph.p_memsz;
            return 1;
        }
    }
    return 0;
}

void install_alt_stack() {
    stack_t cur;
    if (sigaltstack(nullptr, &cur) == 0 && !(cur.ss_flags & SS_DISABLE)) return;
    stack_t ss{};
    ss.ss_size = 64 * 1024;
    ss.ss_sp = malloc(ss.ss_size);  // kept for the thread's life
    ss.ss_flags = 0;
    if (ss.ss_sp) sigaltstack(&ss, nullptr);
}

Worker& this_worker() {
    if (tl.worker) return *tl.worker;
    // One per OS thread that runs blocks, kept for the thread's life (fiber stacks are mapped lazily).
    auto* w = static_cast<Worker*>(calloc(1, sizeof(Worker)));
    if (!w) {
        fprintf(stderr, "gpuconv emulator: out of memory\n");
        abort();
    }
    tl.worker = w;
    tl.fiber = -1;
    TlsSearch s{&tl, nullptr, 0};
    dl_iterate_phdr(find_tls, &s);
    w->tls_lo = s.lo;
    w->tls_size = s.size;
    w->stack_size = env_stack_size();
    w->rng = 1;
    install_alt_stack();
    return *w;
}

void ensure_fibers(Worker& w, int n) {
    size_t ps = page_size();
    for (int i = w.nfibers; i < n; ++i) {
        void* mem = mmap(nullptr, w.stack_size + ps, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (mem == MAP_FAILED) {
            fprintf(stderr, "gpuconv emulator: cannot map a fiber stack\n");
            abort();
        }
        mprotect(mem, ps, PROT_NONE);  // guard page: a stack overflow faults here
        w.fibers[i].stack_lo = static_cast<char*>(mem) + ps;
        w.fibers[i].stack_size = w.stack_size;
        // Tops staggered by fiber index so that the hot frames of neighbouring fibers do not all fall into
        // the same cache sets (every stack top has the same page offset otherwise).
        w.fibers[i].color = size_t(i % 64) * 64 + size_t(i / 64 % 4) * 1024;
    }
    if (n > w.nfibers) w.nfibers = n;
}

// ---- fiber switches, with AddressSanitizer's annotations in sanitize builds ----
GPUCONV_NO_ASAN void resume(Worker& w, Fiber& f) {
#if GPUCONV_ASAN
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, f.stack_lo, f.stack_size);
    gpuconv_emu_switch(&w.sched_sp, f.sp);
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
    gpuconv_emu_switch(&w.sched_sp, f.sp);
#endif
}

GPUCONV_NO_ASAN void yield(Worker& w, Fiber& f) {
#if GPUCONV_ASAN
    __sanitizer_start_switch_fiber(&f.asan_fake, w.sched_bottom, w.sched_size);
    gpuconv_emu_switch(&f.sp, w.sched_sp);
    __sanitizer_finish_switch_fiber(f.asan_fake, &w.sched_bottom, &w.sched_size);
#else
    gpuconv_emu_switch(&f.sp, w.sched_sp);
#endif
}

[[noreturn]] GPUCONV_NO_ASAN void leave(Worker& w) {
#if GPUCONV_ASAN
    __sanitizer_start_switch_fiber(nullptr, w.sched_bottom, w.sched_size);
#endif
    void* dead;
    gpuconv_emu_switch(&dead, w.sched_sp);
    __builtin_unreachable();
}

// "kernel 'K' (grid (..), block (..), shared_mem N): block (..)" into buf; returns the length written.
int where(Worker& w, char* buf, size_t size) {
    const Launch& L = *w.launch;
    int len = snprintf(buf, size, "kernel '%s' (grid (%u,%u,%u), block (%u,%u,%u), shared_mem %llu): block (%u,%u,%u)",
                       L.kernel->name, L.grid.x, L.grid.y, L.grid.z, L.block.x, L.block.y, L.block.z, L.shmem,
                       w.block.x, w.block.y, w.block.z);
    return len < 0 ? 0 : (size_t(len) < size ? len : int(size) - 1);
}

// Records the launch's error (the first one only) as "<where>, thread (..): msg" or "<where>: msg".
void set_error(Worker& w, const Fiber* f, const char* msg) {
    if (w.failed) return;
    w.failed = true;
    int len = where(w, w.error, kErrLen);
    if (f)
        len += snprintf(w.error + len, kErrLen - len, ", thread (%u,%u,%u)", f->tid.x, f->tid.y, f->tid.z);
    if (len < kErrLen - 1) snprintf(w.error + len, kErrLen - len, ": %s", msg);
}

[[noreturn]] void fail_here(Worker& w, const char* msg) {
    Fiber& f = w.fibers[tl.fiber];
    set_error(w, &f, msg);
    f.state = DONE;
    leave(w);
}

void release_block(Worker& w) {
    w.bar_gen++;
    w.bar_arrived = 0;
    w.bar_first = -1;
    w.bar_count[w.bar_gen & 1u] = 0;
}

// Release every group of lanes of this warp whose running lanes all wait at a warp barrier.
void try_release_warp(Worker& w, int warp) {
    Warp& W = w.warps[warp];
    unsigned pending = W.waiting;
    while (pending) {
        int l = __builtin_ctz(pending);
        Fiber& f = w.fibers[warp * 32 + l];
        unsigned group = (f.wmask & W.live) | (1u << l);
        if ((group & ~W.waiting) == 0) {
            for (unsigned g = group; g; g &= g - 1) {
                Fiber& o = w.fibers[warp * 32 + __builtin_ctz(g)];
                if (o.wkind != f.wkind || (f.wkind != 0 && o.wline != f.wline)) {
                    char buf[256];
                    snprintf(buf, sizeof buf,
                             "lanes of warp %d wait at different warp barriers: lane %d at %s on line %u, "
                             "lane %d at %s on line %u",
                             warp, l, kBarrierKinds[f.wkind], f.wline, __builtin_ctz(g), kBarrierKinds[o.wkind],
                             o.wline);
                    set_error(w, nullptr, buf);
                    return;
                }
                o.state = RUNNABLE;
            }
            W.waiting &= ~group;
        }
        pending &= ~group;
    }
}

void describe_deadlock(Worker& w) {
    int nb = 0, nw = 0, bfirst = -1, wfirst = -1;
    for (int i = 0; i < w.nthreads; ++i) {
        const Fiber& f = w.fibers[i];
        if (f.state == WAIT_BLOCK && !nb++) bfirst = i;
        if (f.state == WAIT_WARP && !nw++) wfirst = i;
    }
    char buf[768];
    int len = snprintf(buf, sizeof buf, "deadlock: no thread can go on (%d threads wait at __syncthreads", nb);
    if (nb) {
        const Fiber& f = w.fibers[bfirst];
        len += snprintf(buf + len, sizeof buf - len, " (line %u, first thread (%u,%u,%u))", f.bline, f.tid.x,
                        f.tid.y, f.tid.z);
    }
    len += snprintf(buf + len, sizeof buf - len, ", %d at a warp barrier", nw);
    if (nw) {
        const Fiber& f = w.fibers[wfirst];
        len += snprintf(buf + len, sizeof buf - len, " (%s on line %u, first thread (%u,%u,%u))",
                        kBarrierKinds[f.wkind], f.wline, f.tid.x, f.tid.y, f.tid.z);
    }
    snprintf(buf + len, sizeof buf - len,
             ", %d still running); a barrier that only some threads reach, or a warp operation in a branch that "
             "part of the warp skips while the rest waits at __syncthreads",
             w.live);
    set_error(w, nullptr, buf);
}

void init_fiber_stack(Fiber& f) {
    // Layout (low to high): r15, r14, r13, r12, rbx, rbp, return address -> fiber_start.
    uintptr_t top = (reinterpret_cast<uintptr_t>(f.stack_lo) + f.stack_size - f.color) & ~uintptr_t(15);
    uintptr_t after_ret = top - 16;
    auto* sp = reinterpret_cast<uint64_t*>(after_ret - 56);
    for (int i = 0; i < 6; ++i) sp[i] = 0;
    sp[6] = reinterpret_cast<uint64_t>(&gpuconv_emu_fiber_start);
    f.sp = sp;
}

void shuffle_order(Worker& w, int n) {
    for (int i = n - 1; i > 0; --i) {
        w.rng ^= w.rng << 13;
        w.rng ^= w.rng >> 17;
        w.rng ^= w.rng << 5;
        int j = int(w.rng % unsigned(i + 1));
        int t = w.order[i];
        w.order[i] = w.order[j];
        w.order[j] = t;
    }
}

// Guard bytes after the dynamic shared memory: a write past the launch's shared_mem fails the launch instead of
// corrupting the heap. Under ASan the buffer is exactly shared_mem bytes, so ASan reports any access past it.
#if GPUCONV_ASAN
constexpr size_t kDynGuard = 0;
#else
constexpr size_t kDynGuard = 16 * 1024;
#endif
constexpr unsigned char kDynCanary = 0xA5;

// Fails the block if a guard byte changed: the first one's offset past the end.
bool dyn_guard_intact(Worker& w, const Launch& L, const void* dyn) {
    const unsigned char* g = static_cast<const unsigned char*>(dyn) + L.shmem;
    for (size_t i = 0; i < kDynGuard; ++i) {
        if (g[i] == kDynCanary) continue;
        char msg[320];
        snprintf(msg, sizeof msg, "wrote past the end of its dynamic shared memory (byte %zu after the %llu bytes of "
                 "shared_mem): the kernel uses more than the launch gives it", i, L.shmem);
        set_error(w, nullptr, msg);
        return false;
    }
    return true;
}

// Hands the block's extension state back to its header at the block's end; false when that fails the block.
bool finish_extension(Worker& w) {
    BlockExtension ext = w.ext;
    w.ext = BlockExtension{nullptr, nullptr};
    if (!ext.state) return true;
    char msg[kErrLen / 2];
    msg[0] = 0;
    if (ext.finish(ext.state, w.failed, msg, sizeof msg) || w.failed) return true;
    set_error(w, nullptr, msg);
    return false;
}

// Runs one block to completion; false (with w.error) when it failed.
bool run_block(Worker& w, Launch& L, long b, void* dyn) {
    unsigned bx = unsigned(b % L.grid.x);
    unsigned by = unsigned((b / L.grid.x) % L.grid.y);
    unsigned bz = unsigned(b / (long(L.grid.x) * L.grid.y));
    w.block = uint3{bx, by, bz};
    int n = int(L.block.x * L.block.y * L.block.z);
    // Poison shared memory: the static __shared__ variables are this library's TLS block (all of it but tl).
    if (w.tls_lo) {
        State saved = tl;
        memset(w.tls_lo, 0xFF, w.tls_size);
        tl = saved;
    }
    if (L.shmem) memset(dyn, 0xFF, L.shmem);
    if (kDynGuard) memset(static_cast<unsigned char*>(dyn) + L.shmem, kDynCanary, kDynGuard);
    tl.block_idx = w.block;
    tl.block_dim = uint3{L.block.x, L.block.y, L.block.z};
    tl.grid_dim = uint3{L.grid.x, L.grid.y, L.grid.z};
    tl.dyn_smem = dyn;
    w.nthreads = n;
    w.live = n;
    w.bar_gen = 0;
    w.bar_arrived = 0;
    w.bar_first = -1;
    w.bar_count[0] = w.bar_count[1] = 0;
    int nwarps = (n + 31) / 32;
    for (int i = 0; i < nwarps; ++i) {
        int lanes = n - 32 * i < 32 ? n - 32 * i : 32;
        w.warps[i].live = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u);
        w.warps[i].waiting = 0;
    }
    ensure_fibers(w, n);
    for (int i = 0; i < n; ++i) {
        Fiber& f = w.fibers[i];
        f.tid = uint3{unsigned(i) % L.block.x, (unsigned(i) / L.block.x) % L.block.y,
                      unsigned(i) / (L.block.x * L.block.y)};
        f.state = RUNNABLE;
        f.gen = 0;
        f.asan_fake = nullptr;
        f.ncopies = 0;
        f.commits = 0;
        init_fiber_stack(f);
        w.order[i] = L.schedule == REVERSE ? n - 1 - i : i;
    }
    w.rng = (L.seed * 2654435761u) ^ unsigned(b * 40503 + 1);
    if (!w.rng) w.rng = 1;
    while (w.live > 0) {
        if (L.schedule == SHUFFLE) shuffle_order(w, n);
        bool progress = false;
        for (int k = 0; k < n; ++k) {
            int idx = w.order[k];
            Fiber& f = w.fibers[idx];
            if (f.state == WAIT_BLOCK && f.gen != w.bar_gen) f.state = RUNNABLE;
            if (f.state != RUNNABLE) continue;
            progress = true;
            tl.thread_idx = f.tid;
            tl.fiber = idx;
            resume(w, f);
            tl.fiber = -1;
            if (w.failed) break;
        }
        if (w.failed) break;
        if (!progress) {
            describe_deadlock(w);
            break;
        }
    }
    if (!finish_extension(w)) w.failed = true;
    if (w.failed) {
#if GPUCONV_ASAN
        // Abandoned fibers leave poisoned frames on their stacks; the stacks are reused.
        for (int i = 0; i < n; ++i) ASAN_UNPOISON_MEMORY_REGION(w.fibers[i].stack_lo, w.fibers[i].stack_size);
#endif
        return false;
    }
    return kDynGuard == 0 || dyn_guard_intact(w, L, dyn);
}

void work(Launch& L) {
    Worker& w = this_worker();
    w.launch = &L;
    w.failed = false;
    w.error[0] = 0;
    // The requested size and the guard (none under ASan, which then sees overflows), 128-byte aligned (wmma,
    // ldmatrix and cp.async check alignment).
    void* dyn = nullptr;
    if ((L.shmem || kDynGuard) && posix_memalign(&dyn, 128, L.shmem + kDynGuard) != 0) {
        fprintf(stderr, "gpuconv emulator: cannot allocate %llu bytes of dynamic shared memory\n", L.shmem);
        abort();
    }
    while (!__atomic_load_n(&L.failed, __ATOMIC_RELAXED)) {
        long i = __atomic_fetch_add(&L.next, 1, __ATOMIC_RELAXED);
        if (i >= L.nblocks) break;
        long b = L.schedule == REVERSE ? L.nblocks - 1 - i : i;
        if (!run_block(w, L, b, dyn)) {
            if (__atomic_exchange_n(&L.failed, 1, __ATOMIC_ACQ_REL) == 0) memcpy(L.error, w.error, kErrLen);
            break;
        }
    }
    free(dyn);
    w.launch = nullptr;
}

// ---- worker pool: the calling thread plus pool threads, all taking blocks from one counter ----
struct Pool {
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t wake = PTHREAD_COND_INITIALIZER, done = PTHREAD_COND_INITIALIZER;
    Launch* job = nullptr;
    unsigned long gen = 0;
    int busy = 0;
    int size = 0;
};
Pool pool;  // its threads are detached and live until the process ends; the Pool is never destroyed
            // while they wait (static storage; destructors are trivial)

void* pool_main(void*) {
    unsigned long seen = 0;
    pthread_mutex_lock(&pool.mu);
    for (;;) {
        while (pool.gen == seen) pthread_cond_wait(&pool.wake, &pool.mu);
        seen = pool.gen;
        Launch* job = pool.job;
        if (!job || __atomic_fetch_sub(&job->helpers_left, 1, __ATOMIC_ACQ_REL) <= 0) continue;
        pool.busy++;
        pthread_mutex_unlock(&pool.mu);
        work(*job);
        pthread_mutex_lock(&pool.mu);
        if (--pool.busy == 0) pthread_cond_broadcast(&pool.done);
    }
    return nullptr;
}

bool start_detached(void* (*fn)(void*)) {
    pthread_t t;
    if (pthread_create(&t, nullptr, fn, nullptr) != 0) return false;
    pthread_detach(t);
    return true;
}

// ---- crash reports: say which kernel and launch died before the process does ----
struct sigaction old_actions[NSIG];
pthread_once_t handlers_once = PTHREAD_ONCE_INIT;

// Writes "kernel 'K' in launch ..., block (..), thread (..)" for the launch running on this thread.
int describe_launch(char* buf, size_t size) {
    Worker* w = tl.worker;
    if (!w || !w->launch) return 0;
    Launch& L = *w->launch;
    int len = snprintf(buf, size, "kernel '%s' in launch grid=(%u,%u,%u) block=(%u,%u,%u) shared_mem=%llu, block (%u,%u,%u)",
                       L.kernel->name, L.grid.x, L.grid.y, L.grid.z, L.block.x, L.block.y, L.block.z, L.shmem,
                       w->block.x, w->block.y, w->block.z);
    if (tl.fiber >= 0 && len >= 0 && size_t(len) < size) {
        const Fiber& f = w->fibers[tl.fiber];
        len += snprintf(buf + len, size - len, ", thread (%u,%u,%u)", f.tid.x, f.tid.y, f.tid.z);
    }
    return len < 0 ? 0 : (size_t(len) < size ? len : int(size) - 1);
}

void crash_handler(int sig, siginfo_t* info, void* ctx) {
    Worker* w = tl.worker;
    if (w && w->launch) {
        char buf[1024];
        const char* name = sig == SIGSEGV ? "SIGSEGV" : sig == SIGBUS ? "SIGBUS" : sig == SIGFPE ? "SIGFPE"
                           : sig == SIGABRT ? "SIGABRT" : "SIGILL";
        int len = snprintf(buf, sizeof buf, "\ngpuconv emulator: crash (%s, address %p) in ", name, info->si_addr);
        len += describe_launch(buf + len, sizeof buf - len);
        const char* a = static_cast<const char*>(info->si_addr);
        for (int i = 0; i < w->nfibers; ++i) {
            const Fiber& f = w->fibers[i];
            if (a >= f.stack_lo - page_size() && a < f.stack_lo && size_t(len) < sizeof buf) {
                len += snprintf(buf + len, sizeof buf - len,
                                "; the fault is in a fiber stack's guard page: stack overflow (locals over %zu "
                                "KiB; raise GPUCONV_EMULATOR_STACK_KB)",
                                f.stack_size / 1024);
                break;
            }
        }
        if (size_t(len) < sizeof buf) len += snprintf(buf + len, sizeof buf - len, "\n");
        if (len > int(sizeof buf)) len = sizeof buf;
        ssize_t r = write(2, buf, size_t(len));
        (void)r;
    }
    // Hand the signal on: restore the handler we replaced and return, so the fault happens again there.
    (void)ctx;
    sigaction(sig, &old_actions[sig], nullptr);
}

#if GPUCONV_ASAN
// AddressSanitizer calls this before it ends the process: say which kernel launch it caught.
void asan_death() {
    char buf[1024];
    int len = describe_launch(buf, sizeof buf);
    if (len > 0) fprintf(stderr, "gpuconv emulator: AddressSanitizer stopped %s\n", buf);
}
#endif

void install_crash_handlers_once() {
    for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT}) {
        struct sigaction sa {};
        sa.sa_sigaction = crash_handler;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
        sigemptyset(&sa.sa_mask);
        sigaction(sig, &sa, &old_actions[sig]);
    }
#if GPUCONV_ASAN
    __sanitizer_set_death_callback(asan_death);
#endif
}

pthread_mutex_t launch_mu = PTHREAD_MUTEX_INITIALIZER;

// ---- watchdog: fibers are never preempted, so a thread spinning on a flag that another thread or block
// should set runs forever. A launch that outlives its time limit is reported and the process aborted. ----
struct Watch {
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    bool started = false, active = false;
    double limit = 0, start = 0;
    char what[512] = {};
};
Watch watch;

double now_s() {
    timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
}

// Polls (no wake-ups on the launch path): a launch only stamps its start under an uncontended mutex.
void* watchdog_main(void*) {
    for (;;) {
        double poll = 1.0;
        pthread_mutex_lock(&watch.mu);
        if (watch.limit > 0) poll = watch.limit / 4 < 0.005 ? 0.005 : (watch.limit / 4 > 1.0 ? 1.0 : watch.limit / 4);
        if (watch.active && now_s() - watch.start > watch.limit) {
            fprintf(stderr,
                    "\ngpuconv emulator: %s still runs after %.0f s (GPUCONV_EMULATOR_TIMEOUT). The emulator never "
                    "preempts a thread: one that spins waiting for another thread or block hangs here. Aborting.\n",
                    watch.what, watch.limit);
            fflush(stderr);
            _exit(124);
        }
        pthread_mutex_unlock(&watch.mu);
        timespec ts{time_t(poll), long((poll - double(time_t(poll))) * 1e9)};
        nanosleep(&ts, nullptr);
    }
    return nullptr;
}

void watch_begin(const Launch& L) {
    if (L.timeout_s <= 0) return;
    pthread_mutex_lock(&watch.mu);
    if (!watch.started) watch.started = start_detached(watchdog_main);
    snprintf(watch.what, sizeof watch.what, "kernel '%s' (grid=(%u,%u,%u) block=(%u,%u,%u) shared_mem=%llu)",
             L.kernel->name, L.grid.x, L.grid.y, L.grid.z, L.block.x, L.block.y, L.block.z, L.shmem);
    watch.limit = L.timeout_s;
    watch.start = now_s();
    watch.active = true;
    pthread_mutex_unlock(&watch.mu);
}

void watch_end(const Launch& L) {
    if (L.timeout_s <= 0) return;
    pthread_mutex_lock(&watch.mu);
    watch.active = false;
    pthread_mutex_unlock(&watch.mu);
}

void block_barrier(unsigned line) {
    Worker& w = *tl.worker;
    Fiber& f = w.fibers[tl.fiber];
    if (w.bar_arrived == 0) {
        w.bar_line = line;
        w.bar_first = tl.fiber;
    } else if (line != w.bar_line) {
        char buf[200];
        const Fiber& o = w.fibers[w.bar_first];
        snprintf(buf, sizeof buf,
                 "__syncthreads() reached from different lines in one block: line %u here, line %u by "
                 "thread (%u,%u,%u)",
                 line, w.bar_line, o.tid.x, o.tid.y, o.tid.z);
        fail_here(w, buf);
    }
    f.bline = line;
    w.bar_arrived++;
    f.state = WAIT_BLOCK;
    f.gen = w.bar_gen;
    if (int(w.bar_arrived) == w.live) release_block(w);
    yield(w, f);
}

int block_barrier_count(int pred, unsigned line) {
    Worker& w = *tl.worker;
    unsigned gen = w.bar_gen;
    w.bar_count[gen & 1u] += pred != 0;
    block_barrier(line);
    return w.bar_count[gen & 1u];
}

void warp_barrier(unsigned mask, unsigned line, int kind) {
    Worker& w = *tl.worker;
    int t = tl.fiber;
    Fiber& f = w.fibers[t];
    f.state = WAIT_WARP;
    f.wmask = mask;
    f.wline = line;
    f.wkind = kind;
    w.warps[t >> 5].waiting |= 1u << (t & 31);
    try_release_warp(w, t >> 5);
    if (w.failed) fail_here(w, "");
    yield(w, f);
}

bool wmma_permuted() { return tl.worker->launch->wmma_permuted; }

unsigned char* warp_slot(unsigned lane) { return tl.worker->warps[tl.fiber >> 5].slots[lane]; }

unsigned warp_group(unsigned mask) {
    Worker& w = *tl.worker;
    return mask & w.warps[tl.fiber >> 5].live;
}

void fail(const char* what, unsigned line) {
    char buf[512];  // failf's 400 and the line
    snprintf(buf, sizeof buf, "%s on line %u", what, line);
    fail_here(*tl.worker, buf);
}

// ---- cuda_pipeline.h: asynchronous copies, deferred to the wait that covers them ----
bool inside(const void* p, size_t n, const void* lo, size_t size) {
    auto a = reinterpret_cast<uintptr_t>(p), b = reinterpret_cast<uintptr_t>(lo);
    return a >= b && a + n <= b + size && a + n >= a;
}

unsigned long long dyn_shared_bytes() { return tl.worker->launch->shmem; }

int block_threads() { return tl.worker->nthreads; }

BlockExtension& block_extension() { return tl.worker->ext; }

bool in_shared(const void* p, size_t n) {
    const Worker& w = *tl.worker;
    unsigned long long dyn = w.launch->shmem;
    return inside(p, n, w.tls_lo, w.tls_size) || (dyn && inside(p, n, tl.dyn_smem, dyn));
}

void pipeline_copy(void* dst, const void* src, size_t size, size_t zfill, unsigned line, const char* what) {
    Worker& w = *tl.worker;
    Fiber& f = w.fibers[tl.fiber];
    const Launch& L = *w.launch;
    char buf[300];
    const char* bad = nullptr;
    if (size != 4 && size != 8 && size != 16) {
        bad = "size_and_align must be 4, 8 or 16";
    } else if (zfill > size) {
        bad = "zfill is larger than size_and_align";
    } else if (reinterpret_cast<uintptr_t>(dst) % size || reinterpret_cast<uintptr_t>(src) % size) {
        bad = "the destination and the source must be aligned to size_and_align";
    } else if (!in_shared(dst, size)) {
        bad = "the destination is not in shared memory (a __shared__ variable or the dynamic shared memory)";
    } else if (size > zfill) {
        bool global = false;
        for (int i = 0; i < L.nranges && !global; ++i)
            global = inside(src, size - zfill, reinterpret_cast<const void*>(L.ranges[2 * i]),
                            L.ranges[2 * i + 1] - L.ranges[2 * i]);
        if (!global) bad = "the bytes read are not inside global memory (one kernel argument's array)";
    }
    if (bad) {
        snprintf(buf, sizeof buf, "%s(dst=%p, src=%p, size_and_align=%zu, zfill=%zu) on line %u: %s",
                 what, dst, src, size, zfill, line, bad);
        fail_here(w, buf);
    }
    if (f.ncopies == f.capcopies) {
        int cap = f.capcopies ? 2 * f.capcopies : 16;
        auto* grown = static_cast<PendingCopy*>(realloc(f.copies, sizeof(PendingCopy) * size_t(cap)));
        if (!grown) {
            fprintf(stderr, "gpuconv emulator: out of memory\n");
            abort();
        }
        f.copies = grown;
        f.capcopies = cap;
    }
    f.copies[f.ncopies++] = PendingCopy{dst, src, unsigned(size), unsigned(zfill), f.commits, line, what};
    memset(dst, 0xFF, size);  // poison until the wait: a read before it gives NaN / -1
}

void pipeline_commit() { tl.worker->fibers[tl.fiber].commits++; }

void pipeline_wait_prior(size_t prior, unsigned line) {
    (void)line;
    Fiber& f = tl.worker->fibers[tl.fiber];
    // Complete every copy of a committed group older than the `prior` most recent ones, in issue order.
    long long limit = (long long)f.commits - (long long)prior;
    int kept = 0;
    for (int i = 0; i < f.ncopies; ++i) {
        PendingCopy& c = f.copies[i];
        if ((long long)c.group < limit) {
            char* d = static_cast<char*>(c.dst);
            memcpy(d, c.src, c.size - c.zfill);
            memset(d + (c.size - c.zfill), 0, c.zfill);
        } else {
            f.copies[kept++] = c;
        }
    }
    f.ncopies = kept;
}

}  // namespace gpuconv_emu

using namespace gpuconv_emu;

// assert() in kernel code: glibc's assert calls __assert_fail; this hidden definition takes its place inside the
// kernel library, so that a failed assertion fails the launch (naming kernel, block and thread) instead of
// aborting the process.
extern "C" __attribute__((visibility("hidden"))) void __assert_fail(const char* expr, const char* file,
                                                                      unsigned int line, const char* func) noexcept {
    if (!tl.worker || tl.fiber < 0) {
        fprintf(stderr, "%s:%u: %s: Assertion `%s' failed.\n", file, line, func, expr);
        abort();
    }
    char buf[768];
    snprintf(buf, sizeof buf, "assert(%s) failed at %s:%u", expr, file, line);
    fail_here(*tl.worker, buf);
}

extern "C" GPUCONV_NO_ASAN void gpuconv_emu_fiber_main() {
    Worker& w = *tl.worker;
    int me = tl.fiber;
#if GPUCONV_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &w.sched_bottom, &w.sched_size);
#endif
    w.launch->kernel->call(w.launch->args);
    if (w.fibers[me].ncopies) {
        char buf[300];
        const PendingCopy& c = w.fibers[me].copies[0];
        snprintf(buf, sizeof buf,
                 "the thread exited with %d asynchronous copies never waited for (the first from "
                 "%s on line %u%s): every copy needs a __pipeline_wait_prior that covers it",
                 w.fibers[me].ncopies, c.what, c.line, c.group == w.fibers[me].commits ? ", never committed" : "");
        fail_here(w, buf);
    }
    w.fibers[me].state = DONE;
    w.live--;
    Warp& W = w.warps[me >> 5];
    W.live &= ~(1u << (me & 31));
    if (w.bar_arrived > 0 && int(w.bar_arrived) == w.live) release_block(w);
    if (W.waiting) try_release_warp(w, me >> 5);
    leave(w);
}

// Runs kernel `entry` over the grid. Returns 0, or 1 with a message in err.
extern "C" __attribute__((visibility("default"))) int gpuconv_emu_launch(
    const KernelEntry* entry, const unsigned* grid, const unsigned* block, unsigned long long shmem, void** args,
    int schedule, unsigned seed, int nworkers, double timeout_s, const unsigned long long* ranges, int nranges,
    char* err, unsigned long long errlen) {
    pthread_mutex_lock(&launch_mu);
    pthread_once(&handlers_once, install_crash_handlers_once);
    Launch L{};
    L.kernel = entry;
    L.grid = dim3(grid[0], grid[1], grid[2]);
    L.block = dim3(block[0], block[1], block[2]);
    L.shmem = shmem;
    L.args = args;
    L.schedule = schedule & 0xFF;              // bits 0-7: the schedule
    L.wmma_permuted = ((schedule >> 8) & 1) != 0;  // bit 8: the permuted wmma fragment layout
    L.seed = seed;
    L.nblocks = long(grid[0]) * grid[1] * grid[2];
    L.timeout_s = timeout_s;
    L.ranges = ranges;
    L.nranges = nranges;
    watch_begin(L);
    int helpers = nworkers - 1;
    if (helpers > L.nblocks - 1) helpers = int(L.nblocks - 1);
    if (helpers > 0) {
        pthread_mutex_lock(&pool.mu);
        while (pool.size < helpers && start_detached(pool_main)) pool.size++;
        L.helpers_left = helpers;
        pool.job = &L;
        pool.gen++;
        pthread_cond_broadcast(&pool.wake);
        pthread_mutex_unlock(&pool.mu);
    }
    work(L);
    if (helpers > 0) {
        pthread_mutex_lock(&pool.mu);
        pool.job = nullptr;
        while (pool.busy != 0) pthread_cond_wait(&pool.done, &pool.mu);
        pthread_mutex_unlock(&pool.mu);
    }
    watch_end(L);
    int rc = 0;
    if (L.failed) {
        snprintf(err, errlen, "%s", L.error);
        rc = 1;
    }
    pthread_mutex_unlock(&launch_mu);
    return rc;
}

// Bytes of static __shared__ memory (the TLS block less the runtime's own state), for the launcher's checks.
extern "C" __attribute__((visibility("default"))) unsigned long long gpuconv_emu_static_smem() {
    Worker& w = this_worker();
    return w.tls_size > sizeof(State) ? w.tls_size - sizeof(State) : 0;
}
