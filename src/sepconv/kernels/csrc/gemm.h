// The own float32 GEMM of the tile GEMMs: micro-kernels and gemm_f32.
//
// One part of the kernels' single translation unit: sepconv_kernels.cpp includes the parts in
// order; each includes the parts whose names it uses.
#pragma once

#include "vec.h"
#include "kept.h"

namespace {

// ------------------------------------------------------------------ own float32 GEMM
// C[M x N] = A[M x K] . B[K x N] + bias, for the forward's tile GEMMs. MKL picks its AVX2
// code path on AMD CPUs; this register-blocked AVX-512 kernel (MR rows x NV vectors of C in
// registers, B rows streamed from L1, A broadcast) reaches about twice its rate there (see
// docs/performance.md). Without AVX-512, micro_avx2 below does the same in 16-column blocks
// (8 for a last narrow one), each block of rows of A passing over a chunk of such blocks
// (chunk_columns). With either, a last block of 1-4 columns is dot products along K
// (tail_columns).
// A: element (i, k) at a[i*lda + k]; B: row-major, row stride ldb; C: row-major, row stride
// ldc. bias_row[i] or bias_col[j] (or neither) initialises C.
// Only valid columns of B are read and of C written; bias_col is read by whole vectors
// (callers give it slack).

// clamp: {lo, hi} applied to one value (a NaN stays NaN, as in PyTorch's activations).
inline float clamp_value(float x, const float* clamp) {
  return x < clamp[0] ? clamp[0] : (x > clamp[1] ? clamp[1] : x);
}

// clamp: null, or {lo, hi} applied to C (max then min, with C as the second operand: a NaN
// stays NaN, as in clamp_value).
template <typename Vec>
inline Vec clamp_vec(const Vec& in, const float* clamp) {
  Vec v = in;
#if defined(__AVX512F__)
  if constexpr (sizeof(Vec) == 64) {
    const __m512 r = _mm512_max_ps(_mm512_set1_ps(clamp[0]), (__m512)v);
    return (Vec)_mm512_min_ps(_mm512_set1_ps(clamp[1]), r);
  }
#endif
#if defined(__AVX2__)
  if constexpr (sizeof(Vec) == 32) {
    const __m256 r = _mm256_max_ps(_mm256_set1_ps(clamp[0]), (__m256)v);
    return (Vec)_mm256_min_ps(_mm256_set1_ps(clamp[1]), r);
  }
#endif
  for (i64 l = 0; l < i64(sizeof(Vec) / 4); ++l) v[l] = clamp_value(v[l], clamp);
  return v;
}

// stream: C's whole, line-aligned vectors are stored around the caches (AVX-512).
// scale: null, or multipliers of A B along the bias's axis (scale[i] with bias_row,
// scale[j] with bias_col, read like it); the bias is then added after them.
template <int MR, int NV>
inline void micro_f32(i64 K, const float* a, i64 lda, const float* b, i64 ldb, float* c, i64 ldc,
                      const float* bias_row, const float* bias_col, i64 nvalid,
                      bool stream = false, const float* clamp = nullptr,
                      const float* scale = nullptr) {
  typedef V<float>::t vec;
  constexpr int L = V<float>::L;
  vec acc[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) {
      if (scale)
        acc[i][v] = vzero<float>();
      else if (bias_row)
        acc[i][v] = vset<float>(bias_row[i]);
      else if (bias_col)
        acc[i][v] = vld<float>(bias_col + v * L);
      else
        acc[i][v] = vzero<float>();
    }
  const i64 tail = nvalid - (NV - 1) * L;  // valid lanes of the last vector
  // The last vector of a row reaches `over` elements past the row's valid columns, into the
  // rows after it: whole vectors only for the rows that leave that much of B after them,
  // the rest lane by lane, so B is never read past its last element (B may be a caller's
  // tensor: a planar input's 2x2 planes, ldb 4, overran it by 48 bytes).
  const i64 over = L - tail;
  i64 kfull = over <= 0 ? K : K - 1;
  if (__builtin_expect(over > ldb, 0))  // (rows shorter than the overrun: rare, tiny planes)
    kfull = std::max<i64>(0, K - (over + ldb - 1) / std::max<i64>(ldb, 1));
  for (i64 k = 0; k < K; ++k) {
    vec bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v + 1 < NV; ++v) bv[v] = vld<float>(b + k * ldb + v * L);
    if (k < kfull) {
      bv[NV - 1] = vld<float>(b + k * ldb + (NV - 1) * L);
    } else {
      bv[NV - 1] = vzero<float>();
      for (i64 l = 0; l < tail; ++l) bv[NV - 1][l] = b[k * ldb + (NV - 1) * L + l];
    }
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const float ai = a[i * lda + k];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] += ai * bv[v];
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) {
      const i64 n0 = v * L;
      if (scale)
        acc[i][v] = bias_row ? acc[i][v] * vset<float>(scale[i]) + vset<float>(bias_row[i])
                             : acc[i][v] * vld<float>(scale + n0) + vld<float>(bias_col + n0);
      if (clamp) acc[i][v] = clamp_vec(acc[i][v], clamp);
      float* const cv = c + i * ldc + n0;
      if (n0 + L <= nvalid) {
#if defined(__AVX512F__)
        if (stream && (reinterpret_cast<uintptr_t>(cv) & 63) == 0) {
          _mm512_stream_ps(cv, (__m512)acc[i][v]);
          continue;
        }
#endif
        vst<float>(cv, acc[i][v]);
      } else {
        for (i64 l = 0; n0 + l < nvalid; ++l) c[i * ldc + n0 + l] = acc[i][v][l];
      }
    }
}

