// The planar (NCHW) depthwise loops: from a padded buffer, or straight from the plane
// (conv_direct_s1 / s2, conv_narrow_s1), and channel_tile, which picks one.
//
// One part of the kernels' single translation unit: sepconv_kernels.cpp includes the parts in
// order; each includes the parts whose names it uses.
#pragma once

#include "vec.h"
#include "geometry.h"
#include "padding.h"
#include "reads.h"

namespace {

// f(std::integral_constant<int, KW>()) for a 3-, 5- or 7-wide filter (direct_ok, nhwc_s1_ok):
// the loops that read in place take the width at compile time.
template <typename F>
__attribute__((always_inline)) inline void by_width(i64 KW, F f) {
  switch (KW) {
    case 3: f(std::integral_constant<int, 3>()); return;
    case 5: f(std::integral_constant<int, 5>()); return;
    default: f(std::integral_constant<int, 7>()); return;
  }
}

// Planar depthwise core: TH x TW outputs of one filter from a padded buffer (row length
// qrow, phase segment qs), written to dst with row stride drs.
//
// NV vectors of consecutive outputs at once, each with two partial sums (even and odd
// kernel columns), so 2*NV independent FMA chains hide the FMA latency. The last vector
// may be partial: it reads up to L - 1 elements past the row (buffers carry kSlack
// elements of slack) and stores only the `last` valid lanes.
template <int NV, int KW, typename S, typename A>
inline void conv_block(const A* b, i64 qrow, i64 dy, i64 KH, i64 kw_rt, const i64* offx,
                       const A* wv, A bias, S* d, i64 last, i64 in_step = V<A>::L,
                       i64 out_step = V<A>::L, bool all_partial = false) {
  typedef typename V<A>::t vec;
  constexpr int L = V<A>::L;
  const i64 kw = KW ? KW : kw_rt;
  vec a0[NV], a1[NV];
  for (int v = 0; v < NV; ++v) {
    a0[v] = vset<A>(bias);
    a1[v] = vzero<A>();
  }
  for (i64 ky = 0; ky < KH; ++ky) {
    const A* r = b + ky * dy * qrow;
    const A* w = wv + ky * kw;
    if constexpr (KW > 0) {
#pragma GCC unroll 8
      for (int kx = 0; kx < KW; ++kx) {
        const A wt = w[kx];
        const A* rr = r + offx[kx];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) {
          if (kx & 1)
            a1[v] += wt * vld<A>(rr + v * in_step);
          else
            a0[v] += wt * vld<A>(rr + v * in_step);
        }
      }
    } else {
      i64 kx = 0;
      for (; kx + 1 < kw; kx += 2) {
        const A w0 = w[kx], w1 = w[kx + 1];
        const A *r0 = r + offx[kx], *r1 = r + offx[kx + 1];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) {
          a0[v] += w0 * vld<A>(r0 + v * in_step);
          a1[v] += w1 * vld<A>(r1 + v * in_step);
        }
      }
      if (kx < kw) {
        const A w0 = w[kx];
        const A* r0 = r + offx[kx];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) a0[v] += w0 * vld<A>(r0 + v * in_step);
      }
    }
  }
  for (int v = 0; v < NV; ++v) {
    const vec z = a0[v] + a1[v];
    S* dv = d + v * out_step;
    if (last == L || (v + 1 < NV && !all_partial)) {
      vstOut(dv, z);
    } else {
      vstPart(dv, z, last);
    }
  }
}

// Stride 1, dilation 1, K x K filter: R consecutive output rows of one column vector at a
// time, one kernel column after another. The K weights of a kernel column are broadcast
// into registers once per block; each of the R + K - 1 input rows is then loaded at the
// column's shift (an unaligned load) and serves every output row that reads it. Per output
// vector: K * K FMAs, K * (R + K - 1) / R loads and K weight broadcasts per R rows, so that
// the FMA ports do nothing else. (Before: each input row was loaded once and its K shifts
// made by permutes, which share the FMA ports, and the weights were broadcast for every
// FMA: in L1, 3x3 / 5x5 / 7x7 at 6.1 / 15.4 / 28.1 cycles per output vector; now 5.2 /
// 12.7 / 24.5 with R = 8, the last two at the FMA bound.) Reads up to 15 + K - 1 elements
// past the column start of each row (buffers carry kSlack elements of slack); stores only
// the `last` valid lanes.
// SEPCONV_KERNELS_ROWS=0 turns the row-blocked stride-1 path off (for comparison).
inline bool s1_rows_enabled() {
  static const bool enabled = env_not_zero("SEPCONV_KERNELS_ROWS");
  return enabled;
}

// Input rows of a padded buffer (row length qrow) for rows_s1: begin(kx) starts at the
// block's first row at column shift kx, next() gives a row and steps to the next one (one
// pointer, kept opaque: precomputed, the R + K - 1 row addresses went through the stack and
// vector registers, 1.2x the time per block).
struct BufferRows {
  const float* b;
  i64 qrow;
  const float* p = nullptr;
  __attribute__((always_inline)) void begin(int kx) { p = b + kx; }
  __attribute__((always_inline)) V<float>::t next() {
    const V<float>::t v = vld<float>(p);
    p += qrow;
    asm("" : "+r"(p));
    return v;
  }
};

// Outputs [0, R) of a block (output rows, or channels_last pixels), each the sum of CH
// partial sums in accumulator type A, to d (stride drs; only the first `last` lanes).
template <int CH, int R, typename A, typename S>
__attribute__((always_inline)) inline void store_rows(const typename V<A>::t (&acc)[CH][R], S* d,
                                                      i64 drs, i64 last) {
  for (int i = 0; i < R; ++i, d += drs) {
    typename V<A>::t z = acc[0][i];
    for (int h = 1; h < CH; ++h) z += acc[h][i];
    if (last == V<A>::L) {
      vstOut(d, z);
    } else {
      vstPart(d, z, last);
    }
    asm("" : "+r"(d));  // (as for the rows)
  }
}

