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
  // The padded columns [j0, j1) of span() that hold input (0 <= j - px < W); the rest are
  // zero.
  i64 first_inside() const { return std::min(span(), px); }
  i64 end_inside() const { return std::max(first_inside(), std::min(span(), px + W)); }
};

// Whether the planar stem writes its output around the caches (vstOut): outputs of 8 MiB or
// more whose rows are whole vectors, so that every store is a whole line where the output is
// 64-byte aligned (the allocator's; otherwise vstOut stores them all plainly). Plain stores
// first read each line from memory; the next layer reads the output from memory anyway.
// MobileNet's stem at batch 8 (12.8 MB): 0.85x the time in a loop, mobilenet_v2 0.99x
// (docs/performance.md, run AE). Not channels_last (its pixel-major stores, two lines a
// pixel of 32 channels): 1.15x in a loop, the network 1.03x.
inline bool stream_dense_output(const DenseGeo& g) {
  return streaming_enabled() && g.OW % V<float>::L == 0 &&
         g.N * g.O * g.OH * g.OW * 4 >= (i64(8) << 20);
}

// The offsets where the taps t = (c, ky, kx) read output pixel 0 in a rows buffer:
// offset(c, ky, kx) for each, in PyTorch's order within a filter.
template <typename F>
std::vector<i64> tap_offsets(const DenseGeo& g, F offset) {
  std::vector<i64> toff(g.taps());
  for (i64 c = 0; c < g.C; ++c)
    for (i64 ky = 0; ky < g.KH; ++ky)
      for (i64 kx = 0; kx < g.KW; ++kx) toff[(c * g.KH + ky) * g.KW + kx] = offset(c, ky, kx);
  return toff;
}

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
  const i64 span = g.span(), C = g.C, j0 = g.first_inside(), j1 = g.end_inside();
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

#if defined(__AVX512F__)
// Planar output (from planar input) at stride 1 or 2, without the transpose: each input row
// is split by phase (column j to phase j % sx at index j / sx), so that for any tap the
// inputs of 16 consecutive output pixels are 16 consecutive floats; a block of output
// channels' rows is then computed in vectors of pixels and stored into their planes
// (MobileNet's stem, 1x3x224x224 -> 32: transpose8x8 had 8 % of the samples of a loop of the
// pixel-major calls; without it the call takes 0.86-0.88x the time).
inline bool dense_planar_ok(const DenseGeo& g) { return !g.in_nhwc && !g.out_nhwc && g.sx <= 2; }

constexpr int kPlanarOB = 8;  // output channels a block: 8 x up to 3 vectors of pixels

// Floats a phase row holds: its columns, then room for the last vector's loads and the
// split's whole-vector stores.
inline i64 phase_len(const DenseGeo& g) { return (g.span() + g.sx - 1) / g.sx + 48; }

// Where tap t = (c, ky, kx) reads output pixel 0 in dense_phase_rows' buffer.
inline i64 phase_offset(const DenseGeo& g, i64 c, i64 ky, i64 kx) {
  const i64 j = kx * g.dx;  // (padded column of output pixel 0)
  return ((ky * g.C + c) * g.sx + j % g.sx) * phase_len(g) + j / g.sx;
}

// The input rows of output row oy of planar image x split by phase: x[c][iy][j - px] at
// rows[((ky * C + c) * sx + j % sx) * len + j / sx]. Only columns inside the image are
// written (rows outside it zeroed): the rest stay zero from the buffer's start.
void dense_phase_rows(const DenseGeo& g, const float* x, i64 oy, float* rows) {
  const i64 len = phase_len(g), sx = g.sx, j0 = g.first_inside(), j1 = g.end_inside();
  // (lanes 0, 2, ..., 30 and 1, 3, ..., 31 of two vectors)
  const __m512i evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26,
                                          28, 30);
  const __m512i odds = _mm512_add_epi32(evens, _mm512_set1_epi32(1));
  for (i64 ky = 0; ky < g.KH; ++ky) {
    const i64 iy = oy * g.sy - g.py + ky * g.dy;
    for (i64 c = 0; c < g.C; ++c) {
      float* const row = rows + (ky * g.C + c) * sx * len;
      if (iy < 0 || iy >= g.H) {
        std::fill(row, row + sx * len, 0.0f);
        continue;
      }
      const float* src = x + (c * g.H + iy) * g.W + j0 - g.px;
      if (sx == 1) {
        std::memcpy(row + j0, src, sizeof(float) * (j1 - j0));
        continue;
      }
      // Column j0 + k: k even to phase j0 % 2 from index j0 / 2, k odd to the other phase
      // from (j0 + 1) / 2; past j1 the masked loads give the zeros those columns hold.
      float* const first = row + (j0 % 2) * len + j0 / 2;
      float* const second = row + (1 - j0 % 2) * len + (j0 + 1) / 2;
      for (i64 k = 0; k < j1 - j0; k += 32) {
        const i64 left = j1 - j0 - k;
        const __mmask16 m0 = left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
        const __mmask16 m1 = left >= 32 ? __mmask16(0xFFFF)
                             : left > 16 ? __mmask16((1u << (left - 16)) - 1)
                                         : __mmask16(0);
        const __m512 a = _mm512_maskz_loadu_ps(m0, src + k);
        const __m512 b = _mm512_maskz_loadu_ps(m1, src + k + 16);
        _mm512_storeu_ps(first + k / 2, _mm512_permutex2var_ps(a, evens, b));
        _mm512_storeu_ps(second + k / 2, _mm512_permutex2var_ps(a, odds, b));
      }
    }
  }
}

