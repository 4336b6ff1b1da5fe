// The channels_last depthwise at stride 1 along the row, output row by output row through a
// ring of padded input rows.
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

// Whether dw_forward takes the ring: one filter per channel, filters read from pad_nhwc's
// channel-blocked layout (nhwc_block_stride: stride and dilation 1 along the row, pixels of
// 128, 256, ... float channels), 5- or 7-wide, or 3-wide on inputs of kRing3x3Bytes or more.
//
// Why: tiles of whole output rows copy their window, halo rows included, for every tile. A
// 4-row tile of a 7x7 filter copies 10 input rows, so the copy read each input row 2.5 times
// (from L3 after the first), and it took as long as the arithmetic: 8x128x112x112 7x7,
// 14.3 ms, of which 8 ms without the copy and 6 ms without the arithmetic (AMD Zen 3). The
// ring copies each input row of a task once. 3x3 tiles read their inner pixels in place
// instead of copying them, having touched them first (kTouchBytes); against that, the ring
// took 0.87x the time on 51 MB inputs (8x128x112x112) and 0.94x on 25.7 MB ones
// (4x128x112x112, 16x128x56x56), but 1.02-1.03x on 12.8 MB ones (8x128x56x56,
// 8x512x28x28) and 1.07-1.13x on inputs that stay in the L3 from call to call
// (1x128x112x112, 8x384x28x28: 6.4 and 9.6 MB).
constexpr i64 kRing3x3Bytes = i64(24) << 20;
constexpr i64 kRingRows = 8;  // filter rows at most (ring_task's row offsets)
// Output rows computed per copied step (1 a step took 0.98-1.09x the time, 4 1.0-1.02x).
constexpr i64 kRingStep = 2;

template <typename S, typename A>
inline bool nhwc_ring_ok(const Geo& g) {
  const bool large = input_bytes(g, sizeof(S)) >= kRing3x3Bytes;
  return g.nhwc && g.M == 1 && g.KH <= kRingRows && (g.KW > 3 || large) &&
         nhwc_block_stride<A>(g, g.CM, 1, 1) > 0;
}

// How dw_nhwc_ring splits the work: tasks of (image, output rows, output columns, channel
// group), each with its own ring of `slots` padded input rows of Q = TW + KW - 1 columns and
// cg channels.
struct RingPlan {
  i64 cg, groups;        // channels per group, groups
  i64 TW, pieces;        // output columns per task, column pieces
  i64 TH, bands;         // output rows per task, row bands
  i64 span;              // input rows one output row reads
  i64 slots;             // rows in the ring: those of kRingStep output rows
  i64 tasks;
};

// Ring bytes per thread: with a row of output staged, a row of input on its way and the
// weights, about half of a 512 KiB L2.
constexpr i64 kRingBytes = i64(192) << 10;
// A pixel's channels in one group at most (whole pixels are copied in memory order).
constexpr i64 kRingGroupBytes = 1024;

template <typename A>
RingPlan plan_ring(const Geo& g) {
  const i64 L = V<A>::L, elem = sizeof(A);
  RingPlan p;
  p.groups = (g.CM * elem + kRingGroupBytes - 1) / kRingGroupBytes;
  p.cg = ((g.CM + p.groups - 1) / p.groups + L - 1) / L * L;
  p.groups = (g.CM + p.cg - 1) / p.cg;
  p.span = input_span(1, g.sy, g.KH, g.dy);
  p.slots = input_span(kRingStep, g.sy, g.KH, g.dy);
  const i64 qmax = kRingBytes / (p.slots * p.cg * elem);
  const i64 tw_max = std::max<i64>(8, qmax - (g.KW - 1));
  p.pieces = (g.OW + tw_max - 1) / tw_max;
  p.TW = std::min(g.OW, ((g.OW + p.pieces - 1) / p.pieces + 7) / 8 * 8);  // whole 8-pixel blocks
  p.pieces = (g.OW + p.TW - 1) / p.TW;
  // Bands of rows only where the images, pieces and groups leave threads idle (each band
  // copies its own first span - 1 rows), and of at least 8 rows.
  const i64 base = g.N * p.groups * p.pieces;
  p.bands = std::clamp<i64>((4 * g.threads + base - 1) / base, 1, std::max<i64>(1, g.OH / 8));
  p.TH = (g.OH + p.bands - 1) / p.bands;
  p.bands = (g.OH + p.TH - 1) / p.TH;
  p.tasks = base * p.bands;
  return p;
}

