// gpuconv emulator: __nv_bfloat16 with cuda_bf16.h's names, for g++.
//
// bfloat16: the top 16 bits of a float32. Conversions from float round to nearest even (NaN stays NaN), as
// __float2bfloat16 does; arithmetic goes through float and rounds once, as cuda_bf16.h's operators do on
// sm_80+ (the sums, differences, products and quotients of two bfloat16 values are rounded correctly that way).
// Kernel arguments of type __nv_bfloat16* take numpy arrays of ml_dtypes.bfloat16.
#pragma once

namespace gpuconv_emu {
// float -> bfloat16 bits, round to nearest even; NaN quieted, not rounded (it could carry into inf).
constexpr unsigned short float_to_bf16_rn(float f) {
    unsigned u = __builtin_bit_cast(unsigned, f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (unsigned short)((u >> 16) | 0x0040u);
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}
constexpr unsigned short float_to_bf16_rz(float f) {
    unsigned u = __builtin_bit_cast(unsigned, f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (unsigned short)((u >> 16) | 0x0040u);
    return (unsigned short)(u >> 16);
}
// double -> bfloat16 with one rounding: round to odd in float first (24 >= 2 * 8 + 2 bits), then to nearest even.
constexpr unsigned short double_to_bf16_rn(double d) {
    float f = float(d);
    unsigned u = __builtin_bit_cast(unsigned, f);
    if ((u & 0x7F800000u) != 0x7F800000u && double(f) != d) {
        if ((d < 0 ? -double(f) : double(f)) > (d < 0 ? -d : d)) u -= 1;  // toward zero, then the sticky bit
        u |= 1u;
    }
    return float_to_bf16_rn(__builtin_bit_cast(float, u));
}
constexpr float bf16_to_float(unsigned short b) { return __builtin_bit_cast(float, unsigned(b) << 16); }
}  // namespace gpuconv_emu

struct __nv_bfloat16_raw {
    unsigned short x;
};

struct __nv_bfloat16 {
    static constexpr char gpuconv_emu_kind = 'r';  // the launcher's tag: an array of ml_dtypes.bfloat16 exactly
    unsigned short __x;
    __nv_bfloat16() = default;
    constexpr __nv_bfloat16(const __nv_bfloat16_raw& r) : __x(r.x) {}
    constexpr __nv_bfloat16(float f) : __x(::gpuconv_emu::float_to_bf16_rn(f)) {}
    constexpr __nv_bfloat16(double f) : __x(::gpuconv_emu::double_to_bf16_rn(f)) {}
    constexpr __nv_bfloat16(int v) : __x(::gpuconv_emu::float_to_bf16_rn(float(v))) {}
    constexpr __nv_bfloat16(unsigned v) : __x(::gpuconv_emu::float_to_bf16_rn(float(v))) {}
    constexpr __nv_bfloat16(long long v) : __x(::gpuconv_emu::float_to_bf16_rn(float(v))) {}
    constexpr operator float() const { return ::gpuconv_emu::bf16_to_float(__x); }
    constexpr operator __nv_bfloat16_raw() const { return __nv_bfloat16_raw{__x}; }
    __nv_bfloat16& operator+=(const __nv_bfloat16& o) { return *this = __nv_bfloat16(float(*this) + float(o)); }
    __nv_bfloat16& operator-=(const __nv_bfloat16& o) { return *this = __nv_bfloat16(float(*this) - float(o)); }
    __nv_bfloat16& operator*=(const __nv_bfloat16& o) { return *this = __nv_bfloat16(float(*this) * float(o)); }
    __nv_bfloat16& operator/=(const __nv_bfloat16& o) { return *this = __nv_bfloat16(float(*this) / float(o)); }
};
static_assert(sizeof(__nv_bfloat16) == 2 && alignof(__nv_bfloat16) == 2, "__nv_bfloat16 layout");
typedef __nv_bfloat16 nv_bfloat16;
struct __attribute__((aligned(4))) __nv_bfloat162 {
    __nv_bfloat16 x, y;
};
typedef __nv_bfloat162 nv_bfloat162;

inline __nv_bfloat16 operator+(const __nv_bfloat16& a, const __nv_bfloat16& b) { return __nv_bfloat16(float(a) + float(b)); }
inline __nv_bfloat16 operator-(const __nv_bfloat16& a, const __nv_bfloat16& b) { return __nv_bfloat16(float(a) - float(b)); }
inline __nv_bfloat16 operator*(const __nv_bfloat16& a, const __nv_bfloat16& b) { return __nv_bfloat16(float(a) * float(b)); }
inline __nv_bfloat16 operator/(const __nv_bfloat16& a, const __nv_bfloat16& b) { return __nv_bfloat16(float(a) / float(b)); }
inline __nv_bfloat16 operator-(const __nv_bfloat16& a) {
    __nv_bfloat16 r;
    r.__x = (unsigned short)(a.__x ^ 0x8000u);
    return r;
}
inline __nv_bfloat16 operator+(const __nv_bfloat16& a) { return a; }
inline bool operator==(const __nv_bfloat16& a, const __nv_bfloat16& b) { return float(a) == float(b); }
inline bool operator!=(const __nv_bfloat16& a, const __nv_bfloat16& b) { return float(a) != float(b); }
inline bool operator<(const __nv_bfloat16& a, const __nv_bfloat16& b) { return float(a) < float(b); }
inline bool operator<=(const __nv_bfloat16& a, const __nv_bfloat16& b) { return float(a) <= float(b); }
inline bool operator>(const __nv_bfloat16& a, const __nv_bfloat16& b) { return float(a) > float(b); }
inline bool operator>=(const __nv_bfloat16& a, const __nv_bfloat16& b) { return float(a) >= float(b); }

inline float __bfloat162float(__nv_bfloat16 h) { return float(h); }
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16_rz(float f) {
    __nv_bfloat16 r;
    r.__x = ::gpuconv_emu::float_to_bf16_rz(f);
    return r;
}
inline __nv_bfloat16 __double2bfloat16(double d) { return __nv_bfloat16(d); }
inline __nv_bfloat16 __int2bfloat16_rn(int v) { return __nv_bfloat16(v); }
inline int __bfloat162int_rn(__nv_bfloat16 h) { return int(nearbyintf(float(h))); }
inline int __bfloat162int_rz(__nv_bfloat16 h) { return int(float(h)); }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }
inline short __bfloat16_as_short(__nv_bfloat16 h) { return short(h.__x); }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) {
    __nv_bfloat16 h;
    h.__x = u;
    return h;
}
inline __nv_bfloat16 __short_as_bfloat16(short u) { return __ushort_as_bfloat16((unsigned short)u); }
inline __nv_bfloat16 __hadd(__nv_bfloat16 a, __nv_bfloat16 b) { return a + b; }
inline __nv_bfloat16 __hsub(__nv_bfloat16 a, __nv_bfloat16 b) { return a - b; }
inline __nv_bfloat16 __hmul(__nv_bfloat16 a, __nv_bfloat16 b) { return a * b; }
inline __nv_bfloat16 __hdiv(__nv_bfloat16 a, __nv_bfloat16 b) { return a / b; }
inline __nv_bfloat16 __hneg(__nv_bfloat16 a) { return -a; }
inline __nv_bfloat16 __habs(__nv_bfloat16 a) { return __ushort_as_bfloat16((unsigned short)(a.__x & 0x7FFFu)); }
// One rounding of a * b + c: the product is exact in double; the sum's error (TwoSum) becomes a sticky bit
// (round to odd), so that the rounding to bfloat16 that follows is the only one that counts.
inline __nv_bfloat16 __hfma(__nv_bfloat16 a, __nv_bfloat16 b, __nv_bfloat16 c) {
    double p = double(float(a)) * double(float(b)), q = double(float(c));
    double hi = p + q, bb = hi - p, lo = (p - (hi - bb)) + (q - bb);
    unsigned long long u = __builtin_bit_cast(unsigned long long, hi);
    if (lo != 0 && (u & 0x7FF0000000000000ull) != 0x7FF0000000000000ull) {
        if ((lo > 0) != (hi > 0)) u -= 1;
        u |= 1;
    }
    return __nv_bfloat16(__builtin_bit_cast(double, u));
}
inline __nv_bfloat16 __hmax(__nv_bfloat16 a, __nv_bfloat16 b) { return __nv_bfloat16(fmaxf(float(a), float(b))); }
inline __nv_bfloat16 __hmin(__nv_bfloat16 a, __nv_bfloat16 b) { return __nv_bfloat16(fminf(float(a), float(b))); }
inline bool __heq(__nv_bfloat16 a, __nv_bfloat16 b) { return a == b; }
inline bool __hne(__nv_bfloat16 a, __nv_bfloat16 b) { return a != b; }
inline bool __hlt(__nv_bfloat16 a, __nv_bfloat16 b) { return a < b; }
inline bool __hle(__nv_bfloat16 a, __nv_bfloat16 b) { return a <= b; }
inline bool __hgt(__nv_bfloat16 a, __nv_bfloat16 b) { return a > b; }
inline bool __hge(__nv_bfloat16 a, __nv_bfloat16 b) { return a >= b; }
inline bool __hisnan(__nv_bfloat16 a) { return float(a) != float(a); }
inline int __hisinf(__nv_bfloat16 a) { return isinf(float(a)) ? (a.__x & 0x8000u ? -1 : 1) : 0; }
inline __nv_bfloat16 hexp(__nv_bfloat16 a) { return __nv_bfloat16(expf(float(a))); }
inline __nv_bfloat16 hlog(__nv_bfloat16 a) { return __nv_bfloat16(logf(float(a))); }
inline __nv_bfloat16 hsqrt(__nv_bfloat16 a) { return __nv_bfloat16(sqrtf(float(a))); }
inline __nv_bfloat16 hrsqrt(__nv_bfloat16 a) { return __nv_bfloat16(1.0f / sqrtf(float(a))); }
inline __nv_bfloat162 __halves2bfloat162(__nv_bfloat16 a, __nv_bfloat16 b) { return __nv_bfloat162{a, b}; }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return __nv_bfloat162{__nv_bfloat16(a), __nv_bfloat16(b)}; }
inline __nv_bfloat162 __float2bfloat162_rn(float a) { return __nv_bfloat162{__nv_bfloat16(a), __nv_bfloat16(a)}; }
inline __nv_bfloat162 __bfloat162bfloat162(__nv_bfloat16 a) { return __nv_bfloat162{a, a}; }
inline float __low2float(__nv_bfloat162 h) { return float(h.x); }
inline float __high2float(__nv_bfloat162 h) { return float(h.y); }
inline __nv_bfloat16 __low2bfloat16(__nv_bfloat162 h) { return h.x; }
inline __nv_bfloat16 __high2bfloat16(__nv_bfloat162 h) { return h.y; }
