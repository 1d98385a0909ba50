// gpuconv CPU emulator: the CUDA built-ins that kernel source uses, for g++ -std=c++20.
//
// The emulator compiles a kernel file unchanged, with this header included first (-include) and
// GPUCONV_EMULATOR defined (__CUDA_ARCH__ and __CUDACC__ are not). Each CUDA thread of a block runs as a
// fiber on one OS thread (see runtime.cpp); blocks are spread over a few worker threads. Everything here
// that touches the scheduler goes through the small set of functions declared in namespace gpuconv_emu.
#ifndef GPUCONV_EMU_H
#define GPUCONV_EMU_H

#include <assert.h>    // assert() in kernels, as NVRTC has it built in
#include <math.h>      // libstdc++'s math.h: the C functions plus the float/double overloads in ::
#include <stdint.h>
#include <stdio.h>     // printf in kernels
#include <string.h>
#include <cstddef>
#include <type_traits>
#include <utility>

#ifndef GPUCONV_EMULATOR
#define GPUCONV_EMULATOR 1
#endif

#define GPUCONV_EMU_HIDDEN __attribute__((visibility("hidden")))

// ---------------------------------------------------------------------------------------------------------
// Qualifiers and attributes
#define __global__
#define __device__
#define __host__
#define __constant__
#define __managed__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// __restrict__ is a g++ keyword already.
// Static __shared__ variables live in the worker thread's TLS: a block never leaves its worker, and the
// runtime fills the whole TLS block of the kernel library with 0xFF at every block start.
#define __shared__ static thread_local

// ---------------------------------------------------------------------------------------------------------
// Vector types
struct uint3 { unsigned int x, y, z; };
struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};
#define GPUCONV_EMU_VEC2(T, name, al) \
    struct __attribute__((aligned(al))) name { T x, y; }; \
    inline name make_##name(T x, T y) { return name{x, y}; }
#define GPUCONV_EMU_VEC3(T, name) \
    struct name { T x, y, z; }; \
    inline name make_##name(T x, T y, T z) { return name{x, y, z}; }
#define GPUCONV_EMU_VEC4(T, name, al) \
    struct __attribute__((aligned(al))) name { T x, y, z, w; }; \
    inline name make_##name(T x, T y, T z, T w) { return name{x, y, z, w}; }
GPUCONV_EMU_VEC2(float, float2, 8)
GPUCONV_EMU_VEC3(float, float3)
GPUCONV_EMU_VEC4(float, float4, 16)
GPUCONV_EMU_VEC2(double, double2, 16)
GPUCONV_EMU_VEC2(int, int2, 8)
GPUCONV_EMU_VEC3(int, int3)
GPUCONV_EMU_VEC4(int, int4, 16)
GPUCONV_EMU_VEC2(unsigned int, uint2, 8)
GPUCONV_EMU_VEC4(unsigned int, uint4, 16)
inline uint3 make_uint3(unsigned int x, unsigned int y, unsigned int z) { return uint3{x, y, z}; }
#undef GPUCONV_EMU_VEC2
#undef GPUCONV_EMU_VEC3
#undef GPUCONV_EMU_VEC4

