// gpuconv emulator: nvcuda::wmma (the tensor-core fragments of CUDA's mma.h) for g++.
//
// The same names and signatures as CUDA's mma.h for the shapes gpuconv uses: m16n16k16 with __half or
// __nv_bfloat16 operands (float or __half accumulator) and m16n16k8 with precision::tf32 operands (float
// accumulator). A fragment holds num_elements values per lane in x[] (elementwise code on x[] is legal CUDA).
//
// load_matrix_sync, store_matrix_sync and mma_sync are warp-collective: every lane of the warp must reach the
// same call (same line) with the same pointer, ldm and layout; a lane missing, or another argument, fails the
// launch. One lane (the lowest) does the whole warp's work between two warp barriers, while the other lanes'
// fragments stay put. What CUDA leaves unspecified is made to fail:
// - the element <-> (row, col) mapping of a fragment: a plain one in the forward layout, a permuted one (and
//   the other copy of a replicated element) in the permuted layout (GPUCONV_EMULATOR_WMMA_LAYOUT, on by
//   default under the reverse and shuffle schedules). Layout-agnostic code gives identical results in both.
// - a TF32 operand that was never converted: mma_sync fails on a tf32 matrix_a/matrix_b element whose low 13
//   mantissa bits are not zero (wmma::__float_to_tf32 always clears them).
// - load/store pointers not 256-bit aligned, ldm not a multiple of 16 bytes (CUDA's documented requirements).
// mma_sync sums in float, in a fixed order (c, then k = 0, 1, ...), the exact products of the operand values
// (exact in float for fp16, bf16 and tf32 operands), and rounds once to the accumulator type.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace nvcuda {
namespace wmma {

// cvt.rna.tf32.f32 (round to nearest, ties away from zero, 10 explicit mantissa bits): on the float's bits u,
// u = (u + 0x1000) & 0xFFFFE000 if finite (a finite value may round to inf); NaN and inf unchanged.
inline float __float_to_tf32(float in) {
    unsigned u = __builtin_bit_cast(unsigned, in);
    if ((u & 0x7F800000u) != 0x7F800000u) u = (u + 0x1000u) & 0xFFFFE000u;
    return __builtin_bit_cast(float, u);
}

struct row_major;
struct col_major;
struct matrix_a;
struct matrix_b;
struct accumulator;
namespace precision {
struct tf32;
}

enum layout_t { mem_row_major, mem_col_major };

template <typename T>
struct helper_traits {
    typedef T element_type;
    typedef T storage_element_type;
    typedef T fill_argument_type;
};
template <>
struct helper_traits<precision::tf32> {
    typedef precision::tf32 element_type;
    typedef float storage_element_type;
    typedef float fill_argument_type;
};

template <typename T, int size, int packed_size = size>
struct __align__(8) __frag_base {
    enum { num_elements = size };
    enum { num_storage_elements = packed_size };
    typedef T element_type;
    typedef typename helper_traits<T>::storage_element_type storage_element_type;
    storage_element_type x[num_storage_elements];
};

// Per lane, as CUDA's (not warp-collective).
template <typename FragEleType, int size, int packed_size>
inline void fill_fragment(__frag_base<FragEleType, size, packed_size>& f,
                          const typename helper_traits<FragEleType>::fill_argument_type& in) {
    for (int i = 0; i < f.num_storage_elements; i++) f.x[i] = in;
}

template <typename Use, int m, int n, int k, typename T, typename Layout = void>
class fragment;

#define GPUCONV_WMMA_OPERANDS(M, N, K, T, NE)                                                                  \
    template <> class fragment<matrix_a, M, N, K, T, row_major> : public __frag_base<T, NE> {};              \
    template <> class fragment<matrix_a, M, N, K, T, col_major> : public __frag_base<T, NE> {};              \
    template <> class fragment<matrix_b, M, N, K, T, row_major> : public __frag_base<T, NE> {};              \
    template <> class fragment<matrix_b, M, N, K, T, col_major> : public __frag_base<T, NE> {};
// Elements per lane as in CUDA's mma.h (the __half operands are held twice over the warp).
GPUCONV_WMMA_OPERANDS(16, 16, 16, __half, 16)
GPUCONV_WMMA_OPERANDS(16, 16, 16, __nv_bfloat16, 8)
GPUCONV_WMMA_OPERANDS(16, 16, 8, precision::tf32, 4)
#undef GPUCONV_WMMA_OPERANDS
template <> class fragment<accumulator, 16, 16, 16, float> : public __frag_base<float, 8> {};
template <> class fragment<accumulator, 16, 16, 16, __half> : public __frag_base<__half, 8> {};
template <> class fragment<accumulator, 16, 16, 8, float> : public __frag_base<float, 8> {};

}  // namespace wmma
}  // namespace nvcuda

