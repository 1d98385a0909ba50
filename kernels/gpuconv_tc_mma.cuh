// The warp-level part of the tensor-core kernels on sm_80 and later: ldmatrix and mma.sync (gpuconv_ptx.cuh).
// Included by gpuconv_tc.cuh (GPUCONV_TC_PTX), which has the tiles and the main loop; gpuconv_tc_wmma.cuh is the
// same three pieces (accumulators, one reduction step, epilogue) on nvcuda::wmma, for sm_70 / sm_75.
//
// A warp tile is WTM x WTN: Tile::FM m16 tiles times WTN / 8 n8 tiles of mma m16n8k16 (FP16, BF16) or m16n8k8
// (TF32).
// Operands come from shared memory as the PTX ISA lays them out (gpuconv_ptx.cuh):
//   16-bit    every operand with one ldmatrix.x4: A (16 x 16) from row-major tiles, .trans from column-major
//             ones; B (two n8 tiles of 16 x 8) non-transposed from column-major tiles, .trans from row-major.
//   TF32      ldmatrix has no 32-bit transpose: A row-major and B column-major with ldmatrix.x4 (an 8 x 8 block
//             of 16-bit pairs is 8 rows of 4 floats: each lane receives one float), the others with 32-bit
//             shared loads, conflict-free through the layouts' 32-byte skew (gpuconv_tc_tile).
// TF32 operands are rounded (cvt.rna) in registers as they are loaded, but for those stored rounded already
// (Tile::ROUND_A / ROUND_B false: dz of the backward's pass).
// Accumulators stay in the ISA's C layout, so the epilogue applies bias and activation to them in place.
#pragma once

#include "gpuconv_ptx.cuh"

// mma.sync of a storage type: d += a * b on one m16n8 tile.
template <typename T> struct gpuconv_tc_mma;
template <> struct gpuconv_tc_mma<__half> {
    __device__ static void run(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
        gpuconv_mma_m16n8k16_f16(d, a, b);
    }
};
template <> struct gpuconv_tc_mma<__nv_bfloat16> {
    __device__ static void run(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
        gpuconv_mma_m16n8k16_bf16(d, a, b);
    }
};
template <> struct gpuconv_tc_mma<float> {
    __device__ static void run(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
        gpuconv_mma_m16n8k8_tf32(d, a, b);
    }
};

// The accumulators of one warp: FM x NT tiles of 16 x 8 floats, 4 per lane each (the ISA's C layout).
template <typename T, typename Tile>
struct gpuconv_tc_acc {
    static constexpr int NT = Tile::WTN / 8;
    float d[Tile::FM][NT][4];
    __device__ void zero() {
#pragma unroll
        for (int i = 0; i < Tile::FM; ++i)
#pragma unroll
            for (int j = 0; j < NT; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) d[i][j][e] = 0.0f;
    }
};

// A shared float as a TF32 operand register: rounded with cvt.rna.tf32.f32 as it is loaded (2 instructions:
// ptxas drops the final mask of the low 13 bits, which the tensor core ignores).
// Rounding in registers costs issue slots; rounding each stage in shared memory instead would cost a read and a
// write of the whole stage, and shared-memory bandwidth is what binds this path (docs/performance.md).
template <bool ROUND>
__device__ __forceinline__ unsigned gpuconv_tc_bits(const float* p) {
    return ROUND ? __float_as_uint(nvcuda::wmma::__float_to_tf32(*p)) : __float_as_uint(*p);
}
template <bool ROUND>
__device__ __forceinline__ void gpuconv_tc_round_bits(unsigned (&r)[4]) {
    if constexpr (ROUND) {
#pragma unroll
        for (int e = 0; e < 4; ++e) r[e] = __float_as_uint(nvcuda::wmma::__float_to_tf32(__uint_as_float(r[e])));
    }
}

// Where each lane's operand loads start inside a stage, relative to the warp tile's corner (the same for every
// stage and step: the loads below add compile-time offsets, so each is one shared load at register + immediate).
// ldmatrix: lane 8 j + r passes row r of matrix j; for A, matrix j covers rows 8 (j % 2) and the (j / 2)-th
// 16 bytes of the reduction (the ISA's a[0..3]); for a pair of B n8 tiles, columns 8 (j / 2) and the (j % 2)-th
// 16 bytes (b0[0], b0[1], b1[0], b1[1]); the transposed variants read column-major A and row-major B tiles.
// TF32 32-bit loads: lane (g, q) reads A (g, q) and B (q, g), plus the ISA's +8 rows / +4 reduction offsets.
template <typename T, typename Tile, bool A_ROW>
__device__ __forceinline__ int gpuconv_tc_lane_a(int lane) {
    if constexpr (A_ROW) return Tile::a_off(lane % 16, Tile::VEC * (lane / 16));
    else if constexpr (sizeof(T) == 2) return Tile::a_off(8 * ((lane / 8) % 2), lane % 8 + 8 * (lane / 16));
    else return Tile::a_off(lane / 4, lane % 4);
}
template <typename T, typename Tile, bool B_ROW>
__device__ __forceinline__ int gpuconv_tc_lane_b(int lane) {
    if constexpr (!B_ROW) return Tile::b_off(Tile::VEC * ((lane / 8) % 2), lane % 8 + 8 * (lane / 16));
    else if constexpr (sizeof(T) == 2) return Tile::b_off(lane % 8 + 8 * ((lane / 8) % 2), 8 * (lane / 16));
    else return Tile::b_off(lane % 4, lane / 4);
}