#if !defined(__AVX512F__) && defined(__AVX2__) && defined(__FMA__)
// Lanes [0, n) of v to p (n clamped to 0-8).
inline void store_lanes(float* p, __m256 v, i64 n) {
  if (n >= 8)
    _mm256_storeu_ps(p, v);
  else if (n > 0)
    vstPart(p, (V<float>::t)v, n);
}

// micro_f32<MR, 1> for CPUs without AVX-512, in intrinsics: GCC lowers the 64-byte vector
// type through the stack there (vmovq/vpinsrq per lane), which ran the tile GEMMs at a sixth
// of MKL's rate. 16 columns are two ymm registers; MR x 2 accumulators (12) fit the 16.
// Always inlined: micro_blocks runs it on block after block in one loop.
template <int MR, int NW = 2>
__attribute__((always_inline)) inline void micro_avx2(
    i64 K, const float* a, i64 lda, const float* b, i64 ldb, float* c, i64 ldc,
    const float* bias_row, const float* bias_col, i64 nvalid, bool stream, bool accumulate,
    const float* clamp, const float* scale) {
  // NW ymm columns: 16 (NW = 2), or 8 for a last column block of 8 or fewer (an N of 24 as 16
  // + 16 did a quarter of its FMAs on zeros). accumulate: C += A B (a later block of K;
  // the biases were added with the first), else C = A B + biases.
  // A partial block (nvalid < NC) reads B's last row and C by masked loads, and writes C
  // lane by lane (store_lanes): copied through a buffer (memcpy), the accumulators' address
  // escaped and GCC kept them in memory, storing each on every k step, wherever it did not
  // inline this function (2.4x the time; earlier a memcpy inside the k loop, 2.3x).
  // Every index of acc is a constant (unrolled loops, column 1 written out): GCC keeps an
  // array with a variable index in memory.
  constexpr i64 NC = 8 * NW;
  const bool partial = nvalid < NC;
  const __m256i mask0 = lanes_inside(0, 8, nvalid), mask1 = lanes_inside(8, 8, nvalid);
  auto load_c = [&](const float* p, __m256i m) __attribute__((always_inline)) {
    return partial ? _mm256_maskload_ps(p, m) : _mm256_loadu_ps(p);
  };
  __m256 acc[MR][NW];
#pragma GCC unroll 12
  for (int i = 0; i < MR; ++i) {
    const float* ci = c + i * ldc;
    acc[i][0] = accumulate ? load_c(ci, mask0)
                : scale    ? _mm256_setzero_ps()
                : bias_row ? _mm256_set1_ps(bias_row[i])
                : bias_col ? _mm256_loadu_ps(bias_col)
                           : _mm256_setzero_ps();
    if constexpr (NW == 2)
      acc[i][NW - 1] = accumulate ? load_c(ci + 8, mask1)
                       : scale    ? _mm256_setzero_ps()
                       : bias_row ? _mm256_set1_ps(bias_row[i])
                       : bias_col ? _mm256_loadu_ps(bias_col + 8)
                                  : _mm256_setzero_ps();
  }
  // Whole vectors of B's rows but the last ones, read masked (B may be a caller's tensor,
  // not to be read past its end): the last row, and more where rows are shorter than a
  // block (ldb < NC, the backward's B of a few pixels), whose whole vectors would reach past
  // the last row's valid columns.
  const i64 kfull = partial ? std::max<i64>(0, K - (NC - nvalid + ldb - 1) / ldb) : K;
  for (i64 k = 0; k < K; ++k) {
    const float* bk = b + k * ldb;
    const bool whole = k < kfull;
    const __m256 b0 = whole ? _mm256_loadu_ps(bk) : _mm256_maskload_ps(bk, mask0);
    const __m256 b1 = NW == 1 ? b0
                      : whole ? _mm256_loadu_ps(bk + 8)
                              : _mm256_maskload_ps(bk + 8, mask1);
#pragma GCC unroll 12
    for (int i = 0; i < MR; ++i) {
      const __m256 ai = _mm256_broadcast_ss(a + i * lda + k);
      acc[i][0] = _mm256_fmadd_ps(ai, b0, acc[i][0]);
      if constexpr (NW == 2) acc[i][NW - 1] = _mm256_fmadd_ps(ai, b1, acc[i][NW - 1]);
    }
  }
  if (scale) {  // (as in micro_f32)
#pragma GCC unroll 12
    for (int i = 0; i < MR; ++i)
      for (int v = 0; v < NW; ++v)
        acc[i][v] = bias_row ? _mm256_fmadd_ps(acc[i][v], _mm256_set1_ps(scale[i]),
                                               _mm256_set1_ps(bias_row[i]))
                             : _mm256_fmadd_ps(acc[i][v], _mm256_loadu_ps(scale + 8 * v),
                                               _mm256_loadu_ps(bias_col + 8 * v));
  }
  if (clamp) {
#pragma GCC unroll 12
    for (int i = 0; i < MR; ++i) {
      acc[i][0] = clamp_vec(acc[i][0], clamp);
      if constexpr (NW == 2) acc[i][NW - 1] = clamp_vec(acc[i][NW - 1], clamp);
    }
  }
#pragma GCC unroll 12
  for (int i = 0; i < MR; ++i) {
    float* ci = c + i * ldc;
    if (NW == 2 && !partial && stream && (reinterpret_cast<uintptr_t>(ci) & 63) == 0) {
      _mm256_stream_ps(ci, acc[i][0]);  // one whole line
      _mm256_stream_ps(ci + 8, acc[i][NW - 1]);
    } else if (!partial) {
      _mm256_storeu_ps(ci, acc[i][0]);
      if constexpr (NW == 2) _mm256_storeu_ps(ci + 8, acc[i][NW - 1]);
    } else {  // (not by masked stores: about 10 cycles each on AMD Zen 3, see vstPart)
      store_lanes(ci, acc[i][0], nvalid);
      if constexpr (NW == 2) store_lanes(ci + 8, acc[i][NW - 1], nvalid - 8);
    }
  }
}
#define SEPCONV_MICRO_AVX2 1