// ---------------------------------------------------------------------------------------------------------
// The runtime's side (runtime.cpp)
namespace gpuconv_emu {
struct Worker;
// All of the runtime's per-OS-thread state; nothing else in the kernel library may be thread_local except
// __shared__ variables (the block poison overwrites the rest of the TLS block and restores this struct).
struct State {
    uint3 thread_idx;
    uint3 block_idx;
    uint3 block_dim;  // uint3, not dim3: State must stay trivial (no TLS init wrapper on every access)
    uint3 grid_dim;
    void* dyn_smem;
    Worker* worker;
    int fiber;  // index of the running fiber (linear thread id), -1 in the scheduler
};
// __thread (not thread_local): no TLS init wrapper calls. local-dynamic: one __tls_get_addr per function serves
// tl and the __shared__ variables alike.
extern __thread State tl GPUCONV_EMU_HIDDEN __attribute__((tls_model("local-dynamic")));

GPUCONV_EMU_HIDDEN void block_barrier(unsigned line);
GPUCONV_EMU_HIDDEN int block_barrier_count(int pred, unsigned line);  // returns how many had pred != 0
GPUCONV_EMU_HIDDEN void warp_barrier(unsigned mask, unsigned line, int kind);
GPUCONV_EMU_HIDDEN unsigned char* warp_slot(unsigned lane);  // 16-byte exchange slot of a lane of my warp
GPUCONV_EMU_HIDDEN unsigned warp_group(unsigned mask);       // lanes of my warp in mask that still run
[[noreturn]] GPUCONV_EMU_HIDDEN void fail(const char* what, unsigned line);
// The warp barrier kinds (for the messages): 0 __syncwarp, 1 shuffle, 2 vote, 3 wmma (mma.h), 4 ldmatrix and
// mma.sync (gpuconv_ptx.h), 5 wgmma (gpuconv_wgmma.h).
enum WarpOp { WARP_SYNC = 0, WARP_SHUFFLE = 1, WARP_VOTE = 2, WARP_WMMA = 3, WARP_PTX = 4, WARP_WGMMA = 5 };
// Whether this launch uses the permuted wmma fragment layout (GPUCONV_EMULATOR_WMMA_LAYOUT; mma.h).
GPUCONV_EMU_HIDDEN bool wmma_permuted();
// cuda_pipeline_primitives.h: asynchronous copies (runtime.cpp).
GPUCONV_EMU_HIDDEN void pipeline_copy(void* dst, const void* src, size_t size, size_t zfill, unsigned line,
                                      const char* what);
GPUCONV_EMU_HIDDEN void pipeline_commit();
GPUCONV_EMU_HIDDEN void pipeline_wait_prior(size_t prior, unsigned line);
// Whether bytes [p, p + n) lie in shared memory: a static __shared__ variable or the dynamic shared memory.
GPUCONV_EMU_HIDDEN bool in_shared(const void* p, size_t n);
// The launch's dynamic shared memory in bytes, and the number of threads of the block.
GPUCONV_EMU_HIDDEN unsigned long long dyn_shared_bytes();
GPUCONV_EMU_HIDDEN int block_threads();
// State that a header keeps for the life of one block (gpuconv_wgmma.h: the asynchronous groups in flight).
// Null at every block start. When the block ends, cleanly or not, the runtime calls finish(state, failed, msg,
// len) once and clears the pointer; finish frees the state and returns false, with a message in msg, to fail a
// block that had not failed already.
struct BlockExtension {
    void* state;
    bool (*finish)(void* state, bool failed, char* msg, size_t len);
};
GPUCONV_EMU_HIDDEN BlockExtension& block_extension();

// The caller's line, as a type no argument converts to by accident: the defaulted last argument of the
// warp-collective headers' functions (mma.h, gpuconv_ptx.h).
struct Line {
    unsigned v;
    explicit Line(unsigned line) : v(line) {}
};

// Whether a float's bits are a TF32 value, as cvt.rna.tf32.f32 leaves it: its low 13 mantissa bits zero, or a
// NaN (whose payload the conversion keeps). A tensor-core operand that is not one was never rounded.
inline bool is_tf32_value(unsigned bits) {
    bool nan = (bits & 0x7F800000u) == 0x7F800000u && (bits & 0x007FFFFFu) != 0;
    return (bits & 0x1FFFu) == 0 || nan;
}

// fail() with a printf-style message (the warp-collective headers' checks).
[[noreturn]] inline void failf(unsigned line, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
inline void failf(unsigned line, const char* fmt, ...) {
    char buf[400];
    __builtin_va_list ap;
    __builtin_va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    __builtin_va_end(ap);
    fail(buf, line);
}

inline unsigned linear_tid() {
    return tl.thread_idx.x + tl.block_dim.x * (tl.thread_idx.y + tl.block_dim.y * tl.thread_idx.z);
}
inline unsigned lane() { return linear_tid() & 31u; }

// Two warp barriers around the exchange: publish, sync, read, sync.
template <class T>
inline T exchange(unsigned mask, T var, int src, unsigned line) {
    static_assert(sizeof(T) <= 16 && std::is_trivially_copyable_v<T>, "shuffle of a type over 16 bytes");
    unsigned me = lane();
    memcpy(warp_slot(me), &var, sizeof(T));
    warp_barrier(mask, line, 1);
    T out = var;
    unsigned group = warp_group(mask);
    if (src >= 0 && src < 32 && ((group >> src) & 1u)) {
        memcpy(&out, warp_slot(unsigned(src)), sizeof(T));
    } else if (src != int(me)) {
        memset(&out, 0xFF, sizeof(T));  // reading a lane that did not take part: undefined on a GPU
    }
    warp_barrier(mask, line, 1);
    return out;
}
// mode 0: the ballot; 1: any; 2: all (taken between the barriers: a lane may exit right after the second).
inline unsigned vote(unsigned mask, int pred, unsigned line, int mode) {
    unsigned me = lane();
    unsigned char p = pred != 0;
    memcpy(warp_slot(me), &p, 1);
    warp_barrier(mask, line, 2);
    unsigned group = warp_group(mask), bits = 0;
    for (unsigned l = 0; l < 32; ++l)
        if (((group >> l) & 1u) && warp_slot(l)[0]) bits |= 1u << l;
    warp_barrier(mask, line, 2);
    return mode == 0 ? bits : mode == 1 ? unsigned(bits != 0) : unsigned(bits == group);
}

// The frame of a warp-collective instruction (wmma, ldmatrix, mma.sync): each lane publishes a pointer to its
// own arguments (on its stack) in its warp slot; after a warp barrier the lowest running lane checks that the
// whole warp is there and runs body(calls), calls[l] being lane l's arguments, for the warp; a second barrier
// keeps the other lanes' arguments and registers alive until it is done. `what` completes "<name> is
// warp-collective<what>: all 32 lanes ...".
template <class Call, class Body>
inline void warp_collective(Call& me, unsigned line, int kind, const char* name, const char* what, Body&& body) {
    Call* mine = &me;
    memcpy(warp_slot(lane()), &mine, sizeof mine);
    warp_barrier(0xffffffffu, line, kind);
    unsigned group = warp_group(0xffffffffu);
    if (lane() == unsigned(__builtin_ctz(group))) {
        if (group != 0xffffffffu)
            failf(line, "%s is warp-collective%s: all 32 lanes of the warp must %s, but only lanes 0x%08x did (the "
                        "others exited, or the block's last warp is partial)", name, what,
                  kind == WARP_WMMA ? "call it" : "execute it", group);
        Call* calls[32];
        for (unsigned l = 0; l < 32; ++l) memcpy(&calls[l], warp_slot(l), sizeof(Call*));
        body(calls);
    }
    warp_barrier(0xffffffffu, line, kind);
}
}  // namespace gpuconv_emu

#define threadIdx (::gpuconv_emu::tl.thread_idx)
#define blockIdx (::gpuconv_emu::tl.block_idx)
#define blockDim (::gpuconv_emu::tl.block_dim)
#define gridDim (::gpuconv_emu::tl.grid_dim)
constexpr int warpSize = 32;

// ---------------------------------------------------------------------------------------------------------
// Barriers, fences, warp functions
inline void __syncthreads(unsigned line = __builtin_LINE()) { ::gpuconv_emu::block_barrier(line); }
inline int __syncthreads_count(int p, unsigned line = __builtin_LINE()) {
    return ::gpuconv_emu::block_barrier_count(p, line);
}
inline int __syncthreads_and(int p, unsigned line = __builtin_LINE()) {
    unsigned n = blockDim.x * blockDim.y * blockDim.z;
    return ::gpuconv_emu::block_barrier_count(p, line) == int(n);
}
inline int __syncthreads_or(int p, unsigned line = __builtin_LINE()) {
    return ::gpuconv_emu::block_barrier_count(p, line) != 0;
}
inline void __syncwarp(unsigned mask = 0xffffffffu, unsigned line = __builtin_LINE()) {
    ::gpuconv_emu::warp_barrier(mask, line, 0);
}
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_system() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
[[noreturn]] inline void __trap(unsigned line = __builtin_LINE()) { ::gpuconv_emu::fail("__trap()", line); }

template <class T>
inline T __shfl_sync(unsigned mask, T var, int src, int width = 32, unsigned line = __builtin_LINE()) {
    int me = int(::gpuconv_emu::lane());
    int base = me & ~(width - 1);
    return ::gpuconv_emu::exchange(mask, var, base + (src & (width - 1)), line);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32,
                          unsigned line = __builtin_LINE()) {
    int me = int(::gpuconv_emu::lane());
    int src = (me & (width - 1)) + int(delta) < width ? me + int(delta) : me;
    return ::gpuconv_emu::exchange(mask, var, src, line);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32, unsigned line = __builtin_LINE()) {
    int me = int(::gpuconv_emu::lane());
    int src = (me & (width - 1)) >= int(delta) ? me - int(delta) : me;
    return ::gpuconv_emu::exchange(mask, var, src, line);
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32,
                         unsigned line = __builtin_LINE()) {
    int me = int(::gpuconv_emu::lane());
    int src = me ^ lane_mask;
    if ((src & ~(width - 1)) != (me & ~(width - 1))) src = me;
    return ::gpuconv_emu::exchange(mask, var, src, line);
}
inline unsigned __ballot_sync(unsigned mask, int pred, unsigned line = __builtin_LINE()) {
    return ::gpuconv_emu::vote(mask, pred, line, 0);
}
inline int __any_sync(unsigned mask, int pred, unsigned line = __builtin_LINE()) {
    return int(::gpuconv_emu::vote(mask, pred, line, 1));
}
inline int __all_sync(unsigned mask, int pred, unsigned line = __builtin_LINE()) {
    return int(::gpuconv_emu::vote(mask, pred, line, 2));
}
inline unsigned __activemask() { return ::gpuconv_emu::warp_group(0xffffffffu); }

// ---------------------------------------------------------------------------------------------------------
// Atomics (blocks run on several OS threads: these are real atomics). GCC's __atomic builtins, which is what
// std::atomic_ref compiles to, without <atomic> (half of this header's compile time).
namespace gpuconv_emu {
template <class T, class F>
inline T cas_loop(T* p, F next) {  // atomically *p = next(old); returns old
    T old, nv;
    __atomic_load(p, &old, __ATOMIC_RELAXED);
    do {
        nv = next(old);
    } while (!__atomic_compare_exchange(p, &old, &nv, true, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED));
    return old;
}
}  // namespace gpuconv_emu
template <class T>
inline T atomicAdd(T* p, std::type_identity_t<T> v) {
    if constexpr (std::is_integral_v<T>) return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
    else return ::gpuconv_emu::cas_loop(p, [v](T old) { return T(old + v); });
}
template <class T>
inline T atomicSub(T* p, std::type_identity_t<T> v) {
    if constexpr (std::is_integral_v<T>) return __atomic_fetch_sub(p, v, __ATOMIC_SEQ_CST);
    else return ::gpuconv_emu::cas_loop(p, [v](T old) { return T(old - v); });
}
template <class T>
inline T atomicExch(T* p, std::type_identity_t<T> v) {
    T old;
    __atomic_exchange(p, &v, &old, __ATOMIC_SEQ_CST);
    return old;
}
template <class T>
inline T atomicAnd(T* p, std::type_identity_t<T> v) { return __atomic_fetch_and(p, v, __ATOMIC_SEQ_CST); }
template <class T>
inline T atomicOr(T* p, std::type_identity_t<T> v) { return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST); }
template <class T>
inline T atomicXor(T* p, std::type_identity_t<T> v) { return __atomic_fetch_xor(p, v, __ATOMIC_SEQ_CST); }
template <class T>
inline T atomicCAS(T* p, std::type_identity_t<T> compare, std::type_identity_t<T> v) {
    __atomic_compare_exchange(p, &compare, &v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return compare;  // the old value either way
}
template <class T>
inline T atomicMax(T* p, std::type_identity_t<T> v) {
    return ::gpuconv_emu::cas_loop(p, [v](T old) { return old < v ? v : old; });
}
template <class T>
inline T atomicMin(T* p, std::type_identity_t<T> v) {
    return ::gpuconv_emu::cas_loop(p, [v](T old) { return v < old ? v : old; });
}
inline unsigned atomicInc(unsigned* p, unsigned limit) {
    return ::gpuconv_emu::cas_loop(p, [limit](unsigned old) { return old >= limit ? 0u : old + 1u; });
}
inline unsigned atomicDec(unsigned* p, unsigned limit) {
    return ::gpuconv_emu::cas_loop(p, [limit](unsigned old) { return (old == 0u || old > limit) ? limit : old - 1u; });
}

// ---------------------------------------------------------------------------------------------------------
// min / max as CUDA has them in the global namespace
#define GPUCONV_EMU_MINMAX(T) \
    inline T min(T a, T b) { return b < a ? b : a; } \
    inline T max(T a, T b) { return a < b ? b : a; }
GPUCONV_EMU_MINMAX(int)
GPUCONV_EMU_MINMAX(unsigned int)
GPUCONV_EMU_MINMAX(long)
GPUCONV_EMU_MINMAX(unsigned long)
GPUCONV_EMU_MINMAX(long long)
GPUCONV_EMU_MINMAX(unsigned long long)
#undef GPUCONV_EMU_MINMAX
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
// Mixed arithmetic types (int with unsigned, float with double ...): the usual arithmetic conversions.
template <class A, class B>
    requires(std::is_arithmetic_v<A> && std::is_arithmetic_v<B> && !std::is_same_v<A, B>)
inline std::common_type_t<A, B> min(A a, B b) {
    return min(std::common_type_t<A, B>(a), std::common_type_t<A, B>(b));
}
template <class A, class B>
    requires(std::is_arithmetic_v<A> && std::is_arithmetic_v<B> && !std::is_same_v<A, B>)
inline std::common_type_t<A, B> max(A a, B b) {
    return max(std::common_type_t<A, B>(a), std::common_type_t<A, B>(b));
}

// ---------------------------------------------------------------------------------------------------------
// Math intrinsics not in <math.h>
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanhf(float x) { return tanhf(x); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
inline float __saturatef(float x) { return x != x ? 0.0f : fminf(fmaxf(x, 0.0f), 1.0f); }
inline float exp10f(float x) { return powf(10.0f, x); }
inline float __int_as_float(int v) { float f; memcpy(&f, &v, 4); return f; }
inline int __float_as_int(float f) { int v; memcpy(&v, &f, 4); return v; }
inline float __uint_as_float(unsigned v) { float f; memcpy(&f, &v, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned v; memcpy(&v, &f, 4); return v; }
inline double __longlong_as_double(long long v) { double f; memcpy(&f, &v, 8); return f; }
inline long long __double_as_longlong(double f) { long long v; memcpy(&v, &f, 8); return v; }
inline int __float2int_rn(float x) { return int(nearbyintf(x)); }
inline int __float2int_rz(float x) { return int(x); }
inline int __float2int_rd(float x) { return int(floorf(x)); }
inline int __float2int_ru(float x) { return int(ceilf(x)); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(unsigned(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
    x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
    x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
    x = ((x >> 4) & 0x0F0F0F0Fu) | ((x & 0x0F0F0F0Fu) << 4);
    return __builtin_bswap32(x);
}
inline int __mul24(int a, int b) { return a * b; }
inline unsigned __umul24(unsigned a, unsigned b) { return a * b; }
inline int __mulhi(int a, int b) { return int((long long)a * b >> 32); }
inline unsigned __umulhi(unsigned a, unsigned b) { return unsigned((unsigned long long)a * b >> 32); }
template <class T>
inline T __ldg(const T* p) { return *p; }
template <class T>
inline T __ldcg(const T* p) { return *p; }
template <class T>
inline T __ldcs(const T* p) { return *p; }
template <class T>
inline void __stcg(T* p, T v) { *p = v; }
template <class T>
inline void __stcs(T* p, T v) { *p = v; }
inline long long clock64() { return (long long)__builtin_ia32_rdtsc(); }

// ---------------------------------------------------------------------------------------------------------
// __half: a 16-bit IEEE float; arithmetic goes through float and rounds once (nearest even), as cuda_fp16.h
// does for these operators. The same names as cuda_fp16.h, so kernels use __half on both sides.
struct __half {
    static constexpr char gpuconv_emu_kind = 'h';  // the launcher's tag: an array of float16 exactly
    _Float16 __x;
    __half() = default;
    constexpr __half(float f) : __x(static_cast<_Float16>(f)) {}
    constexpr __half(double f) : __x(static_cast<_Float16>(f)) {}
    constexpr __half(int v) : __x(static_cast<_Float16>(float(v))) {}
    constexpr __half(unsigned v) : __x(static_cast<_Float16>(float(v))) {}
    constexpr __half(long long v) : __x(static_cast<_Float16>(float(v))) {}
    constexpr operator float() const { return static_cast<float>(__x); }
    __half& operator+=(const __half& o) { return *this = __half(float(*this) + float(o)); }
    __half& operator-=(const __half& o) { return *this = __half(float(*this) - float(o)); }
    __half& operator*=(const __half& o) { return *this = __half(float(*this) * float(o)); }
    __half& operator/=(const __half& o) { return *this = __half(float(*this) / float(o)); }
};
static_assert(sizeof(__half) == 2 && alignof(__half) == 2, "__half layout");
typedef __half half;
struct __attribute__((aligned(4))) __half2 { __half x, y; };
typedef __half2 half2;
inline __half operator+(const __half& a, const __half& b) { return __half(float(a) + float(b)); }
inline __half operator-(const __half& a, const __half& b) { return __half(float(a) - float(b)); }
inline __half operator*(const __half& a, const __half& b) { return __half(float(a) * float(b)); }
inline __half operator/(const __half& a, const __half& b) { return __half(float(a) / float(b)); }
inline __half operator-(const __half& a) { return __half(-float(a)); }
inline __half operator+(const __half& a) { return a; }
inline bool operator==(const __half& a, const __half& b) { return float(a) == float(b); }
inline bool operator!=(const __half& a, const __half& b) { return float(a) != float(b); }
inline bool operator<(const __half& a, const __half& b) { return float(a) < float(b); }
inline bool operator<=(const __half& a, const __half& b) { return float(a) <= float(b); }
inline bool operator>(const __half& a, const __half& b) { return float(a) > float(b); }
inline bool operator>=(const __half& a, const __half& b) { return float(a) >= float(b); }
inline float __half2float(__half h) { return float(h); }
inline __half __float2half(float f) { return __half(f); }
inline __half __float2half_rn(float f) { return __half(f); }
inline __half __double2half(double d) { return __half(d); }
inline __half __int2half_rn(int v) { return __half(v); }
inline int __half2int_rn(__half h) { return int(nearbyintf(float(h))); }
inline int __half2int_rz(__half h) { return int(float(h)); }
inline unsigned short __half_as_ushort(__half h) { unsigned short u; memcpy(&u, &h, 2); return u; }
inline short __half_as_short(__half h) { short u; memcpy(&u, &h, 2); return u; }
inline __half __ushort_as_half(unsigned short u) { __half h; memcpy(&h, &u, 2); return h; }
inline __half __short_as_half(short u) { __half h; memcpy(&h, &u, 2); return h; }
inline __half __hadd(__half a, __half b) { return a + b; }
inline __half __hsub(__half a, __half b) { return a - b; }
inline __half __hmul(__half a, __half b) { return a * b; }
inline __half __hdiv(__half a, __half b) { return a / b; }
inline __half __hneg(__half a) { return -a; }
inline __half __habs(__half a) { return __half(fabsf(float(a))); }
// One rounding of a * b + c: exact product in double, the sum's error (TwoSum) kept as a sticky bit (round to
// odd), then the rounding to half (fmaf then half would round twice: a float tie can hide the true side).
inline __half __hfma(__half a, __half b, __half c) {
    double p = double(float(a)) * double(float(b)), q = double(float(c));
    double hi = p + q, bb = hi - p, lo = (p - (hi - bb)) + (q - bb);
    unsigned long long u = __builtin_bit_cast(unsigned long long, hi);
    if (lo != 0 && (u & 0x7FF0000000000000ull) != 0x7FF0000000000000ull) {
        if ((lo > 0) != (hi > 0)) u -= 1;
        u |= 1;
    }
    return __half(__builtin_bit_cast(double, u));
}
inline __half __hmax(__half a, __half b) { return __half(fmaxf(float(a), float(b))); }
inline __half __hmin(__half a, __half b) { return __half(fminf(float(a), float(b))); }
inline bool __heq(__half a, __half b) { return a == b; }
inline bool __hne(__half a, __half b) { return a != b; }
inline bool __hlt(__half a, __half b) { return a < b; }
inline bool __hle(__half a, __half b) { return a <= b; }
inline bool __hgt(__half a, __half b) { return a > b; }
inline bool __hge(__half a, __half b) { return a >= b; }
inline bool __hisnan(__half a) { return float(a) != float(a); }
inline bool __hisinf(__half a) { return isinf(float(a)); }
inline __half hexp(__half a) { return __half(expf(float(a))); }
inline __half hlog(__half a) { return __half(logf(float(a))); }
inline __half hsqrt(__half a) { return __half(sqrtf(float(a))); }
inline __half hrsqrt(__half a) { return __half(1.0f / sqrtf(float(a))); }
inline __half2 __halves2half2(__half a, __half b) { return __half2{a, b}; }
inline __half2 __floats2half2_rn(float a, float b) { return __half2{__half(a), __half(b)}; }
inline float __low2float(__half2 h) { return float(h.x); }
inline float __high2float(__half2 h) { return float(h.y); }
inline __half __low2half(__half2 h) { return h.x; }
inline __half __high2half(__half2 h) { return h.y; }

// ---------------------------------------------------------------------------------------------------------
// Kernel entries: the generated epilogue lists one per kernel (extern "C" names and name expressions).
namespace gpuconv_emu {
// How the launcher checks an argument: kind 'p' pointer, 'i' signed integer, 'u' unsigned integer,
// 'f' float or double, 'h' __half, 'r' __nv_bfloat16, 'b' bool, 'o' any other type (a struct: passed by its
// bytes); for pointers, elem_kind/elem_size describe the pointee ('v' for void). type is the C type's name
// (the pointee's for pointers), for messages.
struct ArgInfo { char kind; char elem_kind; unsigned short size; unsigned short elem_size; const char* type; };
struct KernelEntry {
    const char* name;
    void (*call)(void** args);
    int nargs;
    const ArgInfo* args;
};

// "... [with T = float]": the launcher keeps what follows "T = ".
template <class T>
constexpr const char* type_name() { return __PRETTY_FUNCTION__; }

template <class T>
constexpr char kind_of() {
    using U = std::remove_cv_t<T>;
    if constexpr (std::is_void_v<U>) return 'v';
    else if constexpr (std::is_same_v<U, bool>) return 'b';
    else if constexpr (requires { U::gpuconv_emu_kind; }) return U::gpuconv_emu_kind;  // __half, bfloat16
    else if constexpr (std::is_floating_point_v<U>) return 'f';
    else if constexpr (std::is_integral_v<U>) return std::is_signed_v<U> ? 'i' : 'u';
    else if constexpr (std::is_pointer_v<U>) return 'p';
    else return 'o';
}
template <class T>
constexpr unsigned short size_of() {
    if constexpr (std::is_void_v<std::remove_cv_t<T>>) return 0;
    else return sizeof(T);
}
template <class T>
constexpr ArgInfo arg_info() {
    using U = std::remove_cvref_t<T>;
    if constexpr (std::is_pointer_v<U>) {
        using E = std::remove_pointer_t<U>;
        return ArgInfo{'p', kind_of<E>(), sizeof(U), size_of<E>(), type_name<E>()};
    } else {
        return ArgInfo{kind_of<U>(), 0, sizeof(U), 0, type_name<U>()};
    }
}

template <class... A>
struct Signature {
    static constexpr int nargs = sizeof...(A);
    static constexpr ArgInfo infos[sizeof...(A) + 1] = {arg_info<A>()..., ArgInfo{0, 0, 0, 0, nullptr}};
    template <void (*F)(A...), size_t... I>
    static void call_with(void** args, std::index_sequence<I...>) {
        (void)args;
        F(*static_cast<std::remove_cvref_t<A>*>(args[I])...);
    }
    template <void (*F)(A...)>
    static void call(void** args) { call_with<F>(args, std::index_sequence_for<A...>{}); }
};
template <class... A>
Signature<A...> signature_of(void (*)(A...));

template <auto F>
constexpr KernelEntry make_entry(const char* name) {
    using S = decltype(signature_of(F));
    return KernelEntry{name, &S::template call<F>, S::nargs, S::infos};
}
}  // namespace gpuconv_emu

#endif  // GPUCONV_EMU_H