// always_inline: as a call per block, the prologue and the accumulators' trip through the
// stack cost as much as a 3x3 block's arithmetic.
template <int K, int R, typename S, typename Rows>
__attribute__((always_inline)) inline void rows_s1(Rows rows, const float* w, float bias, S* d,
                                                   i64 drs, i64 last) {
  typedef V<float>::t vec;
  // Partial sums over kernel columns where R is small: 8 independent FMA chains cover the
  // FMA latency with two FMA units (R = 4 with one chain per row: 7x7 at 31.4 cycles). 5x5
  // and 7x7 at R = 8 take two per row as well: with 8 chains of 25-49 FMAs the units idled
  // (AMD Zen 5: depthwise 7x7 0.89-0.95x the time, 5x5 0.98-0.99x; 3x3 1.02x: it keeps one).
  // With 16 registers (AVX2) CH * R stays at 8 or less: 8 accumulators, K weights and the row.
  constexpr int CH = kVecRegs >= 32 ? (R >= 8 ? (K >= 5 ? 2 : 1) : (R >= 4 ? 2 : 4))
                                    : (R >= 8 ? 1 : R >= 4 ? 2 : 4);
  vec acc[CH][R];
  for (int i = 0; i < R; ++i) {
    acc[0][i] = vset<float>(bias);
    for (int h = 1; h < CH; ++h) acc[h][i] = vzero<float>();
  }
#pragma GCC unroll 8
  for (int kx = 0; kx < K; ++kx) {
    vec wk[K];
#pragma GCC unroll 8
    for (int ky = 0; ky < K; ++ky) wk[ky] = vset<float>(w[ky * K + kx]);
    rows.begin(kx);
#pragma GCC unroll 16
    for (int r = 0; r < R + K - 1; ++r) {
      const vec v = rows.next();
#pragma GCC unroll 8
      for (int i = 0; i < R; ++i) {
        const int ky = r - i;
        if (ky >= 0 && ky < K) acc[kx % CH][i] += wk[ky] * v;
      }
    }
  }
  store_rows<CH, R, float>(acc, d, drs, last);
}

// Output rows (or pixels) [i0, i1) in blocks of RMAX (8 or 4), then four, two and one;
// block(i, R) computes [i, i + R), R a std::integral_constant.
template <int RMAX, typename Block>
__attribute__((always_inline)) inline void in_blocks(i64 i0, i64 i1, Block block) {
  i64 i = i0;
  if constexpr (RMAX >= 8)
    for (; i + 8 <= i1; i += 8) block(i, std::integral_constant<int, 8>());
  for (; i + 4 <= i1; i += 4) block(i, std::integral_constant<int, 4>());
  if (i + 2 <= i1) block(i, std::integral_constant<int, 2>()), i += 2;
  if (i < i1) block(i, std::integral_constant<int, 1>());
}

// Rows [0, n) in blocks of 8, then one block of the rest (1-7): block(i, R) as for in_blocks.
template <typename Block>
__attribute__((always_inline)) inline void in_exact_blocks(i64 n, Block block) {
  i64 i = 0;
  for (; i + 8 <= n; i += 8) block(i, std::integral_constant<int, 8>());
  switch (n - i) {
    case 7: block(i, std::integral_constant<int, 7>()); break;
    case 6: block(i, std::integral_constant<int, 6>()); break;
    case 5: block(i, std::integral_constant<int, 5>()); break;
    case 4: block(i, std::integral_constant<int, 4>()); break;
    case 3: block(i, std::integral_constant<int, 3>()); break;
    case 2: block(i, std::integral_constant<int, 2>()); break;
    case 1: block(i, std::integral_constant<int, 1>()); break;
    default: break;
  }
}

template <int K, typename S>
void conv_planar_s1(const float* buf, i64 qrow, const float* w, float bias, i64 TH, i64 TW, S* dst,
                    i64 drs) {
  constexpr i64 L = V<float>::L;
  for (i64 j = 0; j < TW; j += L) {
    const i64 last = std::min(L, TW - j);
    in_blocks<8>(0, TH, [&](i64 i, auto R) {
      t_ahead.issue();
      rows_s1<K, decltype(R)::value, S>(BufferRows{buf + i * qrow + j, qrow}, w, bias,
                                        dst + i * drs + j, drs, last);
    });
  }
}

// The in-place reads (conv_direct_s1) need masked loads: AVX-512 or AVX2 with FMA.
#if defined(__AVX512F__) || defined(SEPCONV_VEC32)
#define SEPCONV_DIRECT 1
typedef int32_t vi32 __attribute__((vector_size(kVecBytes)));

// Lanes [k, k + L) of the concatenation lo:hi (k a constant after unrolling).
__attribute__((always_inline)) inline V<float>::t shifted(V<float>::t lo, V<float>::t hi, int k) {
  vi32 lanes;
  for (int i = 0; i < V<float>::L; ++i) lanes[i] = i + k;
  return __builtin_shuffle(lo, hi, lanes);
}

// rows_s1 for blocks at a plane's left or right edge, whose rows arrive masked: each input
// row is loaded once, load(lo, hi) giving columns [0, L) and [L, 2L) of the next row, and
// its K shifts are made by permutes (masked loads at every shift took 1.3x the block's
// time, most of them split across cache lines). Two partial sums per row (even and odd
// kernel columns) for 2 * R independent FMA chains.
template <int K, int R, typename S, typename Load>
__attribute__((always_inline)) inline void rows_s1_permuted(Load load, const float* w, float bias,
                                                            S* d, i64 drs, i64 last) {
  typedef V<float>::t vec;
  vec acc[2][R];
  for (int i = 0; i < R; ++i) {
    acc[0][i] = vset<float>(bias);
    acc[1][i] = vzero<float>();
  }
#pragma GCC unroll 16
  for (int r = 0; r < R + K - 1; ++r) {
    vec lo, hi;
    load(lo, hi);
#pragma GCC unroll 16
    for (int kx = 0; kx < K; ++kx) {
      const vec sh = kx == 0 ? lo : shifted(lo, hi, kx);
#pragma GCC unroll 8
      for (int i = 0; i < R; ++i) {
        const int ky = r - i;
        if (ky >= 0 && ky < K) acc[kx & 1][i] += w[ky * K + kx] * sh;
      }
    }
  }
  store_rows<2, R, float>(acc, d, drs, last);
}

// a / b rounded down (b > 0).
inline i64 floor_div(i64 a, i64 b) { return a >= 0 ? a / b : -((b - 1 - a) / b); }

// Zeros for rows outside the plane (conv_direct_s1).
alignas(64) const float kZeroRow[32] = {};