// micro_avx2<MR> on `count` whole 16-column blocks in one loop: block j's B at b + j * bstep
// (16 for a plain B, the panel stride for packed panels), its C, bias_col and column scale
// 16 columns on (a row scale, with bias_row, stays). One dispatch for the run: with a call
// through gemm_f32's dispatch per block, the calls and their arguments took 18 % of a
// 96 x 12544 x 16 GEMM (AMD Zen 2, docs/performance.md run AK).
template <int MR>
void micro_blocks(i64 count, i64 K, const float* a, i64 lda, const float* b, i64 bstep,
                  i64 ldb, float* c, i64 ldc, const float* bias_row, const float* bias_col,
                  bool stream, bool accumulate, const float* clamp, const float* scale) {
  const i64 scale_step = bias_row ? 0 : 16;
  for (i64 j = 0; j < count; ++j)
    micro_avx2<MR, 2>(K, a, lda, b + j * bstep, ldb, c + j * 16, ldc, bias_row,
                      bias_col ? bias_col + j * 16 : nullptr, 16, stream, accumulate, clamp,
                      scale ? scale + j * scale_step : nullptr);
}
#endif

#if defined(__AVX512F__) || defined(SEPCONV_MICRO_AVX2)
#define SEPCONV_TAIL_COLUMNS 1
// Columns a column block may end with past its whole vectors that gemm_f32 computes as dot
// products along K (tail_columns) rather than with one more vector per row.
constexpr int kTailColumns = 4;
// Rows of A per group of dot products: 4 x 4 accumulators in 32 zmm, 3 x 4 in 16 ymm.
constexpr i64 kTailRows = kVecBytes == 64 ? 4 : 3;

