// A dense convolution with few input channels (a network's stem: MobileNet's 3 -> 32 3x3
// stride 2) with its inference batch norm folded in and its clamp, in one call. Through
// PyTorch it was a oneDNN convolution that runs 3-channel NCHW input slowly (1x3x224x224 ->
// 32: 0.89 ms, channels_last 0.09 ms), then the norm and the activation, each a fresh
// 12.8 MB tensor at batch 8 that page-faults on first touch: MobileNetV2's stem took 6-14 ms
// of the network's 28-40 ms at batch 8.
//
// Each output pixel is sum_t x_t * W'[t][:] over the taps t = (c, ky, kx): a tap's input
// value broadcast, times the folded weight's row of output channels in vectors. A task is one
// output row: its input rows are first copied, zero-padded, into a buffer in the input's own
// layout (planar: channel by channel; channels_last: the pixels' channels interleaved, one
// copy per row), so that the loop needs no bounds checks.
//
// One part of the kernels' single translation unit: sepconv_kernels.cpp includes the parts in
// order; each includes the parts whose names it uses.
#pragma once

#include "vec.h"
#include "gemm.h"
#include "pack.h"
#include "mid_stage.h"

namespace {

// geo: N, C, H, W, O, OH, OW, KH, KW, sy, sx, py, px, dy, dx (py / px: the zero rows / columns
// before the input; after it, as many as the output needs), in_nhwc, out_nhwc, threads, then
// the stage's four values (stage_params).
struct DenseGeo : StageParams {
  i64 N, C, H, W, O, OH, OW, KH, KW, sy, sx, py, px, dy, dx, threads;
  bool in_nhwc, out_nhwc;
  i64 taps() const { return C * KH * KW; }
  i64 span() const { return (OW - 1) * sx + (KW - 1) * dx + 1; }  // padded input columns read
  // Floats between the reads of two consecutive output pixels in dense_rows' buffer.
  i64 step() const { return in_nhwc ? sx * C : sx; }
};

inline DenseGeo dense_geo(const i64* g) {
  DenseGeo r;
  static_cast<StageParams&>(r) = stage_params(g + 18);
  i64* const fields[] = {&r.N, &r.C, &r.H, &r.W, &r.O, &r.OH, &r.OW, &r.KH,
                         &r.KW, &r.sy, &r.sx, &r.py, &r.px, &r.dy, &r.dx};
  for (i64 i = 0; i < 15; ++i) *fields[i] = g[i];
  r.in_nhwc = g[15] != 0;
  r.out_nhwc = g[16] != 0;
  r.threads = std::max<i64>(1, g[17]);
  return r;
}

// Output channels a block of the loop (kDenseNV vectors) and pixels a block (kDensePX): 6 x 4
// accumulators in 24 zmm (6 x 2 in 12 ymm without AVX-512).
constexpr int kDenseNV = kVecRegs == 32 ? 4 : 2;
constexpr int kDensePX = 6;

// W' as taps x opad (tap t = (c * KH + ky) * KW + kx, PyTorch's order within a filter) and
// b' (opad values): the norm's alpha folded into each output channel's column and its shift
// into the bias; zero beyond O.
void fold_dense(const DenseGeo& g, const float* w, const float* b, const MidNorm<float>& n,
                i64 opad, float* wt, float* bias) {
  const i64 T = g.taps();
  std::fill(wt, wt + T * opad, 0.0f);
  std::fill(bias, bias + opad, 0.0f);
  for (i64 o = 0; o < g.O; ++o) {
    float alpha = 1.0f, shift = 0.0f;
    if (g.norm) norm_affine(n, o, g.eps, alpha, shift);
    for (i64 t = 0; t < T; ++t) wt[t * opad + o] = w[o * T + t] * alpha;
    bias[o] = (b ? b[o] : 0.0f) * alpha + shift;
  }
}

// The input rows of output row oy of image x (one image): x[c][oy * sy - py + ky * dy][j - px],
// zero outside the image, at rows[(ky * C + c) * span + j] (planar input) or
// rows[(ky * span + j) * C + c] (channels_last: each row one copy; copied value by value,
// a stride-3 gather, it took as long as the arithmetic of MobileNet's stem).
void dense_rows(const DenseGeo& g, const float* x, i64 oy, float* rows) {
  const i64 span = g.span(), C = g.C;
  // Columns j with 0 <= j - px < W hold input; the rest are zero.
  const i64 j0 = std::min(span, g.px), j1 = std::max(j0, std::min(span, g.px + g.W));
  for (i64 ky = 0; ky < g.KH; ++ky) {
    const i64 iy = oy * g.sy - g.py + ky * g.dy;
    const bool inside = iy >= 0 && iy < g.H;
    if (g.in_nhwc) {
      float* row = rows + ky * span * C;
      if (!inside) {
        std::fill(row, row + span * C, 0.0f);
        continue;
      }
      std::fill(row, row + j0 * C, 0.0f);
      std::fill(row + j1 * C, row + span * C, 0.0f);
      std::memcpy(row + j0 * C, x + (iy * g.W + j0 - g.px) * C, sizeof(float) * (j1 - j0) * C);
      continue;
    }
    for (i64 c = 0; c < C; ++c) {
      float* row = rows + (ky * C + c) * span;
      if (!inside) {
        std::fill(row, row + span, 0.0f);
        continue;
      }
      std::fill(row, row + j0, 0.0f);
      std::fill(row + j1, row + span, 0.0f);
      std::memcpy(row + j0, x + (c * g.H + iy) * g.W + j0 - g.px, sizeof(float) * (j1 - j0));
    }
  }
}

// PX pixels (g.step() apart in `rows`, from which tap t reads at toff[t]) x NV vectors of output
// channels: dst[i * dps + o] = clamp(bias[o] + sum_t rows[toff[t] + i * step] * wt[t * opad + o])
// for the first `valid` channels of the block.
template <int PX, int NV>
inline void dense_micro(const DenseGeo& g, const float* rows, const i64* toff, const float* wt,
                        i64 opad, const float* bias, float* dst, i64 dps, i64 valid) {
  typedef V<float>::t Vec;
  constexpr int L = V<float>::L;
  Vec acc[PX][NV];
  for (int v = 0; v < NV; ++v) {
    const Vec b = vld<float>(bias + v * L);
    for (int i = 0; i < PX; ++i) acc[i][v] = b;
  }
  const i64 T = g.taps(), step = g.step();
  for (i64 t = 0; t < T; ++t) {
    const float* src = rows + toff[t];
    Vec wv[NV];
    for (int v = 0; v < NV; ++v) wv[v] = vld<float>(wt + t * opad + v * L);
    for (int i = 0; i < PX; ++i) {
      const Vec a = vset<float>(src[i * step]);
      for (int v = 0; v < NV; ++v) acc[i][v] += a * wv[v];
    }
  }
  const float* const clamp = g.clamp_bounds();
  for (int i = 0; i < PX; ++i)
    for (int v = 0; v < NV; ++v) {
      const Vec r = clamp ? clamp_vec(acc[i][v], clamp) : acc[i][v];
      const i64 left = valid - v * L;
      if (left >= L)
        vst<float>(dst + i * dps + v * L, r);
      else if (left > 0)
        vstPart(dst + i * dps + v * L, r, left);
    }
}

// One output row (OW pixels x O channels) into dst (pixel stride dps, channel stride 1).
void dense_row(const DenseGeo& g, const float* rows, const i64* toff, const float* wt,
               i64 opad, const float* bias, float* dst, i64 dps) {
  constexpr i64 block = kDenseNV * V<float>::L;
  for (i64 o0 = 0; o0 < g.O; o0 += block) {
    const i64 valid = std::min(block, g.O - o0);
    const i64 nv = (valid + V<float>::L - 1) / V<float>::L;
    for (i64 ox = 0; ox < g.OW; ox += kDensePX) {
      const i64 px = std::min<i64>(kDensePX, g.OW - ox);
      const float* r = rows + ox * g.step();
      const float* w = wt + o0;
      float* d = dst + ox * dps + o0;
      with_rows(px, [&](auto px_c) {
        constexpr int PX = decltype(px_c)::value;
        switch (nv) {
#if defined(__AVX512F__) || !defined(SEPCONV_VEC32)
          case 4: dense_micro<PX, 4>(g, r, toff, w, opad, bias + o0, d, dps, valid); break;
          case 3: dense_micro<PX, 3>(g, r, toff, w, opad, bias + o0, d, dps, valid); break;
#endif
          case 2: dense_micro<PX, 2>(g, r, toff, w, opad, bias + o0, d, dps, valid); break;
          default: dense_micro<PX, 1>(g, r, toff, w, opad, bias + o0, d, dps, valid); break;
        }
      });
    }
  }
}

void dense_forward(const float* x, const float* w, const float* b, const MidNorm<float>& norm,
                   float* out, const i64* geo) {
  const DenseGeo g = dense_geo(geo);
  const i64 T = g.taps(), span = g.span(), P = g.OH * g.OW;
  // (a whole block of vectors past O: the micro-kernel's loads of the last block)
  const i64 opad = (g.O + kDenseNV * V<float>::L - 1) / (kDenseNV * V<float>::L) * kDenseNV *
                   V<float>::L;
  std::vector<float> wt(T * opad), bias(opad);
  fold_dense(g, w, b, norm, opad, wt.data(), bias.data());
  std::vector<i64> toff(T);
  for (i64 c = 0; c < g.C; ++c)
    for (i64 ky = 0; ky < g.KH; ++ky)
      for (i64 kx = 0; kx < g.KW; ++kx)
        toff[(c * g.KH + ky) * g.KW + kx] = g.in_nhwc ? (ky * span + kx * g.dx) * g.C + c
                                                      : (ky * g.C + c) * span + kx * g.dx;
  const i64 xs = g.C * g.H * g.W;
  // Rows in contiguous shares, so that a thread's consecutive rows share input rows in cache.
#pragma omp parallel num_threads(g.threads)
  {
    std::vector<float> rows(g.KH * g.C * span), staged(g.out_nhwc ? 0 : g.OW * opad);
#pragma omp for schedule(static)
    for (i64 task = 0; task < g.N * g.OH; ++task) {
      const i64 n = task / g.OH, oy = task % g.OH;
      dense_rows(g, x + n * xs, oy, rows.data());
      if (g.out_nhwc) {
        dense_row(g, rows.data(), toff.data(), wt.data(), opad, bias.data(),
                  out + (n * P + oy * g.OW) * g.O, g.O);
        continue;
      }
      // Planar output: the row's pixels x channels, then transposed into the O planes.
      dense_row(g, rows.data(), toff.data(), wt.data(), opad, bias.data(), staged.data(), opad);
      transpose(staged.data(), opad, out + n * g.O * P + oy * g.OW, P, g.OW, g.O);
    }
  }
}

}  // namespace