// rows_s1's rows for blocks of conv_direct_s1 at a plane's edges: rows outside the plane
// read as zeros and, if Masked, each kernel column's shifted row is one masked load (lanes
// outside the plane read as zeros; masks[kx]: the lanes inside for kernel column kx). In L1
// the masked loads cost 1 % (3x3, 8 rows).
template <bool Masked>
struct PlaneRows {
  const float* p0;
  i64 sh, y0, H;
  const LaneMask* masks;
  const float* p = nullptr;
  i64 y = 0;
  LaneMask m{};
  __attribute__((always_inline)) void begin(int kx) {
    p = p0 + kx;
    y = y0;
    if (Masked) m = masks[kx];
  }
  __attribute__((always_inline)) V<float>::t next() {
    const float* q = uint64_t(y) < uint64_t(H) ? p : kZeroRow;
    p += sh;
    ++y;
    asm("" : "+r"(p));
    return Masked ? load_inside(m, q) : vld<float>(q);
  }
};

// Zero padding, stride 1, dilation 1, K x K filter, straight from the input plane (unit column
// stride, row stride sh) instead of a padded copy. Output rows [oy0, oy0 + TH), columns [ox0, ox0 +
// TW) to dst (row stride drs), in row blocks; in each, first the column vectors whose windows lie
// inside the plane's columns, in place (rows_s1; rows outside the plane read as zero rows,
// PlaneRows), in one tight loop, then the edge columns. Those need zero lanes: with AVX2, 3x3 ones
// in blocks of eight rows load each kernel column's shifted row masked (PlaneRows<true>); other 3x3
// ones take masked rows permuted (rows_s1_permuted; with AVX-512 all: masked loads at every shift
// took 1.3x the block's time there); 5x5 and 7x7 ones gather their window into a small buffer
// first. Only the output rows whose windows reach past the top or bottom row are edge rows, in
// blocks of four: with blocks of eight, 7x7 on AVX2 (AMD Zen 3) gathered 27 % of its blocks and
// took 1.03-1.09x the time of the padded copy. Row blocks outermost, column vectors inside: the
// plane is read in its memory order, which the hardware prefetcher follows. With every column in
// one loop, edge and inner blocks alternating (one inlined block with both paths), in L2 a 112 x
// 112 3x3 plane took 6.6 TSC cycles an output vector and its inner blocks 5.3 (AMD Zen 3; the
// kernel alone: 3.8); now 4.7 and 3.9 (56 x 56 7.0 -> 5.0, 28 x 28 9.8 -> 8.8). Depthwise
// 8x128x112x112 3x3 took 0.87-0.89x the time, fused 56 x 56 rows 0.94-0.98x. 3x3 planes without
// inner columns (14 x 14 on AVX2) keep blocks of four rows throughout: in the row-block order they
// took 1.06x.
//
// Used by the depthwise and the fused forward, where the copy is a store and a reload of
// every input element.
template <int K, typename S>
void conv_direct_s1(const float* plane, i64 sh, const Geo& g, i64 oy0, i64 ox0, i64 TH, i64 TW,
                    const float* w, float bias, S* dst, i64 drs) {
  typedef V<float>::t vec;
  constexpr i64 L = V<float>::L, WL = 2 * L;  // gathered window: rows of L + K - 1 columns
  alignas(64) float win[(8 + K - 1) * WL];
  // Lanes inside the row: columns [c0, c0 + L) and the K - 1 columns after them.
  auto inside = [&](i64 first, i64 lanes) { return lanes_inside(first, lanes, g.W); };
  // Column vectors [j_lo, j_hi) read no column outside the plane: their first padded column
  // c0 = ox0 + j - pl >= 0 and c0 + L + K - 1 <= W.
  const i64 vecs = (TW + L - 1) / L;
  const i64 j_lo = std::min(vecs, std::max<i64>(0, g.pl - ox0 + L - 1) / L) * L;
  const i64 j_hi =
      std::max(j_lo, std::min(vecs, floor_div(g.W - K + 1 + g.pl - ox0 - L, L) + 1) * L);
  // Column vector j of rows [i, i + R) at a left or right edge (masks and zero rows).
  auto edge_block = [&](i64 i, auto R, i64 j) __attribute__((always_inline)) {
    constexpr int RB = decltype(R)::value;
    t_ahead.issue();
    const i64 last = std::min(L, TW - j);
    const i64 c0 = ox0 + j - g.pl;  // input column of the block's first padded column
    const i64 y0 = oy0 + i - g.pt;  // input row of the block's first padded row
    S* d = dst + i * drs + j;
    if constexpr (K == 3 && kVecRegs < 32 && RB == 8) {
      LaneMask ms[K];
      for (int kx = 0; kx < K; ++kx) ms[kx] = inside(c0 + kx, L);
      rows_s1<K, RB, S>(PlaneRows<true>{plane + y0 * sh + c0, sh, y0, g.H, ms}, w, bias, d,
                        drs, last);
      return;
    }
    const LaneMask mlo = inside(c0, L), mhi = inside(c0 + L, K - 1);
    // The block's input rows one by one, zero outside the plane: one pointer stepped (and
    // kept opaque, as in BufferRows).
    i64 y = y0;
    const float* p = plane + y0 * sh + c0;
    auto rows = [&](vec& lo, vec& hi) __attribute__((always_inline)) {
      const float* q = uint64_t(y) < uint64_t(g.H) ? p : kZeroRow;
      lo = load_inside(mlo, q);
      hi = load_inside(mhi, q + L);
      p += sh;
      ++y;
      asm("" : "+r"(p));
    };
    if constexpr (K == 3) {
      rows_s1_permuted<K, RB, S>(rows, w, bias, d, drs, last);
    } else {
      for (i64 r = 0; r < RB + K - 1; ++r) {
        vec lo, hi;
        rows(lo, hi);
        vst<float>(win + r * WL, lo);
        vst<float>(win + r * WL + L, hi);
      }
      rows_s1<K, RB, S>(BufferRows{win, WL}, w, bias, d, drs, last);
    }
  };
  // Rows [i, i + R): the inner column vectors, then the edge ones. ZeroRows: some of the
  // block's input rows lie outside the plane.
  auto row_block = [&](i64 i, auto R, auto ZeroRows) __attribute__((always_inline)) {
    constexpr int RB = decltype(R)::value;
    const i64 y0 = oy0 + i - g.pt;
    const float* src = plane + y0 * sh + ox0 - g.pl;
    S* d = dst + i * drs;
    for (i64 j = j_lo; j < j_hi; j += L) {
      t_ahead.issue();
      const i64 last = std::min(L, TW - j);
      if constexpr (decltype(ZeroRows)::value)
        rows_s1<K, RB, S>(PlaneRows<false>{src + j, sh, y0, g.H, nullptr}, w, bias, d + j, drs,
                          last);
      else
        rows_s1<K, RB, S>(BufferRows{src + j, sh}, w, bias, d + j, drs, last);
    }
    for (i64 j = 0; j < TW; j += L) {
      if (j >= j_lo && j < j_hi) continue;
      if constexpr (K == 3 && kVecRegs >= 32 && RB == 8) {  // (rows_s1_permuted spills)
        edge_block(i, std::integral_constant<int, 4>(), j);
        edge_block(i + 4, std::integral_constant<int, 4>(), j);
      } else {
        edge_block(i, R, j);
      }
    }
  };
  if (K == 3 && j_lo == j_hi) {  // narrow: every column vector at an edge
    in_blocks<4>(0, TH, [&](i64 i, auto R) __attribute__((always_inline)) {
      for (i64 j = 0; j < TW; j += L) edge_block(i, R, j);
    });
    return;
  }
  // Output rows [top, bot) read no row outside the plane, rounded to blocks of four.
  const i64 top = std::min(TH, (std::clamp<i64>(g.pt - oy0, 0, TH) + 3) / 4 * 4);
  const i64 inner_end = std::clamp<i64>(g.H - K + g.pt - oy0 + 1, 0, TH);
  const i64 bot = std::max(top, TH - (TH - inner_end + 3) / 4 * 4);
  auto edge_rows = [&](i64 i, auto R)
                        __attribute__((always_inline)) { row_block(i, R, std::true_type()); };
  in_blocks<4>(0, top, edge_rows);
  in_blocks<8>(top, bot, [&](i64 i, auto R) __attribute__((always_inline)) {
    row_block(i, R, std::false_type());
  });
  in_blocks<4>(bot, TH, edge_rows);
}
#endif