// sums[r][j]: the dot products of up to kTailRows rows of A (from a, lda apart) with NT
// gathered columns (bt, K floats each), along K in vectors (the last K % L terms one by one).
// NT as a template argument, so that the accumulators stay in registers (with nt at run time
// they lived on the stack: a load and a store around every FMA).
template <int NT>
inline void tail_dots(i64 rows, i64 K, const float* a, i64 lda, const float* bt,
                      float (&sums)[kTailRows][kTailColumns]) {
  typedef V<float>::t vec;
  constexpr i64 L = V<float>::L;
  vec acc[kTailRows][NT];
  for (int r = 0; r < kTailRows; ++r)
    for (int j = 0; j < NT; ++j) acc[r][j] = vzero<float>();
  const i64 kv = K / L * L;
  for (i64 k = 0; k < kv; k += L) {
    vec av[kTailRows];
    for (int r = 0; r < kTailRows; ++r)
      av[r] = r < rows ? vld<float>(a + r * lda + k) : vzero<float>();
    for (int j = 0; j < NT; ++j) {
      const vec bv = vld<float>(bt + j * K + k);
      for (int r = 0; r < kTailRows; ++r) acc[r][j] += av[r] * bv;
    }
  }
  for (int r = 0; r < rows; ++r)
    for (int j = 0; j < NT; ++j) {
      float v = hsum<float>(acc[r][j]);
      for (i64 k = kv; k < K; ++k) v += a[r * lda + k] * bt[j * K + k];
      sums[r][j] = v;
    }
}

// C[i][j] for rows [0, M), columns [0, nt) (nt <= kTailColumns) of a block: A's rows times
// B's columns (ldb apart), gathered into bt (nt x K floats), along K in vectors, kTailRows
// rows at a time. A block of 49 columns (7 x 7 planes) is 3 vectors and one such column
// instead of 4 vectors, 16 lanes of which hold one column: the micro-kernels spend a quarter
// of their FMAs on nothing there (with AVX2, 16-column blocks: a last block of one column took
// as long as a third of a whole one, its 6 accumulators too few to cover the FMA latency;
// 960 x 49 x 160 ran at 0.80x the rate of 960 x 48 x 160, run AG). Then the bias (bias_row),
// scale and clamp as in micro_f32.
inline void tail_columns(i64 M, i64 K, const float* a, i64 lda, const float* b, i64 ldb,
                         i64 nt, float* c, i64 ldc, const float* bias_row, const float* clamp,
                         const float* scale, float* bt) {
  for (i64 j = 0; j < nt; ++j)
    for (i64 k = 0; k < K; ++k) bt[j * K + k] = b[k * ldb + j];
  for (i64 i0 = 0; i0 < M; i0 += kTailRows) {
    const i64 rows = std::min<i64>(kTailRows, M - i0);
    float sums[kTailRows][kTailColumns];
    const float* const ai = a + i0 * lda;
    with_constant<kTailColumns>(nt, [&](auto nt_c) {
      tail_dots<decltype(nt_c)::value>(rows, K, ai, lda, bt, sums);
    });
    for (i64 r = 0; r < rows; ++r)
      for (i64 j = 0; j < nt; ++j) {
        float v = sums[r][j];
        const i64 i = i0 + r;
        if (scale)  // (along the rows: the callers pass bias_row with it)
          v = v * scale[i] + (bias_row ? bias_row[i] : 0.0f);
        else if (bias_row)
          v = bias_row[i] + v;
        c[i * ldc + j] = clamp ? clamp_value(v, clamp) : v;
      }
  }
}
#endif

