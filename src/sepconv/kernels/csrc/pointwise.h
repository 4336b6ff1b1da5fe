// The 1x1 convolution of inference with its batch norm folded in and its clamp, as one call
// on the own GEMM: out = clamp(W' x + b') (MobileNetV2's expansions, the last 1x1 conv of its
// features). Through PyTorch it was a BLAS call (MKL runs its AVX2 code on AMD CPUs: half the
// own GEMM's rate with AVX-512) between a dozen small tensor operations that fold the norm
// per call, and a clamp pass over the output.
//
// One part of the kernels' single translation unit: sepconv_kernels.cpp includes the parts in
// order; each includes the parts whose names it uses.
#pragma once

#include <utility>

#include "vec.h"
#include "geometry.h"
#include "gemm.h"
#include "pack.h"
#include "kept.h"
#include "mid_stage.h"

namespace {

// geo: N, C, O, P (pixels an image), nhwc (input and output channels_last, dense), threads,
// then the stage's four values (stage_params).
// The clamp goes to the GEMM's stores (applied to the accumulators: a pass over each output
// block less).
struct PwGeo : StageParams {
  i64 N, C, O, P, threads;
  bool nhwc;
};

inline PwGeo pw_geo(const i64* g) {
  PwGeo r;
  static_cast<StageParams&>(r) = stage_params(g + 6);
  r.N = g[0];
  r.C = g[1];
  r.O = g[2];
  r.P = g[3];
  r.nhwc = g[4] != 0;
  r.threads = std::max<i64>(1, g[5]);
  return r;
}

// The norm as a per-channel scale and bias: out = alpha * (W x) + (alpha * b + shift), then
// zeros up to `len` (both are read by whole vectors); alpha 1 without a norm.
void norm_epilogue(const PwGeo& g, const float* b, const MidNorm<float>& n, float* alpha,
                   float* bf, i64 len) {
  for (i64 o = 0; o < g.O; ++o) {
    float a = 1.0f, shift = 0.0f;
    if (g.norm) norm_affine(n, o, g.eps, a, shift);
    alpha[o] = a;
    bf[o] = (b ? b[o] : 0.0f) * a + shift;
  }
  std::fill(alpha + g.O, alpha + len, 0.0f);
  std::fill(bf + g.O, bf + len, 0.0f);
}

// Whether the 1x1 call writes its output around the caches (gemm_f32's stream): outputs of
// half the L3 or more, bounded to 4-8 MiB (the sizes measured), which plain stores first
// read from memory line by line. Run AF on AMD Zen 2 (below) took a quarter of the L3 (4
// MiB there); after run AK's faster GEMM, half (8 MiB: MobileNetV2's 4.8 MB output at batch 1
// stays in the L3 for the next layer) made that network 0.97x the time on one thread and
// 1.00x on two (whose vCPUs there do not share an L3).
// On AMD Zen 5 (32 MiB of L3: 8 MiB; run Z), bitwise the same: 8x16x112x112 -> 96 (38.5 MB)
// 0.54-0.60x the time, channels_last 0.64x; 8x24x56x56 -> 144 (14.5 MB) 0.86x, channels_last
// 0.79x; MobileNetV2 at batch 8 0.95-0.98x (its next layer reads the output from memory, not
// the L3). (Run V on Zen 3 found 0.94-1.0x with half the L3 as the bound.) On AMD Zen 2 (16
// MiB: 4 MiB; run AF) MobileNetV2's 1x16x112x112 -> 96 (4.8 MB) inside the network took
// 0.47x the time and the layer after it 1.63x, the network 0.968x at batch 1 (channels_last
// 0.976x), 0.974x at batch 8. Channels_last: whole-line rows only.
inline bool stream_pw_output(const PwGeo& g) {
  const bool lines = !g.nhwc || g.O % 16 == 0;
  return streaming_enabled() && lines &&
         g.N * g.O * g.P * 4 >= std::clamp(l3_bytes() / 2, i64(4) << 20, i64(8) << 20);
}

// The parts of a planar 1x1 call's images (pw_planar): `chunks` column ranges an image
// (range(c)), each in `rb` blocks of output channels; one task each.
struct PwParts {
  i64 P = 0, chunks = 1, rb = 1;
  i64 cw = 0;                   // chunks of cw columns (the last one shorter), or:
  i64 pieces = 0, threads = 1;  // each thread's band of 16-column blocks in `pieces` chunks