namespace gpuconv_emu {
namespace wmma_detail {
using namespace ::nvcuda::wmma;

using ::gpuconv_emu::Line;

template <class Use, int M, int N, int K>
struct Dims;
template <int M, int N, int K>
struct Dims<matrix_a, M, N, K> { static constexpr int rows = M, cols = K; };
template <int M, int N, int K>
struct Dims<matrix_b, M, N, K> { static constexpr int rows = K, cols = N; };
template <int M, int N, int K>
struct Dims<accumulator, M, N, K> { static constexpr int rows = M, cols = N; };

// Element i of lane l is slot s = l * NE + i; a tile of `cells` (a power of two) cells numbered row-major is
// held `32 * NE / cells` times over the warp. Forward layout: slot s holds cell s mod cells, and mma_sync reads
// copy 0. Permuted layout: an odd-multiplier affine permutation of the cells, and mma_sync reads the last copy.
inline int cell_of(int slot, int cells, bool permuted) {
    int base = slot & (cells - 1);
    return permuted ? (base * 157 + 73) & (cells - 1) : base;
}

enum Op { LOAD = 0, STORE = 1, MMA = 2 };
const char* const kOpNames[] = {"wmma::load_matrix_sync", "wmma::store_matrix_sync", "wmma::mma_sync"};

// What one lane passed; lanes publish a pointer to theirs (on their own stack) in their warp slot.
struct Call {
    int op;
    const void* ptr;
    unsigned ldm;
    int layout;  // 0 row-major memory, 1 column-major
    void* frag;  // load: the destination; store: the source; mma: d
    const void* a;
    const void* b;
    const void* c;
};

// The warp-collective frame (gpuconv_emu.h), and the lanes must agree on the pointer, ldm and layout.
template <class Body>
inline void collective(Call& me, unsigned line, Body&& body) {
    const char* name = kOpNames[me.op];
    warp_collective(me, line, WARP_WMMA, name, "", [&](Call* const* calls) {
        for (unsigned l = 0; l < 32; ++l) {
            const Call& o = *calls[l];
            if (o.ptr != me.ptr || o.ldm != me.ldm || o.layout != me.layout)
                failf(line, "%s: the lanes of the warp passed different arguments: lane %u p=%p ldm=%u layout=%d, "
                            "lane %u p=%p ldm=%u layout=%d (every lane must pass the same pointer, ldm and layout)",
                      name, lane(), me.ptr, me.ldm, me.layout, l, o.ptr, o.ldm, o.layout);
        }
        body(calls);
    });
}

template <class S>
inline void check_memory(int op, const S* p, unsigned ldm, unsigned line) {
    if (reinterpret_cast<uintptr_t>(p) % 32 != 0)
        failf(line, "%s: pointer %p is not 256-bit (32-byte) aligned, as CUDA requires", kOpNames[op],
              static_cast<const void*>(p));
    if (ldm * sizeof(S) % 16 != 0)
        failf(line, "%s: ldm=%u elements (%zu bytes) is not a multiple of 16 bytes, as CUDA requires", kOpNames[op],
              ldm, size_t(ldm) * sizeof(S));
}

template <class Frag, int R, int C, class S>
inline void load(Call* const* calls, const S* p, unsigned ldm, bool col) {
    constexpr int NE = Frag::num_elements;
    const bool perm = wmma_permuted();
    for (int l = 0; l < 32; ++l) {
        Frag& f = *static_cast<Frag*>(calls[l]->frag);
        for (int i = 0; i < NE; ++i) {
            int cell = cell_of(l * NE + i, R * C, perm), r = cell / C, c = cell % C;
            f.x[i] = p[col ? size_t(c) * ldm + r : size_t(r) * ldm + c];
        }
    }
}

// The tile of a fragment, gathered from the lanes' elements (one copy of each cell), as float.
template <class Frag, int R, int C>
inline void gather(const void* const* frags, float* out) {
    constexpr int NE = Frag::num_elements, cells = R * C, copies = 32 * NE / cells;
    const int first = wmma_permuted() ? (copies - 1) * cells : 0;
    for (int s = first; s < first + cells; ++s) {
        const Frag& f = *static_cast<const Frag*>(frags[s / NE]);
        out[cell_of(s, cells, wmma_permuted())] = float(f.x[s % NE]);
    }
}

template <class T>
constexpr bool is_tf32 = std::is_same_v<T, precision::tf32>;

template <class Frag>
inline void check_tf32(const void* const* frags, const char* which, unsigned line) {
    for (int l = 0; l < 32; ++l) {
        const Frag& f = *static_cast<const Frag*>(frags[l]);
        for (int i = 0; i < Frag::num_elements; ++i) {
            unsigned u = __builtin_bit_cast(unsigned, f.x[i]);
            if (!is_tf32_value(u))
                failf(line, "wmma::mma_sync: element x[%d] of lane %d's tf32 %s fragment is %.9g (bits 0x%08x), not "
                            "a TF32 value (low 13 mantissa bits set): convert every element with "
                            "wmma::__float_to_tf32 before mma_sync", i, l, which, double(f.x[i]), u);
        }
    }
}
}  // namespace wmma_detail
}  // namespace gpuconv_emu