// f(std::integral_constant<int, R>()) for R = mr (1 to 6): a block's row count as the
// micro-kernels' template argument (the float32 and bfloat16 ones).
template <typename F>
inline void with_rows(i64 mr, F&& f) {
  with_constant<6>(mr, std::forward<F>(f));
}

// stream: whole-line stores of C bypass the caches; accumulate: C += A B (only where
// micro_avx2 runs); clamp: null or {lo, hi} for C; scale: as in micro_f32.
template <int NV>
inline void micro_rows(i64 mr, i64 K, const float* a, i64 lda, const float* b, i64 ldb, float* c,
                       i64 ldc, const float* bias_row, const float* bias_col, i64 nvalid,
                       bool stream = false, bool accumulate = false,
                       const float* clamp = nullptr, const float* scale = nullptr) {
#if defined(SEPCONV_MICRO_AVX2)
  if (NV == 1) {
    auto by_rows = [&](auto nw_c) {
      with_rows(mr, [&](auto mr_c) {
        micro_avx2<decltype(mr_c)::value, decltype(nw_c)::value>(
            K, a, lda, b, ldb, c, ldc, bias_row, bias_col, nvalid, stream, accumulate, clamp,
            scale);
      });
    };
    if (nvalid <= 8)
      by_rows(std::integral_constant<int, 1>());
    else
      by_rows(std::integral_constant<int, 2>());
    return;
  }
#endif
  with_rows(mr, [&](auto mr_c) {
    micro_f32<decltype(mr_c)::value, NV>(K, a, lda, b, ldb, c, ldc, bias_row, bias_col, nvalid,
                                         stream, clamp, scale);
  });
}

// Largest block of K per micro-kernel call without AVX-512 (gemm_f32): 256 rows of a
// 16-column block of B, 16 KiB of L1.
constexpr i64 kKC = 256;

// Bytes of A's rows per block in gemm_f32 (kept in L2 while all of B's columns pass).
constexpr i64 kABlockBytes = i64(192) << 10;

// Columns of B per micro-kernel call (gemm_f32), and the width of a packed B's panels
// (pack_panels), so that a call's block of B is contiguous: on AMD Zen 3 (L1 32 KiB), 16-
// column panels with K in blocks of kKC ran the channels_last GEMMs at 91-99 GFLOP/s a core
// where 64-column ones (rows 256 bytes apart, on 16 of L1's 64 sets, K unblocked) ran at
// 74-90: 196 x 960 -> 320 76 -> 96, 784 x 384 -> 1536 79 -> 94.
#if defined(__AVX512F__)
constexpr i64 kPanel = 64;  // 6 x 4 accumulators in 24 zmm
#else
constexpr i64 kPanel = 16;  // one vector of columns: micro_avx2 (6 x 4 vectors would be 48 ymm)
#endif

// Columns of B per chunk in gemm_f32, whose blocks of rows of A each pass over all of the
// chunk's column blocks, its 6 rows of A in L1 (up to K of about 1300) while the chunk's columns
// of B stream from L2 (kChunkBytes of them). With micro_avx2, one column block per chunk (the
// row blocks passing over each, the micro-kernel called through gemm_f32's dispatch per
// block) ran 96 x 12544 x 16 at 54-56 % of the FMA peak, 128 x 224 x 128 at 86-88 %; now 76-78
// and 91-94 % (AMD Zen 2, docs/performance.md run AK). One block per chunk with AVX-512 (not
// measured there).
constexpr i64 kChunkBytes = i64(192) << 10;
inline i64 chunk_columns(i64 K) {
#if defined(SEPCONV_MICRO_AVX2)
  return std::clamp<i64>(kChunkBytes / std::max<i64>(4 * K, 1) / kPanel * kPanel, kPanel, 256);
#else
  (void)K;
  return kPanel;
#endif
}

