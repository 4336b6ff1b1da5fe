// The channels_last (NHWC) depthwise loops over pad_nhwc's padded buffer.
//
// One part of the kernels' single translation unit: sepconv_kernels.cpp includes the parts in
// order; each includes the parts whose names it uses.
#pragma once

#include "vec.h"
#include "geometry.h"
#include "planar.h"

namespace {

// Whether conv_nhwc takes its stride-1 path (conv_nhwc_s1), the one that can read the
// channel-blocked layout: stride and dilation 1 along the row, whole channel vectors, a
// 3, 5 or 7 wide filter.
template <typename A>
inline bool nhwc_s1_ok(const Geo& g, i64 cb) {
  return g.sx == 1 && g.dx == 1 && cb % V<A>::L == 0 && (g.KW == 3 || g.KW == 5 || g.KW == 7);
}

// Block stride of pad_nhwc's channel-blocked layout for an R x Q window of cb channels, or 0
// where conv_nhwc cannot read it (its stride-1 path, nhwc_s1_ok, can) or gains nothing from
// it. With all channels of a pixel together and a pixel stride that is a multiple of 512 B
// (128, 256, ... float channels), a channel vector's input lines fall on 8 or fewer of L1's
// 64 sets, and the 3x3 block ran at a third of its FMA rate from L2; blocked, its lines are
// contiguous (in-cache 4x56 pixels x 128 channels: 14.4 -> 8.6 cycles per output vector).
// Other strides measured 0.98-1.13x with it (the blocked copy costs more than it saves),
// but for 7x7 filters a multiple of 256 B (576, 960 float channels: the lines on 16 sets)
// too: depthwise 8x960x7x7 0.81x, 8x576x14x14 0.82x, 1x960x7x7 0.52x, 8x320x28x28 0.85x
// the time (AMD Zen 5; 3x3 8x64x112x112 took 1.3x, 5x5 0.98-1.04x that way).
template <typename A>
inline i64 nhwc_block_stride(const Geo& g, i64 cb, i64 R, i64 Q) {
  const i64 bytes = cb * i64(sizeof(A));
  const bool sets = bytes % 512 == 0 || (g.KW == 7 && bytes % 256 == 0);
  return nhwc_s1_ok<A>(g, cb) && sets ? R * Q * V<A>::L : 0;
}

// Channels [k0, k0 + kn) of pad_nhwc's window (channel k = input channel c0 + k / M) into
// dk + (r * Q + q) * ps.
template <typename S, typename A>
void pad_nhwc_piece(const S* img, i64 sh, i64 sw, i64 sc, const Geo& g, const i64* ymap,
                    const i64* xmap, i64 r0, i64 R, i64 q0, i64 Q, i64 c0, i64 k0, i64 kn, A* dk,
                    i64 ps) {
  const i64 M = g.M;
  for (i64 r = 0; r < R; ++r) {
    const i64 sr = ymap[r0 + r];
    for (i64 q = 0; q < Q; ++q) {
      A* d = dk + (r * Q + q) * ps;
      const i64 sq = xmap[q0 + q];
      if (sr < 0 || sq < 0) {
        std::memset(d, 0, sizeof(A) * kn);
        continue;
      }
      const S* p = img + sr * sh + sq * sw + c0 * sc;
      if (M == 1 && sc == 1 && std::is_same<S, A>::value && kn == V<A>::L) {
        // One channel vector (the backward's channel blocks of large planes): a vector move,
        // not a memcpy call per pixel (without it the channels_last depthwise backward of
        // 8x128x112x112 took 1.10x the time).
        vst<A>(d, vld<A>(reinterpret_cast<const A*>(p) + k0));
      } else if (M == 1 && sc == 1 && std::is_same<S, A>::value) {
        std::memcpy(d, p + k0, sizeof(A) * kn);
      } else if (M == 1 && sc == 1) {  // (bfloat16 widened a vector at a time)
        i64 k = 0;
        for (; k + V<A>::L <= kn; k += V<A>::L) vst<A>(d + k, vld_from<S, A>(p + k0 + k));
        for (; k < kn; ++k) d[k] = toA(p[k0 + k]);
      } else if (M == 1) {
        for (i64 k = 0; k < kn; ++k) d[k] = toA(p[(k0 + k) * sc]);
      } else {
        for (i64 k = 0; k < kn; ++k) d[k] = toA(p[((k0 + k) / M) * sc]);
      }
    }
  }
}

// NHWC: padded rows [r0, r0+R), columns [q0, q0+Q) of input channels [c0, c0+cin) of one
// image into buf[R][Q][cin*M] (each input channel repeated M times); or, with a block stride
// bs > 0 (nhwc_block_stride), in blocks of one channel vector: channel k of pixel (r, q) at
// buf[(k / L) * bs + (r * Q + q) * L + k % L], written row by row, every block of a pixel
// before the next pixel (below).
template <typename S, typename A>
void pad_nhwc(const S* img, i64 sh, i64 sw, i64 sc, const Geo& g, const i64* ymap, const i64* xmap,
              i64 r0, i64 R, i64 q0, i64 Q, i64 c0, i64 cin, A* buf, i64 bs = 0) {
  const i64 cb = cin * g.M, L = V<A>::L;
  if (bs == 0 && g.M == 1 && sc == 1 && sw == cb && std::is_same<S, A>::value) {
    // Whole pixels, as stored in the image: a row's interior is one copy (against one copy
    // per pixel: stride-2 channels_last layers 0.93-0.97x the time, depthwise 0.90-0.96x).
    const i64 qa = std::clamp<i64>(g.pl - q0, 0, Q), qb = std::clamp<i64>(g.pl + g.W - q0, qa, Q);
    // Columns [from, to) of row r, pixel by pixel (zero rows, and the padding columns).
    auto pixels = [&](i64 r, i64 from, i64 to) {
      pad_nhwc_piece<S, A>(img, sh, sw, sc, g, ymap, xmap, r0 + r, 1, q0 + from, to - from, c0,
                           0, cb, buf + (r * Q + from) * cb, cb);
    };
    for (i64 r = 0; r < R; ++r) {
      const i64 sr = ymap[r0 + r];
      if (sr < 0) {
        pixels(r, 0, Q);
        continue;
      }
      std::memcpy(buf + (r * Q + qa) * cb, img + sr * sh + (q0 + qa - g.pl) * sw + c0,
                  sizeof(A) * (qb - qa) * cb);
      pixels(r, 0, qa);
      pixels(r, qb, Q);
    }
    return;
  }
  if (bs == 0) {
    pad_nhwc_piece<S, A>(img, sh, sw, sc, g, ymap, xmap, r0, R, q0, Q, c0, 0, cb, buf, cb);
    return;
  }
  // Row by row, and in each row every channel vector of a pixel before the next pixel, by
  // vector moves: the row is then read in memory order, one stream, and each channel block
  // is written in order. Passes of a few vectors of each pixel read the row 512 bytes apart
  // at a time: one vector a pass was a fifth of the channels_last 7x7 depthwise's time, and
  // against 8 vectors a pass (4 lines) whole pixels took 0.85-0.95x the time of the
  // depthwise 5x5 and 7x7 on 8x128x112x112, 8x256x56x56 and 8x384x28x28 (AMD Zen 3; 8
  // against one had taken 0.87-0.89x, 16 against 8 0.92-0.95x, 32 against 16 0.85-0.88x on
  // 256 channels). A memcpy call per pixel and vector had taken 1.01-1.06x the time.
  const bool plain = g.M == 1 && sc == 1 && (std::is_same<S, A>::value || std::is_same<S, bf16>::value);
  const i64 nv = cb / L;
  for (i64 r = 0; r < R; ++r) {
    const i64 sr = ymap[r0 + r];
    A* d = buf + r * Q * L;
    if (!plain || sr < 0) {
      for (i64 v = 0; v < nv; ++v)
        pad_nhwc_piece<S, A>(img, sh, sw, sc, g, ymap, xmap, r0 + r, 1, q0, Q, c0, v * L, L,
                             d + v * bs, L);
      continue;
    }
    const S* row = img + sr * sh + c0;
    for (i64 q = 0; q < Q; ++q, d += L) {
      const i64 sq = xmap[q0 + q];
      for (i64 v = 0; v < nv; ++v)
        vst<A>(d + v * bs, sq < 0 ? vzero<A>() : vld_from<S, A>(row + sq * sw + v * L));
    }
  }
}

// NHWC depthwise core: TH x TW pixels, cb channels, from buf[R][Q][cb]; weights wT[t*ldw + c],
// bias[c]; output pixel (i, j) channel c at dst[i*drs + j*dps + c].
//
// PB pixels of one row times one channel vector at once: each weight vector load serves
// PB FMAs and the PB accumulators are independent chains.
template <int PB, typename S, typename A>
inline void nhwc_block(const A* b, i64 pstep, const i64* off, i64 T, const A* wT, i64 ldw,
                       const A* bias, i64 c, S* d, i64 dps) {
  typedef typename V<A>::t vec;
  vec acc[PB];
  const vec b0 = vld<A>(bias + c);
  for (int p = 0; p < PB; ++p) acc[p] = b0;
  for (i64 t = 0; t < T; ++t) {
    const vec w = vld<A>(wT + t * ldw + c);
    const A* src = b + off[t] + c;
#pragma GCC unroll 8
    for (int p = 0; p < PB; ++p) acc[p] += w * vld<A>(src + p * pstep);
  }
  for (int p = 0; p < PB; ++p) vstOut(d + p * dps + c, acc[p]);
}

#if defined(__AVX512F__)
// nhwc_block for the `last` (< 16) float channels past a pixel's whole vectors: masked loads
// (nothing read past them) and a masked store.
template <int PB, typename S>
inline void nhwc_block_part(const float* b, i64 pstep, const i64* off, i64 T, const float* wT,
                            i64 ldw, const float* bias, i64 c, S* d, i64 dps, i64 last) {
  const __mmask16 m = __mmask16((1u << last) - 1);
  __m512 acc[PB];
  const __m512 b0 = _mm512_maskz_loadu_ps(m, bias + c);
  for (int p = 0; p < PB; ++p) acc[p] = b0;
  for (i64 t = 0; t < T; ++t) {
    const __m512 w = _mm512_maskz_loadu_ps(m, wT + t * ldw + c);
    const float* src = b + off[t] + c;
#pragma GCC unroll 8
    for (int p = 0; p < PB; ++p)
      acc[p] = _mm512_fmadd_ps(w, _mm512_maskz_loadu_ps(m, src + p * pstep), acc[p]);
  }
  for (int p = 0; p < PB; ++p) vstPart(d + p * dps + c, V<float>::t(acc[p]), last);
}
#endif

// Where nhwc_block_s1 finds kernel row ky of a block: rows(ky) elements after its first
// input pixel. Rows a fixed step apart (a padded window, or the image itself), or rows at
// given offsets (nhwc_ring.h's ring of rows).
struct RowStep {
  i64 step;
  i64 operator()(i64 ky) const { return ky * step; }
};
struct RowOffsets {
  const i64* off;
  i64 operator()(i64 ky) const { return off[ky]; }
};

// Stride 1, dilation 1 along the row: the PB + KW - 1 input vectors of a kernel row are
// loaded once and reused by all KW taps (register sliding window). b, w, bias and d point at
// the block's channel vector; input pixels are ps apart, kernel rows where rows() says;
// weights ldw per tap.
// Fewer than 8 pixels (row tails) of 5x5 and 7x7 filters keep 8 / PB partial sums per pixel:
// one chain each ran at the FMA latency (7x7 rows 14 wide: 81 cycles per output vector for
// 25 of FMAs). 3x3 tails do not gain from them (their short chains overlap anyway). A tap's
// chain follows its column kx alone: chosen by (ky * KW + kx), a run-time index with the
// kernel rows in a loop, the accumulators lived on the stack (a load and a store around each
// FMA: 8x768x7x7 channels_last 7x7 / 5x5 took 1.4x / 2.1x the time, 8x384x14x14 7x7 1.4x).
// always_inline: called per block, the accumulators went through the stack before and after
// (in-cache 4x56 pixels x 16 channels: 8.4 ns per output vector as a call, 6.9 inlined).
template <int PB, int KW, typename S, typename A, typename Rows>
__attribute__((always_inline)) inline void nhwc_block_s1(const A* b, i64 ps, Rows rows, i64 KH,
                                                         const A* w, i64 ldw, const A* bias,
                                                         S* d, i64 dps) {
  typedef typename V<A>::t vec;
  constexpr int CH = PB >= 8 || KW == 3 ? 1 : 8 / PB;
  vec acc[CH][PB];
  for (int p = 0; p < PB; ++p) {
    acc[0][p] = vld<A>(bias);
    for (int h = 1; h < CH; ++h) acc[h][p] = vzero<A>();
  }
  for (i64 ky = 0; ky < KH; ++ky) {
    const A* r = b + rows(ky);
    const A* wr = w + ky * KW * ldw;
    if constexpr (kVecRegs < 32) {
      // 16 registers: the KW weight vectors stay in registers and each input vector is
      // loaded once and met by every tap that reads it (the PB + KW - 1 input vectors and
      // PB accumulators below took 19-23 ymm registers for 8 pixels and spilled).
      vec wv[KW];
#pragma GCC unroll 8
      for (int kx = 0; kx < KW; ++kx) wv[kx] = vld<A>(wr + kx * ldw);
      const A* rq = r;
#pragma GCC unroll 16
      for (int q = 0; q < PB + KW - 1; ++q, rq += ps) {
        const vec x = vld<A>(rq);
        asm("" : "+r"(rq));
#pragma GCC unroll 8
        for (int kx = 0; kx < KW; ++kx) {
          const int p = q - kx;
          if (p >= 0 && p < PB) acc[kx % CH][p] += wv[kx] * x;
        }
      }
      continue;
    }
    vec xv[PB + KW - 1];
    // One pointer stepped by ps, kept opaque (the empty asm): otherwise the compiler
    // precomputes all PB + KW - 1 addresses, runs out of registers and shuttles them through
    // vector registers (42 vmovq per 8-pixel 3x3 block, on the FMA ports; C = 16 in L1:
    // 12.0 cycles per output vector, 5.5 with the opaque pointer).
    const A* rq = r;
#pragma GCC unroll 16
    for (int q = 0; q < PB + KW - 1; ++q, rq += ps) {
      xv[q] = vld<A>(rq);
      asm("" : "+r"(rq));
    }
#pragma GCC unroll 8
    for (int kx = 0; kx < KW; ++kx) {
      const vec wv = vld<A>(wr + kx * ldw);
#pragma GCC unroll 8
      for (int p = 0; p < PB; ++p) acc[kx % CH][p] += wv * xv[p + kx];
    }
  }
  store_rows<CH, PB, A>(acc, d, dps, V<A>::L);
}

// The stride-1 path of conv_nhwc (cb a multiple of L): from buf[R][Q][cb], or with block
// stride bs > 0 from pad_nhwc's channel-blocked layout.
template <int KW, typename S, typename A>
void conv_nhwc_s1(const A* buf, i64 Q, i64 cb, const A* wT, i64 ldw, const A* bias, i64 TH,
                  i64 TW, const Geo& g, S* dst, i64 drs, i64 dps, i64 bs) {
  const i64 L = V<A>::L;
  const i64 ps = bs > 0 ? L : cb;  // pixel step in the buffer
  const i64 rstep = g.dy * Q * ps;
  // Channel vectors outermost, then rows, then pixels: the blocks of one channel vector share
  // most of their input lines, which then stay in L1 from one output row to the next (with
  // the channels inside the rows, the other channels evicted them in between; pixels
  // inside channels: 7x7 blocks touched all channels of 7 x 14 pixels, about L1's size).
  // In-cache 4x56 pixels x 128 channels: 10.8 ns per output vector, against 12.0 rows-outer.
  for (i64 c = 0; c < cb; c += L) {
    const A* bc = bs > 0 ? buf + (c / L) * bs : buf + c;
    for (i64 i = 0; i < TH; ++i) {
      const A* brow = bc + i * g.sy * Q * ps;
      S* drow = dst + i * drs + c;
      auto block = [&](i64 j, auto pb) __attribute__((always_inline)) {
        nhwc_block_s1<decltype(pb)::value, KW, S, A>(brow + j * ps, ps, RowStep{rstep}, g.KH,
                                                     wT + c, ldw, bias + c, drow + j * dps, dps);
      };
      in_blocks<8>(0, TW, block);
    }
  }
}

// NHWC depthwise of TH x TW output pixels and cb channels from pad_nhwc's buffer (block
// stride bs as given to pad_nhwc; 0 for buf[R][Q][cb], which every geometry can use).
template <typename S, typename A>
void conv_nhwc(const A* buf, i64 Q, i64 cb, const A* wT, i64 ldw, const A* bias, i64 TH, i64 TW,
               const Geo& g, S* dst, i64 drs, i64 dps, i64 bs = 0) {
  if (nhwc_s1_ok<A>(g, cb)) {
    by_width(g.KW, [&](auto kw) {
      conv_nhwc_s1<decltype(kw)::value, S, A>(buf, Q, cb, wT, ldw, bias, TH, TW, g, dst, drs, dps,
                                              bs);
    });
    return;
  }
  const i64 L = V<A>::L;
  const i64 T = g.T;
  std::vector<i64> offv(T);
  i64* off = offv.data();
  for (i64 ky = 0; ky < g.KH; ++ky)
    for (i64 kx = 0; kx < g.KW; ++kx) off[ky * g.KW + kx] = (ky * g.dy * Q + kx * g.dx) * cb;
  const i64 pstep = g.sx * cb;  // buffer distance between neighbouring output pixels
  const i64 cv = cb / L * L;
  for (i64 i = 0; i < TH; ++i) {
    const A* brow = buf + i * g.sy * Q * cb;
    S* drow = dst + i * drs;
    i64 j = 0;
    for (; j + 8 <= TW; j += 8)
      for (i64 c = 0; c < cv; c += L)
        nhwc_block<8, S, A>(brow + j * pstep, pstep, off, T, wT, ldw, bias, c, drow + j * dps, dps);
    for (; j + 4 <= TW; j += 4)
      for (i64 c = 0; c < cv; c += L)
        nhwc_block<4, S, A>(brow + j * pstep, pstep, off, T, wT, ldw, bias, c, drow + j * dps, dps);
    for (; j < TW; ++j)
      for (i64 c = 0; c < cv; c += L)
        nhwc_block<1, S, A>(brow + j * pstep, pstep, off, T, wT, ldw, bias, c, drow + j * dps, dps);
#if defined(__AVX512F__)
    // Channels past whole vectors as masked vectors, 8 pixels at a time: lane by lane, the 8
    // of 24 channels took 7x the time of the other 16.
    if constexpr (std::is_same<A, float>::value) {
      if (cv < cb) {
        const i64 last = cb - cv;
        i64 jj = 0;
        for (; jj + 8 <= TW; jj += 8)
          nhwc_block_part<8, S>(brow + jj * pstep, pstep, off, T, wT, ldw, bias, cv,
                                drow + jj * dps, dps, last);
        for (; jj < TW; ++jj)
          nhwc_block_part<1, S>(brow + jj * pstep, pstep, off, T, wT, ldw, bias, cv,
                                drow + jj * dps, dps, last);
        continue;
      }
    }
#endif
    if (cv < cb) {
      for (i64 jj = 0; jj < TW; ++jj) {
        const A* b = brow + jj * pstep;
        S* d = drow + jj * dps;
        for (i64 c = cv; c < cb; ++c) {
          A a = bias[c];
          for (i64 t = 0; t < T; ++t) a += wT[t * ldw + c] * b[off[t] + c];
          fromA(a, d + c);
        }
      }
    }
  }
}

}  // namespace