// The A operand of the m16 tile at rows m, reduction k of the warp tile (sa: this lane's start).
template <typename T, typename Tile, bool A_ROW>
__device__ __forceinline__ void gpuconv_tc_load_a(const T* sa, int m, int k, unsigned (&a)[4]) {
    if constexpr (A_ROW) {
        gpuconv_ldmatrix_x4(a, sa + Tile::a_off(m, k));
        gpuconv_tc_round_bits<Tile::ROUND_A>(a);
    } else if constexpr (sizeof(T) == 2) {
        gpuconv_ldmatrix_x4_trans(a, sa + Tile::a_off(m, k));
    } else {
        a[0] = gpuconv_tc_bits<Tile::ROUND_A>(sa + Tile::a_off(m, k));
        a[1] = gpuconv_tc_bits<Tile::ROUND_A>(sa + Tile::a_off(m + 8, k));
        a[2] = gpuconv_tc_bits<Tile::ROUND_A>(sa + Tile::a_off(m, k + 4));
        a[3] = gpuconv_tc_bits<Tile::ROUND_A>(sa + Tile::a_off(m + 8, k + 4));
    }
}

// The B operands of the two n8 tiles at columns n and n + 8, reduction k of the warp tile (sb: this lane's start).
template <typename T, typename Tile, bool B_ROW>
__device__ __forceinline__ void gpuconv_tc_load_b(const T* sb, int k, int n, unsigned (&b0)[2], unsigned (&b1)[2]) {
    unsigned r[4];
    if constexpr (!B_ROW) {
        gpuconv_ldmatrix_x4(r, sb + Tile::b_off(k, n));
        gpuconv_tc_round_bits<Tile::ROUND_B>(r);
    } else if constexpr (sizeof(T) == 2) {
        gpuconv_ldmatrix_x4_trans(r, sb + Tile::b_off(k, n));
    } else {
        r[0] = gpuconv_tc_bits<Tile::ROUND_B>(sb + Tile::b_off(k, n));
        r[1] = gpuconv_tc_bits<Tile::ROUND_B>(sb + Tile::b_off(k + 4, n));
        r[2] = gpuconv_tc_bits<Tile::ROUND_B>(sb + Tile::b_off(k, n + 8));
        r[3] = gpuconv_tc_bits<Tile::ROUND_B>(sb + Tile::b_off(k + 4, n + 8));
    }
    b0[0] = r[0], b0[1] = r[1], b1[0] = r[2], b1[1] = r[3];
}

// acc += A(stage s) * B(stage s) over one BK step, for the warp tile at rows wm0, columns wn0 of the block.
template <typename T, typename Tile, bool A_ROW, bool B_ROW>
__device__ __forceinline__ void gpuconv_tc_step(T* smem, int s, gpuconv_tc_acc<T, Tile>& acc, int wm0, int wn0) {
    const int lane = threadIdx.x % 32;
    const T* sa = Tile::a_at(smem, s, wm0, 0) + gpuconv_tc_lane_a<T, Tile, A_ROW>(lane);
    const T* sb = Tile::b_at(smem, s, 0, wn0) + gpuconv_tc_lane_b<T, Tile, B_ROW>(lane);
#pragma unroll
    for (int kk = 0; kk < Tile::BK; kk += Tile::FK) {
        // The B operands stay loaded while the A operands stream past (fewer live registers).
        constexpr int NT = gpuconv_tc_acc<T, Tile>::NT;
        unsigned b[NT][2];
#pragma unroll
        for (int j = 0; j < NT; j += 2) gpuconv_tc_load_b<T, Tile, B_ROW>(sb, kk, 8 * j, b[j], b[j + 1]);
#pragma unroll
        for (int i = 0; i < Tile::FM; ++i) {
            unsigned a[4];
            gpuconv_tc_load_a<T, Tile, A_ROW>(sa, 16 * i, kk, a);
#pragma unroll
            for (int j = 0; j < NT; ++j) gpuconv_tc_mma<T>::run(acc.d[i][j], a, b[j]);
        }
    }
}

// Epilogue straight from the accumulators: lane (g, q) holds rows g and g + 8 of each m16 tile, columns 2q and
// 2q + 1 of each n8 tile. row_of(r) maps a block-tile row to the output offset of its first element (-1: no such
// row), once per row; emit(offset, c, value) stores the value of block-tile column c.
template <typename T, typename Tile, typename RowOf, typename Emit>
__device__ __forceinline__ void gpuconv_tc_epilogue(unsigned char*, gpuconv_tc_acc<T, Tile>& acc, int wm0, int wn0,
                                                    RowOf& row_of, Emit& emit) {
    const int lane = threadIdx.x % 32, g = lane / 4, q = lane % 4;
#pragma unroll
    for (int i = 0; i < Tile::FM; ++i) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const gpuconv_i64 base = row_of(wm0 + 16 * i + 8 * h + g);
            if (base < 0) continue;
#pragma unroll
            for (int j = 0; j < gpuconv_tc_acc<T, Tile>::NT; ++j) {
                emit(base, wn0 + 8 * j + 2 * q, acc.d[i][j][2 * h]);
                emit(base, wn0 + 8 * j + 2 * q + 1, acc.d[i][j][2 * h + 1]);
            }
        }
    }
}
