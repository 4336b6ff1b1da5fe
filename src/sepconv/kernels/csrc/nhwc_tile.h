// One channels_last tile's depthwise: inner pixels in place, border strips padded.
//
// One part of the kernels' single translation unit: sepconv_kernels.cpp includes the parts in
// order; each includes the parts whose names it uses.
#pragma once

#include "vec.h"
#include "geometry.h"
#include "planar.h"
#include "nhwc.h"
#include "tiles.h"

namespace {

// NHWC depthwise of TH x TW output pixels whose windows lie inside the image, straight from it
// (nhwc_inner_ok): x at the first output's first input pixel, pixels sw apart, rows sh; dst
// as for conv_nhwc. Pixel blocks outermost and channel vectors inside, unlike conv_nhwc_s1: a
// channel vector's lines of one row are sw apart, which for 128, 256, ... channels puts them
// on 8 of L1's 64 sets; the channels of a block share no lines, so nothing is lost.
template <typename S, typename A>
void conv_nhwc_inner(const A* x, i64 sh, i64 sw, i64 cb, const A* wB, const A* bias, i64 TH,
                     i64 TW, const Geo& g, S* dst, i64 drs, i64 dps) {
  const i64 L = V<A>::L;
  const bool s1 = nhwc_s1_ok<A>(g, cb);  // (else nhwc_block, any stride and dilation)
  std::vector<i64> off(s1 ? 0 : g.T);
  for (i64 t = 0; t < i64(off.size()); ++t)
    off[t] = (t / g.KW) * g.dy * sh + (t % g.KW) * g.dx * sw;
  for (i64 i = 0; i < TH; ++i) {
    const A* xrow = x + i * g.sy * sh;
    S* drow = dst + i * drs;
    auto block = [&](i64 j, auto pb) __attribute__((always_inline)) {
      constexpr int PB = decltype(pb)::value;
      const A* xb = xrow + j * g.sx * sw;
      S* db = drow + j * dps;
      const A* w = wB;
      for (i64 c = 0; c < cb; c += L, w += g.T * L) {
        if (!s1) {
          nhwc_block<PB, S, A>(xb + c, g.sx * sw, off.data(), g.T, w, L, bias + c, 0, db + c, dps);
          continue;
        }
        by_width(g.KW, [&](auto kw) __attribute__((always_inline)) {
          nhwc_block_s1<PB, decltype(kw)::value, S, A>(xb + c, sw, RowStep{g.dy * sh}, g.KH, w, L,
                                                       bias + c, db + c, dps);
        });
      }
    };
    in_blocks<8>(0, TW, block);
  }
}

// NHWC depthwise of one output tile of image img, the filters of input channels [c0, c0 +
// cin): output rows [oy0, oy0 + th) and columns [ox0, ox0 + tw) to dst (the tile's first
// pixel, channel 0; row stride drs, pixel stride dps). Where ir.on, the pixels whose windows
// lie inside the image (rows/columns [box[0], box[1]) x [box[2], box[3]), inner_range) are
// read straight from it and only the border strips go through pad_nhwc's copy in buf; the
// copy was a store and a reload of every input element.
template <typename S, typename A>
void nhwc_tile(const S* img, const Geo& g, const i64* ymap, const i64* xmap,
               const InnerRead<A>& ir, i64 oy0, i64 ox0, i64 th, i64 tw, i64 c0, i64 cin, A* buf,
               const A* wT, const A* bias, S* dst, i64 drs, i64 dps) {
  const i64 cm0 = c0 * g.M, cb = cin * g.M;
  dst += cm0;
  // Tile rows [i0, i1), columns [j0, j1) through the padded copy.
  auto padded = [&](i64 i0, i64 i1, i64 j0, i64 j1) {
    if (i0 >= i1 || j0 >= j1) return;
    const i64 R = input_span(i1 - i0, g.sy, g.KH, g.dy);
    const i64 Q = input_span(j1 - j0, g.sx, g.KW, g.dx);
    const i64 bs = nhwc_block_stride<A>(g, cb, R, Q);
    pad_nhwc<S, A>(img, g.xs[2], g.xs[3], g.xs[1], g, ymap, xmap, (oy0 + i0) * g.sy, R,
                   (ox0 + j0) * g.sx, Q, c0, cin, buf, bs);
    conv_nhwc<S, A>(buf, Q, cb, wT + cm0, g.CM, bias + cm0, i1 - i0, j1 - j0, g,
                    dst + i0 * drs + j0 * dps, drs, dps, bs);
  };
  if (!ir.on) return padded(0, th, 0, tw);
  const auto& in = ir.box;
  const i64 ia = std::clamp(in[0] - oy0, i64(0), th), ib = std::clamp(in[1] - oy0, ia, th);
  const i64 ja = std::clamp(in[2] - ox0, i64(0), tw), jb = std::clamp(in[3] - ox0, ja, tw);
  padded(0, ia, 0, tw);
  padded(ib, th, 0, tw);
  padded(ia, ib, 0, ja);
  padded(ia, ib, jb, tw);
  if constexpr (std::is_same<S, A>::value) {
    if (ia < ib && ja < jb) {
      const A* x0 = img + ((oy0 + ia) * g.sy - g.pt) * g.xs[2] +
                    ((ox0 + ja) * g.sx - g.pl) * g.xs[3] + c0;
      conv_nhwc_inner<S, A>(x0, g.xs[2], g.xs[3], cb, ir.wB.data() + cm0 * g.T, bias + cm0,
                            ib - ia, jb - ja, g, dst + ia * drs + ja * dps, drs, dps);
    }
  }
}

}  // namespace