#if defined(__AVX512F__)
// Lanes [N, N + 16) of the concatenation lo:hi.
template <int N>
__attribute__((always_inline)) inline V<float>::t lanes_from(__m512 lo, __m512 hi) {
  return (V<float>::t)_mm512_castsi512_ps(
      _mm512_alignr_epi32(_mm512_castps_si512(hi), _mm512_castps_si512(lo), N));
}

// Stride 2, K x K (3, 5 or 7), zero padding, straight from the plane: R output rows of one
// column vector (16 outputs; row0 points at input row y0, column `base` of the first tap),
// from the 2R + K - 2 input rows y0, y0 + 1, ...
// Each input row is three masked loads (columns [base, base + 32 + K - 2) and zeros outside
// the plane's [0, W)); its even and odd columns are two-source permutes (of the first 32
// columns, and for 5x5 / 7x7 of the rest), and tap kx the even (kx even) or odd ones kx / 2 lanes
// on, an alignr; rows outside the plane are skipped. Reading in place lets the loads overlap
// the arithmetic: through the padded copy (pad_row_s2, then conv_planar) the copy stalled on
// memory with nothing else to do (41 % of 8x144x56x56 -> 32 s2, against 17 % for the
// convolution); 5x5 on 14 x 14 planes took 2x PyTorch's time that way (run AB).
template <int K, int R, typename S>
__attribute__((always_inline)) inline void s2_block(const float* row0, i64 sh, i64 H, i64 y0,
                                                    const __mmask16 (&m)[3], const float* w,
                                                    float bias, S* d, i64 drs, i64 last) {
  typedef V<float>::t vec;
  const __m512i even =
      _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  const __m512 zero = _mm512_setzero_ps();
  vec acc[2][R];
  for (int o = 0; o < R; ++o) {
    acc[0][o] = vset<float>(bias);
    acc[1][o] = vzero<float>();
  }
#pragma GCC unroll 21
  for (int r = 0; r < 2 * R + K - 2; ++r) {
    if (uint64_t(y0 + r) >= uint64_t(H)) continue;  // a zero row
    const float* p = row0 + r * sh;
    const __m512 a = _mm512_maskz_loadu_ps(m[0], p), b = _mm512_maskz_loadu_ps(m[1], p + 16);
    const __m512 c = _mm512_maskz_loadu_ps(m[2], p + 32);
    const __m512 e0 = _mm512_permutex2var_ps(a, even, b);  // columns base + 2i
    const __m512 o0 = _mm512_permutex2var_ps(a, odd, b);   // base + 2i + 1
    vec taps[K];
    taps[0] = (vec)e0;
    taps[1] = (vec)o0;
    if constexpr (K == 3) {
      taps[2] = lanes_from<1>(e0, c);  // (c's lane 0: column base + 32)
    } else {
      // (base + 32 + 2i and + 1: the lanes past e0's and o0's last)
      const __m512 e1 = _mm512_permutex2var_ps(c, even, zero);
      const __m512 o1 = _mm512_permutex2var_ps(c, odd, zero);
      taps[2] = lanes_from<1>(e0, e1);
      taps[3] = lanes_from<1>(o0, o1);
      taps[4] = lanes_from<2>(e0, e1);
      if constexpr (K == 7) {
        taps[5] = lanes_from<2>(o0, o1);
        taps[6] = lanes_from<3>(e0, e1);
      }
    }
#pragma GCC unroll 8
    for (int o = 0; o < R; ++o) {
      const int ky = r - 2 * o;
      if (ky < 0 || ky >= K) continue;
#pragma GCC unroll 7
      for (int kx = 0; kx < K; ++kx) acc[kx & 1][o] += w[ky * K + kx] * taps[kx];
    }
  }
  store_rows<2, R, float>(acc, d, drs, last);
}

