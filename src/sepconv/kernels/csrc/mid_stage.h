// The inference stage between a separable forward's depthwise and pointwise convolutions
// (MobileNet's depthwise -> BatchNorm -> ReLU6 -> pointwise): a batch norm with running
// statistics, folded into the depthwise weights and bias, then a clamp (ReLU, ReLU6,
// Hardtanh) of the intermediate while it is in cache. Without it such a layer ran the
// depthwise, the norm, the activation and the pointwise as four passes over memory.
//
// One part of the kernels' single translation unit: sepconv_kernels.cpp includes the parts in
// order; each includes the parts whose names it uses.
#pragma once

#include <cmath>

#include "vec.h"
#include "geometry.h"

namespace {

// The batch norm's tensors (C*M values each; weight and bias may be null: 1 and 0).
template <typename S>
struct MidNorm {
  const S* mean;
  const S* var;
  const S* weight;
  const S* bias;
};

// A batch norm's y = (v - mean) / sqrt(var + eps) * weight + bias as y = v * alpha + shift for
// channel c, as PyTorch's inference batch norm computes it: alpha = weight / sqrt(var + eps),
// shift = bias - mean * alpha.
template <typename S, typename A>
void norm_affine(const MidNorm<S>& n, i64 c, double eps, A& alpha, A& shift) {
  const A invstd = A(1) / std::sqrt(toA(n.var[c]) + A(eps));
  alpha = n.weight ? invstd * toA(n.weight[c]) : invstd;
  shift = (n.bias ? toA(n.bias[c]) : A(0)) - toA(n.mean[c]) * alpha;
}

// Folds the norm into the depthwise weights (w[cm][t], wT[t][cm]) and bias b[cm].
template <typename S, typename A>
void fold_mid_norm(const Geo& g, const MidNorm<S>& n, std::vector<A>& w, std::vector<A>& wT,
                   std::vector<A>& b) {
  for (i64 c = 0; c < g.CM; ++c) {
    A alpha, shift;
    norm_affine(n, c, g.mid_eps, alpha, shift);
    for (i64 t = 0; t < g.T; ++t) {
      w[c * g.T + t] *= alpha;
      wT[t * g.CM + c] *= alpha;
    }
    b[c] = b[c] * alpha + shift;
  }
}

// Clamps `rows` rows of `len` elements, `stride` apart, to [lo, hi] in place (NaN stays NaN,
// as in PyTorch's activations).
template <typename S, typename A>
void clamp_rows(S* p, i64 rows, i64 len, i64 stride, A lo, A hi) {
  for (i64 r = 0; r < rows; ++r) {
    S* row = p + r * stride;
    if constexpr (std::is_same<S, bf16>::value) {
      for (i64 i = 0; i < len; ++i) {
        A v = toA(row[i]);
        v = v < lo ? lo : v;
        fromA(v > hi ? hi : v, row + i);
      }
    } else {
      for (i64 i = 0; i < len; ++i) {
        S v = row[i];
        v = v < lo ? lo : v;
        row[i] = v > hi ? hi : v;
      }
    }
  }
}

// The stage after the pointwise convolution: its norm folded into copies of the pointwise
// weight's rows (wp[o][k] * alpha[o]) and bias (bp[o] * alpha[o] + shift[o]), which wp and bp
// then point to. (SeparableConv's norm_layer, MobileNetV2's projection norm, MobileNetV1's
// pointwise norm: a pass over the output and a fresh tensor each, as a module.)
template <typename S>
void fold_post_norm(const Geo& g, const MidNorm<S>& n, const S*& wp, const S*& bp,
                    std::vector<S>& wp_folded, std::vector<S>& bp_folded) {
  typedef typename Acc<S>::type A;
  wp_folded.resize(g.O * g.CMg);
  bp_folded.resize(g.O);
  for (i64 o = 0; o < g.O; ++o) {
    A alpha, shift;
    norm_affine(n, o, g.post_eps, alpha, shift);
    for (i64 k = 0; k < g.CMg; ++k) fromA(toA(wp[o * g.CMg + k]) * alpha, &wp_folded[o * g.CMg + k]);
    fromA((bp ? toA(bp[o]) : A(0)) * alpha + shift, &bp_folded[o]);
  }
  wp = wp_folded.data();
  bp = bp_folded.data();
}

// The output clamp of the stage after the pointwise convolution on output rows [oy0, oy0 +
// th), columns [ox0, ox0 + tw) of image n (no-op without a clamp).
template <typename S>
void clamp_post(const Geo& g, S* out, i64 n, i64 oy0, i64 th, i64 ox0, i64 tw) {
  if (!g.post_clamp) return;
  typedef typename Acc<S>::type A;
  const A lo = A(g.post_lo), hi = A(g.post_hi);
  S* base = out + n * g.os[0] + oy0 * g.os[2] + ox0 * g.os[3];
  for (i64 y = 0; y < th; ++y) {
    S* row = base + y * g.os[2];
    if (g.os[3] == 1)  // planar: O pieces of tw pixels
      clamp_rows(row, g.O, tw, g.os[1], lo, hi);
    else if (g.os[1] == 1)  // channels innermost: tw pixels of O channels
      clamp_rows(row, tw, g.O, g.os[3], lo, hi);
    else
      for (i64 o = 0; o < g.O; ++o)
        for (i64 x = 0; x < tw; ++x) clamp_rows(row + o * g.os[1] + x * g.os[3], 1, 1, 0, lo, hi);
  }
}

// clamp_rows to [g.mid_lo, g.mid_hi]; no-op without a clamp.
template <typename S>
void clamp_mid(const Geo& g, S* p, i64 rows, i64 len, i64 stride) {
  typedef typename Acc<S>::type A;
  if (g.mid_clamp) clamp_rows(p, rows, len, stride, A(g.mid_lo), A(g.mid_hi));
}

}  // namespace