// Output channels [o0, o0 + valid) (valid <= kPlanarOB) of output row oy, pixels
// [ox0, ox0 + 16 PV) clipped to OW, into planes of P floats from dst (the image's output).
// All kPlanarOB channels are computed: wt's rows and bias are opad long, opad a multiple of
// 64 (so of kPlanarOB) at least O, zero past O.
template <int PV>
inline void dense_planar_micro(const DenseGeo& g, const float* rows, const i64* toff,
                               const float* wt, i64 opad, const float* bias, i64 o0, i64 valid,
                               i64 ox0, float* dst, i64 P, i64 oy) {
  typedef V<float>::t Vec;
  Vec acc[kPlanarOB][PV];
  for (int o = 0; o < kPlanarOB; ++o)
    for (int p = 0; p < PV; ++p) acc[o][p] = vset<float>(bias[o0 + o]);
  const i64 T = g.taps();
  for (i64 t = 0; t < T; ++t) {
    const float* src = rows + toff[t] + ox0;
    Vec xv[PV];
    for (int p = 0; p < PV; ++p) xv[p] = vld<float>(src + 16 * p);
    const float* w = wt + t * opad + o0;
    for (int o = 0; o < kPlanarOB; ++o) {
      const Vec wv = vset<float>(w[o]);
      for (int p = 0; p < PV; ++p) acc[o][p] += wv * xv[p];
    }
  }
  const float* const clamp = g.clamp_bounds();
  for (int o = 0; o < valid; ++o)
    for (int p = 0; p < PV; ++p) {
      const Vec r = clamp ? clamp_vec(acc[o][p], clamp) : acc[o][p];
      const i64 ox = ox0 + 16 * p, left = g.OW - ox;
      float* const d = dst + (o0 + o) * P + oy * g.OW + ox;
      if (left >= 16)
        vstOut(d, r);
      else if (left > 0)
        vstPart(d, r, left);
    }
}

// Output row oy of one image (dst: its output planes) from dense_phase_rows' buffer.
void dense_planar_row(const DenseGeo& g, const float* rows, const i64* toff, const float* wt,
                      i64 opad, const float* bias, float* dst, i64 oy) {
  const i64 P = g.OH * g.OW, vectors = (g.OW + 15) / 16;
  for (i64 o0 = 0; o0 < g.O; o0 += kPlanarOB) {
    const i64 valid = std::min<i64>(kPlanarOB, g.O - o0);
    for (i64 v = 0, pv = 0; v < vectors; v += pv) {
      // Blocks of up to 3 vectors, evened out (7 = 3 + 2 + 2, not 3 + 3 + 1: a block of one
      // vector has 8 chains of FMAs, too few to cover their latency)
      const i64 blocks = (vectors - v + 2) / 3;
      pv = (vectors - v + blocks - 1) / blocks;
      auto block = [&](auto pv_c) {
        dense_planar_micro<decltype(pv_c)::value>(g, rows, toff, wt, opad, bias, o0, valid,
                                                   16 * v, dst, P, oy);
      };
      if (pv == 3)
        block(std::integral_constant<int, 3>());
      else if (pv == 2)
        block(std::integral_constant<int, 2>());
      else
        block(std::integral_constant<int, 1>());
    }
  }
}

// dense_forward's planar path (dense_planar_ok).
void dense_forward_planar(const DenseGeo& g, const float* x, const float* wt, i64 opad,
                          const float* bias, float* out) {
  const i64 P = g.OH * g.OW, xs = g.C * g.H * g.W;
  const std::vector<i64> toff =
      tap_offsets(g, [&](i64 c, i64 ky, i64 kx) { return phase_offset(g, c, ky, kx); });
#pragma omp parallel num_threads(g.threads)
  {
    std::vector<float> rows(g.KH * g.C * g.sx * phase_len(g));  // (zeros: see dense_phase_rows)
    t_stream = stream_dense_output(g);
#pragma omp for schedule(static)
    for (i64 task = 0; task < g.N * g.OH; ++task) {
      const i64 n = task / g.OH, oy = task % g.OH;
      dense_phase_rows(g, x + n * xs, oy, rows.data());
      dense_planar_row(g, rows.data(), toff.data(), wt, opad, bias, out + n * g.O * P, oy);
    }
    if (t_stream) stream_fence();
    t_stream = false;
  }
}
#endif

void dense_forward(const float* x, const float* w, const float* b, const MidNorm<float>& norm,
                   float* out, const i64* geo) {
  const DenseGeo g = dense_geo(geo);
  const i64 T = g.taps(), span = g.span(), P = g.OH * g.OW;
  // (a whole block of vectors past O: the micro-kernel's loads of the last block)
  const i64 opad = (g.O + kDenseNV * V<float>::L - 1) / (kDenseNV * V<float>::L) * kDenseNV *
                   V<float>::L;
  std::vector<float> wt(T * opad), bias(opad);
  fold_dense(g, w, b, norm, opad, wt.data(), bias.data());
#if defined(__AVX512F__)
  if (dense_planar_ok(g)) return dense_forward_planar(g, x, wt.data(), opad, bias.data(), out);
#endif
  const std::vector<i64> toff = tap_offsets(g, [&](i64 c, i64 ky, i64 kx) {
    return g.in_nhwc ? (ky * span + kx * g.dx) * g.C + c : (ky * g.C + c) * span + kx * g.dx;
  });
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