// conv_direct_s1's counterpart at stride 2 for K x K filters (3x3: MobileNet's downsampling;
// 5x5: EfficientNet's): output rows [oy0, oy0 + TH), columns [ox0, ox0 + TW) to dst (row
// stride drs), in blocks of up to 8 rows (4 for 7x7), each block's column vectors in memory
// order.
template <int K, typename S>
void conv_direct_s2(const float* plane, i64 sh, const Geo& g, i64 oy0, i64 ox0, i64 TH, i64 TW,
                    const float* w, float bias, S* dst, i64 drs) {
  constexpr i64 L = 16;
  auto inside = [&](i64 first, i64 lanes) { return lanes_inside(first, lanes, g.W); };
  in_blocks<K == 7 ? 4 : 8>(0, TH, [&](i64 i, auto R) {
    const i64 y0 = 2 * (oy0 + i) - g.pt;  // input row of the block's first window row
    for (i64 j = 0; j < TW; j += L) {
      t_ahead.issue();
      const i64 base = 2 * (ox0 + j) - g.pl;  // input column of lane 0's first tap
      const __mmask16 m[3] = {inside(base, L), inside(base + L, L), inside(base + 2 * L, K - 2)};
      s2_block<K, decltype(R)::value, S>(plane + y0 * sh + base, sh, g.H, y0, m, w, bias,
                                         dst + i * drs + j, drs, std::min(L, TW - j));
    }
  });
}
#endif

#if defined(SEPCONV_VEC32)
// conv_direct_s2 without AVX-512: the same reads with AVX2's in-lane shuffles. Columns
// base + 2i (even), base + 2i + 1 (odd) and base + 2i + 2 of a row come from four loads
// (columns base + [0, 8), [8, 16), [2, 10), [10, 18)) and one _mm256_shuffle_ps each, in the
// lane order 0 1 4 5 2 3 6 7 (the shuffle stays within 128-bit halves); every tap of a sum
// has that order, so the sum is put in memory order once, before its store. Blocks of four
// output rows, two partial sums each (even and odd kernel columns): 8 accumulators, 3 taps
// and the loads in 16 registers. Against the padded copy (pad_row_s2, conv_planar), AMD Zen
// 3: depthwise 8x128x112x112 0.77x, 8x576x14x14 0.42x, 8x144x56x56 -> 32 0.83x the time.
template <int R, bool Masked, typename S>
__attribute__((always_inline)) inline void s2_block(const float* row0, i64 sh, i64 H, i64 y0,
                                                    const LaneMask (&m)[4], const float* w,
                                                    float bias, S* d, i64 drs, i64 last) {
  typedef V<float>::t vec;
  vec acc[2][R];
  for (int o = 0; o < R; ++o) {
    acc[0][o] = vset<float>(bias);
    acc[1][o] = vzero<float>();
  }
  auto load = [&](const float* p, int k) __attribute__((always_inline)) {
    return Masked ? _mm256_maskload_ps(p, m[k]) : _mm256_loadu_ps(p);
  };
#pragma GCC unroll 9
  for (int r = 0; r < 2 * R + 1; ++r) {
    if (uint64_t(y0 + r) >= uint64_t(H)) continue;  // a zero row
    const float* p = row0 + r * sh;
    const __m256 a = load(p, 0), b = load(p + 8, 1), a2 = load(p + 2, 2), b2 = load(p + 10, 3);
    const vec taps[3] = {(vec)_mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0)),
                         (vec)_mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1)),
                         (vec)_mm256_shuffle_ps(a2, b2, _MM_SHUFFLE(2, 0, 2, 0))};
#pragma GCC unroll 4
    for (int o = 0; o < R; ++o) {
      const int ky = r - 2 * o;
      if (ky < 0 || ky > 2) continue;
      for (int kx = 0; kx < 3; ++kx) acc[kx & 1][o] += w[ky * 3 + kx] * taps[kx];
    }
  }
  vec sum[1][R];
  for (int o = 0; o < R; ++o)
    sum[0][o] = (vec)_mm256_castpd_ps(_mm256_permute4x64_pd(
        _mm256_castps_pd((__m256)(acc[0][o] + acc[1][o])), _MM_SHUFFLE(3, 1, 2, 0)));
  store_rows<1, R, float>(sum, d, drs, last);
}

// (always_inline: as a call once per plane, 14 x 14 planes took 1.1-1.2x the time.) 3x3 only
// (direct_ok).
template <int K, typename S>
__attribute__((always_inline)) inline void conv_direct_s2(const float* plane, i64 sh,
                                                          const Geo& g, i64 oy0, i64 ox0,
                                                          i64 TH, i64 TW, const float* w,
                                                          float bias, S* dst, i64 drs) {
  static_assert(K == 3, "3x3 only without AVX-512 (direct_ok)");
  constexpr i64 L = 8;
  auto inside = [&](i64 first) { return lanes_inside(first, L, g.W); };
  in_blocks<4>(0, TH, [&](i64 i, auto R) {
    constexpr int RB = decltype(R)::value;
    const i64 y0 = 2 * (oy0 + i) - g.pt;  // input row of the block's first window row
    for (i64 j = 0; j < TW; j += L) {
      t_ahead.issue();
      const i64 base = 2 * (ox0 + j) - g.pl;  // input column of lane 0's first tap
      const LaneMask m[4] = {inside(base), inside(base + L), inside(base + 2),
                             inside(base + L + 2)};
      const float* row0 = plane + y0 * sh + base;
      S* d = dst + i * drs + j;
      const i64 last = std::min(L, TW - j);
      if (base >= 0 && base + 2 * L + 2 <= g.W) {
        s2_block<RB, false, S>(row0, sh, g.H, y0, m, w, bias, d, drs, last);
      } else {
        s2_block<RB, true, S>(row0, sh, g.H, y0, m, w, bias, d, drs, last);
      }
    }
  });
}
#endif

#if defined(SEPCONV_DIRECT)
// Whether conv_narrow_s1 takes a tile: whole output rows of a plane whose input and output
// rows fit one vector (AVX-512: 14 x 14 and 7 x 7 planes of MobileNet and ConvNeXt; AVX2: 7
// x 7 ones, whose rows leave lane 7 free to be the zero that shifts bring in).
inline bool narrow_ok(const Geo& g, i64 ox0, i64 TW) {
  constexpr i64 widest = kVecRegs >= 32 ? 16 : 7;
  return g.W <= widest && g.OW <= widest && ox0 == 0 && TW == g.OW;
}

