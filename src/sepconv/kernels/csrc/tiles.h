// Output tiles (make_tiles, tile_at), the depthwise weights in accumulator type, and the
// inner pixels that channels_last tiles read in place.
//
// One part of the kernels' single translation unit: sepconv_kernels.cpp includes the parts in
// order; each includes the parts whose names it uses.
#pragma once

#include "vec.h"
#include "geometry.h"
#include "reads.h"
#include "nhwc.h"

namespace {

// Weights in accumulator type: wd[cm][t], wT[t][cm], bias[cm]; where alpha and shift are
// given (a batch norm after the depthwise, norm_affines), each channel's weights times
// alpha[cm] and its bias times alpha[cm] plus shift[cm], in the same pass. (A pass of its
// own over w and wT: with the norm's square roots one channel at a time, 14 us of a 70 us
// call of 960 channels inside MobileNetV2, run AA.)
template <typename S, typename A>
void prep_weights(const S* wd, const S* bd, const Geo& g, std::vector<A>& w, std::vector<A>& wT,
                  std::vector<A>& b, const A* alpha = nullptr, const A* shift = nullptr) {
  w.resize(g.CM * g.T);
  wT.resize(g.CM * g.T);
  b.resize(g.CM);
  for (i64 c = 0; c < g.CM; ++c) {
    const A a = alpha ? alpha[c] : A(1);
    for (i64 t = 0; t < g.T; ++t) {
      const A v = toA(wd[c * g.T + t]) * a;  // (times 1 without a norm: exact)
      w[c * g.T + t] = v;
      wT[t * g.CM + c] = v;
    }
    const A bias = bd ? toA(bd[c]) : A(0);
    b[c] = alpha ? bias * a + shift[c] : bias;
  }
}

struct Tiles {
  i64 TH, TW, ny, nx, count;
};

// One band of whole output rows per thread, per image (sep_forward's bands_ok).
inline Tiles band_tiles(i64 N, i64 OH, i64 OW, i64 threads) {
  Tiles t;
  t.TW = OW;
  t.nx = 1;
  t.TH = (OH + threads - 1) / threads;
  t.ny = (OH + t.TH - 1) / t.TH;
  t.count = N * t.ny;
  return t;
}

// Input rows (or columns) that `outs` consecutive output rows (columns) read.
inline i64 input_span(i64 outs, i64 stride, i64 kernel, i64 dilation) {
  return (outs - 1) * stride + (kernel - 1) * dilation + 1;
}

// Bytes of the call's input, elem bytes an element.
inline i64 input_bytes(const Geo& g, i64 elem) { return g.N * g.C * g.H * g.W * elem; }

// Whether the kernels read the input ahead (g_reads) as one that may come from memory rather
// than the L3: kTouchBytes or more; elem: bytes per element. (Run AD guessed from where the
// input came: under 24 MiB only inputs that a kernel had stored around the caches. Layers on
// the same input gained (0.85-0.97x), networks did not (0.995-1.007x), and where other work
// ran in between the input was gone from the L3 after all: a depthwise layer's training step
// on the same input 1.02-1.12x, and auto's measurement, which alternates the kernel with
// PyTorch's calls and their 12.8 MB outputs, took PyTorch for row 1 channels_last.)
inline bool input_from_memory(const Geo& g, i64 elem) {
  return g_reads == 1 && input_bytes(g, elem) >= kTouchBytes;
}

// Whether channels_last tiles touch their input (input_from_memory); elem: bytes per element.
// Not for 5- and 7-wide filters at stride 1, whose windows go through the padded copy
// (nhwc_inner_ok), which reads them row by row: without the pass the depthwise
// 8x128x112x112 7x7 took 0.94-0.975x the time, 5x5 0.935x (3x3, read in place, 1.32x).
inline bool touch_nhwc_input(const Geo& g, i64 elem) {
  const bool padded_copy = g.sx == 1 && g.dx == 1 && g.KW > 3;
  return !padded_copy && input_from_memory(g, elem);
}

// Whether planar fused tiles touch the next channel's window rather than prefetch the one
// after it: at stride 2 for inputs beyond the L3 (32 MiB). On Zen 5 touching took
// 8x96x112x112 -> 24 s2 0.70-0.81x and 16x96x112x112 -> 24 s2 0.65-0.88x the time; inputs in
// the L3 1.02-1.07x (8x144x56x56 -> 32 s2, 8x192x28x28 -> 64 s2), stride 1 1.1-1.6x even
// beyond it (8x96x112x112 -> 24, 8x64x112x112 -> 64, row 1).
constexpr i64 kTouchStride2Bytes = i64(32) << 20;
inline bool touch_planar_next(const Geo& g, i64 elem) {
  return g_reads == 1 && g.sy == 2 && input_bytes(g, elem) >= kTouchStride2Bytes;
}

// Touch the input window of a channels_last tile (output rows [oy0, oy0 + th), columns
// [ox0, ox0 + tw)) of dense pixels.
template <typename S>
inline void touch_nhwc(const S* img, const Geo& g, i64 oy0, i64 ox0, i64 th, i64 tw) {
  if (g.xs[1] != 1 || g.xs[3] != g.C) return;
  window_lines(img, g.xs[2], g.C, g, oy0 * g.sy, input_span(th, g.sy, g.KH, g.dy), ox0 * g.sx,
               input_span(tw, g.sx, g.KW, g.dx), touch_line);
}

// Output tile number `t` (outer index `n`, then tile rows, then tile columns): its first
// output row/column oy0/ox0, size th x tw (P pixels), and the input window it reads, R x Q
// from row r0, column q0 (before padding).
struct Tile {
  i64 n, oy0, ox0, th, tw, P, R, Q, r0, q0;
};

inline Tile tile_at(const Tiles& tl, const Geo& g, i64 t) {
  Tile s;
  s.n = t / (tl.ny * tl.nx);
  s.oy0 = ((t / tl.nx) % tl.ny) * tl.TH;
  s.ox0 = (t % tl.nx) * tl.TW;
  s.th = std::min(tl.TH, g.OH - s.oy0);
  s.tw = std::min(tl.TW, g.OW - s.ox0);
  s.P = s.th * s.tw;
  s.R = input_span(s.th, g.sy, g.KH, g.dy);
  s.Q = input_span(s.tw, g.sx, g.KW, g.dx);
  s.r0 = s.oy0 * g.sy;
  s.q0 = s.ox0 * g.sx;
  return s;
}

// Output tiles: whole rows when a row fits the budget, else pieces of one row.
Tiles make_tiles(const Geo& g, i64 bytes_per_pixel, i64 want) {
  Tiles t;
  i64 pix = std::max<i64>(1, g.budget / std::max<i64>(bytes_per_pixel, 1));
  if (pix >= g.OW) {
    t.TW = g.OW;
    t.TH = std::min<i64>(g.OH, pix / g.OW);
    // Enough tiles for every thread to get several.
    // Enough tiles for the threads, but not so small that the GEMM loses efficiency.
    i64 rows_total = g.N * g.OH;
    i64 cap = std::max<i64>(1, rows_total / std::max<i64>(want, 1));
    i64 min_rows = std::max<i64>(1, (g.min_pixels + g.OW - 1) / g.OW);
    cap = std::max(cap, min_rows);
    t.TH = std::max<i64>(1, std::min(t.TH, cap));
    // Even out the tiles of an image.
    i64 ny = (g.OH + t.TH - 1) / t.TH;
    t.TH = (g.OH + ny - 1) / ny;
  } else {
    t.TH = 1;
    i64 L = 16;
    t.TW = std::max<i64>(L, pix / L * L);
    i64 per_row = (g.OW + t.TW - 1) / t.TW;
    i64 total = g.N * g.OH * per_row;
    if (total < want) {
      per_row = (want + g.N * g.OH - 1) / (g.N * g.OH);
      t.TW = std::max<i64>(L, ((g.OW + per_row - 1) / per_row + L - 1) / L * L);
    }
    t.TW = std::min(t.TW, g.OW);
  }
  t.ny = (g.OH + t.TH - 1) / t.TH;
  t.nx = (g.OW + t.TW - 1) / t.TW;
  t.count = g.N * t.ny * t.nx;
  return t;
}

// Output rows (or columns) [lo, hi) whose whole window lies inside the input: n input rows,
// low padding p, stride s, kernel k, dilation d, `outs` output rows.
inline void inner_range(i64 n, i64 p, i64 s, i64 k, i64 d, i64 outs, i64* lo, i64* hi) {
  *lo = std::min(outs, (p + s - 1) / s);
  const i64 last = n - 1 + p - (k - 1) * d;  // padded coordinate of the last inner window start
  *hi = std::max(*lo, last < 0 ? i64(0) : std::min(outs, last / s + 1));
}

// The output pixels whose windows lie inside the image: rows [b[0], b[1]), columns [b[2], b[3]).
inline std::array<i64, 4> inner_box(const Geo& g) {
  std::array<i64, 4> b;
  inner_range(g.H, g.pt, g.sy, g.KH, g.dy, g.OH, &b[0], &b[1]);
  inner_range(g.W, g.pl, g.sx, g.KW, g.dx, g.OW, &b[2], &b[3]);
  return b;
}

// Whether nhwc_tile reads inner pixels straight from the input: its storage type is the
// accumulator type, one filter per channel (no repeated channels to build), channels
// innermost and whole channel vectors. Measured against the padded copy (docs/performance.md,
// run J): stride 2 and 3-wide filters 0.62-0.93x the time; 5- and 7-wide filters at stride 1
// 1.0-1.13x (their copy's contiguous lines stay in L1 from row to row; read in place, a
// channel vector's lines are a pixel apart), and stride-1 outputs of 16 or fewer columns
// 1.03-1.11x (at stride 2 those were 0.75-0.99x). Without AVX-512 (AMD Zen 3, run P) those
// narrow outputs gained as well: MobileNetV2's 14x14 and 7x7 rows 0.95-0.98x, depthwise
// 8x384x14x14 0.89-0.91x.
template <typename S, typename A>
inline bool nhwc_inner_ok(const Geo& g) {
  return std::is_same<S, A>::value && g.M == 1 && g.xs[1] == 1 && g.CM % V<A>::L == 0 &&
         (g.OW > 16 || g.sx > 1 || kVecBytes < 64) && !(nhwc_s1_ok<A>(g, g.CM) && g.KW > 3);
}

// wT[t][cm] (prep_weights) in blocks of one channel vector, wB[(c / L) * T * L + t * L + c % L]
// (cm a multiple of L): a block's weights on consecutive lines. In wT they are a row apart,
// which for 128, 256, ... channels puts a 7x7 filter's 49 lines on 8 of L1's 64 sets.
template <typename A>
std::vector<A> block_weights(const std::vector<A>& wT, const Geo& g) {
  const i64 L = V<A>::L;
  std::vector<A> wB(g.T * g.CM);
  for (i64 c = 0; c < g.CM; ++c)
    for (i64 t = 0; t < g.T; ++t) wB[(c / L) * g.T * L + t * L + c % L] = wT[t * g.CM + c];
  return wB;
}

// What nhwc_tile needs to read inner pixels in place: whether it does (channels-innermost
// input and nhwc_inner_ok), and then the weights in channel-vector blocks (block_weights) and
// the inner box (inner_box).
template <typename A>
struct InnerRead {
  bool on = false;
  std::vector<A> wB;
  std::array<i64, 4> box{};
};

template <typename S, typename A>
InnerRead<A> inner_read(const Geo& g, const std::vector<A>& wT) {
  InnerRead<A> r;
  r.on = g.nhwc && nhwc_inner_ok<S, A>(g);
  if (r.on) {
    r.wB = block_weights(wT, g);
    r.box = inner_box(g);
  }
  return r;
}

}  // namespace
