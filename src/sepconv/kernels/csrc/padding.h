// Padded copies of planar input windows (pad_planar) and the stride-2 phase split.
//
// One part of the kernels' single translation unit: sepconv_kernels.cpp includes the parts in
// order; each includes the parts whose names it uses.
#pragma once

#include "vec.h"
#include "geometry.h"

namespace {

// ------------------------------------------------------------------ padded buffers

#if defined(__AVX512F__) || defined(__AVX2__)
// Stride-2 phase split of src[qa, qb): element q to d[(q & 1) * qs + (q >> 1)], 32 elements
// (AVX2: 16) at a time by two permutes (element by element it took five times as long as the
// convolution that reads it; on AVX2 37 % of 8x144x56x56 stride-2 depthwise's time).
inline void deinterleave2(const float* src, i64 qa, i64 qb, float* d, i64 qs) {
  i64 q = qa;
  if ((q & 1) && q < qb) {
    d[qs + (q >> 1)] = src[q];
    ++q;
  }
#if !defined(__AVX512F__)
  for (; q + 16 <= qb; q += 16) {  // q even
    const __m256 a = _mm256_loadu_ps(src + q), b = _mm256_loadu_ps(src + q + 8);
    // Per 128-bit lane: a0 a2 b0 b2 | a4 a6 b4 b6, then the 64-bit pairs in order.
    const __m256 e = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));
    const __m256 o = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));
    _mm256_storeu_ps(d + (q >> 1), _mm256_castpd_ps(_mm256_permute4x64_pd(
                                       _mm256_castps_pd(e), _MM_SHUFFLE(3, 1, 2, 0))));
    _mm256_storeu_ps(d + qs + (q >> 1), _mm256_castpd_ps(_mm256_permute4x64_pd(
                                            _mm256_castps_pd(o), _MM_SHUFFLE(3, 1, 2, 0))));
  }
  for (; q < qb; ++q) d[(q & 1) * qs + (q >> 1)] = src[q];
#else
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  for (; q < qb; q += 32) {  // q even
    const i64 n = std::min<i64>(32, qb - q);
    const __mmask16 m0 = __mmask16((1u << std::min<i64>(n, 16)) - 1);
    const __mmask16 m1 = __mmask16((1u << std::max<i64>(n - 16, 0)) - 1);
    const __m512 a = _mm512_maskz_loadu_ps(m0, src + q), b = _mm512_maskz_loadu_ps(m1, src + q + 16);
    _mm512_mask_storeu_ps(d + (q >> 1), __mmask16((1u << ((n + 1) / 2)) - 1),
                          _mm512_permutex2var_ps(a, even, b));
    _mm512_mask_storeu_ps(d + qs + (q >> 1), __mmask16((1u << (n / 2)) - 1),
                          _mm512_permutex2var_ps(a, odd, b));
  }
#endif
}

// One row of pad_planar at stride 2 (unit column stride, float): padded columns [0, Q)
// from q0, interior [qa, qb), each phase segment qs long.
__attribute__((noinline)) void pad_row_s2(const float* row, const Geo& g, const i64* xmap, i64 q0,
                                          i64 Q, i64 qa, i64 qb, i64 qs, float* d) {
  auto edge = [&](i64 q) {
    const i64 s = xmap[q0 + q];
    d[(q & 1) * qs + (q >> 1)] = s < 0 ? 0.0f : row[s];
  };
  for (i64 q = 0; q < qa; ++q) edge(q);
  deinterleave2(row + q0 - g.pl, qa, qb, d, qs);
  for (i64 q = qb; q < Q; ++q) edge(q);
  for (i64 ph = 0; ph < 2; ++ph)
    std::fill(d + ph * qs + (Q - ph + 1) / 2, d + (ph + 1) * qs, 0.0f);
}
#endif