// A narrow row (narrow_ok) in one vector and its K column shifts: lane x of shift(v, kx) is
// input column x + kx - pl, zero outside [0, W). AVX-512: single-source permutes with
// zeroing masks; AVX2: permutes whose lanes outside read lane 7, which the load left zero.
template <int K>
struct NarrowShifts {
  typedef V<float>::t vec;
#if defined(__AVX512F__)
  __mmask16 load_mask;
  __m512i idx[K];
  __mmask16 keep[K];
  explicit NarrowShifts(const Geo& g) : load_mask(__mmask16((uint32_t(1) << g.W) - 1)) {
    const __m512i lanes =
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (int kx = 0; kx < K; ++kx) {
      const __m512i src = _mm512_add_epi32(lanes, _mm512_set1_epi32(int(kx - g.pl)));
      keep[kx] = _mm512_cmpge_epi32_mask(src, _mm512_setzero_si512()) &
                 _mm512_cmplt_epi32_mask(src, _mm512_set1_epi32(int(g.W)));
      idx[kx] = _mm512_and_si512(src, _mm512_set1_epi32(15));  // (masked lanes: any index)
    }
  }
  __attribute__((always_inline)) vec load(const float* p) const {
    return (vec)_mm512_maskz_loadu_ps(load_mask, p);
  }
  __attribute__((always_inline)) vec shift(vec v, int kx) const {
    return (vec)_mm512_maskz_permutexvar_ps(keep[kx], idx[kx], (__m512)v);
  }
#else
  LaneMask load_mask;
  __m256i idx[K];
  explicit NarrowShifts(const Geo& g) : load_mask(lanes_inside(0, 8, g.W)) {
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    // (Lanes inside [0, W) by two vector compares on src, not lanes_inside: its scalar clamps
    // for each of K shifts, once per plane, took 7x7 on 7 x 7 planes 1.04x the time.)
    for (int kx = 0; kx < K; ++kx) {
      const __m256i src = _mm256_add_epi32(lanes, _mm256_set1_epi32(int(kx - g.pl)));
      const __m256i inside =
          _mm256_andnot_si256(_mm256_cmpgt_epi32(_mm256_setzero_si256(), src),
                              _mm256_cmpgt_epi32(_mm256_set1_epi32(int(g.W)), src));
      idx[kx] = _mm256_blendv_epi8(_mm256_set1_epi32(7), src, inside);
    }
  }
  __attribute__((always_inline)) vec load(const float* p) const {
    return (vec)_mm256_maskload_ps(p, load_mask);
  }
  __attribute__((always_inline)) vec shift(vec v, int kx) const {
    return (vec)_mm256_permutevar8x32_ps((__m256)v, idx[kx]);
  }
#endif
};

// conv_direct_s1 for narrow planes (narrow_ok): each input row is one masked load, its K
// column shifts K - 1 single-source permutes (NarrowShifts), and rows outside the plane are
// skipped. Blocks of up to 8 output rows, then one block of the rest. As blocks of
// conv_direct_s1's edge path (masked loads of two vectors, two-source permutes, blocks of 4,
// 2 and 1 rows), in L1 14 x 14 / 7 x 7 3x3 planes took 13.7 / 15.5 cycles per row, now 9.2 /
// 10.5; 7 x 7 7x7 ones 57.0 -> 29.8 (AVX-512). AVX2 (AMD Zen 3), 7 x 7 planes, with the
// partial stores of vstPart: 3x3 24.4 -> 10.4 TSC cycles a row, 5x5 35 -> 17.4, 7x7 52 -> 28;
// depthwise 8x960x7x7 0.66x the time.
template <int K, typename S>
void conv_narrow_s1(const float* plane, i64 sh, const Geo& g, i64 oy0, i64 TH, const float* w,
                    float bias, S* dst, i64 drs) {
  typedef V<float>::t vec;
  const NarrowShifts<K> row(g);
  in_exact_blocks(TH, [&](i64 i, auto R) __attribute__((always_inline)) {
    constexpr int RB = decltype(R)::value;
    constexpr int CH = RB >= 4 ? 1 : 2;  // independent FMA chains where the block is short
    vec acc[CH][RB];
    for (int r = 0; r < RB; ++r) {
      acc[0][r] = vset<float>(bias);
      for (int h = 1; h < CH; ++h) acc[h][r] = vzero<float>();
    }
    const i64 y0 = oy0 + i - g.pt;  // input row of the block's first window row
#pragma GCC unroll 16
    for (int r = 0; r < RB + K - 1; ++r) {
      if (uint64_t(y0 + r) >= uint64_t(g.H)) continue;  // a zero row
      const vec v = row.load(plane + (y0 + r) * sh);
#pragma GCC unroll 8
      for (int kx = 0; kx < K; ++kx) {
        const vec shifted = row.shift(v, kx);
#pragma GCC unroll 8
        for (int o = 0; o < RB; ++o) {
          const int ky = r - o;
          if (ky >= 0 && ky < K) acc[kx % CH][o] += w[ky * K + kx] * shifted;
        }
      }
    }
    store_rows<CH, RB, float>(acc, dst + i * drs, drs, g.OW);
  });
}
#endif

#if defined(SEPCONV_DIRECT) && !defined(__AVX512F__)
// Planes of 9-16 columns on AVX2 ("pairs": two vectors a row, both at an edge, such as 14 x
// 14), with a centred filter (pl = K / 2) over whole rows: conv_pair_s1. Through
// conv_direct_s1's edge path a 14 x 14 3x3 plane took 16.0 TSC cycles an output vector in
// L1 (3.0 at the FMA peak; AMD Zen 2), 7x7 45.5 (16.4), and the depthwise 28 % of
// 1x384x14x14 -> 64's time on one thread; conv_pair_s1 7.6 and 27.5 (run AK).
inline bool pair_ok(const Geo& g, i64 ox0, i64 TW) {
  return g.W > 8 && g.W <= 16 && g.OW > 8 && g.OW <= 16 && ox0 == 0 && TW == g.OW &&
         g.pl == g.KW / 2;
}

