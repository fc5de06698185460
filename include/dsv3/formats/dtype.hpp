// dsv3/formats/dtype.hpp — the stored element types and their exact conversions.
//
// Checkpoints store weights as F32, F16, BF16 or F8_E4M3 (float8_e4m3fn); every
// one of these is exactly representable in float, so decoding is exact and the
// only rounding happens in the arithmetic that follows (docs/semantics.md §9.1).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "../error.hpp"

namespace dsv3 {

enum class DType { F64, F32, F16, BF16, F8_E4M3, I64, I32, I16, I8, U8, BOOL, U32 };

inline std::size_t dtype_size(DType t) {
  switch (t) {
    case DType::F64: case DType::I64: return 8;
    case DType::F32: case DType::I32: case DType::U32: return 4;
    case DType::F16: case DType::BF16: case DType::I16: return 2;
    default: return 1;
  }
}

// safetensors spelling of each dtype.
inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::F64: return "F64";
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::F8_E4M3: return "F8_E4M3";
    case DType::I64: return "I64";
    case DType::I32: return "I32";
    case DType::I16: return "I16";
    case DType::I8: return "I8";
    case DType::U8: return "U8";
    case DType::U32: return "U32";
    case DType::BOOL: return "BOOL";
  }
  return "?";
}

inline bool parse_dtype(std::string_view s, DType& out) {
  static constexpr DType all[] = {DType::F64, DType::F32, DType::F16, DType::BF16,
                                  DType::F8_E4M3, DType::I64, DType::I32, DType::I16,
                                  DType::I8, DType::U8, DType::BOOL, DType::U32};
  for (DType t : all)
    if (s == dtype_name(t)) { out = t; return true; }
  return false;
}

inline bool is_float(DType t) {
  return t == DType::F64 || t == DType::F32 || t == DType::F16 || t == DType::BF16 ||
         t == DType::F8_E4M3;
}

// ---------------------------------------------------------------------------
// bfloat16: the top 16 bits of an IEEE float.
inline float bf16_to_f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Round to nearest even, NaN kept quiet (what torch's .to(bfloat16) does).
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

inline float round_bf16(float f) { return bf16_to_f32(f32_to_bf16(f)); }

// IEEE half precision.
inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16, em = h & 0x7fffu;
  uint32_t u = (em << 13) + (112u << 23);                                 // normal: exponent bias 15 -> 127
  if (em >= 0x7c00u) u = (em & 0x3ffu) ? 0x7fc00000u : 0x7f800000u;      // NaN (quiet) / inf
  else if (em < 0x400u) {                                                 // subnormal: man * 2^-24, exact
    const float f = float(em) * 0x1p-24f;
    std::memcpy(&u, &f, 4);
  }
  u |= sign;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t f32_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000);
  const float a = std::fabs(f);
  if (std::isnan(f)) return sign | 0x7e00;
  if (a >= 65520.0f) return sign | 0x7c00;                              // overflow -> inf
  if (a < std::ldexp(1.0f, -14)) {                                       // subnormal
    float m = std::nearbyint(std::ldexp(a, 24));                         // RNE (default mode)
    return sign | uint16_t(m);
  }
  int e;
  float m = std::frexp(a, &e);                                           // a = m * 2^e, m in [0.5,1)
  float q = std::nearbyint(std::ldexp(m, 11));                           // 11 significant bits
  if (q >= 2048.0f) { q /= 2; ++e; }
  const int be = e - 1 + 15;
  if (be >= 31) return sign | 0x7c00;
  return sign | uint16_t(be << 10) | (uint16_t(q) & 0x3ff);
}

// ---------------------------------------------------------------------------
// float8_e4m3fn: 1 sign, 4 exponent bits (bias 7), 3 mantissa bits, no
// infinities, NaN = S.1111.111, max finite 448 (docs/semantics.md §9.1).
inline float fp8_e4m3_to_f32(uint8_t b) {
  const int s = b >> 7, e = (b >> 3) & 0xf, m = b & 7;
  float v;
  if (e == 0) v = std::ldexp(float(m), -9);            // (m/8) * 2^-6
  else if (e == 15 && m == 7) return NAN;
  else v = std::ldexp(float(8 + m), e - 10);          // (1 + m/8) * 2^(e-7)
  return s ? -v : v;
}

// Round-to-nearest-even, saturating is NOT what torch does: out-of-range
// values become NaN in torch's float8_e4m3fn cast; callers scale first so
// |x| <= 448. Used by make-model and the FP8 tests.
inline uint8_t f32_to_fp8_e4m3(float f) {
  if (std::isnan(f)) return 0x7f;
  const uint8_t sign = std::signbit(f) ? 0x80 : 0;
  float a = std::fabs(f);
  if (a > 464.0f) return sign | 0x7f;                 // beyond 448's rounding range -> NaN
  // Find the candidate grid: exponent of a, with subnormals below 2^-6.
  int e;
  std::frexp(a, &e);                                  // a in [2^(e-1), 2^e)
  int ue = e - 1;                                     // unbiased exponent
  if (ue < -6) ue = -6;                               // subnormal spacing 2^-9
  const float step = std::ldexp(1.0f, ue - 3);
  float q = std::nearbyint(a / step) * step;          // RNE on the grid
  if (q > 448.0f) q = 448.0f;                         // 448 < a <= 464 rounds to 448
  // Encode q exactly.
  if (q == 0.0f) return sign;
  std::frexp(q, &e);
  ue = e - 1;
  if (ue < -6) {                                      // subnormal
    return sign | uint8_t(std::lround(std::ldexp(q, 9)));
  }
  const int m = int(std::lround(std::ldexp(q, -ue) * 8.0f)) - 8;
  return sign | uint8_t((ue + 7) << 3) | uint8_t(m);
}

// Decode one stored element at p (may be unaligned) to double.
inline double load_as_double(const uint8_t* p, DType t) {
  switch (t) {
    case DType::F64: { double d; std::memcpy(&d, p, 8); return d; }
    case DType::F32: { float f; std::memcpy(&f, p, 4); return f; }
    case DType::F16: { uint16_t h; std::memcpy(&h, p, 2); return f16_to_f32(h); }
    case DType::BF16: { uint16_t h; std::memcpy(&h, p, 2); return bf16_to_f32(h); }
    case DType::F8_E4M3: return fp8_e4m3_to_f32(*p);
    case DType::I64: { int64_t v; std::memcpy(&v, p, 8); return double(v); }
    case DType::I32: { int32_t v; std::memcpy(&v, p, 4); return v; }
    case DType::I16: { int16_t v; std::memcpy(&v, p, 2); return v; }
    case DType::I8: return int8_t(*p);
    case DType::U8: case DType::BOOL: return *p;
    case DType::U32: { uint32_t v; std::memcpy(&v, p, 4); return double(v); }
  }
  return 0;
}

}  // namespace dsv3
