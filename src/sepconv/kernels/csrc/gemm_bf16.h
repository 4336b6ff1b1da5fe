// The own bfloat16 GEMM of the tile GEMMs, on AVX512-BF16's dot products: vdpbf16ps
// multiplies 32 bfloat16 pairs and adds each pair's sum into one of 16 float accumulators,
// twice the float32 FMA's products an instruction. Through MKL, whose AMD code path has no
// bfloat16 instructions, the bfloat16 forward took 1.6x the float32 one's time (docs/
// performance.md, run W). Without AVX512-BF16 the tile GEMMs stay on MKL.
//
// K runs in pairs: A's rows give a pair of consecutive elements (k, k + 1), broadcast as one
// 32-bit value; B is stored pair-interleaved, each row of pairs holding (b[k][j], b[k+1][j])
// for its columns j. An odd K's last pair is (a[K-1], 0) against (b[K-1][j], 0).
//
// One part of the kernels' single translation unit: sepconv_kernels.cpp includes the parts in
// order; each includes the parts whose names it uses.
#pragma once

#include "vec.h"
#include "gemm.h"

namespace {

#if defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define SEPCONV_BF16_GEMM 1

// Columns a panel of a packed B holds (four vectors), and B's bf16 elements per row of pairs.
constexpr i64 kPanelBf16 = 64;
constexpr i64 kPanelBf16Row = 2 * kPanelBf16;

inline __m512bh pair_at(const bf16* p) {  // (p[0], p[1]) in every lane
  uint32_t u;
  std::memcpy(&u, p, 4);
  return (__m512bh)_mm512_set1_epi32(int(u));
}
inline __m512bh last_of_odd(const bf16* p) {  // (p[0], 0) in every lane
  return (__m512bh)_mm512_set1_epi32(int(uint32_t(p->x)));
}

// C (MR rows x NV vectors of 16 columns) = A . B + bias, in float, stored as bfloat16.
// A: element (i, k) at a[i * lda + k], K elements a row. B: row of pairs kp at b + kp * ldb
// (bf16 elements), its NV vectors one after another. bias_row[i] or bias_col[j] (floats,
// whole vectors readable) or neither. C: element (i, j) at c[i * ldc + j]; of the last
// vector only columns below nvalid (counted from the first) are written.
template <int MR, int NV>
inline void micro_bf16(i64 K, const bf16* a, i64 lda, const bf16* b, i64 ldb, bf16* c, i64 ldc,
                       const float* bias_row, const float* bias_col, i64 nvalid) {
  __m512 acc[MR][NV];
  for (int v = 0; v < NV; ++v) {
    const __m512 col = bias_col ? _mm512_loadu_ps(bias_col + 16 * v) : _mm512_setzero_ps();
    for (int i = 0; i < MR; ++i) acc[i][v] = bias_row ? _mm512_set1_ps(bias_row[i]) : col;
  }
  auto step = [&](const bf16* bk, auto pair) {
    __m512bh bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = (__m512bh)_mm512_loadu_si512(bk + 32 * v);
    for (int i = 0; i < MR; ++i) {
      const __m512bh av = pair(i);
      for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], av, bv[v]);
    }
  };
  const i64 KP = K / 2;
  for (i64 kp = 0; kp < KP; ++kp)
    step(b + kp * ldb, [&](int i) { return pair_at(a + i * lda + 2 * kp); });
  if (K & 1) step(b + KP * ldb, [&](int i) { return last_of_odd(a + i * lda + K - 1); });
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) {
      const __m256i r = (__m256i)_mm512_cvtneps_pbh(acc[i][v]);  // (round to nearest even)
      bf16* d = c + i * ldc + 16 * v;
      const i64 n = nvalid - 16 * v;
      if (n >= 16)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(d), r);
      else
        _mm256_mask_storeu_epi16(d, __mmask16((1u << n) - 1), r);
    }
}

