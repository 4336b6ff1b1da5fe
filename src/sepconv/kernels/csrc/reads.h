// Reading input ahead: touching and prefetching windows, AheadLines.
//
// One part of the kernels' single translation unit: sepconv_kernels.cpp includes the parts in
// order; each includes the parts whose names it uses.
#pragma once

#include "vec.h"
#include "geometry.h"

namespace {

// Whether the kernels bring their input into the cache ahead of reading it (sepconv_set_reads,
// set by CPU from Python): 0 no (what runs G-K measured on Intel), 1 yes (measured on AMD Zen
// 5, run L). There, without it, the depthwise loops' short column strips had only a few
// misses out at a time and read memory at 4-7 GB/s a thread. With it:
// - fused planar tiles prefetch a later channel's window into L2 (row 1 0.75-0.84x the time),
//   or touch the next one at stride 2 beyond the L3 (touch_planar_next, run X);
// - planar depthwise tasks touch their window first (touch_window: one load per cache line,
//   in memory order, so the misses go out together): 3x3 / 5x5 / 7x7 on 8x128x112x112
//   0.58 / 0.48 / 0.61x the time of prefetching it;
// - channels_last tiles touch theirs where the input is kTouchBytes or more: 8x96x112x112
//   0.54x (depthwise) and 0.72x (-> 24 s2). On Zen 5 inputs under 32 MiB took 1.03-1.18x
//   (in the L3 already, and the pass only adds loads), but whether an input is still in the
//   L3 depends on what ran since it was written (run AD: see input_from_memory). On Zen 3
//   (run T) those of 8-15 MB gained as well, against no pass: row 1 channels_last 0.92x,
//   8x144x56x56 -> 24 0.80x, 32x64x32x32 -> 128 0.91x, depthwise 8x144x56x56 /
//   8x192x56x56 0.86 / 0.88x; inputs of 4.8 MB took 1.10x (8x192x28x28, 1x96x112x112 -> 24
//   s2). (Not measured again on Zen 5.)
int g_reads = 0;
// (Exported as sepconv_touch_bytes: auto's training rule for channels_last 3x3 follows it.)
constexpr i64 kTouchBytes = i64(8) << 20;

// The image rows [rlo, rhi) and columns [clo, chi) inside the padded window of rows
// [r0, r0 + R) and columns [q0, q0 + Q) (either range may be empty).
struct Inside {
  i64 rlo, rhi, clo, chi;
};
inline Inside inside_image(const Geo& g, i64 r0, i64 R, i64 q0, i64 Q) {
  return {std::max<i64>(0, r0 - g.pt), std::min<i64>(g.H, r0 + R - g.pt),
          std::max<i64>(0, q0 - g.pl), std::min<i64>(g.W, q0 + Q - g.pl)};
}

// f(line) for each 64-byte line of the input rows [r0, r0 + R) and columns [q0, q0 + Q)
// (padded coordinates; only those inside the image) of an image with row stride rs whose
// columns are `cols` consecutive elements each (planar 1, channels_last C).
template <typename S, typename F>
inline void window_lines(const S* img, i64 rs, i64 cols, const Geo& g, i64 r0, i64 R, i64 q0,
                         i64 Q, F f) {
  const auto [rlo, rhi, clo, chi] = inside_image(g, r0, R, q0, Q);
  if (chi <= clo) return;
  for (i64 r = rlo; r < rhi; ++r) {
    const uintptr_t first = uintptr_t(img + r * rs + clo * cols) & ~uintptr_t(63);
    const uintptr_t last = uintptr_t(img + r * rs + chi * cols - 1);
    for (uintptr_t line = first; line <= last; line += 64) f(line);
  }
}

// As asm volatile: GCC 12's pure-const analysis took a function of __builtin_prefetch calls
// for one without effects and deleted the calls (runs G-K prefetched nothing).
inline void prefetch_line(uintptr_t line) {
  asm volatile("prefetcht2 %0" : : "m"(*reinterpret_cast<const char*>(line)));
}
inline void touch_line(uintptr_t line) { (void)*reinterpret_cast<const volatile char*>(line); }

// Prefetch (into L2) or touch rows [r0, r0+R) and columns [q0, q0+Q) of one plane with unit
// column stride, each line once.
template <typename S>
inline void prefetch_window(const S* plane, const Geo& g, i64 r0, i64 R, i64 q0, i64 Q) {
  if (g.xs[3] == 1) window_lines(plane, g.xs[2], 1, g, r0, R, q0, Q, prefetch_line);
}
template <typename S>
inline void touch_window(const S* plane, const Geo& g, i64 r0, i64 R, i64 q0, i64 Q) {
  if (g.xs[3] == 1) window_lines(plane, g.xs[2], 1, g, r0, R, q0, Q, touch_line);
}

// The next planar depthwise task's input window, prefetched a few lines at a time from inside
// this task's row blocks (conv_planar_s1, conv_direct_s1), so that reading it overlaps the
// arithmetic. A burst (touch_window, or all of its prefetches at once) stalls the core until
// its misses are in: with a few lines per row block instead (and 16-task chunks),
// 8x128x112x112 3x3 / 5x5 / 7x7 took 0.77 / 0.83 / 0.86x the time (AMD Zen 3,
// docs/performance.md run O); issuing some from the padded copy's rows as well, 1.04-1.05x.
// One per thread, like t_stream; empty (nothing to issue) outside the planar depthwise
// forward.
struct AheadLines {
  const char* line = nullptr;  // next line of the current row
  const char* end = nullptr;   // one past the current row's last line
  i64 rows = 0;                // rows left, the current one included
  i64 span = 0, rs = 0;        // bytes of a row's lines, row stride
  i64 per_block = 0;           // lines to issue per call of issue()