// One padded row of a plane (see pad_planar) into d: columns [q0, q0+Q) of the input row
// `row` (elements sw apart), interior columns [qa, qb).
template <typename S, typename A>
void pad_planar_row(const S* row, i64 sw, const Geo& g, const i64* xmap, i64 q0, i64 Q, i64 qa,
                    i64 qb, A* d) {
  const i64 qs = (Q + g.sx - 1) / g.sx, qrow = qs * g.sx;
#if defined(__AVX512F__) || defined(__AVX2__)
  if constexpr (std::is_same<S, float>::value && std::is_same<A, float>::value) {
    // 0.6-0.85x the time of the element-by-element split on rows 28-112 wide (1.05x on
    // 14-wide ones, which are a small part of any network's time).
    if (g.sx == 2 && sw == 1 && qb > qa) {
      pad_row_s2(row, g, xmap, q0, Q, qa, qb, qs, d);
      return;
    }
  }
#endif
  if (g.sx == 1) {
    for (i64 q = 0; q < qa; ++q) { i64 s = xmap[q0 + q]; d[q] = s < 0 ? A(0) : toA(row[s * sw]); }
    const S* src = row + (q0 + qa - g.pl) * sw;
    if (sw == 1 && std::is_same<S, A>::value) {
      std::memcpy(d + qa, src, sizeof(A) * (qb - qa));
    } else if (sw == 1) {
      for (i64 q = qa; q < qb; ++q) d[q] = toA(src[q - qa]);
    } else {
      for (i64 q = qa; q < qb; ++q) d[q] = toA(src[(q - qa) * sw]);
    }
    for (i64 q = qb; q < Q; ++q) { i64 s = xmap[q0 + q]; d[q] = s < 0 ? A(0) : toA(row[s * sw]); }
    for (i64 q = Q; q < qrow; ++q) d[q] = A(0);
    return;
  }
  const S* src = row + (q0 - g.pl) * sw;  // src[q * sw] for interior columns q
  for (i64 ph = 0; ph < g.sx; ++ph) {
    A* dp = d + ph * qs;
    i64 idx = 0, q = ph;
    for (; q < std::min(qa, Q); q += g.sx, ++idx) {
      const i64 s = xmap[q0 + q];
      dp[idx] = s < 0 ? A(0) : toA(row[s * sw]);
    }
    if (sw == 1) {
      for (; q < qb; q += g.sx, ++idx) dp[idx] = toA(src[q]);
    } else {
      for (; q < qb; q += g.sx, ++idx) dp[idx] = toA(src[q * sw]);
    }
    for (; q < Q; q += g.sx, ++idx) {
      const i64 s = xmap[q0 + q];
      dp[idx] = s < 0 ? A(0) : toA(row[s * sw]);
    }
    for (; idx < qs; ++idx) dp[idx] = A(0);
  }
}

// Planar: padded rows [r0, r0+R) and columns [q0, q0+Q) of one input plane into buf
// (R rows of Qrow = sx*ceil(Q/sx) elements, stride-phase layout).
template <typename S, typename A>
void pad_planar(const S* plane, i64 sh, i64 sw, const Geo& g, const i64* ymap, const i64* xmap,
                i64 r0, i64 R, i64 q0, i64 Q, A* buf) {
  const i64 qs = (Q + g.sx - 1) / g.sx, qrow = qs * g.sx;
  const i64 qa = std::clamp<i64>(g.pl - q0, 0, Q), qb = std::clamp<i64>(g.pl + g.W - q0, 0, Q);
#if defined(__AVX512F__)
  // Stride 2, bfloat16: rows widened to float a vector at a time first, then split as float
  // rows (pad_row_s2): element by element, this was 39 % of 8x144x56x56 -> 32 s2's time.
  // 0.70-0.89x the time this way on rows 56-112 wide; 14 and 28 wide 1.04-1.27x, stride 1
  // 1.11x, hence not there (run W).
  constexpr i64 kWide = 512;
  float wide[std::is_same<S, bf16>::value ? kWide : 1];
  const bool widen = std::is_same<S, bf16>::value && sw == 1 && g.sx == 2 && g.W >= 56 &&
                     g.W <= kWide;
#endif
  for (i64 r = 0; r < R; ++r) {
    A* d = buf + r * qrow;
    const i64 sr = ymap[r0 + r];
    if (sr < 0) {
      std::memset(d, 0, sizeof(A) * qrow);
      continue;
    }
#if defined(__AVX512F__)
    if constexpr (std::is_same<S, bf16>::value && std::is_same<A, float>::value) {
      if (widen) {
        const S* row = plane + sr * sh;
        i64 j = 0;
        for (; j + V<float>::L <= g.W; j += V<float>::L) vst<float>(wide + j, vldS(row + j));
        for (; j < g.W; ++j) wide[j] = toA(row[j]);
        pad_planar_row<float, float>(wide, 1, g, xmap, q0, Q, qa, qb, d);
        continue;
      }
    }
#endif
    pad_planar_row<S, A>(plane + sr * sh, sw, g, xmap, q0, Q, qa, qb, d);
  }
}

}  // namespace
