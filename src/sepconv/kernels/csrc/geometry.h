// Geometry: the call's sizes and strides (Geo) and the padding index maps.
//
// One part of the kernels' single translation unit: sepconv_kernels.cpp includes the parts in
// order; each includes the parts whose names it uses.
#pragma once

#include "vec.h"

namespace {

// ------------------------------------------------------------------ geometry

struct Geo {
  i64 N, C, M, H, W, OH, OW, KH, KW, sy, sx, dy, dx, pt, pl, mode, O, G, threads, nhwc, budget;
  bool budget_set;  // the caller chose the budget (SEPCONV_KERNELS_TILE_BYTES)
  i64 CM, T, Hu, Wu, Qs, Qrow, CMg, Og, min_pixels, out_nhwc;
  i64 xs[4], os[4];
  const float* wpT = nullptr;     // pointwise weight packed in kPanel-column panels (own GEMM)
  const float* bp_pad = nullptr;  // pointwise bias with slack (own GEMM)
  const float* wpb = nullptr;     // [wp | bp], O x (CM + 1) (BLAS, planar mid, one group)
  bool own_gemm = false;          // forward tile GEMMs: own kernel (else BLAS)
  // bfloat16 forward on the own bfloat16 GEMM (gemm_bf16.h): the pointwise weight as its
  // channels_last GEMM reads it (pair-interleaved panels) or as the planar one does (rows
  // padded to an even length), and the bias in float (with slack); bias_f set: that GEMM runs.
  const bf16* wp_pairs = nullptr;
  const bf16* wp_even = nullptr;
  const float* bias_f = nullptr;
  bool stream_out = false;        // own tile GEMMs store whole lines around the caches
  // The separable forward's inference stage between depthwise and pointwise (mid_stage.h):
  // a batch norm with running statistics (eps) and a clamp to [lo, hi].
  bool mid_norm = false, mid_clamp = false;
  double mid_eps = 0, mid_lo = 0, mid_hi = 0;
  // The stage after the pointwise convolution (mid_stage.h): a batch norm over the outputs,
  // folded into the pointwise weight, then a clamp of the output while it is in cache.
  bool post_norm = false, post_clamp = false;
  double post_eps = 0, post_lo = 0, post_hi = 0;
};

inline double bits_to_double(i64 bits) {
  double d;
  std::memcpy(&d, &bits, sizeof d);
  return d;
}

// A one-call conv's norm and clamp (the 1x1 and the stem forward), from four geometry values
// (Python's _ops._mid_values): flags (1: norm, 2: clamp), then eps, lo and hi as the bits of
// doubles.
struct StageParams {
  bool norm, clamp;
  float eps, lohi[2];
  // The clamp's {lo, hi} for clamp_vec and the GEMM's stores, or null.
  const float* clamp_bounds() const { return clamp ? lohi : nullptr; }
};

inline StageParams stage_params(const i64* g) {
  return StageParams{(g[0] & 1) != 0, (g[0] & 2) != 0, float(bits_to_double(g[1])),
                     {float(bits_to_double(g[2])), float(bits_to_double(g[3]))}};
}

Geo make_geo(const i64* g) {
  Geo r;
  r.N = g[0]; r.C = g[1]; r.M = g[2]; r.H = g[3]; r.W = g[4]; r.OH = g[5]; r.OW = g[6];
  r.KH = g[7]; r.KW = g[8]; r.sy = g[9]; r.sx = g[10]; r.dy = g[11]; r.dx = g[12];
  r.pt = g[13]; r.pl = g[14]; r.mode = g[15]; r.O = g[16]; r.G = g[17];
  r.threads = g[18] > 0 ? g[18] : 1; r.nhwc = g[19]; r.budget = g[20] > 0 ? g[20] : (256 << 10);
  r.budget_set = g[20] > 0;
  for (int i = 0; i < 4; ++i) { r.xs[i] = g[21 + i]; r.os[i] = g[25 + i]; }
  r.out_nhwc = g[29];  // 1 when the output has channels innermost
  r.mid_norm = (g[30] & 1) != 0;  // (doubles as their bits)
  r.mid_clamp = (g[30] & 2) != 0;
  r.mid_eps = bits_to_double(g[31]);
  r.mid_lo = bits_to_double(g[32]);
  r.mid_hi = bits_to_double(g[33]);
  r.post_norm = (g[34] & 1) != 0;
  r.post_clamp = (g[34] & 2) != 0;
  r.post_eps = bits_to_double(g[35]);
  r.post_lo = bits_to_double(g[36]);
  r.post_hi = bits_to_double(g[37]);
  r.CM = r.C * r.M;
  r.T = r.KH * r.KW;
  r.Hu = (r.OH - 1) * r.sy + (r.KH - 1) * r.dy + 1;
  r.Wu = (r.OW - 1) * r.sx + (r.KW - 1) * r.dx + 1;
  r.Qs = (r.Wu + r.sx - 1) / r.sx;
  r.Qrow = r.Qs * r.sx;
  r.G = r.G > 0 ? r.G : 1;
  r.CMg = r.CM / r.G;
  r.Og = r.O / r.G;
  r.min_pixels = 256;
  return r;
}

// Source index of padded coordinate p (input size n, low padding lo), or -1 for zero.
inline i64 src_index(i64 p, i64 n, i64 lo, i64 mode) {
  i64 i = p - lo;
  if (i >= 0 && i < n) return i;
  switch (mode) {
    case 1:  // reflect (edge not repeated)
      if (n == 1) return 0;
      while (i < 0 || i >= n) i = i < 0 ? -i : 2 * (n - 1) - i;
      return i;
    case 2:  // replicate
      return i < 0 ? 0 : n - 1;
    case 3:  // circular
      return ((i % n) + n) % n;
    default:
      return -1;
  }
}

std::vector<i64> make_map(i64 count, i64 n, i64 lo, i64 mode) {
  std::vector<i64> m(count);
  for (i64 p = 0; p < count; ++p) m[p] = src_index(p, n, lo, mode);
  return m;
}

// Stride 1 and dilation 1 in both directions (what the row-blocked and direct loops need).
inline bool unit_steps(const Geo& g) { return g.sx == 1 && g.sy == 1 && g.dx == 1 && g.dy == 1; }

// Position of padded column q (relative to a buffer start) in the stride-phase layout:
// columns with the same q % sx are stored together, so that every tap of a strided
// convolution reads consecutive elements.
inline i64 phase_pos(i64 q, i64 sx, i64 qs) { return (q % sx) * qs + q / sx; }

}  // namespace