  // Rows [r0, r0 + R) and columns [q0, q0 + Q) (padded coordinates) of a plane with unit
  // column stride, spread over `blocks` calls of issue().
  template <typename S>
  void start(const S* plane, const Geo& g, i64 r0, i64 R, i64 q0, i64 Q, i64 blocks) {
    const auto [rlo, rhi, clo, chi] = inside_image(g, r0, R, q0, Q);
    rows = g.xs[3] == 1 && chi > clo ? std::max<i64>(0, rhi - rlo) : 0;
    if (rows > 0) lines_of(plane + rlo * g.xs[2], clo, chi, g.xs[2], blocks);
  }

  // The same for a channels_last image: the whole pixels (C elements each, consecutive) of
  // those rows and columns.
  template <typename S>
  void start_pixels(const S* img, i64 C, const Geo& g, i64 r0, i64 R, i64 q0, i64 Q,
                    i64 blocks) {
    const auto [rlo, rhi, clo, chi] = inside_image(g, r0, R, q0, Q);
    rows = chi > clo ? std::max<i64>(0, rhi - rlo) : 0;
    if (rows > 0) lines_of(img + rlo * g.xs[2], clo * C, chi * C, g.xs[2], blocks);
  }

  // Elements [e0, e1) of `rows` rows from `row` on, rstride elements apart.
  template <typename S>
  void lines_of(const S* row, i64 e0, i64 e1, i64 rstride, i64 blocks) {
    const uintptr_t first = uintptr_t(row + e0) & ~uintptr_t(63);
    const uintptr_t last = uintptr_t(row + e1 - 1) | 63;
    line = reinterpret_cast<const char*>(first);
    span = i64(last + 1 - first);
    end = line + span;
    rs = rstride * i64(sizeof(S));
    per_block = (rows * (span / 64) + blocks - 1) / std::max<i64>(blocks, 1) + 1;
  }

  // (On copies in registers: the prefetch's asm takes a memory operand that may alias this
  // thread-local object, so the loop on its fields stored `line` to it for every line.)
  __attribute__((always_inline)) void issue() {
    const char *at = line, *stop = end;
    i64 left = rows;
    for (i64 n = per_block; n > 0 && left > 0; --n) {
      prefetch_line(uintptr_t(at));
      at += 64;
      if (at == stop) {
        at = stop - span + rs;
        stop = at + span;
        --left;
      }
    }
    line = at, end = stop, rows = left;
  }
};
thread_local AheadLines t_ahead __attribute__((tls_model("initial-exec")));

}  // namespace
