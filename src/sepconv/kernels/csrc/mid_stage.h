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

// norm_affine of channels [0, count) into alpha and shift: the square roots and divisions in
// a loop of their own, which vectorises (the same values: both are correctly rounded).
template <typename S, typename A>
void norm_affines(const MidNorm<S>& n, i64 count, double eps, A* alpha, A* shift) {
  for (i64 c = 0; c < count; ++c) alpha[c] = A(1) / std::sqrt(toA(n.var[c]) + A(eps));
  for (i64 c = 0; c < count; ++c) {
    if (n.weight) alpha[c] *= toA(n.weight[c]);
    shift[c] = (n.bias ? toA(n.bias[c]) : A(0)) - toA(n.mean[c]) * alpha[c];
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

// The stage after the pointwise convolution (SeparableConv's norm_layer and act_layer,
// MobileNetV2's projection norm, MobileNetV1's pointwise norm and activation; as modules, a
// pass over the output and a fresh tensor each): y = clamp(y * alpha[o] + shift[o]) on each
// output tile while it is in cache. Its alpha and shift (PostStage::make) are O values: folded
// into the pointwise weight instead, the norm cost O x CMg operations a call (1x960x7x7 -> 320
// took 1.27x the time of the call without it; run W).
template <typename A>
struct PostStage {
  std::vector<A> alpha, shift;  // (empty: no norm)
  bool norm = false, clamp = false;
  A lo = 0, hi = 0;

  template <typename S>
  static PostStage make(const Geo& g, const MidNorm<S>& n) {
    PostStage p;
    p.norm = g.post_norm;
    p.clamp = g.post_clamp;
    p.lo = A(g.post_lo);
    p.hi = A(g.post_hi);
    if (p.norm) {
      p.alpha.resize(g.O);
      p.shift.resize(g.O);
      norm_affines(n, g.O, g.post_eps, p.alpha.data(), p.shift.data());
    }
    return p;
  }
  bool active() const { return norm || clamp; }

  // Output rows [oy0, oy0 + th), columns [ox0, ox0 + tw) of image n, in runs along the
  // contiguous side (a channel's pixels, or a pixel's channels), so that the loops vectorise.
  template <typename S>
  void apply(const Geo& g, S* out, i64 n, i64 oy0, i64 th, i64 ox0, i64 tw) const {
    if (!active()) return;
    S* base = out + n * g.os[0] + oy0 * g.os[2] + ox0 * g.os[3];
    if (g.os[3] == 1 && g.os[2] == tw) {  // planar whole rows: one run a channel (not 14-long
      for (i64 o = 0; o < g.O; ++o) channel_run(base + o * g.os[1], th * tw, 1, o);  // ones)
      return;
    }
    for (i64 y = 0; y < th; ++y) {
      S* row = base + y * g.os[2];
      if (g.os[1] == 1 && g.os[3] != 1) {
        for (i64 x = 0; x < tw; ++x) pixel_run(row + x * g.os[3], g.O);
      } else {
        for (i64 o = 0; o < g.O; ++o) channel_run(row + o * g.os[1], tw, g.os[3], o);
      }
    }
  }

 private:
  // n elements step apart; element i's alpha and shift at a[i * ab], b[i * ab] (ab 1 along
  // a pixel's channels, 0 along a channel's pixels). One loop per case, so that each
  // vectorises.
  template <typename S>
  void run(S* p, i64 n, i64 step, const A* a, const A* b, i64 ab) const {
    if (norm && clamp) {
      for (i64 i = 0; i < n; ++i) {
        A v = toA(p[i * step]) * a[i * ab] + b[i * ab];
        v = v < lo ? lo : v;  // (NaN stays NaN)
        fromA(v > hi ? hi : v, p + i * step);
      }
    } else if (norm) {
      for (i64 i = 0; i < n; ++i) fromA(toA(p[i * step]) * a[i * ab] + b[i * ab], p + i * step);
    } else {
      for (i64 i = 0; i < n; ++i) {
        A v = toA(p[i * step]);
        v = v < lo ? lo : v;
        fromA(v > hi ? hi : v, p + i * step);
      }
    }
  }
  template <typename S>
  void channel_run(S* p, i64 len, i64 step, i64 o) const {
    const A* a = norm ? &alpha[o] : nullptr;
    const A* b = norm ? &shift[o] : nullptr;
    if (step == 1)  // (a constant step: the contiguous loops vectorise)
      run(p, len, 1, a, b, 0);
    else
      run(p, len, step, a, b, 0);
  }
  template <typename S>
  void pixel_run(S* p, i64 channels) const {
    run(p, channels, 1, norm ? alpha.data() : nullptr, norm ? shift.data() : nullptr, 1);
  }
};

// clamp_rows to [g.mid_lo, g.mid_hi]; no-op without a clamp.
template <typename S>
void clamp_mid(const Geo& g, S* p, i64 rows, i64 len, i64 stride) {
  typedef typename Acc<S>::type A;
  if (g.mid_clamp) clamp_rows(p, rows, len, stride, A(g.mid_lo), A(g.mid_hi));
}

}  // namespace