template <int NV>
inline void micro_rows_bf16(i64 mr, i64 K, const bf16* a, i64 lda, const bf16* b, i64 ldb,
                            bf16* c, i64 ldc, const float* bias_row, const float* bias_col,
                            i64 nvalid) {
  with_rows(mr, [&](auto mr_c) {
    micro_bf16<decltype(mr_c)::value, NV>(K, a, lda, b, ldb, c, ldc, bias_row, bias_col, nvalid);
  });
}

// C[M x N] = A[M x K] . B[K x N] + bias (see micro_bf16). pstride: 0 for a plain
// pair-interleaved B (row of pairs stride ldb, column j's pair at 2 * j); else B is packed in
// panels of kPanelBf16 columns (pack_pairs_panels), panel j at b + j * pstride, ldb
// kPanelBf16Row.
void gemm_bf16(i64 M, i64 N, i64 K, const bf16* a, i64 lda, const bf16* b, i64 ldb, i64 pstride,
               bf16* c, i64 ldc, const float* bias_row, const float* bias_col) {
  constexpr i64 MR = 6;
  for (i64 n0 = 0; n0 < N; n0 += kPanelBf16) {
    const i64 nb = std::min(kPanelBf16, N - n0);
    const bf16* bn = pstride ? b + (n0 / kPanelBf16) * pstride : b + 2 * n0;
    for (i64 m0 = 0, mr = 0; m0 < M; m0 += mr) {
      const i64 left = (M - m0 + MR - 1) / MR;  // (blocks evened out, as gemm_f32)
      mr = (M - m0 + left - 1) / left;
      const float* br = bias_row ? bias_row + m0 : nullptr;
      const float* bc = bias_col ? bias_col + n0 : nullptr;
      const bf16* am = a + m0 * lda;
      bf16* cm = c + m0 * ldc + n0;
      switch ((nb + 15) / 16) {
        case 4: micro_rows_bf16<4>(mr, K, am, lda, bn, ldb, cm, ldc, br, bc, nb); break;
        case 3: micro_rows_bf16<3>(mr, K, am, lda, bn, ldb, cm, ldc, br, bc, nb); break;
        case 2: micro_rows_bf16<2>(mr, K, am, lda, bn, ldb, cm, ldc, br, bc, nb); break;
        default: micro_rows_bf16<1>(mr, K, am, lda, bn, ldb, cm, ldc, br, bc, nb); break;
      }
    }
  }
}

// Rows r0 and r1 (r1 null: zeros) of n elements as pairs: dst[2p] = r0[p], dst[2p+1] = r1[p].
inline void interleave_pairs(const bf16* r0, const bf16* r1, i64 n, bf16* dst) {
  i64 p = 0;
  for (; p + 16 <= n; p += 16) {
    const __m512i lo = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)(r0 + p)));
    const __m512i hi = r1 ? _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)(r1 + p)))
                          : _mm512_setzero_si512();
    _mm512_storeu_si512(dst + 2 * p, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
  }
  for (; p < n; ++p) {
    dst[2 * p] = r0[p];
    dst[2 * p + 1] = r1 ? r1[p] : bf16{0};
  }
}

// B = src^T (src: N x K row-major, B's columns are src's rows) packed in pair-interleaved
// panels: panel j, row of pairs kp, column o: dst[(j * KP + kp) * kPanelBf16Row + 2 o + h] =
// src[j * kPanelBf16 + o][2 kp + h], zero past N and K (KP = ceil(K / 2)).
void pack_pairs_panels(const bf16* src, i64 N, i64 K, bf16* dst) {
  const i64 KP = (K + 1) / 2, panels = (N + kPanelBf16 - 1) / kPanelBf16;
  for (i64 j = 0; j < panels; ++j)
    for (i64 kp = 0; kp < KP; ++kp) {
      bf16* d = dst + (j * KP + kp) * kPanelBf16Row;
      for (i64 o = 0; o < kPanelBf16; ++o) {
        const i64 n = j * kPanelBf16 + o, k = 2 * kp;
        d[2 * o] = n < N ? src[n * K + k] : bf16{0};
        d[2 * o + 1] = n < N && k + 1 < K ? src[n * K + k + 1] : bf16{0};
      }
    }
}

#endif  // __AVX512BF16__

}  // namespace
