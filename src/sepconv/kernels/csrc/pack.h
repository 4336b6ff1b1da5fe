// Transposes and the pointwise weight packed in GEMM panels.
//
// One part of the kernels' single translation unit: sepconv_kernels.cpp includes the parts in
// order; each includes the parts whose names it uses.
#pragma once

#include "vec.h"
#include "geometry.h"
#include "gemm.h"

namespace {

#if defined(__AVX2__)
// dst[c * dld + r] = src[r * sld + c] for r, c in [0, 8): 8 loads, 24 shuffles, 8 stores
// (element by element, packing ConvNeXt's 768 -> 3072 weight was 12 % of the layer's time).
inline void transpose8x8(const float* src, i64 sld, float* dst, i64 dld) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * sld);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);  // rows i, i+1 interleaved, lanes 0-1, 4-5
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {  // columns 0/4, 1/5, 2/6, 3/7 of four rows
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(dst + i * dld, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
    _mm256_storeu_ps(dst + (i + 4) * dld, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
  }
}
#endif

// dst[c * dld + r] = src[r * sld + c] for rows [0, rows) and columns [0, cols), in 32 x 32
// blocks, float with AVX2 in 8 x 8 tiles (transpose8x8; element by element, the backward's
// transposes of the intermediate were 8 % of row 1's training step). The element loop runs
// along the side with the larger leading dimension, so that the other side steps by the
// smaller one: stepping by 4 KiB (the pixels of a 32 x 32 plane) put a block's accesses into
// one cache set, and the backward took 1.9x the time.
template <typename S>
void transpose(const S* src, i64 sld, S* dst, i64 dld, i64 rows, i64 cols) {
  constexpr i64 B = 32;
  auto elements = [&](i64 r0, i64 r1, i64 c0, i64 c1) {
    if (sld <= dld) {
      for (i64 c = c0; c < c1; ++c)
        for (i64 r = r0; r < r1; ++r) dst[c * dld + r] = src[r * sld + c];
    } else {
      for (i64 r = r0; r < r1; ++r)
        for (i64 c = c0; c < c1; ++c) dst[c * dld + r] = src[r * sld + c];
    }
  };
  for (i64 r0 = 0; r0 < rows; r0 += B)
    for (i64 c0 = 0; c0 < cols; c0 += B) {
      const i64 r1 = std::min(rows, r0 + B), c1 = std::min(cols, c0 + B);
#if defined(__AVX2__)
      if constexpr (std::is_same<S, float>::value) {
        const i64 r8 = r0 + (r1 - r0) / 8 * 8, c8 = c0 + (c1 - c0) / 8 * 8;
        for (i64 r = r0; r < r8; r += 8)
          for (i64 c = c0; c < c8; c += 8)
            transpose8x8(src + r * sld + c, sld, dst + c * dld + r, dld);
        elements(r0, r8, c8, c1);
        elements(r8, r1, c0, c1);
        continue;
      }
#endif
      elements(r0, r1, c0, c1);
    }
}

// dst[g][k][o] = src[g][o][k] for each group: (Og x CMg) -> (CMg x Og).
template <typename S>
void transpose_groups(const S* src, S* dst, i64 G, i64 Og, i64 CMg) {
  for (i64 gi = 0; gi < G; ++gi)
    transpose(src + gi * Og * CMg, CMg, dst + gi * Og * CMg, Og, Og, CMg);
}

// Rows [k0, k1) of panel j of B = src^T, src being N x K row-major (B's columns are src's
// rows): dst[(j*K + k)*kPanel + o] = src[(j*kPanel + o)*K + k], zero past N.
void pack_panel_part(const float* src, i64 N, i64 K, i64 j, i64 k0, i64 k1, float* dst) {
  const i64 ob = std::min<i64>(kPanel, N - j * kPanel);
  float* d = dst + j * K * kPanel;
  const float* rows = src + j * kPanel * K;
  auto one_by_one = [&](i64 oa, i64 oz, i64 ka) {  // rows [oa, oz), k from ka
    for (i64 o = oa; o < oz; ++o)
      for (i64 k = ka; k < k1; ++k) d[k * kPanel + o] = rows[o * K + k];
  };
  i64 o = 0;
#if defined(__AVX2__)
  for (; o + 8 <= ob; o += 8) {  // blocks of 8 x 8, then the last k one by one
    i64 k = k0;
    for (; k + 8 <= k1; k += 8) transpose8x8(rows + o * K + k, K, d + k * kPanel + o, kPanel);
    one_by_one(o, o + 8, k);
  }
#endif
  one_by_one(o, ob, k0);
  for (i64 o = ob; o < kPanel; ++o)
    for (i64 k = k0; k < k1; ++k) d[k * kPanel + o] = 0.0f;
}

// Rows [k0, k1) of panel j of a plain B (K x N, row stride ldb), zero past N:
// dst[(j*K + k)*kPanel + o] = b[k*ldb + j*kPanel + o].
void pack_panel_rows(const float* b, i64 ldb, i64 K, i64 N, i64 j, i64 k0, i64 k1, float* dst) {
  const i64 ob = std::min<i64>(kPanel, N - j * kPanel);
  float* d = dst + (j * K + k0) * kPanel;
  for (i64 k = k0; k < k1; ++k, d += kPanel) {
    std::memcpy(d, b + k * ldb + j * kPanel, sizeof(float) * ob);
    std::fill(d + ob, d + kPanel, 0.0f);
  }
}

// Columns [q0, q0 + n) of row k of a packed B of N columns and K rows (pack_panel_rows'
// layout) from src, and the zeros past N where they end there.
inline void put_panel_row(const float* src, i64 q0, i64 n, i64 N, i64 k, i64 K, float* dst) {
  for (i64 q = q0, len = 0; q < q0 + n; q += len, src += len) {
    const i64 j = q / kPanel, col = q % kPanel;
    len = std::min(kPanel - col, q0 + n - q);
    std::memcpy(dst + (j * K + k) * kPanel + col, src, sizeof(float) * len);
  }
  if (q0 + n == N && N % kPanel != 0)
    std::fill_n(dst + ((N - 1) / kPanel * K + k) * kPanel + N % kPanel, kPanel - N % kPanel, 0.0f);
}

// Pointwise weight (G groups of Og x CMg, row-major) packed per group in kPanel-column
// panels, panel[j][k][0..kPanel) = wp[j*kPanel + ., k], zero past Og. In blocks of 16 k, so
// that the 16 destination rows being written stay in L1 while the source rows are read
// contiguously, and over the threads: with large weights and few pixels (batch 1) packing
// is a real part of the call.
void pack_panels(const float* wp, i64 G, i64 Og, i64 CMg, i64 threads, float* dst) {
  constexpr i64 KB = 16;
  const i64 panels = panel_count(Og), kblocks = (CMg + KB - 1) / KB;
  const i64 tasks = G * panels * kblocks;
  const i64 nth = G * Og * CMg >= (i64(1) << 16) ? threads : 1;
#pragma omp parallel for num_threads(nth) schedule(static)
  for (i64 t = 0; t < tasks; ++t) {
    const i64 gi = t / (panels * kblocks), j = (t / kblocks) % panels, k0 = (t % kblocks) * KB;
    pack_panel_part(wp + gi * Og * CMg, Og, CMg, j, k0, std::min(CMg, k0 + KB),
                    dst + gi * panels * CMg * kPanel);
  }
}

// Whether a channels_last GEMM of `pixels` rows, K inputs and N outputs goes through the
// planar GEMM, its input and output transposed in cache (2 pixels (K + N) elements moved),
// rather than packing its N x K weight in panels: small images with large weights, where the
// transposes move less than twice what packing does (the ratio 2 pixels (K + N) / (N K)
// under 2). Packing is not all the packed GEMM costs: it reads the panels again for each
// block of A's rows. With the bound at a ratio of 1, 8x768x7x7 -> 3072 7x7 channels_last
// (ratio 1.28) packed its 9.4 MB weight; transposed it took 0.84-0.90x the time, MobileNetV1's
// 8x1024x7x7 -> 1024 (1.53) 0.89x, 1x384x14x14 -> 1536 (1.28) 0.95-0.98x; 8x960x7x7 -> 320
// (3.3) 1.19x (AMD Zen 2, run AI).
inline bool transposing_pays(i64 pixels, i64 K, i64 N) { return pixels * (K + N) < N * K; }

// Group gi's packed pointwise weight (g.wpT) from its column col (a multiple of kPanel) on.
inline const float* packed_cols(const Geo& g, i64 gi, i64 col) {
  return g.wpT + (gi * panel_count(g.Og) * kPanel + col) * g.CMg;
}

}  // namespace
