// The backward of both layers: input, depthwise and pointwise weight gradients.
//
// One part of the kernels' single translation unit: sepconv_kernels.cpp includes the parts in
// order; each includes the parts whose names it uses.
#pragma once

#include "vec.h"
#include "geometry.h"
#include "blas.h"
#include "gemm.h"
#include "padding.h"
#include "planar.h"
#include "nhwc.h"
#include "tiles.h"
#include "pack.h"
#include "kept.h"

namespace {

// ------------------------------------------------------------------ backward

// The sum of rows x cols elements, unit column stride, rows rs apart: whole vectors in two
// chains, the columns past them one by one. (The pointwise bias sums' first version, one
// scalar chain, took row 1's training step 1.057x the time, run AI.)
template <typename A>
A plane_sum(const A* p, i64 rows, i64 cols, i64 rs) {
  typedef typename V<A>::t vec;
  constexpr i64 L = V<A>::L;
  vec acc0 = vzero<A>(), acc1 = vzero<A>();
  A tail = 0;
  for (i64 i = 0; i < rows; ++i) {
    const A* r = p + i * rs;
    i64 j = 0;
    for (; j + 2 * L <= cols; j += 2 * L) acc0 += vld<A>(r + j), acc1 += vld<A>(r + j + L);
    for (; j + L <= cols; j += L) acc0 += vld<A>(r + j);
    for (; j < cols; ++j) tail += r[j];
  }
  return hsum<A>(acc0 + acc1) + tail;
}

// Bias gradient of one planar channel: db += sum gm (gm: OH x OW, row stride gs).
template <typename A>
void bwd_bias(const Geo& g, const A* gm, i64 gs, A* db) {
  *db += plane_sum<A>(gm, g.OH, g.OW, gs);
}

// Weight and bias gradient of one planar channel, any stride and dilation: dw[t] +=
// sum_{i,j} gm[i, j] * buf[i * sy * qrow + off[t] + j] (off: the taps' buffer offsets),
// db += sum gm. gm: OH x OW, row stride gs.
template <typename A>
void bwd_weight_any(const Geo& g, const A* buf, const A* gm, i64 gs, const i64* off, A* dw, A* db) {
  typedef typename V<A>::t vec;
  const i64 L = V<A>::L;
  for (i64 t = 0; t < g.T; ++t) {
    vec acc = vzero<A>();
    A tail = 0;
    for (i64 i = 0; i < g.OH; ++i) {
      const A* b = buf + i * g.sy * g.Qrow + off[t];
      const A* r = gm + i * gs;
      i64 j = 0;
      for (; j + L <= g.OW; j += L) acc += vld<A>(r + j) * vld<A>(b + j);
      for (; j < g.OW; ++j) tail += r[j] * b[j];
    }
    dw[t] += hsum<A>(acc) + tail;
  }
  if (db) bwd_bias<A>(g, gm, gs, db);
}

#if defined(__AVX512F__) || defined(SEPCONV_VEC32)
// Weight and bias gradient of one planar channel at stride 1, dilation 1, K x K filter:
// dw[ky, kx] += sum_{i,j} gm[i, j] * buf[i + ky, j + kx], db += sum gm. Per kernel row, each
// gm vector is loaded once for its K taps (unaligned input loads), two vectors at a time for
// 2K independent FMA chains where they fit the registers with the gm vector, the input
// vector and the bias sum (AVX2's 16 hold them up to K = 6; else one vector, K chains), and a
// row's last partial vector is masked (element by element, a 56-wide row's tail took more
// time than its three full vectors), the input's too: an input element that no window
// reaches may be Inf or NaN, and 0 x Inf is NaN. On AVX2, bwd_weight_any's one chain per
// tap took 2.0 ms of row 1's 25 ms training step a thread (run AH).
template <int K>
void bwd_weight_s1(const float* buf, i64 qrow, const float* gm, i64 gs, i64 OH, i64 OW, float* dw,
                   float* db) {
  typedef V<float>::t vec;
  constexpr i64 L = V<float>::L;
  constexpr int PX = 2 * K + 3 <= kVecRegs ? 2 : 1;
  const i64 full = OW / L;
  const bool partial = OW % L != 0;
  const LaneMask tail = lanes_inside(full * L, L, OW);
  vec bsum = vzero<float>();
  for (int ky = 0; ky < K; ++ky) {
    vec acc[2][K];
    for (int kx = 0; kx < K; ++kx) acc[0][kx] = acc[1][kx] = vzero<float>();
    auto step = [&](int a, const vec gv, const float* b, bool masked) {
#pragma GCC unroll 8
      for (int kx = 0; kx < K; ++kx)
        acc[a][kx] += gv * (masked ? load_inside(tail, b + kx) : vld<float>(b + kx));
      if (ky == 0) bsum += gv;
    };
    for (i64 i = 0; i < OH; ++i) {
      const float* r = gm + i * gs;
      const float* b = buf + (i + ky) * qrow;
      i64 v = 0;
      for (; v + 2 <= full; v += 2) {
        step(0, vld<float>(r + L * v), b + L * v, false);
        step(PX - 1, vld<float>(r + L * v + L), b + L * v + L, false);
      }
      if (v < full) step(0, vld<float>(r + L * v), b + L * v, false), ++v;
      if (partial) step(PX - 1, load_inside(tail, r + L * v), b + L * v, true);
    }
    for (int kx = 0; kx < K; ++kx) dw[ky * K + kx] += hsum<float>(acc[0][kx] + acc[1][kx]);
  }
  if (db) *db += hsum<float>(bsum);
}
#endif

#if defined(__AVX512F__) || defined(SEPCONV_VEC32)
// Taps per call of bwd_weight_taps: NT accumulators, the gm vector and an input vector fit
// AVX2's 16 registers.
constexpr int kTapGroup = 8;

// Weight gradient of NT taps of one planar channel, any stride and dilation (bwd_weight_any's
// sums): each gm vector is loaded once for the NT taps, NT independent FMA chains where
// bwd_weight_any has one a tap (the backward of 8x96x112x112 3x3 at stride 2 took 0.95x the
// time, run AH). A row's last partial vector is masked, the input's too (bwd_weight_s1).
template <int NT>
void bwd_weight_taps(const Geo& g, const float* buf, const float* gm, i64 gs, const i64* off,
                     float* dw) {
  typedef V<float>::t vec;
  constexpr i64 L = V<float>::L;
  const i64 full = g.OW / L;
  const bool partial = g.OW % L != 0;
  const LaneMask tail = lanes_inside(full * L, L, g.OW);
  vec acc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = vzero<float>();
  for (i64 i = 0; i < g.OH; ++i) {
    const float* r = gm + i * gs;
    const float* b = buf + i * g.sy * g.Qrow;
    auto step = [&](const vec gv, i64 j, bool masked) __attribute__((always_inline)) {
#pragma GCC unroll 8
      for (int t = 0; t < NT; ++t) {
        const float* p = b + off[t] + j;
        acc[t] += gv * (masked ? load_inside(tail, p) : vld<float>(p));
      }
    };
    for (i64 v = 0; v < full; ++v) step(vld<float>(r + L * v), L * v, false);
    if (partial) step(load_inside(tail, r + L * full), L * full, true);
  }
  for (int t = 0; t < NT; ++t) dw[t] += hsum<float>(acc[t]);
}

// bwd_weight_any for float, kTapGroup taps at a time (bwd_weight_taps).
inline void bwd_weight_grouped(const Geo& g, const float* buf, const float* gm, i64 gs,
                               const i64* off, float* dw, float* db) {
  for (i64 t0 = 0; t0 < g.T; t0 += kTapGroup) {
    with_constant<kTapGroup>(g.T - t0, [&](auto nt) {
      bwd_weight_taps<decltype(nt)::value>(g, buf, gm, gs, off + t0, dw + t0);
    });
  }
  if (db) bwd_bias<float>(g, gm, gs, db);
}
#endif

// Weight and bias gradient of one planar channel: bwd_weight_s1 where it applies (float,
// stride and dilation 1, square 3/5/7 filter), else bwd_weight_grouped (float) or
// bwd_weight_any.
template <typename A>
void bwd_weight(const Geo& g, const A* buf, const A* gm, i64 gs, const i64* off, A* dw, A* db) {
#if defined(__AVX512F__) || defined(SEPCONV_VEC32)
  if constexpr (std::is_same<A, float>::value) {
    if (unit_steps(g) && g.KH == g.KW) {
      switch (g.KW) {
        case 3: bwd_weight_s1<3>(buf, g.Qrow, gm, gs, g.OH, g.OW, dw, db); return;
        case 5: bwd_weight_s1<5>(buf, g.Qrow, gm, gs, g.OH, g.OW, dw, db); return;
        case 7: bwd_weight_s1<7>(buf, g.Qrow, gm, gs, g.OH, g.OW, dw, db); return;
        default: break;
      }
    }
    return bwd_weight_grouped(g, buf, gm, gs, off, dw, db);
  }
#endif
  bwd_weight_any<A>(g, buf, gm, gs, off, dw, db);
}

// Depthwise weight/bias gradient and padded-input gradient of one planar channel:
// gm (OH x OW, row stride gs, col stride 1), buf the padded input plane (Hu x qrow).
template <typename A>
void bwd_planar_channel(const Geo& g, const A* buf, const A* gm, i64 gs, const A* w, A* dw, A* db,
                        A* gbuf /* Hu x qrow, accumulated */, bool need_gx) {
  const i64 L = V<A>::L;
  const i64 T = g.T, qrow = g.Qrow, qs = g.Qs;
  i64 off[T];
  for (i64 ky = 0; ky < g.KH; ++ky)
    for (i64 kx = 0; kx < g.KW; ++kx) {
      i64 q = kx * g.dx;
      off[ky * g.KW + kx] = ky * g.dy * qrow + (q % g.sx) * qs + q / g.sx;
    }
  bwd_weight<A>(g, buf, gm, gs, off, dw, db);
  if (!need_gx) return;
  // Input gradient (in padded coordinates): gbuf[i*sy + ky*dy, j*sx + kx*dx] += w[t] * gm[i, j].
  for (i64 i = 0; i < g.OH; ++i) {
    const A* r = gm + i * gs;
    for (i64 t = 0; t < T; ++t) {
      A* b = gbuf + i * g.sy * qrow + off[t];
      const A wt = w[t];
      i64 j = 0;
      for (; j + L <= g.OW; j += L) vst<A>(b + j, vld<A>(b + j) + wt * vld<A>(r + j));
      for (; j < g.OW; ++j) b[j] += wt * r[j];
    }
  }
}

// fold_planar for zero padding: input element (y, x) is padded position (y + pt, x + pl), or
// none past the padded extent Hu x Wu that the windows reach (its gradient zero), so the
// gradients are copied rather than summed into a zeroed plane (which the backward of
// 8x96x112x112 3x3 at stride 2 allocated, zeroed and read back element by element for every
// channel: the backward took 0.65x the time without, run AH). At stride 2 the even and the
// odd columns are two runs of the phase layout.
template <typename S, typename A>
void fold_planar_zeros(const Geo& g, const A* gbuf, S* gx, i64 sh, i64 sw) {
  const i64 reached = std::clamp<i64>(g.Wu - g.pl, 0, g.W);  // columns x + pl < Wu
  for (i64 y = 0; y < g.H; ++y) {
    S* d = gx + y * sh;
    const i64 r = y + g.pt;
    i64 x = 0;
    if (r < g.Hu) {
      const A* b = gbuf + r * g.Qrow;
      if (g.sx == 1) {
        for (; x < reached; ++x) fromA(b[x + g.pl], d + x * sw);
      } else if (g.sx == 2) {
        const A* even = b + (g.pl & 1) * g.Qs + (g.pl >> 1);  // columns x = 0, 2, 4, ...
        const A* odd = b + ((g.pl + 1) & 1) * g.Qs + ((g.pl + 1) >> 1);  // x = 1, 3, ...
        for (; x + 1 < reached; x += 2) {
          fromA(even[x >> 1], d + x * sw);
          fromA(odd[x >> 1], d + (x + 1) * sw);
        }
        if (x < reached) fromA(even[x >> 1], d + x * sw), ++x;
      } else {
        for (; x < reached; ++x) fromA(b[phase_pos(x + g.pl, g.sx, g.Qs)], d + x * sw);
      }
    }
    for (; x < g.W; ++x) fromA(A(0), d + x * sw);
  }
}

// Fold the padded-coordinate gradient gbuf (planar, Hu x qrow) into the input plane gradient
// (zeroed here first).
template <typename S, typename A>
void fold_planar(const Geo& g, const A* gbuf, const i64* ymap, const i64* xmap, S* gx, i64 sh,
                 i64 sw) {
  if (g.mode == 0) return fold_planar_zeros<S, A>(g, gbuf, gx, sh, sw);
  std::vector<A> acc(g.H * g.W, A(0));
  // Strided: the padded columns that land inside the plane and their buffer positions, once
  // (phase_pos per element and row divided by a run-time stride: half the strided
  // backward's time).
  struct Col {
    i64 x, pos;
  };
  std::vector<Col> cols;
  if (g.sx > 1)
    for (i64 q = 0; q < g.Wu; ++q)
      if (xmap[q] >= 0) cols.push_back({xmap[q], phase_pos(q, g.sx, g.Qs)});
  const i64 n_cols = i64(cols.size());
  for (i64 r = 0; r < g.Hu; ++r) {
    const i64 sr = ymap[r];
    if (sr < 0) continue;
    const A* b = gbuf + r * g.Qrow;
    A* a = acc.data() + sr * g.W;
    if (g.sx == 1) {
      const i64 qa = std::min(g.pl, g.Wu), qb = std::min(g.pl + g.W, g.Wu);
      for (i64 q = 0; q < qa; ++q) if (xmap[q] >= 0) a[xmap[q]] += b[q];
      for (i64 q = qa; q < qb; ++q) a[q - g.pl] += b[q];
      for (i64 q = qb; q < g.Wu; ++q) if (xmap[q] >= 0) a[xmap[q]] += b[q];
    } else {
      for (i64 k = 0; k < n_cols; ++k) a[cols[k].x] += b[cols[k].pos];
    }
  }
  for (i64 y = 0; y < g.H; ++y) {
    S* d = gx + y * sh;
    const A* a = acc.data() + y * g.W;
    for (i64 x = 0; x < g.W; ++x) fromA(a[x], d + x * sw);
  }
}

// NHWC: weight/bias gradient (dwT non-null) and padded-input gradient (need_gx) for a block
// of cb channels (expanded). gm pixel p, channel c at gm[p*gps + c]; buf/gbuf [Hu][Wu][cb].
template <typename A>
void bwd_nhwc_block(const Geo& g, i64 cb, const A* buf, const A* gm, i64 gps, const A* wT, i64 ldw,
                    A* dwT /* [t][cb] */, A* db, A* gbuf, bool need_gx) {
  typedef typename V<A>::t vec;
  const i64 L = V<A>::L;
  const i64 T = g.T, Q = g.Wu;
  i64 off[T];
  for (i64 ky = 0; ky < g.KH; ++ky)
    for (i64 kx = 0; kx < g.KW; ++kx) off[ky * g.KW + kx] = (ky * g.dy * Q + kx * g.dx) * cb;
  const i64 cv = cb / L * L;
  const i64 P = g.OH * g.OW;
  // Weight and bias gradients (unless dwT is null): one register accumulator per (tap,
  // channel vector).
  for (i64 c = 0; dwT && c < cv; c += L) {
    for (i64 t = 0; t < T; ++t) {
      vec a0 = vzero<A>(), a1 = vzero<A>();
      for (i64 i = 0; i < g.OH; ++i) {
        const A* gp = gm + i * g.OW * gps + c;
        const A* b = buf + i * g.sy * Q * cb + off[t] + c;
        i64 j = 0;
        for (; j + 2 <= g.OW; j += 2) {
          a0 += vld<A>(gp + j * gps) * vld<A>(b + j * g.sx * cb);
          a1 += vld<A>(gp + (j + 1) * gps) * vld<A>(b + (j + 1) * g.sx * cb);
        }
        if (j < g.OW) a0 += vld<A>(gp + j * gps) * vld<A>(b + j * g.sx * cb);
      }
      const vec sum = a0 + a1;
      for (int l = 0; l < L; ++l) dwT[t * cb + c + l] += sum[l];
    }
    if (db) {
      vec a0 = vzero<A>();
      for (i64 p = 0; p < P; ++p) a0 += vld<A>(gm + p * gps + c);
      for (int l = 0; l < L; ++l) db[c + l] += a0[l];
    }
  }
  for (i64 c = cv; dwT && c < cb; ++c) {
    for (i64 t = 0; t < T; ++t) {
      A a = 0;
      for (i64 i = 0; i < g.OH; ++i)
        for (i64 j = 0; j < g.OW; ++j)
          a += gm[(i * g.OW + j) * gps + c] * buf[(i * g.sy * Q + j * g.sx) * cb + off[t] + c];
      dwT[t * cb + c] += a;
    }
    if (db) {
      A a = 0;
      for (i64 p = 0; p < P; ++p) a += gm[p * gps + c];
      db[c] += a;
    }
  }
  if (!need_gx) return;
  // Input gradient (padded coordinates): scatter each output gradient through the taps.
  for (i64 i = 0; i < g.OH; ++i)
    for (i64 j = 0; j < g.OW; ++j) {
      const A* gp = gm + (i * g.OW + j) * gps;
      A* gb = gbuf + (i * g.sy * Q + j * g.sx) * cb;
      for (i64 c = 0; c < cv; c += L) {
        const vec gv = vld<A>(gp + c);
        for (i64 t = 0; t < T; ++t)
          vst<A>(gb + off[t] + c, vld<A>(gb + off[t] + c) + gv * vld<A>(wT + t * ldw + c));
      }
      for (i64 c = cv; c < cb; ++c)
        for (i64 t = 0; t < T; ++t) gb[off[t] + c] += gp[c] * wT[t * ldw + c];
    }
}

// NHWC weight and bias gradient at stride 1, dilation 1 (KH x KW filter), cb a multiple of
// the vector width: dwT[t][c] += sum_{i,j} gm[i, j, c] * buf[i + ky, j + kx, c], db[c] +=
// sum gm. Row by row, so that a row of gm and the KH buffer rows it meets stay in L1 (one
// pass over the whole block per tap streamed megabytes through L2); each gm vector is loaded
// once for its KW taps, two pixels at a time for independent FMA chains.
template <int KW>
void bwd_nhwc_weight_s1(const Geo& g, i64 cb, const float* buf, const float* gm, i64 gps,
                        float* dwT, float* db) {
  typedef V<float>::t vec;
  const i64 Q = g.Wu, OW = g.OW;
  for (i64 i = 0; i < g.OH; ++i) {
    const float* gr = gm + i * OW * gps;
    for (i64 c = 0; c < cb; c += V<float>::L) {
      vec bsum = vzero<float>();
      for (i64 ky = 0; ky < g.KH; ++ky) {
        const float* br = buf + ((i + ky) * Q) * cb + c;
        // Two pixels at a time where 2 * KW accumulators fit the registers with the gm vector
        // and the bias sum (AVX2's 16 hold them up to KW = 6); else one (KW chains).
        constexpr int PX = 2 * KW + 3 <= kVecRegs ? 2 : 1;
        vec acc[2][KW];
        for (int kx = 0; kx < KW; ++kx) acc[0][kx] = acc[1][kx] = vzero<float>();
        auto pixel = [&](int a, i64 j) {
          const vec gv = vld<float>(gr + j * gps + c);
#pragma GCC unroll 8
          for (int kx = 0; kx < KW; ++kx) acc[a][kx] += gv * vld<float>(br + (j + kx) * cb);
          if (ky == 0) bsum += gv;
        };
        i64 j = 0;
        for (; j + 2 <= OW; j += 2) pixel(0, j), pixel(PX - 1, j + 1);
        if (j < OW) pixel(0, j);
        for (int kx = 0; kx < KW; ++kx) {
          float* d = dwT + (ky * KW + kx) * cb + c;
          vst<float>(d, vld<float>(d) + acc[0][kx] + acc[1][kx]);
        }
      }
      if (db) vst<float>(db + c, vld<float>(db + c) + bsum);
    }
  }
}

// Whether bwd_nhwc_weight_s1 applies (float accumulators, stride and dilation 1, 1-7 taps per
// row, whole channel vectors).
template <typename A>
inline bool bwd_nhwc_weight_s1_ok(const Geo& g, i64 cb) {
  return std::is_same<A, float>::value && unit_steps(g) && g.KW >= 1 && g.KW <= 7 &&
         cb % V<float>::L == 0;
}

template <typename A>
void bwd_nhwc_weight(const Geo& g, i64 cb, const A* buf, const A* gm, i64 gps, A* dwT, A* db) {
  if constexpr (std::is_same<A, float>::value) {
    switch (g.KW) {
      case 1: bwd_nhwc_weight_s1<1>(g, cb, buf, gm, gps, dwT, db); return;
      case 2: bwd_nhwc_weight_s1<2>(g, cb, buf, gm, gps, dwT, db); return;
      case 3: bwd_nhwc_weight_s1<3>(g, cb, buf, gm, gps, dwT, db); return;
      case 4: bwd_nhwc_weight_s1<4>(g, cb, buf, gm, gps, dwT, db); return;
      case 5: bwd_nhwc_weight_s1<5>(g, cb, buf, gm, gps, dwT, db); return;
      case 6: bwd_nhwc_weight_s1<6>(g, cb, buf, gm, gps, dwT, db); return;
      default: bwd_nhwc_weight_s1<7>(g, cb, buf, gm, gps, dwT, db); return;
    }
  }
}

// fold_nhwc for zero padding (as fold_planar_zeros): each input pixel's gradient is its
// padded position's (summed over its M intermediate channels), or zero where no window
// reached (8x96x112x112 3x3 channels_last at stride 2: the training step 0.90x the time,
// run AH).
template <typename S, typename A>
void fold_nhwc_zeros(const Geo& g, i64 cin, const A* gbuf, S* gx, i64 sh, i64 sw, i64 sc) {
  const i64 M = g.M, cb = cin * M;
  for (i64 y = 0; y < g.H; ++y)
    for (i64 x = 0; x < g.W; ++x) {
      S* d = gx + y * sh + x * sw;
      const i64 r = y + g.pt, q = x + g.pl;
      if (r >= g.Hu || q >= g.Wu) {
        for (i64 c = 0; c < cin; ++c) fromA(A(0), d + c * sc);
        continue;
      }
      const A* b = gbuf + (r * g.Wu + q) * cb;
      if (M == 1) {
        for (i64 c = 0; c < cin; ++c) fromA(b[c], d + c * sc);
      } else {
        for (i64 c = 0; c < cin; ++c) {
          A v = 0;
          for (i64 m = 0; m < M; ++m) v += b[c * M + m];
          fromA(v, d + c * sc);
        }
      }
    }
}

template <typename S, typename A>
void fold_nhwc(const Geo& g, i64 cin, const A* gbuf, const i64* ymap, const i64* xmap, S* gx,
               i64 sh, i64 sw, i64 sc) {
  if (g.mode == 0) return fold_nhwc_zeros<S, A>(g, cin, gbuf, gx, sh, sw, sc);
  const i64 M = g.M, cb = cin * M;
  std::vector<A> acc(g.H * g.W * cin, A(0));
  for (i64 r = 0; r < g.Hu; ++r) {
    const i64 sr = ymap[r];
    if (sr < 0) continue;
    for (i64 q = 0; q < g.Wu; ++q) {
      const i64 sq = xmap[q];
      if (sq < 0) continue;
      const A* b = gbuf + (r * g.Wu + q) * cb;
      A* a = acc.data() + (sr * g.W + sq) * cin;
      if (M == 1)
        for (i64 c = 0; c < cin; ++c) a[c] += b[c];
      else
        for (i64 c = 0; c < cin; ++c)
          for (i64 m = 0; m < M; ++m) a[c] += b[c * M + m];
    }
  }
  for (i64 y = 0; y < g.H; ++y)
    for (i64 x = 0; x < g.W; ++x) {
      const A* a = acc.data() + (y * g.W + x) * cin;
      S* d = gx + y * sh + x * sw;
      for (i64 c = 0; c < cin; ++c) fromA(a[c], d + c * sc);
    }
}

// dbp[o] += the sum of gy over output rows [r0, r0 + rows) (OW pixels each) for the Og
// outputs of one image's group at gyg (strides gys): the pointwise bias gradient, a band at a
// time while the band is in cache. Each output's band is summed on its own, then added:
// added pixel by pixel to the running totals, the channels_last sums over 8x128x56x56 were
// 15-20x further from float64's than PyTorch's gy.sum (a review found).
template <typename S, typename A>
void add_band_sums(const S* gyg, const i64* gys, i64 Og, i64 r0, i64 rows, i64 OW, A* dbp) {
  if (gys[1] == 1) {  // channels_last: each pixel's outputs in a row
    std::vector<A> band(Og, A(0));
    for (i64 y = r0; y < r0 + rows; ++y)
      for (i64 x = 0; x < OW; ++x) {
        const S* p = gyg + y * gys[2] + x * gys[3];
        for (i64 o = 0; o < Og; ++o) band[o] += A(p[o]);
      }
    for (i64 o = 0; o < Og; ++o) dbp[o] += band[o];
    return;
  }
  for (i64 o = 0; o < Og; ++o) {
    const S* p = gyg + o * gys[1] + r0 * gys[2];
    if constexpr (std::is_same<S, A>::value)
      if (gys[3] == 1) {
        dbp[o] += plane_sum<A>(p, rows, OW, gys[2]);
        continue;
      }
    A sum = 0;
    for (i64 y = 0; y < rows; ++y)
      for (i64 x = 0; x < OW; ++x) sum += A(p[y * gys[2] + x * gys[3]]);
    dbp[o] += sum;
  }
}

// out[i] = the sum over threads t of per_thread[t * n + i], i in [0, n) (t in order).
template <typename A>
void sum_over_threads(const std::vector<A>& per_thread, i64 n, i64 nth, A* out) {
  for (i64 i = 0; i < n; ++i) {
    A s = 0;
    for (i64 t = 0; t < nth; ++t) s += per_thread[t * n + i];
    out[i] = s;
  }
}

// Backward of separable (wp != null) or depthwise (wp == null) convolution.
// gy: output gradient, strides gys[4]; gx (may be null): input gradient, strides gxs[4].
// dwd (CM*T), dbd (CM, may be null), dwp (O*CMg, may be null): accumulator-type results.
// dbp (O or null; with dwp only): the pointwise bias gradient, the output gradient's sums
// over pixels and images (the band loop of the pointwise weight gradient adds them while
// each band is in cache: as gy.sum in PyTorch it was one more pass over the output gradient,
// 0.16 ms in cache and 0.54 ms from memory for row 1's 12.8 MB).
// deterministic: the same results on every call with as many threads (tasks assigned to
// threads statically).
template <typename S>
void backward(const S* x, const S* wd, const S* wp, const S* gy, const i64* gys, S* gx,
              const i64* gxs, typename Acc<S>::type* dwd, typename Acc<S>::type* dbd,
              typename Acc<S>::type* dwp, typename Acc<S>::type* dbp, const i64* geo,
              bool deterministic) {
  typedef typename Acc<S>::type A;
  const Geo g = make_geo(geo);
  const bool sep = wp != nullptr;
  std::vector<A> w, wT, b;
  prep_weights<S, A>(wd, nullptr, g, w, wT, b);
  std::vector<S> wpT;  // per group: wpT[k, o] = wp[o, k] (CMg x Og)
  if (sep && std::is_same<S, float>::value) {
    wpT.resize(g.G * g.CMg * g.Og);
    transpose_groups<S>(wp, wpT.data(), g.G, g.Og, g.CMg);
  }
  const auto ymap = make_map(g.Hu, g.H, g.pt, g.mode);
  const auto xmap = make_map(g.Wu, g.W, g.pl, g.mode);
  const bool nhwc = g.nhwc != 0;
  const i64 P = g.OH * g.OW, HWu = g.Hu * (nhwc ? g.Wu : g.Qrow);
  // Zero padding, stride and dilation 1, one filter per channel: the input gradient is the
  // convolution of the output gradient (OH x OW, zero-padded by K - 1 - padding) with the
  // flipped filter, written straight into gx by the forward's loops (planar: conv_direct,
  // square 3/5/7 filters; NHWC: conv_nhwc on a padded copy, channels innermost in gx)
  // instead of scattered into a padded plane and folded back.
  const bool s1_zero = g.mode == 0 && g.M == 1 && unit_steps(g) && std::is_same<A, float>::value;
  const bool gx_direct = gx && s1_zero &&
                         (nhwc ? gxs[1] == 1 : gxs[3] == 1 && direct_ok(g, true));
  const bool fold = gx && !gx_direct;  // input gradient through gb and a fold (any geometry)
  Geo gt = g;  // the transposed problem
  gt.H = g.OH, gt.W = g.OW, gt.OH = g.H, gt.OW = g.W;
  gt.pt = g.KH - 1 - g.pt, gt.pl = g.KW - 1 - g.pl;
  gt.Hu = g.H + g.KH - 1, gt.Wu = g.W + g.KW - 1;  // its padded input (NHWC copy)
  gt.xs[2] = g.OW, gt.xs[3] = 1;
  // Flipped filters: planar wflip[cm][t], NHWC wflip[t][cm] (conv_nhwc's layout).
  std::vector<A> wflip(gx_direct ? g.CM * g.T : 0);
  for (i64 cm = 0; gx_direct && cm < g.CM; ++cm)
    for (i64 t = 0; t < g.T; ++t)
      wflip[nhwc ? t * g.CM + cm : cm * g.T + t] = w[cm * g.T + g.T - 1 - t];
  // NHWC: index maps of the transposed problem's zero-padded input (pad_nhwc).
  const auto tymap = gx_direct && nhwc ? make_map(gt.Hu, g.OH, gt.pt, 0) : std::vector<i64>();
  const auto txmap = gx_direct && nhwc ? make_map(gt.Wu, g.OW, gt.pl, 0) : std::vector<i64>();
  // Channel blocks: ranges of input channels inside one pointwise group.
  const i64 cin_group = sep ? g.CMg / g.M : g.C;
  const i64 per_ch = g.M * (HWu * 2 + P * (sep ? 3 : 0)) * i64(sizeof(A));
  i64 cblk = std::max<i64>(1, g.budget * 3 / std::max<i64>(per_ch, 1));
  // NHWC blocks are whole channel vectors where they can be (the vector loops; blocks of a
  // few channels take the scalar-tail path: 1x32x112x112 channels_last took 5.8x PyTorch's
  // time in blocks of 8 channels, the depthwise backward 10x in blocks of 7), even when one
  // vector's planes exceed the budget.
  const i64 vec_ch = nhwc && g.M <= V<A>::L ? V<A>::L / g.M : 1;
  if (nhwc) cblk = std::max(vec_ch, cblk / vec_ch * vec_ch);
  if (sep) cblk = std::max<i64>(cblk, (64 + g.M - 1) / g.M);  // wide enough GEMMs
  cblk = std::min(cblk, cin_group);
  // Enough tasks for the threads, but blocks of at least one vector.
  const i64 groups = sep ? g.G : 1;
  while (cblk > vec_ch && g.N * groups * ((cin_group + cblk - 1) / cblk) < 2 * g.threads) {
    const i64 half = (cblk + 1) / 2;
    cblk = std::max(vec_ch, half % vec_ch != 0 ? half / vec_ch * vec_ch : half);
  }
  const i64 nblk = (cin_group + cblk - 1) / cblk;
  const i64 tasks = g.N * groups * nblk;
  const i64 nth = g.threads;
  std::vector<A> dwd_t(nth * g.CM * g.T, A(0)), dbd_t(dbd ? nth * g.CM : 0, A(0));
  std::vector<A> dwp_t(sep && dwp ? nth * g.O * g.CMg : 0, A(0));
  if (!(sep && dwp)) dbp = nullptr;
  std::vector<A> dbp_t(dbp ? nth * g.O : 0, A(0));
  // The pointwise weight gradient through the own GEMM where it runs the tile GEMMs (AMD),
  // the output gradient's pixels are consecutive and a group has 64 or more outputs: MKL's
  // AVX2 code took 28 % of row 1's training step. The training step of row 1 took 0.84x
  // (NCHW) / 0.88x (channels_last) the time; with 24 outputs (8x144x56x56 -> 24) 1.03-1.06x.
  const bool own_dwp = std::is_same<S, float>::value && sep && dwp && g.Og >= 64 &&
                       (nhwc ? gys[1] == 1 && gys[2] == g.OW * gys[3]
                             : gys[3] == 1 && gys[2] == g.OW) &&
                       own_gemm_for(false, false, g.O * g.CMg);
  // The own pointwise weight gradient goes by bands of about kDwpBandPixels output pixels:
  // the intermediate of a band is recomputed, transposed and multiplied while it is in L2.
  // Over whole planes (8x128x56x56 -> 128: 64 channels x 3136 pixels, 800 KB each for the
  // intermediate and its transpose) the GEMM re-read the transpose from L3 for every block of
  // the output gradient's rows and ran at 46-56 GFLOP/s a thread instead of 80-90.
  constexpr i64 kDwpBandPixels = 512;
  // The intermediate's gradient through the own GEMM where the output gradient's pixels are
  // consecutive. Planar, band by band after the band's pointwise weight gradient (own_dwp),
  // whose GEMM (the band's output gradient as A, rows read in order) leaves the band in L2:
  // over whole planes the GEMM read the output gradient from memory by columns of 16 pixels,
  // at 64 GFLOP/s a thread where in cache it reached 86; row 1's training step took 0.95-0.97x
  // the time by bands (run AH). Channels-last, whose GEMM reads whole pixels in order, took
  // 1.02x by bands.
  const bool own_gmid = std::is_same<S, float>::value && sep &&
                        own_gemm_for(nhwc, false, g.O * g.CMg) &&
                        (nhwc ? gys[1] == 1 && gys[2] == g.OW * gys[3]
                              : gys[3] == 1 && gys[2] == g.OW);
  const bool gmid_by_band = own_gmid && own_dwp && !nhwc;
  // The channels-last own pointwise weight gradient sums each thread's share transposed (a
  // group's [j][o], as its GEMM yields it), transposed once in the reduction: added to dwp
  // element by element, O apart, it took 0.6 ms of row 1's 25 ms channels-last step a thread.
  const bool dwp_transposed = own_dwp && nhwc;
  const i64 band_rows = own_dwp ? std::clamp<i64>(kDwpBandPixels / g.OW, 1, g.OH) : g.OH;

  // Tasks taken in turn (dynamic) let a thread that the machine slows take fewer. With
  // torch.use_deterministic_algorithms(True) each thread takes a fixed run of them instead
  // (for_tasks' static split), so that its weight-gradient sums, and their reduction below,
  // add in the same order on every call (with dynamic scheduling half the calls' weight
  // gradients differed in rounding); so does a batch of at least one image a thread, whose
  // tasks (ordered by image) then go to the thread whose forward read those images: row 1's
  // training step 0.988x the time, channels_last 0.968x (run AG).
  const bool fixed = deterministic || image_a_thread(g.N, nth);
#pragma omp parallel num_threads(nth)
  {
    const int tid = omp_get_thread_num();
    const i64 cbm_max = cblk * g.M;
    // (kept from call to call: as vectors they were page-faulted in again every call)
    const KeptZeroed<A> xb(kKeptBwdInput, nhwc ? HWu * cbm_max : HWu * cblk + kSlack);
    const KeptZeroed<A> gb(kKeptBwdFold, fold ? (nhwc ? HWu * cbm_max : HWu) : 0);
    const KeptZeroed<A> gpad(kKeptBwdGradPad, gx_direct && nhwc ? gt.Hu * gt.Wu * cbm_max : 0);
    const std::vector<A> zeros(cbm_max, A(0));
    const KeptZeroed<S> mid(kKeptBwdMid, sep ? band_rows * g.OW * cbm_max : 0);
    const KeptZeroed<S> midT(kKeptBwdMidT, own_dwp ? band_rows * g.OW * cbm_max : 0);
    const KeptZeroed<S> dwp_tile(kKeptBwdPointwise, own_dwp ? g.Og * cbm_max : 0);
    const KeptZeroed<A> gmid(kKeptBwdGradMid, sep ? P * cbm_max : 0);
    std::vector<A> dwT_local(nhwc ? g.T * cbm_max : 0);
    A* my_dwd = dwd_t.data() + tid * g.CM * g.T;
    A* my_dbd = dbd ? dbd_t.data() + tid * g.CM : nullptr;
    A* my_dwp = dwp_t.empty() ? nullptr : dwp_t.data() + tid * g.O * g.CMg;
    A* my_dbp = dbp ? dbp_t.data() + tid * g.O : nullptr;
    for_tasks(tasks, fixed, [&](i64 t) {
      const i64 n = t / (groups * nblk), gi = (t / nblk) % groups, bi = t % nblk;
      const i64 c0 = gi * cin_group + bi * cblk;
      const i64 cin = std::min(cblk, gi * cin_group + cin_group - c0);
      const i64 cbm = cin * g.M, cm0 = c0 * g.M;
      const i64 coff = cm0 - gi * g.CMg;  // column offset inside the group's pointwise weight
      const S* xn = x + n * g.xs[0];
      const S* gyn = gy + n * gys[0];
      // 1. Padded input of the block.
      if (nhwc) {
        pad_nhwc<S, A>(xn, g.xs[2], g.xs[3], g.xs[1], g, ymap.data(), xmap.data(), 0, g.Hu, 0,
                       g.Wu, c0, cin, xb.data());
      } else {
        for (i64 c = 0; c < cin; ++c)
          pad_planar<S, A>(xn + (c0 + c) * g.xs[1], g.xs[2], g.xs[3], g, ymap.data(), xmap.data(),
                           0, g.Hu, 0, g.Wu, xb.data() + c * HWu);
      }
      // 2. Gradient of the intermediate for the block (and the pointwise weight gradient).
      const A* gm;
      i64 gm_cs, gm_ps;  // channel stride, pixel stride (row stride = OW * pixel stride)
      if (sep) {
        // gmid[p, j] = sum_o gy[p, o] * wp[o, coff + j]    (P x cbm) = (P x Og) . (Og x cbm),
        // through the own GEMM (own_gmid) for the pixels of output rows [r0, r0 + rows).
        auto gmid_rows = [&](i64 r0, i64 rows) {
          if constexpr (std::is_same<S, float>::value) {
            const i64 p0 = r0 * g.OW;
            const float* gyb = gyn + gi * g.Og * gys[1] + p0 * gys[3];
            if (nhwc)  // gmid[p, j] = sum_o gy[p, o] * wp[o, coff + j]
              gemm_f32(rows * g.OW, cbm, g.Og, gyb, gys[3], wp + gi * g.Og * g.CMg + coff, g.CMg,
                       gmid.data() + p0 * cbm, cbm, nullptr, nullptr);
            else  // gmid[j, p] = sum_o wpT[coff + j, o] * gy[o, p]
              gemm_f32(cbm, rows * g.OW, g.Og, wpT.data() + gi * g.CMg * g.Og + coff * g.Og, g.Og,
                       gyb, gys[1], gmid.data() + p0, P, nullptr, nullptr);
          }
        };
        if (own_gmid && !gmid_by_band) {
          gmid_rows(0, g.OH);
        } else if (!own_gmid) {
          Mat G_{gyn + gi * g.Og * gys[1], gys[3], gys[1]};
          Mat W_{wp + gi * g.Og * g.CMg + coff, g.CMg, 1};
          if (nhwc)
            mm<A>(P, cbm, g.Og, G_, W_, gmid.data(), cbm, 1, A(0));
          else
            mm<A>(P, cbm, g.Og, G_, W_, gmid.data(), 1, P, A(0));
        }
        // dwp[o, coff + j] += sum_p gy[p, o] * mid[p, j]   (Og x cbm) = (Og x P) . (P x cbm),
        // by bands of output rows [r0, r0 + rows) (band_rows; all of them for MKL's GEMM),
        // the band's intermediate (bp pixels) recomputed first.
        for (i64 r0 = 0; my_dwp && r0 < g.OH; r0 += band_rows) {
          const i64 rows = std::min(band_rows, g.OH - r0), bp = rows * g.OW;
          if (nhwc) {
            conv_nhwc<S, A>(xb.data() + r0 * g.sy * g.Wu * cbm, g.Wu, cbm, wT.data() + cm0,
                            g.CM, zeros.data(), rows, g.OW, g, mid.data(), g.OW * cbm, cbm);
          } else {
            for (i64 j = 0; j < cbm; ++j)
              conv_planar<S, A>(xb.data() + (j / g.M) * HWu + r0 * g.sy * g.Qrow, g.Qrow, g.Qs,
                                w.data() + (cm0 + j) * g.T, A(0), rows, g.OW, g,
                                mid.data() + j * bp, g.OW);
          }
          A* dwp_g = my_dwp + gi * g.Og * g.CMg + coff;
          if constexpr (std::is_same<S, float>::value) {
            // (own_dwp: the output gradient's pixels are consecutive, bp of them from p0)
            const float* gyb = gyn + gi * g.Og * gys[1] + r0 * g.OW * gys[3];
            if (own_dwp && !nhwc) {
              // The own GEMM reads B with j consecutive: mid transposed first, in cache (a
              // copy per 2 * Og FMAs), and the product added to dwp.
              transpose(mid.data(), bp, midT.data(), cbm, cbm, bp);
              gemm_f32(g.Og, cbm, bp, gyb, gys[1], midT.data(), cbm, dwp_tile.data(), cbm,
                       nullptr, nullptr);
              for (i64 o = 0; o < g.Og; ++o)
                for (i64 j = 0; j < cbm; ++j) dwp_g[o * g.CMg + j] += dwp_tile[o * cbm + j];
            } else if (own_dwp) {
              // dwp^T[j, o] = sum_p midT[j, p] * gy[p, o], on mid transposed (cbm x bp),
              // added to the thread's transposed sums (dwp_transposed).
              transpose(mid.data(), cbm, midT.data(), bp, bp, cbm);
              gemm_f32(cbm, g.Og, bp, midT.data(), bp, gyb, gys[3], dwp_tile.data(), g.Og,
                       nullptr, nullptr);
              A* dwpT_g = my_dwp + gi * g.Og * g.CMg + coff * g.Og;
              for (i64 i = 0; i < cbm * g.Og; ++i) dwpT_g[i] += dwp_tile[i];
            }
          }
          if (!own_dwp) {  // (band_rows == OH: one band, the whole plane)
            Mat Gt{gyn + gi * g.Og * gys[1], gys[1], gys[3]};
            Mat Mm = nhwc ? Mat{mid.data(), cbm, 1} : Mat{mid.data(), 1, P};
            mm<A>(g.Og, cbm, P, Gt, Mm, dwp_g, g.CMg, 1, A(1));
          }
          if (my_dbp && bi == 0)  // (once an image and group: its first channel block's task)
            add_band_sums<S, A>(gyn + gi * g.Og * gys[1], gys, g.Og, r0, rows, g.OW,
                                my_dbp + gi * g.Og);
          if (gmid_by_band) gmid_rows(r0, rows);
        }
        gm = gmid.data();
        gm_cs = nhwc ? 1 : P;
        gm_ps = nhwc ? cbm : 1;
      } else {
        // Depthwise alone: the intermediate gradient is gy itself (dense, in the layout of
        // the computation; the caller guarantees it).
        gm = (const A*)(gyn + cm0 * gys[1]);
        gm_cs = gys[1];
        gm_ps = gys[3];
      }
      // 3. Depthwise weight/bias gradients and the input gradient.
      if (nhwc) {
        if (fold) std::fill(gb.begin(), gb.begin() + HWu * cbm, A(0));
        std::fill(dwT_local.begin(), dwT_local.end(), A(0));
        std::vector<A> dbl(cbm, A(0));
        A* dbd_blk = my_dbd ? dbl.data() : nullptr;
        if (bwd_nhwc_weight_s1_ok<A>(g, cbm)) {
          bwd_nhwc_weight<A>(g, cbm, xb.data(), gm, gm_ps, dwT_local.data(), dbd_blk);
          if (fold)  // the scatter alone
            bwd_nhwc_block<A>(g, cbm, xb.data(), gm, gm_ps, wT.data() + cm0, g.CM, nullptr,
                              nullptr, gb.data(), true);
        } else {
          bwd_nhwc_block<A>(g, cbm, xb.data(), gm, gm_ps, wT.data() + cm0, g.CM,
                            dwT_local.data(), dbd_blk, gb.data(), fold);
        }
        for (i64 tt = 0; tt < g.T; ++tt)
          for (i64 j = 0; j < cbm; ++j) my_dwd[(cm0 + j) * g.T + tt] += dwT_local[tt * cbm + j];
        if (my_dbd)
          for (i64 j = 0; j < cbm; ++j) my_dbd[cm0 + j] += dbl[j];
        S* gxb = gx ? gx + n * gxs[0] + c0 * gxs[1] : nullptr;
        if (fold) {
          fold_nhwc<S, A>(g, cin, gb.data(), ymap.data(), xmap.data(), gxb, gxs[2], gxs[3],
                          gxs[1]);
        } else if (gx) {
          const i64 bs = nhwc_block_stride<A>(gt, cbm, gt.Hu, gt.Wu);
          pad_nhwc<A, A>(gm, g.OW * gm_ps, gm_ps, 1, gt, tymap.data(), txmap.data(), 0, gt.Hu, 0,
                         gt.Wu, 0, cbm, gpad.data(), bs);
          conv_nhwc<S, A>(gpad.data(), gt.Wu, cbm, wflip.data() + cm0, g.CM, zeros.data(), g.H,
                          g.W, gt, gxb, gxs[2], gxs[3], bs);
        }
      } else {
        for (i64 c = 0; c < cin; ++c) {
          if (fold) std::fill(gb.begin(), gb.end(), A(0));
          for (i64 m = 0; m < g.M; ++m) {
            const i64 j = c * g.M + m;
            bwd_planar_channel<A>(g, xb.data() + c * HWu, gm + j * gm_cs, g.OW,
                                  w.data() + (cm0 + j) * g.T, my_dwd + (cm0 + j) * g.T,
                                  my_dbd ? my_dbd + cm0 + j : nullptr, gb.data(), fold);
          }
          S* gxc = gx ? gx + n * gxs[0] + (c0 + c) * gxs[1] : nullptr;
          if (fold) {
            fold_planar<S, A>(g, gb.data(), ymap.data(), xmap.data(), gxc, gxs[2], gxs[3]);
          } else if (gx) {
            if constexpr (std::is_same<S, float>::value)
              conv_direct<S>(gm + c * gm_cs, gt, 0, 0, g.H, g.W, wflip.data() + (cm0 + c) * g.T,
                             0.0f, gxc, gxs[2]);
          }
        }
      }
    });
  }
  // Reduce per-thread accumulators.
  sum_over_threads(dwd_t, g.CM * g.T, nth, dwd);
  if (dbd) sum_over_threads(dbd_t, g.CM, nth, dbd);
  if (dbp) sum_over_threads(dbp_t, g.O, nth, dbp);
  if (sep && dwp)
    for (i64 i = 0; i < g.O * g.CMg; ++i) {
      // (element i: o, j = i / CMg, i % CMg of a group, at j * Og + o when transposed)
      const i64 gi = i / (g.Og * g.CMg), o = i / g.CMg % g.Og, j = i % g.CMg;
      const i64 at = dwp_transposed ? gi * g.Og * g.CMg + j * g.Og + o : i;
      A s = 0;
      for (i64 t = 0; t < nth; ++t) s += dwp_t[t * g.O * g.CMg + at];
      dwp[i] = s;
    }
}

}  // namespace