// Panels of kPanel columns that hold n columns.
constexpr i64 panel_count(i64 n) { return (n + kPanel - 1) / kPanel; }

// Whether the rows of a column block of a plain B (ldb floats apart, kc of them, one line
// each with AVX2's 16-column blocks) are more lines than their sets of a 32 KiB, 8-way L1
// hold (64 sets; rows 2^j lines apart share 64 / 2^j sets). Such a block is copied into a
// contiguous panel first (gemm_f32). The backward of 32x64x32x32 -> 128 (rows 64 lines
// apart, one set) took 0.94x the time with panels; that of row 1 (8x128x56x56 -> 128: rows
// 196 lines apart, 16 sets, 128 rows) 1.015x, so it keeps B in place (AMD Zen 2, run AH).
inline bool rows_crowd_l1(i64 ldb, i64 kc) {
  // (rows off line boundaries spread over the sets; a stride of 0, a broadcast B, has none)
  if (ldb <= 0 || ldb % 16 != 0) return false;
  const i64 lines = ldb / 16;
  const i64 sets = 64 / std::min<i64>(64, lines & -lines);  // (lines & -lines: its largest 2^j)
  return sets * 8 < kc;
}

// p rounded up to a multiple of `bytes` (a power of 2).
inline float* align_up(float* p, uintptr_t bytes) {
  return reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(p) + bytes - 1) & ~(bytes - 1));
}

// The kn rows of a column block of B (ldb apart, kPanel columns) into a contiguous panel.
inline void copy_block(const float* b, i64 ldb, i64 kn, float* panel) {
  constexpr i64 L = V<float>::L;
  for (i64 k = 0; k < kn; ++k)
    for (i64 v = 0; v < kPanel; v += L)
      vst<float>(panel + k * kPanel + v, vld<float>(b + k * ldb + v));
}

// Several images' GEMMs with one A (gemm_f32's images): image i's B at b + i * b, its C at
// c + i * c (elements), each N columns.
struct Images {
  i64 count = 1, b = 0, c = 0;
};