  // Columns [first, second) of chunk c.
  std::pair<i64, i64> range(i64 c) const {
    if (pieces == 0) return {c * cw, std::min(P, (c + 1) * cw)};
    const i64 blocks = (P + 15) / 16, t = c / pieces, j = c % pieces;
    const i64 b0 = t * blocks / threads, b1 = (t + 1) * blocks / threads;
    return {(b0 + j * (b1 - b0) / pieces) * 16,
            std::min(P, (b0 + (j + 1) * (b1 - b0) / pieces) * 16)};
  }
};

// The parts of one image on a team of `threads` (fewer images than threads), taken
// statically, so that each thread writes the same part of the output from call to call: in
// turn (dynamic), neighbouring parts went to either thread, and on a VM whose two vCPUs sit
// on different core complexes (AMD Zen 2, run AK) the lines a thread wrote in one call
// belonged to the other's cache in the next: 1x24x56x56 -> 144 took 1.15x the time on two
// threads that it took on one. Each thread one band of whole 16-column blocks (as the fused
// tiles of batch 1 split the image), the bands differing by at most one block, in pieces of
// at most cw columns; where the plane has fewer than 16 blocks a thread, one block of
// output channels a thread instead.
inline PwParts fixed_parts(i64 P, i64 threads, i64 cw) {
  PwParts parts;
  parts.P = P;
  const i64 blocks = (P + 15) / 16;
  if (blocks < 16 * threads) {
    parts.cw = P, parts.rb = threads;
    return parts;
  }
  const i64 per = (blocks + threads - 1) / threads;  // blocks a thread, at most
  parts.pieces = (per * 16 + cw - 1) / cw;
  parts.threads = threads;
  parts.chunks = threads * parts.pieces;
  return parts;
}

// Planar: each image's output planes are W (O x C) times its input planes (C x P), scaled and
// shifted (alpha, bf: null alpha without a norm), in tasks of (image, block of columns, block
// of output channels); a task's input columns (C x cw) stay in L2 while the weight's rows
// pass over them, and its output block is clamped there. stream: stream_pw_output.
void pw_planar(const PwGeo& g, const float* x, const float* w, const float* alpha,
               const float* bf, float* out, bool stream) {
  i64 cw = std::min<i64>(1024, std::max<i64>(64, (i64(64) << 10) / g.C / 16 * 16));
  const bool fixed = g.N < g.threads;  // (a batch smaller than the team: fixed_parts)
  PwParts parts;
  if (fixed) {
    parts = fixed_parts(g.P, g.threads, cw);
  } else {
    const i64 wanted = 4 * g.threads;  // tasks, so that the threads end together
    while (cw > 64 && g.N * ((g.P + cw - 1) / cw) < wanted)
      cw = std::max<i64>(64, cw / 2 / 16 * 16);
    parts.P = g.P, parts.cw = cw, parts.chunks = (g.P + cw - 1) / cw;
    // Few columns (small planes): blocks of output channels too, of at least 24 rows.
    const i64 tasks = g.N * parts.chunks;
    parts.rb = std::max<i64>(1, std::min((wanted + tasks - 1) / tasks, (g.O + 23) / 24));
  }
  const i64 chunks = parts.chunks, rb = parts.rb, rows = (g.O + rb - 1) / rb;
#pragma omp parallel num_threads(g.threads)
  {
    // (static: an image a thread, or fewer images than threads in fixed parts)
    for_tasks(g.N * chunks * rb, true, [&](i64 t) {
      const i64 n = t / (chunks * rb), o0 = t % rb * rows;
      const auto [p0, p1] = parts.range((t / rb) % chunks);
      const i64 pn = p1 - p0, on = std::min(rows, g.O - o0);
      if (on <= 0 || pn <= 0) return;
      float* c = out + (n * g.O + o0) * g.P + p0;
      gemm_f32(on, pn, g.C, w + o0 * g.C, g.C, x + n * g.C * g.P + p0, g.P, c, g.P, bf + o0,
               nullptr, 0, stream, g.clamp_bounds(), alpha ? alpha + o0 : nullptr);
    });
    if (stream) stream_fence();
  }
}

// channels_last: the pixels' rows (N*P x C) times W^T packed in panels (C x O), scaled and
// shifted as in pw_planar, in blocks of rows; each block clamped while in cache. A batch
// smaller than the team: blocks of equal size (at most 96 rows), each thread one run of them.
void pw_nhwc(const PwGeo& g, const float* x, const float* panels, const float* alpha,
             const float* bf, float* out, bool stream) {
  const i64 rows = g.N * g.P;
  const bool fixed = g.N < g.threads;  // (as in pw_planar: equal blocks, each thread its own)
  const i64 blocks = fixed ? g.threads * ((rows + 96 * g.threads - 1) / (96 * g.threads))
                           : 4 * g.threads;  // (wanted: at least this many)
  const i64 rb = std::min<i64>(96, std::max<i64>(6, (rows + blocks - 1) / blocks));
#pragma omp parallel num_threads(g.threads)
  {
    for_tasks((rows + rb - 1) / rb, true, [&](i64 t) {  // (static, as in pw_planar)
      const i64 r0 = t * rb, rn = std::min(rb, rows - r0);
      gemm_f32(rn, g.O, g.C, x + r0 * g.C, g.C, panels, kPanel, out + r0 * g.O, g.O, nullptr,
               bf, kPanel * g.C, stream, g.clamp_bounds(), alpha);
    });
    if (stream) stream_fence();
  }
}

void pw_forward(const float* x, const float* w, const float* b, const MidNorm<float>& norm,
                float* out, const i64* geo) {
  const PwGeo g = pw_geo(geo);
  const i64 len = panel_count(g.O) * kPanel + kSlack;  // (read by whole vectors)
  std::unique_ptr<float[]> epi_own, panels_own;  // (beyond kKeepBytes)
  float* const alpha = kept_buffer(kKeptPwBias, 2 * len, epi_own);
  float* const bf = alpha + len;
  norm_epilogue(g, b, norm, alpha, bf, len);
  // The norm's scale on the GEMM's accumulators (gemm_f32's `scale`) where the weight is
  // large against the output, else folded into a copy of the weight: the fold is a pass over
  // the whole weight on one thread while the others wait (a third of 1x320x7x7 -> 1280's
  // time); the scale an FMA on each output vector (1x16x112x112 -> 96: 1.11-1.14x the time,
  // 8x24x56x56 -> 144 1.10-1.13x; 1x320x7x7 -> 1280 0.77x, 1x96x14x14 -> 576 0.94x).
  const bool scaled = g.norm && 8 * g.C >= g.N * g.P;
  const float* const scale = scaled ? alpha : nullptr;
  std::unique_ptr<float[]> wf_own;
  if (g.norm && !scaled) {
    float* const wf = kept_buffer(kKeptPwWeight, g.O * g.C, wf_own);
    for (i64 o = 0; o < g.O; ++o)
      for (i64 c = 0; c < g.C; ++c) wf[o * g.C + c] = w[o * g.C + c] * alpha[o];
    w = wf;
  }
  const bool stream = stream_pw_output(g);
  if (!g.nhwc) {
    pw_planar(g, x, w, scale, bf, out, stream);
    return;
  }
  // channels_last with few pixels and a large weight (1x320x7x7 -> 1280: 1.6x the time
  // packed): the images transposed to planes and back, around the planar GEMM.
  if (transposing_pays(g.N * g.P, g.C, g.O)) {
    std::unique_ptr<float[]> planes_own;
    float* const planes = kept_buffer(kKeptMid, g.N * g.P * (g.C + g.O), planes_own);
    float* const out_planes = planes + g.N * g.P * g.C;
    for (i64 n = 0; n < g.N; ++n)
      transpose(x + n * g.P * g.C, g.C, planes + n * g.C * g.P, g.P, g.P, g.C);
    pw_planar(g, planes, w, scale, bf, out_planes, false);  // (read back at once)
    for (i64 n = 0; n < g.N; ++n)
      transpose(out_planes + n * g.O * g.P, g.P, out + n * g.P * g.O, g.O, g.O, g.P);
    return;
  }
  float* const panels = kept_buffer(kKeptPanels, panel_count(g.O) * kPanel * g.C, panels_own);
  pack_panels(w, 1, g.O, g.C, g.threads, panels);
  pw_nhwc(g, x, panels, scale, bf, out, stream);
}

}  // namespace