namespace nvcuda {
namespace wmma {

template <typename Use, int m, int n, int k, typename T, typename L>
    requires(!std::is_same_v<Use, accumulator>)
inline void load_matrix_sync(fragment<Use, m, n, k, T, L>& a,
                             const typename helper_traits<T>::storage_element_type* p, unsigned ldm,
                             ::gpuconv_emu::wmma_detail::Line line = ::gpuconv_emu::wmma_detail::Line(__builtin_LINE())) {
    namespace D = ::gpuconv_emu::wmma_detail;
    using Frag = fragment<Use, m, n, k, T, L>;
    constexpr bool col = std::is_same_v<L, col_major>;
    D::Call me{D::LOAD, p, ldm, col, &a, nullptr, nullptr, nullptr};
    D::collective(me, line.v, [&](D::Call* const* calls) {
        D::check_memory(D::LOAD, p, ldm, line.v);
        D::load<Frag, D::Dims<Use, m, n, k>::rows, D::Dims<Use, m, n, k>::cols>(calls, p, ldm, col);
    });
}

template <int m, int n, int k, typename T>
inline void load_matrix_sync(fragment<accumulator, m, n, k, T>& a, const T* p, unsigned ldm, layout_t layout,
                             ::gpuconv_emu::wmma_detail::Line line = ::gpuconv_emu::wmma_detail::Line(__builtin_LINE())) {
    namespace D = ::gpuconv_emu::wmma_detail;
    using Frag = fragment<accumulator, m, n, k, T>;
    bool col = layout == mem_col_major;
    D::Call me{D::LOAD, p, ldm, int(layout), &a, nullptr, nullptr, nullptr};
    D::collective(me, line.v, [&](D::Call* const* calls) {
        D::check_memory(D::LOAD, p, ldm, line.v);
        D::load<Frag, m, n>(calls, p, ldm, col);
    });
}

template <int m, int n, int k, typename T>
inline void store_matrix_sync(T* p, const fragment<accumulator, m, n, k, T>& a, unsigned ldm, layout_t layout,
                              ::gpuconv_emu::wmma_detail::Line line = ::gpuconv_emu::wmma_detail::Line(__builtin_LINE())) {
    namespace D = ::gpuconv_emu::wmma_detail;
    using Frag = fragment<accumulator, m, n, k, T>;
    D::Call me{D::STORE, p, ldm, int(layout), const_cast<Frag*>(&a), nullptr, nullptr, nullptr};
    D::collective(me, line.v, [&](D::Call* const* calls) {
        D::check_memory(D::STORE, p, ldm, line.v);
        constexpr int NE = Frag::num_elements;
        const bool perm = ::gpuconv_emu::wmma_permuted(), col = layout == mem_col_major;
        for (int l = 0; l < 32; ++l) {
            const Frag& f = *static_cast<const Frag*>(calls[l]->frag);
            for (int i = 0; i < NE; ++i) {
                int cell = D::cell_of(l * NE + i, m * n, perm), r = cell / n, c = cell % n;
                p[col ? size_t(c) * ldm + r : size_t(r) * ldm + c] = f.x[i];
            }
        }
    });
}

template <int m, int n, int k, typename TA, typename LA, typename TB, typename LB, typename TD, typename TC>
inline void mma_sync(fragment<accumulator, m, n, k, TD>& d, const fragment<matrix_a, m, n, k, TA, LA>& a,
                     const fragment<matrix_b, m, n, k, TB, LB>& b, const fragment<accumulator, m, n, k, TC>& c,
                     ::gpuconv_emu::wmma_detail::Line line = ::gpuconv_emu::wmma_detail::Line(__builtin_LINE())) {
    static_assert(std::is_same_v<TA, TB>, "wmma::mma_sync: matrix_a and matrix_b must have the same element type");
    namespace D = ::gpuconv_emu::wmma_detail;
    using FA = fragment<matrix_a, m, n, k, TA, LA>;
    using FB = fragment<matrix_b, m, n, k, TB, LB>;
    using FC = fragment<accumulator, m, n, k, TC>;
    using FD = fragment<accumulator, m, n, k, TD>;
    D::Call me{D::MMA, nullptr, 0, 0, &d, &a, &b, &c};
    D::collective(me, line.v, [&](D::Call* const* calls) {
        const void* fa[32];
        const void* fb[32];
        const void* fc[32];
        for (int l = 0; l < 32; ++l) {
            fa[l] = calls[l]->a;
            fb[l] = calls[l]->b;
            fc[l] = calls[l]->c;
        }
        if constexpr (D::is_tf32<TA>) {
            D::check_tf32<FA>(fa, "matrix_a", line.v);
            D::check_tf32<FB>(fb, "matrix_b", line.v);
        }
        float A[m * k], B[k * n], C[m * n];
        D::gather<FA, m, k>(fa, A);
        D::gather<FB, k, n>(fb, B);
        D::gather<FC, m, n>(fc, C);  // all of c before any d is written: d may be c
        for (int r = 0; r < m; ++r)
            for (int col = 0; col < n; ++col) {
                float acc = C[r * n + col];
                for (int kk = 0; kk < k; ++kk) {
                    float prod = A[r * k + kk] * B[kk * n + col];  // exact: both operands have <= 11 bits
                    acc += prod;
                }
                C[r * n + col] = acc;
            }
        constexpr int NE = FD::num_elements;
        const bool perm = ::gpuconv_emu::wmma_permuted();
        for (int l = 0; l < 32; ++l) {
            FD& f = *static_cast<FD*>(calls[l]->frag);
            for (int i = 0; i < NE; ++i) f.x[i] = TD(C[D::cell_of(l * NE + i, m * n, perm)]);
        }
    });
}

}  // namespace wmma
}  // namespace nvcuda
