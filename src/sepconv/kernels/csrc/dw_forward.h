// The depthwise forward (dw_forward): channels_last tiles or planar tasks.
//
// One part of the kernels' single translation unit: sepconv_kernels.cpp includes the parts in
// order; each includes the parts whose names it uses.
#pragma once

#include "vec.h"
#include "geometry.h"
#include "reads.h"
#include "planar.h"
#include "tiles.h"
#include "nhwc_tile.h"
#include "nhwc_ring.h"

namespace {

// ------------------------------------------------------------------ depthwise forward

// Whether every output row starts on a cache line (a 64-byte aligned output whose strides,
// but the unit one, are whole lines): only then do the loops stream large outputs (vstOut;
// staged ones are copied out by whole lines, stream_rows). Rows of 56 floats (3.5 lines)
// alternate between streamed and plain vectors, with lines shared by two rows: 16x144x56x56 3x3 took 3.9-4.0 ms streamed against 1.43 with
// plain stores, 8x256x56x56 3.7 against 1.24 (AMD Zen 5); 112-wide rows stream at 0.6x the
// time of plain stores (8x128x112x112: 1.26-1.35 against 2.06-2.1 ms).
template <typename S>
inline bool rows_on_lines(const Geo& g, const S* out) {
  constexpr i64 L = 64 / i64(sizeof(S));
  const int unit = g.os[3] == 1 ? 3 : 1;  // (planar: along a row; channels_last: channels)
  for (int i = 0; i < 4; ++i)
    if (i != unit && g.os[i] % L != 0) return false;
  return (reinterpret_cast<uintptr_t>(out) & 63) == 0;
}

template <typename S>
void dw_forward(const S* x, const S* wd, const S* bd, S* out, const i64* geo) {
  typedef typename Acc<S>::type A;
  const Geo g = make_geo(geo);
  std::vector<A> w, wT, b;
  prep_weights<S, A>(wd, bd, g, w, wT, b);
  const auto ymap = make_map(g.Hu, g.H, g.pt, g.mode);
  const auto xmap = make_map(g.Wu, g.W, g.pl, g.mode);
  // Large outputs go around the caches (they would only evict the input): outputs of 16 MiB;
  // channels_last ones too where the call reads and writes 32 MiB or more (at stride 2 from
  // 6.4 MiB: 8x96x112x112 3x3, a 9.6 MiB output, took 0.87x the time streamed; planar
  // 1.04x, 5x5 1.1x, run AH).
  const i64 out_bytes = g.N * g.CM * g.OH * g.OW * i64(sizeof(S));
  const i64 in_bytes = g.N * g.C * g.H * g.W * i64(sizeof(S));
  const bool large = out_bytes >= (i64(16) << 20) ||
                     (g.nhwc && in_bytes + out_bytes >= (i64(32) << 20));
  const bool stream = streaming_enabled() && !std::is_same<S, bf16>::value && large &&
                      (kStageOutput || rows_on_lines(g, out));
  // Staged output (kStageOutput): the tile to a buffer, then stream_rows; where the loops
  // store directly, vstOut streams.
  const bool stage = stream && kStageOutput;
  if (nhwc_ring_ok<S, A>(g))
    return dw_nhwc_ring<S, A>(x, g, ymap.data(), xmap.data(), wT, b.data(), out, stream, stage);
  if (g.nhwc) {
    // Tiles of pixels, all channels; output written straight to out (channel stride 1).
    const i64 bpp = g.CM * i64(sizeof(A)) * g.sy * g.sx;
    const Tiles tl = make_tiles(g, bpp, 4 * g.threads);
    const auto ir = inner_read<S, A>(g, wT);
    const bool touch = touch_nhwc_input(g, sizeof(S));
    // (staging needs pixels of CM consecutive channels)
    const bool staged = stage && g.os[1] == 1 && g.os[3] == g.CM;
#pragma omp parallel num_threads(g.threads)
    {
      t_stream = stream && !staged;
      const i64 Rmax = input_span(tl.TH, g.sy, g.KH, g.dy);
      const i64 Qmax = input_span(tl.TW, g.sx, g.KW, g.dx);
      std::vector<A> buf(Rmax * Qmax * g.CM);
      std::vector<S> tile_out(staged ? tl.TH * tl.TW * g.CM : 0);
      for_tasks(tl.count, true, [&](i64 t) {  // (one run of tiles a thread, as planar below)
        const Tile s = tile_at(tl, g, t);
        if (touch) touch_nhwc(x + s.n * g.xs[0], g, s.oy0, s.ox0, s.th, s.tw);
        S* o = out + s.n * g.os[0] + s.oy0 * g.os[2] + s.ox0 * g.os[3];
        nhwc_tile<S, A>(x + s.n * g.xs[0], g, ymap.data(), xmap.data(), ir, s.oy0, s.ox0, s.th,
                        s.tw, 0, g.C, buf.data(), wT.data(), b.data(),
                        staged ? tile_out.data() : o, staged ? s.tw * g.CM : g.os[2],
                        staged ? g.CM : g.os[3]);
        if (staged) stream_rows(tile_out.data(), s.tw * g.CM, o, g.os[2], s.th, s.tw * g.CM);
      });
      stream_fence();
      t_stream = false;
    }
    return;
  }
  // Planar: tasks (image, input channel, tile of rows / row pieces).
  const bool staged = stage && g.os[3] == 1;  // (staging needs rows of consecutive columns)
  // Staged tasks read 8 KiB of input (16 KiB where the window's halo is more than 4 rows,
  // as 7x7's), so that the staged output stays in L1 from the loops to the copy-out: against
  // 64 KiB tasks (one 112 x 112 plane), 8x128x112x112 3x3 took 0.87-0.88x the time, 5x5
  // 0.93-0.94x, 8x256x56x56 3x3 0.94x; 7x7 with 8 KiB 1.02-1.03x, with 16 KiB 0.97-0.99x;
  // 3x3 with 4 KiB 1.08x.
  Geo g1 = g;
  g1.budget = staged ? ((g.KH - 1) * g.dy <= 4 ? 8 << 10 : 16 << 10) : 64 << 10;
  const Tiles tl = make_tiles(g1, i64(sizeof(A)) * g.sy * g.sx, 1);
  const i64 tasks = g.N * g.C * tl.ny * tl.nx;
  const bool direct = direct_ok(g, std::is_same<S, float>::value);
  // One run of consecutive tasks a thread (static), each task prefetching the next one's
  // window (AheadLines), at batch 1 too: taken in chunks of up to 16 in turn (dynamic), the
  // planes went to either thread from call to call, and on a VM whose two vCPUs sit on
  // different core complexes (AMD Zen 2, run AK) 1x144x56x56 3x3 took 1.10x the time,
  // 1x960x7x7 1.18x, 1x384x14x14 1.06x (channels_last 1x144x56x56 1.10x, 1x960x7x7 1.16x).
  const auto plane = [&](i64 nc) { return x + nc / g.C * g.xs[0] + nc % g.C * g.xs[1]; };
#pragma omp parallel num_threads(g.threads)
  {
    t_stream = stream && !staged;
    const i64 Rmax = input_span(tl.TH, g.sy, g.KH, g.dy);
    const i64 Qmax = input_span(tl.TW, g.sx, g.KW, g.dx);
    std::vector<A> buf(Rmax * (((Qmax + g.sx - 1) / g.sx) * g.sx) + kSlack);
    std::vector<S> tile_out(staged ? g.M * tl.TH * tl.TW + kSlack : 0);
    i64 last = -2;  // (this thread's previous task)
    for_tasks(tasks, true, [&](i64 t) {
      const auto [nc, oy0, ox0, th, tw, P, R, Q, r0, q0] = tile_at(tl, g, t);
      const i64 n = nc / g.C, c = nc % g.C, cm = c * g.M;
      const bool first = t != last + 1;  // (a thread's first task)
      last = t;
      if (g_reads == 1) {
        // The task's own window, touched first where the previous task did not prefetch it
        // all (a run's first task; loops that issue none); then the next one's,
        // ahead. (Touching the next task's window in a burst was 1.05-1.2x slower: its
        // plane displaced this one's from L1.)
        if (first || t_ahead.rows > 0) touch_window(plane(nc), g, r0, R, q0, Q);
        t_ahead = AheadLines();
        if (t + 1 < tasks) {
          const Tile s = tile_at(tl, g, t + 1);  // (s.n: image * C + channel)
          // (row blocks of up to 8 per column vector, as conv_planar_s1 and conv_direct_s1
          // call issue(); the latter's edge rows make a few more)
          const i64 blocks = (tw + V<A>::L - 1) / V<A>::L * ((th + 7) / 8);
          t_ahead.start(plane(s.n), g, s.r0, s.R, s.q0, s.Q, blocks);
        }
      }
      S* o = out + n * g.os[0] + cm * g.os[1] + oy0 * g.os[2] + ox0 * g.os[3];
      channel_tile<S, A, S>(plane(nc), g, direct, oy0, ox0, th, tw, r0, R, q0, Q, ymap.data(),
                            xmap.data(), buf.data(), w.data() + cm * g.T, b.data() + cm,
                            staged ? tile_out.data() : o, staged ? th * tw : g.os[1],
                            staged ? tw : g.os[2]);
      for (i64 m = 0; staged && m < g.M; ++m)
        stream_rows(tile_out.data() + m * th * tw, tw, o + m * g.os[1], g.os[2], th, tw);
    });
    stream_fence();
    t_stream = false;
    t_ahead = AheadLines();
  }
}

}  // namespace