// Lanes [D, D + 8) of the concatenation a:b (D a constant, 0-8): one cross-half permute
// and one byte shift within the halves.
// (Chained with else: a discarded branch must not be compiled with an immediate out of
// range, which clang rejects.)
template <int D>
__attribute__((always_inline)) inline __m256 lanes_of(__m256 a, __m256 b) {
  static_assert(D >= 0 && D <= 8, "lanes_of: D in 0-8");
  if constexpr (D == 0) {
    return a;
  } else if constexpr (D == 8) {
    return b;
  } else {
    const __m256 t = _mm256_permute2f128_ps(a, b, 0x21);  // a's upper half, b's lower half
    if constexpr (D == 4)
      return t;
    else if constexpr (D < 4)
      return _mm256_castsi256_ps(
          _mm256_alignr_epi8(_mm256_castps_si256(t), _mm256_castps_si256(a), 4 * D));
    else
      return _mm256_castsi256_ps(
          _mm256_alignr_epi8(_mm256_castps_si256(b), _mm256_castps_si256(t), 4 * (D - 4)));
  }
}

// Columns [D, D + 8) of a row held as lo (columns 0-7) and hi (8-15), zeros outside them
// (D a constant, -8 < D < 16).
template <int D>
__attribute__((always_inline)) inline __m256 columns(__m256 lo, __m256 hi) {
  if constexpr (D < 0)
    return lanes_of<D + 8>(_mm256_setzero_ps(), lo);
  else if constexpr (D < 8)
    return lanes_of<D>(lo, hi);
  else
    return lanes_of<D - 8>(hi, _mm256_setzero_ps());
}

// f(std::integral_constant<int, I>()) for I = 0, 1, ..., N - 1 in turn.
template <int... I, typename F>
__attribute__((always_inline)) inline void each_constant(std::integer_sequence<int, I...>,
                                                         F&& f) {
  (f(std::integral_constant<int, I>()), ...);
}

// conv_narrow_s1 for planes of two vectors a row (pair_ok): each input row two loads (the
// second masked: zeros past W), its K column windows for each output vector made by
// columns(); rows outside the plane skipped. Blocks of up to 4 output rows (8 accumulators).
template <int K, typename S>
void conv_pair_s1(const float* plane, i64 sh, const Geo& g, i64 oy0, i64 TH, const float* w,
                  float bias, S* dst, i64 drs) {
  constexpr int PL = K / 2;
  const LaneMask upper = lanes_inside(8, 8, g.W);
  in_blocks<4>(0, TH, [&](i64 i, auto R) __attribute__((always_inline)) {
    constexpr int RB = decltype(R)::value;
    constexpr int CH = RB >= 4 ? 1 : RB >= 2 ? 2 : 4;  // (8 independent FMA chains)
    __m256 acc[CH][RB][2];
    for (int h = 0; h < CH; ++h)
      for (int o = 0; o < RB; ++o)
        acc[h][o][0] = acc[h][o][1] = h == 0 ? _mm256_set1_ps(bias) : _mm256_setzero_ps();
    const i64 y0 = oy0 + i - g.pt;  // input row of the block's first window row
#pragma GCC unroll 16
    for (int r = 0; r < RB + K - 1; ++r) {
      if (uint64_t(y0 + r) >= uint64_t(g.H)) continue;  // a zero row
      const float* row = plane + (y0 + r) * sh;
      const __m256 lo = _mm256_loadu_ps(row), hi = (__m256)load_inside(upper, row + 8);
      each_constant(std::make_integer_sequence<int, K>(), [&](auto kx_c) {
        constexpr int kx = decltype(kx_c)::value;
        const __m256 a = columns<kx - PL>(lo, hi), b = columns<8 + kx - PL>(lo, hi);
#pragma GCC unroll 8
        for (int o = 0; o < RB; ++o) {
          const int ky = r - o;
          if (ky < 0 || ky >= K) continue;
          const __m256 wk = _mm256_set1_ps(w[ky * K + kx]);
          acc[kx % CH][o][0] = _mm256_fmadd_ps(wk, a, acc[kx % CH][o][0]);
          acc[kx % CH][o][1] = _mm256_fmadd_ps(wk, b, acc[kx % CH][o][1]);
        }
      });
    }
    for (int o = 0; o < RB; ++o) {
      __m256 va = acc[0][o][0], vb = acc[0][o][1];
      for (int h = 1; h < CH; ++h) {
        va = _mm256_add_ps(va, acc[h][o][0]);
        vb = _mm256_add_ps(vb, acc[h][o][1]);
      }
      S* d = dst + (i + o) * drs;
      vstOut(d, (V<float>::t)va);
      if (g.OW == 16)  // (vstPart takes 1-7 lanes)
        vstOut(d + 8, (V<float>::t)vb);
      else
        vstPart(d + 8, (V<float>::t)vb, g.OW - 8);
    }
  });
}
#endif

// Whether conv_direct applies: float input, zero padding, unit column stride, and stride and
// dilation 1 with a square 3, 5 or 7 filter, or stride 2 with a square 3x3 one (and with
// AVX-512 a 5x5 or 7x7 one).
#if defined(SEPCONV_DIRECT)
inline bool direct_ok(const Geo& g, bool is_float) {
  const bool square = g.KH == g.KW && (g.KW == 3 || g.KW == 5 || g.KW == 7);
  const bool s1 = unit_steps(g) && square;
#if defined(__AVX512F__)
  const bool s2_filter = square;
#else
  const bool s2_filter = g.KW == 3 && g.KH == 3;
#endif
  const bool s2 = g.sy == 2 && g.sx == 2 && g.dy == 1 && g.dx == 1 && s2_filter;
  return is_float && g.mode == 0 && g.xs[3] == 1 && (s1 || s2) && s1_rows_enabled();
}
#else
inline bool direct_ok(const Geo&, bool) { return false; }
#endif