// bias_row: M values (one per row of C) or null; bias_col: N values (+ slack) or null.
// pstride: 0 for a plain B; else B is packed in kPanel-column panels (pack_panels, ldb
// kPanel), panel j at b + j * pstride. stream (ldc a multiple of 16): C's whole lines are
// written around the caches by the last block of K; with a plain B the column blocks start
// on line boundaries, with panels at C's columns 0, 16, ..., whose rows are then streamed
// only where those are line-aligned (a group's columns of a grouped channels_last output may
// not be). clamp: null, or {lo, hi} applied to C as it is stored. scale: null, or M (with
// bias_row) or N (+ slack, with bias_col) multipliers of A B before the bias is added: C =
// scale * (A B) + bias (a batch norm applied to the accumulators instead of folded into A).
void gemm_f32(i64 M, i64 N, i64 K, const float* a, i64 lda, const float* b_all, i64 ldb,
              float* c_all, i64 ldc, const float* bias_row, const float* bias_col,
              i64 pstride = 0, bool stream = false, const float* clamp = nullptr,
              const float* scale = nullptr, Images images = {}) {
  constexpr i64 MR = 6;
  // Rows of A in blocks that stay in L2 while all column blocks sweep past them, so a large
  // A (pointwise weight) is read from memory once per call, not once per column block.
  const i64 MB = std::max<i64>(MR, (kABlockBytes / std::max<i64>(K * 4, 1)) / MR * MR);
  // (a plain B whose rows crowd into few cache sets: one block per chunk, and its panels
  // below; in chunks, 128 x 1024 x 128 took 1.4x the time)
  const i64 cw = !pstride && rows_crowd_l1(ldb, std::min(K, kKC)) ? kPanel : chunk_columns(K);
  // One column block per chunk (AVX2 where B's rows crowd the cache sets, or K beyond 1536,
  // where chunk_columns gives one): a plain B's K in blocks of at most kKC with
  // micro_avx2 (accumulating into C: the same sums in the same order), so that a column
  // block of B (kc x 16 floats) stays in L1 while the row blocks pass: with K = 384-960,
  // 8x576x14x14 -> 96 / 8x384x14x14 -> 1536 7x7 took 0.94-0.95x the time (AMD Zen 3, L1 32
  // KiB). Packed panels too (see kPanel); not a plain B of fewer than 64 columns (1x768x7x7
  // -> 3072, 49 columns: 1.07x). Chunks of several blocks read B from L2 anyway: K whole.
#if defined(SEPCONV_MICRO_AVX2)
  const i64 nk = cw > kPanel || (!pstride && N < 64) ? 1 : std::max<i64>(1, (K + kKC - 1) / kKC);
#else
  const i64 nk = 1;
#endif
  const i64 kc = std::max<i64>(1, (K + nk - 1) / nk);
#if defined(SEPCONV_TAIL_COLUMNS)
  thread_local std::vector<float> gathered;  // (B's tail columns: tail_columns)
#endif
  // A plain B's whole column blocks copied into a panel where their rows crowd into few L1
  // sets (rows_crowd_l1), K is blocked (a panel of kc x 16 floats in L1) and enough blocks
  // of A's rows reuse each copy (8: 24 x 3136 x 144, 4 blocks, took 1.04x the time with
  // panels). With micro_avx2 and one column block per chunk only: AVX-512's 64-column
  // blocks are four lines a row, unmeasured. The panel is a kept buffer, 64-byte aligned
  // (whole lines per row).
#if defined(SEPCONV_MICRO_AVX2)
  const bool to_panel = cw == kPanel && !pstride && kc <= kKC && std::min(M, MB) >= 8 * MR &&
                        rows_crowd_l1(ldb, kc);
#else
  constexpr bool to_panel = false;
#endif
  std::unique_ptr<float[]> panel_fallback;
  float* const panel =
      to_panel ? align_up(kept_buffer(kKeptGemmPanel, kc * kPanel + 16, panel_fallback), 64)
               : nullptr;
  for (i64 mb0 = 0; mb0 < M; mb0 += MB)
  for (i64 img = 0; img < images.count; ++img) {  // (A's block stays in L2 over the images)
    const i64 mend = std::min(M, mb0 + MB);
    const float* const b = b_all + img * images.b;
    float* const c = c_all + img * images.c;
    // (streamed: a first block up to C's first line boundary; never with panels, which a
    // block must not straddle)
    const i64 lead =
        stream && !pstride ? ((64 - (reinterpret_cast<uintptr_t>(c) & 63)) & 63) / 4 : 0;
    // Column block widths: `lead` first (if any), then kPanel.
    auto block_width = [&](i64 n0) {
      return std::min(n0 == 0 && lead > 0 ? lead : kPanel, N - n0);
    };
    // Column n of B's first row (packed: in panel n / kPanel).
    auto column = [&](i64 n) { return pstride ? b + (n / kPanel) * pstride + n % kPanel : b + n; };
    i64 wend = N;  // (columns from wend on: tail_columns, after the blocks)
#if defined(SEPCONV_TAIL_COLUMNS)
    // The last block's columns past whole vectors (its own: with a lead block, not N's).
    i64 last0 = 0;
    while (last0 + block_width(last0) < N) last0 += block_width(last0);
    const i64 nt = (N - last0) % 16;
    if (!bias_col && nt != 0 && nt <= kTailColumns) wend = N - nt;
#endif
    // Chunks of whole column blocks, [n1, n2), of at most cw columns (at least one block).
    for (i64 n1 = 0, n2 = 0; n1 < wend; n1 = n2) {
      do n2 += block_width(n2); while (n2 < wend && n2 - n1 + kPanel <= cw);
      for (i64 k0 = 0; k0 == 0 || k0 < K; k0 += kc) {  // (once for K = 0: C = biases)
        const i64 kn = std::min(kc, K - k0);
        const bool first = k0 == 0, last = k0 + kn == K;
        // (the bias with the first block of K, or after the scale with the last)
        const bool with_bias = scale ? last : first;
        const bool st = stream && last;
        const float* cl = last ? clamp : nullptr;
        for (i64 m0 = mb0, mr = 0; m0 < mend; m0 += mr) {
          // Blocks of 6 rows, the last few evened out (128 = 18 x 6 + 4 x 5, not 21 x 6 + 2): a
          // block of 1 or 2 rows has too few accumulator chains to cover the FMA latency.
          const i64 left = (mend - m0 + MR - 1) / MR;  // blocks left
          mr = (mend - m0 + left - 1) / left;
          const float* br = bias_row && with_bias ? bias_row + m0 : nullptr;
          const float* am = a + m0 * lda + k0;
          for (i64 n0 = n1, nb = 0; n0 < n2; n0 += nb) {
            nb = block_width(n0);
            const i64 nw = std::min(nb, wend - n0);  // (the block's columns for the kernels)
            if (nw <= 0) break;
            const float* bk = column(n0) + k0 * ldb;
            i64 ldbk = ldb;
            if (to_panel && nw == kPanel) {  // (one block per chunk: copied for the first rows)
              if (m0 == mb0) copy_block(bk, ldb, kn, panel);
              bk = panel, ldbk = kPanel;
            }
            const float* bc = bias_col && with_bias ? bias_col + n0 : nullptr;
            const float* sc = scale && last ? scale + (bias_row ? m0 : n0) : nullptr;
            float* cm = c + m0 * ldc + n0;
#if defined(SEPCONV_MICRO_AVX2)
            if (nw == kPanel) {
              // The run of whole blocks from here, in one loop (a panel copy: one block).
              i64 run = 1;
              while (!to_panel && n0 + (run + 1) * kPanel <= std::min(n2, wend)) ++run;
              with_rows(mr, [&](auto mr_c) {
                micro_blocks<decltype(mr_c)::value>(run, kn, am, lda, bk,
                                                    pstride ? pstride : kPanel, ldbk, cm, ldc,
                                                    br, bc, st, !first, cl, sc);
              });
              nb = run * kPanel;
              continue;
            }
#endif
            with_constant<4>((nw + 15) / 16, [&](auto nv_c) {
              constexpr int NV = decltype(nv_c)::value;
              // (C += A B for a later block of K: only with one vector, micro_avx2)
              const bool accumulate = NV == 1 && !first;
              micro_rows<NV>(mr, kn, am, lda, bk, ldbk, cm, ldc, br, bc, nw, st, accumulate, cl,
                             sc);
            });
          }
        }
      }
    }
#if defined(SEPCONV_TAIL_COLUMNS)
    // (last: A's block is in L2 by now; read first, a large A came from memory three rows at
    // a time, and MobileNetV2's tails took 4 % of its time at batch 1 instead of 1 %)
    if (wend < N) {
      if (i64(gathered.size()) < kTailColumns * K) gathered.resize(kTailColumns * K);
      tail_columns(mend - mb0, K, a + mb0 * lda, lda, column(wend), ldb, N - wend,
                   c + mb0 * ldc + wend, ldc, bias_row ? bias_row + mb0 : nullptr, clamp,
                   scale ? scale + mb0 : nullptr, gathered.data());
    }
#endif
  }
}

// Which tile GEMMs use the own kernel rather than BLAS: 1 all, 0 none, 2 by layout and tile
// count (own_gemm_for). Set from Python at load (sepconv_set_own_gemm): MKL runs its
// AVX-512 code on Intel CPUs but its AVX2 code on AMD ones, so which is faster depends on
// the CPU and the layout (docs/performance.md).
int g_own_gemm = 1;

// Mode 2 (Intel): MKL was faster except on planar calls with few tiles (the own GEMM lets
// the threads share a tile) and channels-last calls with many tiles and a pointwise weight
// of more than 64 KiB (MKL re-reads a large weight for every tile; the own GEMM's panels
// stay in L2); MKL also for the whole-call GEMMs (sep_forward_whole), where it was measured.
// (Bands of rows, sep_forward's bands_ok, came later, on AMD: with few tiles they keep this
// choice, unmeasured with MKL.) weight: elements of the pointwise weight.
bool own_gemm_for(bool nhwc, bool few_tiles, i64 weight, bool whole = false) {
  if (g_own_gemm != 2) return g_own_gemm == 1;
  if (whole) return false;
  return nhwc ? !few_tiles && weight > (i64(16) << 10) : few_tiles;
}

}  // namespace