// One task: output rows [oy0, oy0 + th), columns [ox0, ox0 + tw), channels [c0, c0 + cn) of
// image img, kRingStep output rows at a time. Input row r (padded coordinates) goes to ring
// slot r % p.slots, channel-blocked (pad_nhwc's layout; block stride slots * Q * L), just
// before the first step that needs it. Output rows go to dst (the task's first pixel and
// channel; rows drs, pixels dps apart), or through stage (kRingStep x tw x cn, then
// stream_rows) where given. ReadAhead: the next step's new input rows are prefetched a few
// lines per block of this step's arithmetic (whole pixels: only where the task has all the
// channels of dense pixels); a template argument, so that the loops without it are those of
// before (with a run-time flag, inputs in the L3 took 1.01-1.03x the time).
template <typename S, typename A, bool ReadAhead>
void ring_task(const S* img, const Geo& g, const RingPlan& p, const i64* ymap, const i64* xmap,
               i64 oy0, i64 th, i64 ox0, i64 tw, i64 c0, i64 cn, A* ring, const A* wB,
               const A* bias, S* dst, i64 drs, i64 dps, S* stage) {
  const i64 L = V<A>::L;
  const i64 Q = input_span(tw, g.sx, g.KW, g.dx), slot = Q * L, bs = p.slots * slot;
  std::array<i64, kRingRows * kRingStep> off{};  // kernel row ky of step row s: [s * KH + ky]
  const i64 ps = stage ? cn : dps, rs = stage ? tw * cn : drs;  // output pixel, row steps
  i64 next = oy0 * g.sy;  // the next input row to copy
  AheadLines ahead;
  const bool read_ahead = ReadAhead && cn == g.C && g.xs[1] == 1 && g.xs[3] == g.C;
  for (i64 i = oy0; i < oy0 + th; i += kRingStep) {
    const i64 step_rows = std::min<i64>(kRingStep, oy0 + th - i);
    // (every row of the step's span; with row strides above the span or dilated rows a few
    // are copied that no output row reads)
    const i64 end = i * g.sy + input_span(step_rows, g.sy, g.KH, g.dy);
    for (next = std::max(next, i * g.sy); next < end; ++next)
      pad_nhwc<S, A>(img, g.xs[2], g.xs[3], g.xs[1], g, ymap, xmap, next, 1, ox0 * g.sx, Q, c0,
                     cn, ring + (next % p.slots) * slot, bs);
    for (i64 s = 0; s < step_rows; ++s)
      for (i64 ky = 0; ky < g.KH; ++ky)
        off[s * g.KH + ky] = (((i + s) * g.sy + ky * g.dy) % p.slots) * slot;
    if (read_ahead && i + kRingStep < oy0 + th) {
      const i64 later = std::min<i64>(kRingStep, oy0 + th - i - kRingStep);
      const i64 later_end = (i + kRingStep) * g.sy + input_span(later, g.sy, g.KH, g.dy);
      const i64 blocks = (cn + L - 1) / L * step_rows * ((tw + 7) / 8);
      ahead.start_pixels(img, g.C, g, end, later_end - end, ox0 * g.sx, Q, blocks);
    }
    S* d = stage ? stage : dst + (i - oy0) * drs;
    // Channel vectors outermost: the step's rows share most of their input lines, which
    // stay in L1 from one row to the next.
    for (i64 c = 0; c < cn; c += L) {
      const A* bc = ring + (c / L) * bs;
      const A* w = wB + (c0 + c) * g.T;  // (c0 + c: a multiple of L)
      for (i64 s = 0; s < step_rows; ++s) {
        const RowOffsets rows_at{off.data() + s * g.KH};
        S* drow = d + s * rs + c;
        auto block = [&](i64 j, auto pb) __attribute__((always_inline)) {
          if (ReadAhead) ahead.issue();
          by_width(g.KW, [&](auto kw) __attribute__((always_inline)) {
            nhwc_block_s1<decltype(pb)::value, decltype(kw)::value, S, A>(
                bc + j * L, L, rows_at, g.KH, w, L, bias + c0 + c, drow + j * ps, ps);
          });
        };
        in_blocks<8>(0, tw, block);
      }
    }
    for (i64 s = 0; stage && s < step_rows; ++s)
      stream_rows(stage + s * rs, cn, dst + (i - oy0 + s) * drs, dps, tw, cn);
  }
}

// The channels_last depthwise (nhwc_ring_ok) of x into out (channels innermost), weights wT
// (prep_weights), biases b. stream: outputs around the caches (staged where stage).
template <typename S, typename A>
void dw_nhwc_ring(const S* x, const Geo& g, const i64* ymap, const i64* xmap,
                  const std::vector<A>& wT, const A* b, S* out, bool stream, bool stage) {
  const RingPlan p = plan_ring<A>(g);
  const bool staged = stage && g.os[1] == 1;
  // The weights by channel vector (block_weights; CM is a multiple of L here: nhwc_ring_ok).
  // Read from wT, a vector's taps lie CM apart: 768 channels put a 7x7 filter's 49 in 4 of
  // L1's 64 sets. Blocked, the 7x7 calls took 0.86-1.05x the time, about 0.94x mostly:
  // 8x128x112x112 0.87-0.94x, 8x768x7x7 0.91-1.05x.
  const std::vector<A> wB = block_weights(wT, g);
  const bool read_ahead = input_from_memory(g, sizeof(S));
#pragma omp parallel num_threads(g.threads)
  {
    t_stream = stream && !staged;
    std::vector<A> ring(p.slots * input_span(p.TW, g.sx, g.KW, g.dx) * p.cg);
    std::vector<S> row_out(staged ? kRingStep * p.TW * p.cg : 0);
    for_tasks(p.tasks, image_a_thread(g.N, g.threads), [&](i64 t) {
      const i64 grp = t % p.groups, piece = (t / p.groups) % p.pieces;
      const i64 band = (t / (p.groups * p.pieces)) % p.bands;
      const i64 n = t / (p.groups * p.pieces * p.bands);
      const i64 oy0 = band * p.TH, ox0 = piece * p.TW, c0 = grp * p.cg;
      const i64 th = std::min(p.TH, g.OH - oy0), tw = std::min(p.TW, g.OW - ox0);
      const i64 cn = std::min(p.cg, g.CM - c0);
      S* o = out + n * g.os[0] + oy0 * g.os[2] + ox0 * g.os[3] + c0;
      S* const stage_buf = staged ? row_out.data() : nullptr;
      if (read_ahead)
        ring_task<S, A, true>(x + n * g.xs[0], g, p, ymap, xmap, oy0, th, ox0, tw, c0, cn,
                              ring.data(), wB.data(), b, o, g.os[2], g.os[3], stage_buf);
      else
        ring_task<S, A, false>(x + n * g.xs[0], g, p, ymap, xmap, oy0, th, ox0, tw, c0, cn,
                               ring.data(), wB.data(), b, o, g.os[2], g.os[3], stage_buf);
    });
    stream_fence();
    t_stream = false;
  }
}

}  // namespace