// One plane's depthwise output straight from the plane (direct_ok(g) holds; without AVX-512
// or AVX2 it never does): conv_direct_s2 at stride 2, conv_narrow_s1 for narrow planes
// (narrow_ok), else conv_direct_s1.
#if defined(SEPCONV_DIRECT)
template <typename S>
void conv_direct(const float* plane, const Geo& g, i64 oy0, i64 ox0, i64 TH, i64 TW,
                 const float* w, float bias, S* dst, i64 drs) {
  if (g.sy == 2) {
#if defined(__AVX512F__)
    by_width(g.KW, [&](auto k) {
      conv_direct_s2<decltype(k)::value, S>(plane, g.xs[2], g, oy0, ox0, TH, TW, w, bias, dst, drs);
    });
    return;
#else
    conv_direct_s2<3, S>(plane, g.xs[2], g, oy0, ox0, TH, TW, w, bias, dst, drs);  // (direct_ok)
    return;
#endif
  }
  const bool narrow = narrow_ok(g, ox0, TW);
#if !defined(__AVX512F__)
  const bool pair = !narrow && pair_ok(g, ox0, TW);
#else
  constexpr bool pair = false;
#endif
  by_width(g.KW, [&](auto k) {
    constexpr int K = decltype(k)::value;
    if (narrow)
      conv_narrow_s1<K, S>(plane, g.xs[2], g, oy0, TH, w, bias, dst, drs);
#if !defined(__AVX512F__)
    else if (pair)
      conv_pair_s1<K, S>(plane, g.xs[2], g, oy0, TH, w, bias, dst, drs);
#endif
    else
      conv_direct_s1<K, S>(plane, g.xs[2], g, oy0, ox0, TH, TW, w, bias, dst, drs);
  });
}
#else
template <typename S>
void conv_direct(const float*, const Geo&, i64, i64, i64, i64, const float*, float, S*, i64) {}
#endif

template <int KW, typename S, typename A>
void conv_planar_k(const A* buf, i64 qrow, i64 qs, const A* w, A bias, i64 TH, i64 TW,
                   const Geo& g, S* dst, i64 drs) {
  constexpr i64 L = V<A>::L;
  i64 offx[64];
  std::vector<i64> offx_big;
  i64* ox = offx;
  if (g.KW > 64) {
    offx_big.resize(g.KW);
    ox = offx_big.data();
  }
  for (i64 kx = 0; kx < g.KW; ++kx) {
    const i64 q = kx * g.dx;
    ox[kx] = (q % g.sx) * qs + q / g.sx;
  }
  i64 i0 = 0;
  if (TW <= L) {
    // Narrow rows (one vector each): four rows at once for independent FMA chains.
    for (; i0 + 4 <= TH; i0 += 4)
      conv_block<4, KW, S, A>(buf + i0 * g.sy * qrow, qrow, g.dy, g.KH, g.KW, ox, w, bias,
                              dst + i0 * drs, TW, g.sy * qrow, drs, true);
  }
  for (i64 i = i0; i < TH; ++i) {
    const A* b = buf + i * g.sy * qrow;
    S* d = dst + i * drs;
    i64 j = 0;
    for (; j + 4 * L <= TW; j += 4 * L)
      conv_block<4, KW, S, A>(b + j, qrow, g.dy, g.KH, g.KW, ox, w, bias, d + j, L);
    const i64 rem = TW - j;
    if (rem <= 0) continue;
    const i64 nv = (rem + L - 1) / L, last = rem - (nv - 1) * L;
    switch (nv) {
      case 1: conv_block<1, KW, S, A>(b + j, qrow, g.dy, g.KH, g.KW, ox, w, bias, d + j, last); break;
      case 2: conv_block<2, KW, S, A>(b + j, qrow, g.dy, g.KH, g.KW, ox, w, bias, d + j, last); break;
      case 3: conv_block<3, KW, S, A>(b + j, qrow, g.dy, g.KH, g.KW, ox, w, bias, d + j, last); break;
      default: conv_block<4, KW, S, A>(b + j, qrow, g.dy, g.KH, g.KW, ox, w, bias, d + j, last); break;
    }
  }
}

template <typename S, typename A>
void conv_planar(const A* buf, i64 qrow, i64 qs, const A* w, A bias, i64 TH, i64 TW, const Geo& g,
                 S* dst, i64 drs) {
  if constexpr (std::is_same<A, float>::value) {
    if (unit_steps(g) && g.KH == g.KW && s1_rows_enabled()) {
      switch (g.KW) {
        case 3: conv_planar_s1<3, S>(buf, qrow, w, bias, TH, TW, dst, drs); return;
        case 5: conv_planar_s1<5, S>(buf, qrow, w, bias, TH, TW, dst, drs); return;
        case 7: conv_planar_s1<7, S>(buf, qrow, w, bias, TH, TW, dst, drs); return;
        default: break;
      }
    }
  }
  switch (g.KW) {
    case 1: conv_planar_k<1, S, A>(buf, qrow, qs, w, bias, TH, TW, g, dst, drs); break;
    case 3: conv_planar_k<3, S, A>(buf, qrow, qs, w, bias, TH, TW, g, dst, drs); break;
    case 4: conv_planar_k<4, S, A>(buf, qrow, qs, w, bias, TH, TW, g, dst, drs); break;
    case 5: conv_planar_k<5, S, A>(buf, qrow, qs, w, bias, TH, TW, g, dst, drs); break;
    case 7: conv_planar_k<7, S, A>(buf, qrow, qs, w, bias, TH, TW, g, dst, drs); break;
    default: conv_planar_k<0, S, A>(buf, qrow, qs, w, bias, TH, TW, g, dst, drs); break;
  }
}

// Elements of slack at the end of every buffer conv_planar reads (see its partial vector).
constexpr i64 kSlack = 64;

// The depthwise output of one input channel's M filters (weights w[m * T + t], biases b[m])
// over one output tile (first row/column oy0/ox0, th x tw, reading the padded window of R x Q
// from r0/q0): straight from the plane where `direct` (direct_ok), else through the padded
// copy in buf. Filter m's output goes to dst + m * dms, row stride drs.
template <typename S, typename A, typename D>
void channel_tile(const S* plane, const Geo& g, bool direct, i64 oy0, i64 ox0, i64 th, i64 tw,
                  i64 r0, i64 R, i64 q0, i64 Q, const i64* ymap, const i64* xmap, A* buf,
                  const A* w, const A* b, D* dst, i64 dms, i64 drs) {
  if constexpr (std::is_same<S, float>::value) {
    if (direct) {
      for (i64 m = 0; m < g.M; ++m)
        conv_direct<D>(plane, g, oy0, ox0, th, tw, w + m * g.T, b[m], dst + m * dms, drs);
      return;
    }
  }
  pad_planar<S, A>(plane, g.xs[2], g.xs[3], g, ymap, xmap, r0, R, q0, Q, buf);
  const i64 qs = (Q + g.sx - 1) / g.sx, qrow = qs * g.sx;
  for (i64 m = 0; m < g.M; ++m)
    conv_planar<D, A>(buf, qrow, qs, w + m * g.T, b[m], th, tw, g, dst + m * dms, drs);
}

}  // namespace
