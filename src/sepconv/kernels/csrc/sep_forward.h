// The separable forward: tile GEMMs, whole-call and split paths, sep_forward.
//
// One part of the kernels' single translation unit: sepconv_kernels.cpp includes the parts in
// order; each includes the parts whose names it uses.
#pragma once

#include <atomic>

#include "vec.h"
#include "geometry.h"
#include "blas.h"
#include "gemm.h"
#include "reads.h"
#include "planar.h"
#include "tiles.h"
#include "nhwc_tile.h"
#include "pack.h"
#include "kept.h"
#include "mid_stage.h"

namespace {

// ------------------------------------------------------------------ separable forward

// The channel stride of a planar tile intermediate of P pixels: P, or one cache line more
// where P * 4 bytes is a multiple of 1 KiB. The GEMM reads a 16-column block of it (one line
// from each of K channel rows) once per block of output rows; at a stride of 4 KiB (32 x 32
// planes) those lines fall in one L1 set of 8 ways and are fetched again from L2 each time:
// the GEMM 128 x 1024 x 64 ran at 61 GFLOP/s a thread, with one line more at 84 (AMD Zen 3).
// (Padding every stride to an odd number of lines took row 1, 28 lines, 1.02-1.05x: run O.)
inline i64 mid_channel_stride(i64 P) { return P % 256 == 0 ? P + 16 : P; }

// Gemm "mid x pointwise -> out tile" for one tile of P pixels; mid is planar (cm, p) with
// row stride mcs (mid_channel_stride(P)) or nhwc (p, cm) with row stride CM. out tile: pixel
// p, channel o at out[o*ocs + p*ops]. mid has room for one more channel (planar: mcs
// elements after the CM rows; nhwc: pixel stride CM + 1 when g.wpb is set).
template <typename S>
void tile_gemm(const Geo& g, S* mid, bool mid_nhwc, i64 P, i64 mcs, const S* wp, const S* bp,
               S* out, i64 ocs, i64 ops, float* ftmp);

template <typename S>
void tile_gemm(const Geo& g, S* mid, bool mid_nhwc, i64 P, i64 mcs, const S* wp, const S* bp,
               S* out, i64 ocs, i64 ops, float*) {
  typedef S A;
  if constexpr (std::is_same<S, float>::value) {
    if (g.wpb != nullptr) {
      // The bias as one more GEMM input channel of ones: writing the bias into the output
      // first and accumulating onto it (beta = 1) made a separate pass over an output tile
      // that is not yet in cache, about a fifth of the GEMM's time.
      const i64 K = g.CM + 1;
      if (mid_nhwc) {
        for (i64 p = 0; p < P; ++p) mid[p * K + g.CM] = 1.0f;
      } else {
        std::fill(mid + g.CM * mcs, mid + g.CM * mcs + P, 1.0f);
      }
      const Mat mid_ = mid_nhwc ? Mat{mid, K, 1} : Mat{mid, 1, mcs};
      mm<A>(P, g.O, K, mid_, Mat{g.wpb, 1, K}, out, ops, ocs, A(0));
      return;
    }
    if (g.own_gemm) {
      if (!mid_nhwc && !g.out_nhwc && ops == 1) {
        // out[o, p] = sum_k wp[o, k] * mid[k, p]
        for (i64 gi = 0; gi < g.G; ++gi)
          gemm_f32(g.Og, P, g.CMg, wp + gi * g.Og * g.CMg, g.CMg, mid + gi * g.CMg * mcs, mcs,
                   out + gi * g.Og * ocs, ocs, bp ? bp + gi * g.Og : nullptr, nullptr, 0,
                   g.stream_out);
        return;
      }
      if (mid_nhwc && g.out_nhwc && ocs == 1 && g.wpT != nullptr) {
        // out[p, o] = sum_k mid[p, k] * wp[o, k]  (wp packed in panels: g.wpT)
        for (i64 gi = 0; gi < g.G; ++gi) {
          const i64 o0 = gi * g.Og;
          gemm_f32(P, g.Og, g.CMg, mid + gi * g.CMg, g.CM, packed_cols(g, gi, 0), kPanel,
                   out + o0, ops, nullptr, bp ? g.bp_pad + o0 : nullptr, kPanel * g.CMg,
                   g.stream_out);
        }
        return;
      }
    }
  }
  A beta = A(0);
  if (bp) {
    beta = A(1);
    if (ocs == 1) {
      for (i64 p = 0; p < P; ++p) std::memcpy(out + p * ops, bp, sizeof(S) * g.O);
    } else {
      for (i64 o = 0; o < g.O; ++o) {
        const A v = bp[o];
        S* d = out + o * ocs;
        for (i64 p = 0; p < P; ++p) d[p * ops] = v;
      }
    }
  }
  for (i64 gi = 0; gi < g.G; ++gi) {
    // out[p, o] = sum_k mid[p, k] * wp[o, k]   (p x Og) = (p x CMg) . (CMg x Og)
    Mat A_ = mid_nhwc ? Mat{mid + gi * g.CMg, g.CM, 1} : Mat{mid + gi * g.CMg * mcs, 1, mcs};
    Mat B_{wp + gi * g.Og * g.CMg, 1, g.CMg};
    mm<A>(P, g.Og, g.CMg, A_, B_, out + gi * g.Og * ocs, ops, ocs, beta);
  }
}

template <>
void tile_gemm<bf16>(const Geo& g, bf16* mid, bool mid_nhwc, i64 P, i64 mcs, const bf16* wp,
                     const bf16* bp, bf16* out, i64 ocs, i64 ops, float* ftmp) {
  // ftmp: P x Og floats, or (own bfloat16 GEMM, planar) ceil(CMg / 2) x P pairs and slack.
#if defined(SEPCONV_BF16_GEMM)
  if (g.bias_f && mid_nhwc && ocs == 1) {  // out[p, o] = sum_k mid[p, k] * wp[o, k]
    const i64 KP = (g.CMg + 1) / 2, panels = (g.Og + kPanelBf16 - 1) / kPanelBf16;
    for (i64 gi = 0; gi < g.G; ++gi)
      gemm_bf16(P, g.Og, g.CMg, mid + gi * g.CMg, g.CM,
                g.wp_pairs + gi * panels * KP * kPanelBf16Row, kPanelBf16Row,
                KP * kPanelBf16Row, out + gi * g.Og, ops, nullptr, g.bias_f + gi * g.Og);
    return;
  }
  if (g.bias_f && !mid_nhwc && ops == 1) {  // out[o, p] = sum_k wp[o, k] * mid[k, p]
    const i64 KP = (g.CMg + 1) / 2;
    bf16* const pairs = reinterpret_cast<bf16*>(ftmp);  // (one float holds a pair)
    for (i64 gi = 0; gi < g.G; ++gi) {
      const bf16* rows = mid + gi * g.CMg * mcs;
      for (i64 kp = 0; kp < KP; ++kp)
        interleave_pairs(rows + 2 * kp * mcs, 2 * kp + 1 < g.CMg ? rows + (2 * kp + 1) * mcs
                                                                   : nullptr,
                         P, pairs + kp * 2 * P);
      gemm_bf16(g.Og, P, 2 * KP, g.wp_even + gi * g.Og * 2 * KP, 2 * KP, pairs, 2 * P, 0,
                out + gi * g.Og * ocs, ocs, g.bias_f + gi * g.Og, nullptr);
    }
    return;
  }
#endif
  for (i64 gi = 0; gi < g.G; ++gi) {
    Mat A_ = mid_nhwc ? Mat{mid + gi * g.CMg, g.CM, 1} : Mat{mid + gi * g.CMg * mcs, 1, mcs};
    Mat B_{wp + gi * g.Og * g.CMg, 1, g.CMg};
    mm_bf16(P, g.Og, g.CMg, A_, B_, ftmp, g.Og);
    for (i64 o = 0; o < g.Og; ++o) {
      i64 oo = gi * g.Og + o;
      float b = bp ? toA(bp[oo]) : 0.0f;
      bf16* d = out + oo * ocs;
      for (i64 p = 0; p < P; ++p) fromA(ftmp[p * g.Og + o] + b, d + p * ops);
    }
  }
}

// Few tiles (batch 1, small images) and no bands (bands_ok): the threads share each tile
// instead, first the depthwise over channels, then the GEMM over output-channel blocks.
void sep_forward_split(const float* x, const std::vector<float>& w, const std::vector<float>& wT,
                       const std::vector<float>& b, const float* wp, const float* bp, float* out,
                       const Geo& g, const Tiles& tl, const i64* ymap, const i64* xmap,
                       bool out_nhwc) {
  const bool nhwc = g.nhwc != 0;
  const bool direct = direct_ok(g, true);  // planar input straight from the planes
  const i64 Pmax = tl.TH * tl.TW;
  std::vector<float> mid(Pmax * g.CM + kSlack);
  const i64 OB = 16;  // output channels per GEMM task
  const i64 oblocks = g.G * ((g.Og + OB - 1) / OB);
  const i64 cblock = nhwc ? std::max<i64>(1, 64 / g.M) : 1;  // input channels per dw task
  const auto ir = inner_read<float, float>(g, wT);  // (cblock: whole vectors)
  for (i64 t = 0; t < tl.count; ++t) {
    const auto [n, oy0, ox0, th, tw, P, R, Q, r0, q0] = tile_at(tl, g, t);
    const float* xn = x + n * g.xs[0];
    float* o = out + n * g.os[0] + oy0 * g.os[2] + ox0 * g.os[3];
    const i64 ctasks = (g.C + cblock - 1) / cblock;
#pragma omp parallel num_threads(g.threads)
    {
      const i64 qrow = ((Q + g.sx - 1) / g.sx) * g.sx;
      std::vector<float> buf(nhwc ? R * Q * cblock * g.M : R * qrow + kSlack);
      // (static: each thread one run of channels; see sep_forward_whole's depthwise)
#pragma omp for schedule(static)
      for (i64 ct = 0; ct < ctasks; ++ct) {
        const i64 c0 = ct * cblock, cin = std::min(cblock, g.C - c0), cm0 = c0 * g.M;
        if (nhwc) {
          nhwc_tile<float, float>(xn, g, ymap, xmap, ir, oy0, ox0, th, tw, c0, cin, buf.data(),
                                  wT.data(), b.data(), mid.data(), tw * g.CM, g.CM);
          clamp_mid(g, mid.data() + cm0, P, cin * g.M, g.CM);
        } else {
          channel_tile<float, float, float>(xn + c0 * g.xs[1], g, direct, oy0, ox0, th, tw, r0, R,
                                            q0, Q, ymap, xmap, buf.data(), w.data() + cm0 * g.T,
                                            b.data() + cm0, mid.data() + cm0 * P, P, tw);
          clamp_mid(g, mid.data() + cm0 * P, 1, g.M * P, 0);
        }
      }
      // (implicit barrier: the whole intermediate tile is ready)
      if (out_nhwc) {
        // Blocks of PB pixels x 64 output channels (with AVX-512 one panel, the micro-tiles
        // four vectors wide). Over blocks of 16 output channels on AVX-512 each A element
        // was broadcast for a single FMA and all of A re-read per block.
        const i64 cblocks = (g.Og + 63) / 64, PB = 48, pblocks = (P + PB - 1) / PB;
#pragma omp for schedule(dynamic, 1)
        for (i64 task = 0; task < g.G * cblocks * pblocks; ++task) {
          const i64 gj = task / pblocks, gi = gj / cblocks, j = gj % cblocks;
          const i64 p0 = (task % pblocks) * PB, pn = std::min(PB, P - p0);
          const i64 o0 = gi * g.Og + j * 64, nb = std::min<i64>(64, g.Og - j * 64);
          gemm_f32(pn, nb, g.CMg, mid.data() + p0 * g.CM + gi * g.CMg, g.CM,
                   packed_cols(g, gi, j * 64), kPanel, o + p0 * g.os[3] + o0, g.os[3], nullptr,
                   bp ? g.bp_pad + o0 : nullptr, kPanel * g.CMg);
        }
      } else {
#pragma omp for schedule(dynamic, 1)
        for (i64 ob = 0; ob < oblocks; ++ob) {
          const i64 per = (g.Og + OB - 1) / OB;
          const i64 gi = ob / per, o0 = gi * g.Og + (ob % per) * OB;
          const i64 nb = std::min(OB, (gi + 1) * g.Og - o0);
          gemm_f32(nb, P, g.CMg, wp + o0 * g.CMg, g.CMg, mid.data() + gi * g.CMg * P, P,
                   o + o0 * g.os[1], g.os[1], bp ? bp + o0 : nullptr, nullptr);
        }
      }
    }
  }
}

// Whether sep_forward_whole applies: float, one group, an output whose images' pixels are
// one after another (channels_last: all pixels of the call; NCHW: each output plane), an
// intermediate of the whole call of at most 4 MiB (two L2s), and either
// - a pointwise weight of at least 1 MiB (with 368-590 KiB weights it took 1.1-1.2x the time
//   of the tiles: 1x192x28x28 -> 768 7x7, 8x576x14x14 -> 160 s2; the latter takes it now by
//   its 7 x 7 output planes, below), or
// - planar input with few tiles (batch 1, small planes) that take no bands (bands_ok: since
//   run AF those with a pointwise weight of at most twice the intermediate, such as
//   1x384x14x14 -> 64 and 1x576x14x14 -> 96), where the threads sharing each tile
//   (sep_forward_split, the own GEMM over blocks of 16 output channels) took 1.1-1.7x its
//   time: 1x384x14x14 -> 64 1.6x, 1x576x14x14 -> 96 1.45x. (channels_last: 0.8-1.3x, kept
//   on sep_forward_split), or
// - output planes of at most 64 pixels (7 x 7). channels_last: tiles of a few rows made
//   GEMMs of 21-28 pixels each re-reading the weight: 8x960x7x7 -> 160 and 1x960x7x7 -> 160
//   took 1.15-1.3x, 8x576x14x14 -> 160 s2 1.1x its time (14 x 14 outputs: 0.99-1.15x this
//   way, not taken). Planar: one image a tile, a GEMM of 49 columns (three 16-column blocks
//   and an 8-column one for the last): 8x960x7x7 -> 160 took 1.08x, 8x576x14x14 -> 160 s2
//   1.03x, 8x960x7x7 -> 320 1.0x its time (AMD Zen 3, run R).
bool whole_ok(const Geo& g, bool few_tiles) {
  const i64 P = g.OH * g.OW;
  const bool out_ok = g.nhwc ? g.out_nhwc && g.os[1] == 1 && g.os[2] == g.OW * g.os[3] &&
                                   g.os[0] == P * g.os[3]
                             : !g.out_nhwc && g.os[3] == 1 && g.os[2] == g.OW;
  const bool large_weight = g.O * g.CM * 4 >= (i64(1) << 20);
  return out_ok && g.G == 1 && g.N * P * g.CM * 4 <= (i64(4) << 20) &&
         (large_weight || (few_tiles && !g.nhwc) || P <= 64);
}

// Whether a float32 call at batch 1 with few tiles computes one band of output rows per
// thread, each thread its band's depthwise output and then its GEMM, instead of the
// whole-call and split paths, where the threads share the intermediate (each computes some
// channels or pixels of it and multiplies all of it). On VMs whose two vCPUs sit on
// different core complexes (AMD Zen 2, run AF: a cache line's round trip between them
// 400-500 ns most of the time, 50-70 ns now and then), the intermediate's lines that the
// other thread wrote crossed between the complexes on every call: 1x576x14x14 -> 96 took
// 0.67x, 1x192x28x28 -> 32 0.50x the time with bands. But each thread reads the whole
// pointwise weight, which inside a network comes from memory, so only where the other
// threads' extra reads of it come to at most twice the intermediate (with two threads: the
// weight at most twice the intermediate; the bound set on two cores): in MobileNetV2 at batch
// 1 the stages so chosen took 0.67-0.84x the time, while MobileNetV1's 1x512x14x14 -> 512
// (weight 2.6 times the intermediate) took 1.13-1.17x with bands, 1x384x14x14 -> 1536 7x7
// alone 1.34x. With the vCPUs on one complex bands cost 1.04-1.15x. Channels_last calls too
// (their bands' pixels are whole lines where O is a multiple of 16): 1x384x14x14 -> 64 0.64x,
// mobilenet_v2 / v1 at batch 1 0.963x / 0.976x, bitwise the same.
inline bool bands_ok(const Geo& g, i64 elem_bytes) {
  const bool planar = !g.nhwc && !g.out_nhwc && g.os[3] == 1;
  const bool nhwc = g.nhwc && g.out_nhwc && g.os[1] == 1;
  return elem_bytes == 4 && g.N == 1 && (planar || nhwc) && g.OH >= g.threads &&
         (g.threads - 1) * g.O * g.CMg <= 2 * g.OH * g.OW * g.CM;
}

// Whether sep_forward_whole's own GEMM takes a channels_last call through the planar GEMM,
// transposing the intermediate and the output in cache, instead of packing the pointwise
// weight in panels (transposing_pays). 1x768x7x7 -> 3072 took
// 0.45x the time this way, 1x960x7x7 -> 160 / 320 0.85-0.92x; 8x960x7x7 -> 160 and
// 8x576x14x14 -> 160 s2 took 1.25-1.35x (packing there is cheap).
bool whole_transposed(const Geo& g) {
  return g.nhwc && transposing_pays(g.N * g.OH * g.OW, g.CM, g.O);
}

// Small intermediates (whole_ok): the depthwise output of the whole
// call first (channels_last: N*OH*OW pixels x CM; NCHW: CM planes of all images' pixels),
// then one GEMM per thread over a block of output channels (NCHW: straight into the output
// planes, image by image; at batch > 1 on planes of at most 64 pixels into a buffer, from
// which each image's planes are copied out with the bias; straight into them with all output
// channels of each thread's own images where the images divide evenly between the threads),
// or, channels_last with 128 or more pixels a thread, over a share of the pixels. Tile by
// tile, each GEMM re-reads the whole pointwise weight for a few dozen pixels (ConvNeXt's
// 768 -> 3072 at 7 x 7: 9.4 MB for 49 pixels).
void sep_forward_whole(const float* x, const std::vector<float>& w, const std::vector<float>& wT,
                       const std::vector<float>& b, const float* wp, const float* bp, float* out,
                       const Geo& g, const Tiles& tl, const i64* ymap, const i64* xmap) {
  const i64 Pimg = g.OH * g.OW, P = g.N * Pimg, ops = g.os[3];
  std::unique_ptr<float[]> mid_own, midP_own;  // (beyond kKeepBytes)
  const bool nhwc = g.nhwc != 0;
  const bool transposed = g.own_gemm && whole_transposed(g);
  const auto ir = inner_read<float, float>(g, wT);
  const bool direct = !nhwc && direct_ok(g, true);
  // Planar output, own GEMM: straight into the output planes, image by image in one
  // gemm_f32 (each image's pixels in panels of their own), not through a buffer copied out
  // with the biases: 1x384x14x14 -> 1536 0.93-0.97x, 8x384x14x14 -> 1536 0.97x the time. Not
  // at batch 8 on planes of at most 64 pixels (7 x 7: 3 vectors and a tail column an image
  // for 8x960x7x7 -> 160 / 320 took 1.11x the time of the 392-column GEMM; on AVX2 builds,
  // whose panels are 16 columns, 64 pixels still: 1.16-1.2x there, a review found).
  const bool direct_out = g.own_gemm && !nhwc && (g.N == 1 || Pimg > 64);
  // Each thread all output channels of its own images (the depthwise's, below), where they
  // divide evenly (3 images on 2 threads would leave one thread a third more).
  const bool by_image = direct_out && image_a_thread(g.N, g.threads) && g.N % g.threads == 0;
  // Output channels per thread, in whole vectors. (By image a thread's GEMM takes all of
  // them, which reads B in more blocks of rows; counting them in the panels' rule below
  // measured 1.01x the time of MobileNetV2 at batch 8, run AG: 8x576x14x14 -> 96 packed.)
  const i64 per = ((g.O + g.threads - 1) / g.threads + 15) / 16 * 16;
  // The own planar GEMM's B (mid^T, or mid where a thread's block of the weight is read in
  // several blocks of rows, so that B is read more than once) in panels (see kPanel), packed
  // once for all threads. 1x768x7x7 -> 3072 took 0.86x, 1x960x7x7 -> 320 0.90x, 8x768x7x7
  // -> 3072 0.94x, 8x384x14x14 -> 1536 0.98x the time; 1x192x28x28 -> 32 (B read once)
  // 1.10-1.18x, hence not.
  const bool panelled = transposed || (g.own_gemm && !nhwc && per * g.CM * 4 > kABlockBytes);
  // The GEMM's columns (B's panels) of each image (direct_out) or of all pixels.
  const i64 img_cols = direct_out ? Pimg : P, img_panels = panel_count(img_cols);
  const i64 panels = direct_out ? g.N * img_panels : img_panels;
  float* const midP =
      panelled ? kept_buffer(kKeptPanels, panels * kPanel * g.CM + kSlack, midP_own) : nullptr;
  // Planar panels at batch 1: the depthwise output goes into them (put_panel_row; a plane of
  // at most kPanel pixels is a panel's row and written there), not into planes packed
  // afterwards: 1x960x7x7 -> 160 / 320 0.94 / 0.96x, 1x384x14x14 -> 1536 0.96x, 1x192x28x28
  // -> 768 0.91x the time. (At batch 8 the panels, 1.7 MB on 7 x 7 planes, are not in L2 and
  // the planes' pieces written into them missed: 8x960x7x7 -> 160 1.12x; run AA.)
  const bool into_panels = panelled && !nhwc && g.N == 1;
  const bool plane_is_row = into_panels && Pimg <= kPanel;
  float* const mid = into_panels ? nullptr : kept_buffer(kKeptMid, P * g.CM + kSlack, mid_own);
#pragma omp parallel num_threads(g.threads)
  {
    std::vector<float> buf(nhwc ? input_span(tl.TH, g.sy, g.KH, g.dy) *
                                      input_span(tl.TW, g.sx, g.KW, g.dx) * g.CM
                                : g.Hu * g.Qrow + kSlack);
    std::vector<float> plane(into_panels && !plane_is_row ? g.M * Pimg + kSlack : 0);  // (M planes)
    if (nhwc) {
      // (by image: where the GEMMs below take each thread's share of the pixels, the same)
      for_tasks(tl.count, image_a_thread(g.N, g.threads), [&](i64 t) {
        const Tile s = tile_at(tl, g, t);
        nhwc_tile<float, float>(x + s.n * g.xs[0], g, ymap, xmap, ir, s.oy0, s.ox0, s.th, s.tw,
                                0, g.C, buf.data(), wT.data(), b.data(),
                                mid + (s.n * Pimg + s.oy0 * g.OW + s.ox0) * g.CM,
                                g.OW * g.CM, g.CM);
        clamp_mid(g, mid + (s.n * Pimg + s.oy0 * g.OW + s.ox0) * g.CM, s.th, s.tw * g.CM,
                  g.OW * g.CM);
      });
    } else {
      // Each thread one run of consecutive planes (all cost the same): read and written in
      // memory order, which the prefetchers follow. In chunks of 4 taken in turn (dynamic),
      // 1x960x7x7 -> 160 took 1.06x, 1x192x28x28 -> 32 1.11x, 8x960x7x7 -> 160 1.08x the
      // time, and inside MobileNetV2 at batch 1 this phase 1.8x (27.5 against 15.5 us on
      // 960x7x7 planes; its input comes from the other core's caches in part), Zen 5, run AA.
#pragma omp for schedule(static)
      for (i64 nc = 0; nc < g.N * g.C; ++nc) {
        const i64 n = nc / g.C, cm = (nc % g.C) * g.M;
        // (the M output planes of channel nc, dcs apart: panel rows, a plane put into the
        // panels, or mid's rows)
        float* const dst = plane_is_row  ? midP + cm * kPanel
                           : into_panels ? plane.data()
                                         : mid + cm * P + n * Pimg;
        const i64 dcs = plane_is_row ? kPanel : into_panels ? Pimg : P;
        channel_tile<float, float, float>(x + n * g.xs[0] + (nc % g.C) * g.xs[1], g, direct, 0, 0,
                                          g.OH, g.OW, 0, g.Hu, 0, g.Wu, ymap, xmap, buf.data(),
                                          w.data() + cm * g.T, b.data() + cm, dst, dcs, g.OW);
        clamp_mid(g, dst, g.M, Pimg, dcs);
        for (i64 m = 0; into_panels && m < g.M; ++m) {
          if (plane_is_row)  // (the zeros past its pixels, as pack_panel_rows writes)
            std::fill(dst + m * kPanel + Pimg, dst + (m + 1) * kPanel, 0.0f);
          else
            put_panel_row(plane.data() + m * Pimg, n * Pimg, Pimg, P, cm + m, g.CM, midP);
        }
      }
    }
    // (implicit barrier: the whole intermediate is ready)
    // channels_last: pixels [p0, p0 + pn) x output channels [o0, o0 + nb), bias first.
    // Own GEMM: o0 is a panel's first column (a multiple of kPanel).
    auto nhwc_gemm = [&](i64 p0, i64 pn, i64 o0, i64 nb) {
      if (g.own_gemm) {
        gemm_f32(pn, nb, g.CM, mid + p0 * g.CM, g.CM, packed_cols(g, 0, o0), kPanel,
                 out + p0 * ops + o0, ops, nullptr, bp ? g.bp_pad + o0 : nullptr,
                 kPanel * g.CM);
        return;
      }
      if (bp)
        for (i64 p = p0; p < p0 + pn; ++p)
          std::memcpy(out + p * ops + o0, bp + o0, sizeof(float) * nb);
      mm<float>(pn, nb, g.CM, Mat{mid + p0 * g.CM, g.CM, 1}, Mat{wp + o0 * g.CM, 1, g.CM},
                out + p0 * ops + o0, ops, 1, bp ? 1.0f : 0.0f);
    };
    if (panelled && !into_panels) {
      // Tasks of (panel, block of 64 rows of K): at batch 1 one panel holds all pixels, and
      // packed by one thread (the other waiting) 1x960x7x7 -> 320 / 160 took 1.04-1.06x,
      // channels_last 1.09x the time (Zen 5).
      constexpr i64 KB = 64;
      const i64 kblocks = (g.CM + KB - 1) / KB;
#pragma omp for schedule(static)
      for (i64 t = 0; t < panels * kblocks; ++t) {
        const i64 j = t / kblocks, k0 = t % kblocks * KB, k1 = std::min(g.CM, k0 + KB);
        if (transposed) {  // (mid's rows are B's columns)
          pack_panel_part(mid, P, g.CM, j, k0, k1, midP);
        } else {  // (image n's panel jn)
          const i64 n = j / img_panels, jn = j % img_panels;
          pack_panel_rows(mid + n * img_cols, P, g.CM, img_cols, jn, k0, k1,
                          midP + n * img_panels * kPanel * g.CM);
        }
      }
    }
    if (nhwc && !transposed && P >= 128 * g.threads) {
      // Each thread all output channels of its share of the pixels: one read of the
      // intermediate, and rows of 128 or more pixels per GEMM (8x960x7x7 -> 320 0.94x,
      // 8x384x14x14 -> 1536 0.97x against output-channel blocks; at batch 1, 25 pixels a
      // thread, 1x768x7x7 -> 3072 took 1.2x, so fewer pixels keep the blocks below).
      const i64 share = (P + g.threads - 1) / g.threads;
#pragma omp for schedule(static, 1)
      for (i64 p0 = 0; p0 < P; p0 += share) nhwc_gemm(p0, std::min(share, P - p0), 0, g.O);
    } else if (nhwc && !transposed && g.own_gemm) {
      // Tasks of 64 output channels x a share of the pixels, at least two per thread (one
      // block per thread left 1x960x7x7 -> 160's three blocks on two threads).
      const i64 blocks = (g.O + 63) / 64;
      const i64 shares = (2 * g.threads + blocks - 1) / blocks, share = (P + shares - 1) / shares;
#pragma omp for schedule(dynamic, 1)
      for (i64 task = 0; task < blocks * shares; ++task) {
        const i64 j = task / shares, p0 = (task % shares) * share;
        if (p0 < P) nhwc_gemm(p0, std::min(share, P - p0), j * 64, std::min<i64>(64, g.O - j * 64));
      }
    } else if (by_image) {
      // Each thread all output channels of its run of images (like the depthwise above), so
      // that the next layer reads each image from the caches of the thread that wrote it:
      // MobileNetV1 at batch 8 0.96-0.97x the time, 8x512x14x14 -> 512 0.89x (run AG).
#pragma omp for schedule(static)
      for (i64 n = 0; n < g.N; ++n)
        gemm_f32(g.O, Pimg, g.CM, wp, g.CM,
                 panelled ? midP + n * img_panels * kPanel * g.CM : mid + n * Pimg,
                 panelled ? kPanel : P, out + n * g.os[0], g.os[1], bp, nullptr,
                 panelled ? kPanel * g.CM : 0);
    } else {
#pragma omp for schedule(static, 1)
      for (i64 o0 = 0; o0 < g.O; o0 += per) {
        const i64 nb = std::min(per, g.O - o0);
        if (nhwc && !transposed) {
          nhwc_gemm(0, P, o0, nb);
          continue;
        }
        // C: the output planes (direct_out, ldc the plane stride, biases first) or tmp.
        std::unique_ptr<float[]> tmp_own;
        float* const tmp = direct_out ? nullptr : kept_buffer(kKeptOut, nb * P, tmp_own);
        float* C = direct_out ? out + o0 * g.os[1] : tmp;
        const i64 ldc = direct_out ? g.os[1] : P;
        const float* br = direct_out && bp ? bp + o0 : nullptr;
        if (g.own_gemm)  // (B: mid's panels or mid; img_cols columns, per image where direct_out)
          gemm_f32(nb, img_cols, g.CM, wp + o0 * g.CM, g.CM, panelled ? midP : mid,
                   panelled ? kPanel : P, C, ldc, br, nullptr, panelled ? kPanel * g.CM : 0, false,
                   nullptr, nullptr,
                   Images{direct_out ? g.N : 1, panelled ? img_panels * kPanel * g.CM : Pimg,
                          g.os[0]});
        else
          mm<float>(nb, P, g.CM, Mat{wp + o0 * g.CM, g.CM, 1}, Mat{mid, P, 1}, tmp, P,
                    1, 0.0f);
        if (direct_out) continue;
        if (transposed) {
          for (i64 p = 0; p < P; ++p)
            for (i64 o = 0; o < nb; ++o)
              out[p * ops + o0 + o] = tmp[o * P + p] + (bp ? bp[o0 + o] : 0.0f);
          continue;
        }
        for (i64 n = 0; n < g.N; ++n)
          for (i64 o = 0; o < nb; ++o) {
            const float* src = tmp + o * P + n * Pimg;
            float* dst = out + n * g.os[0] + (o0 + o) * g.os[1];
            const float bias = bp ? bp[o0 + o] : 0.0f;
            for (i64 p = 0; p < Pimg; ++p) dst[p] = src[p] + bias;
          }
      }
    }
  }
}

// Whether the own tile GEMMs write their output around the caches (Geo::stream_out): the
// micro-kernels' 16-column stores are whole lines, for planar output planes or channels_last
// pixels of whole lines and outputs of 4 MiB or more (smaller ones may serve the next layer
// from the cache). Plain stores read each output line first; on AMD Zen 3 (AVX2) streaming
// took 0.87-0.97x the time on 56x56 and 28x28 planes (8x192x28x28 -> 768 7x7 0.92-0.94x), on
// Zen 5 (AVX-512) row 1 0.95x, 32x64x32x32 -> 128 0.90-0.93x, channels_last 0.97-1.00x.
constexpr i64 kStreamGemmBytes = i64(4) << 20;
inline bool stream_tile_output(const Geo& g) {
  const bool planar = !g.nhwc && !g.out_nhwc && g.os[3] == 1 && g.os[1] % 16 == 0;
  const bool nhwc = g.nhwc && g.out_nhwc && g.os[1] == 1 && g.os[3] % 16 == 0 && g.wpT;
  return streaming_enabled() && g.own_gemm && (planar || nhwc) &&
         g.N * g.O * g.OH * g.OW * 4 >= kStreamGemmBytes;
}

// The stage after the convolutions over the whole output (the whole-call and split paths,
// whose outputs are small), image by image: a planar image is one run a channel (row by
// row, 1x960x7x7 -> 320's 7-long runs took 14 us). Threads only for large outputs of several
// images, a team's start costing more than a small output's pass.
template <typename S, typename A>
void post_stage_all(const Geo& g, const PostStage<A>& after, S* out) {
  if (!after.active()) return;
  const bool large = g.N > 1 && g.N * g.OH * g.OW * g.O >= (i64(1) << 18);
#pragma omp parallel for num_threads(g.threads) schedule(static) if (large)
  for (i64 n = 0; n < g.N; ++n) after.apply(g, out, n, 0, g.OH, 0, g.OW);
}

#if defined(SEPCONV_BF16_GEMM)
// The pointwise weight and bias as the own bfloat16 tile GEMMs read them (Geo::wp_pairs,
// wp_even, bias_f), in the buffers given.
void prep_bf16_gemm(Geo& g, const bf16* wp, const bf16* bp, std::vector<bf16>& pairs,
                    std::vector<bf16>& even, std::vector<float>& bias) {
  const i64 KP = (g.CMg + 1) / 2, panels = (g.Og + kPanelBf16 - 1) / kPanelBf16;
  if (g.nhwc) {
    const i64 per_group = panels * KP * kPanelBf16Row;
    pairs.resize(g.G * per_group);
    for (i64 gi = 0; gi < g.G; ++gi)
      pack_pairs_panels(wp + gi * g.Og * g.CMg, g.Og, g.CMg, pairs.data() + gi * per_group);
    g.wp_pairs = pairs.data();
  } else {
    even.assign(g.O * 2 * KP, bf16{0});
    for (i64 o = 0; o < g.O; ++o)
      std::memcpy(even.data() + o * 2 * KP, wp + o * g.CMg, sizeof(bf16) * g.CMg);
    g.wp_even = even.data();
  }
  bias.assign(g.O + kSlack, 0.0f);
  if (bp)
    for (i64 o = 0; o < g.O; ++o) bias[o] = toA(bp[o]);
  g.bias_f = bias.data();
}
#endif

// norm: the batch norm between the stages where geo asks for one (mid_stage.h).
template <typename S>
void sep_forward(const S* x, const S* wd, const S* bd, const S* wp, const S* bp, S* out,
                 const i64* geo, const MidNorm<S>& norm, const MidNorm<S>& post) {
  typedef typename Acc<S>::type A;
  Geo g = make_geo(geo);
  const PostStage<A> after = PostStage<A>::make(g, post);
  std::vector<A> w, wT, b, alpha(g.mid_norm ? g.CM : 0), shift(alpha.size());
  if (g.mid_norm) norm_affines(norm, g.CM, g.mid_eps, alpha.data(), shift.data());
  prep_weights<S, A>(wd, bd, g, w, wT, b, g.mid_norm ? alpha.data() : nullptr, shift.data());
  const auto ymap = make_map(g.Hu, g.H, g.pt, g.mode);
  const auto xmap = make_map(g.Wu, g.W, g.pl, g.mode);
  const bool nhwc = g.nhwc != 0;
  // Planar input straight from the planes where conv_direct applies (with the mask fix,
  // 0.93-0.98x the time of the padded copy; docs/performance.md, run I).
  const bool direct = direct_ok(g, std::is_same<S, float>::value);
  const i64 bpp = g.CM * (i64(sizeof(S)) + (nhwc ? i64(sizeof(A)) * g.sy * g.sx : 0));
  // Planar tiles of layers whose GEMM does 4 or more times the depthwise's FLOPs (O >= 4
  // taps) hold at most a quarter of L2 of intermediate, so that it stays in L2 from the
  // depthwise to the GEMM while the input's planes pass through (with 512 KiB of L2, AMD Zen
  // 3: row 1 0.92-0.97x, 8x96x56x56 -> 384 7x7 0.87-0.88x the time of 256 KiB tiles; the
  // GEMM phase of row 1 took 0.88x, the depthwise phase 1.2x for the halo). Where the
  // depthwise dominates, the halo costs more than L2 saves (8x96x56x56 -> 96 7x7 1.04x,
  // 8x144x56x56 -> 24 1.03x). Unchanged where L2 is 1 MiB or more.
  if (!nhwc && !g.budget_set && g.O >= 4 * g.T) g.budget = std::min(g.budget, l2_bytes() / 4);
  // Planar: whole images per tile where an image's intermediate fits in 1 MiB (half an L2),
  // unless the caller set the budget. The tile GEMMs of small planes were too short: with
  // 1 MiB tiles 8x192x28x28 -> 32 and 8x384x14x14 -> 64 took 0.82x the time (AMD Zen 3).
  // Strided layers up to 4 MiB: they read s_y s_x times their intermediate, and in tiles of
  // a few output rows each channel's rows came from memory in bursts of ~11 KB, too short
  // for the prefetchers: 8x96x112x112 -> 24 s2 0.76x, 16x 0.65x, 8x192x112x112 -> 64 s2
  // 0.62x, 4x64x224x224 -> 32 s2 0.76x the time (inputs of 38-77 MB; AMD Zen 5, 1 MiB of
  // L2; on run K's Intel VM, 1 MiB tiles, two an image, of 8x96x112x112 -> 24 s2 had taken
  // 1.08-1.13x). Not stride 1, where such tiles took 0.92-1.1x.
  const i64 image_bytes = g.OH * g.OW * bpp;
  // (float32 only: bfloat16's 1x32x448x448 -> 512 s2 took 1.5x with 4 MiB)
  const bool strided_f32 = g.sy * g.sx > 1 && std::is_same<S, float>::value;
  const i64 image_limit = i64(strided_f32 ? 4 : 1) << 20;
  if (!nhwc && !g.budget_set && image_bytes <= image_limit)
    g.budget = std::max(g.budget, image_bytes);
  Tiles tl = make_tiles(g, bpp, 3 * g.threads);
  // Few tiles (batch 1, small images): the threads share each tile (own GEMM only), or each
  // takes one band of rows (bands_ok).
  const bool few_tiles = g.threads > 1 && tl.count < 2 * g.threads;
  const bool bands = few_tiles && bands_ok(g, sizeof(S));
  if (bands) tl = band_tiles(g.N, g.OH, g.OW, g.threads);
  std::unique_ptr<float[]> wpT_buf;
  std::vector<float> bp_buf, wpb_buf;
  if constexpr (std::is_same<S, float>::value) {
    const bool whole = !bands && whole_ok(g, few_tiles);
    g.own_gemm = own_gemm_for(nhwc, few_tiles, g.O * g.CMg, whole);
    if (nhwc && g.out_nhwc && g.own_gemm && !(whole && whole_transposed(g))) {
      // (only the own nhwc GEMM reads them)
      // Per group, per kPanel output channels: panel[j][k][0..kPanel) = wp[o0 + j*kPanel +
      // ., k], so that the GEMM streams each panel contiguously (a plain transpose has a row
      // stride of Og, which thrashes the TLB when Og is large); slack for vector reads past
      // Og. Not a std::vector: zero-filling megabytes of weights on every call costs as much
      // as packing them. pack_panels writes every element but the slack.
      const i64 packed = g.G * panel_count(g.Og) * g.CMg * kPanel;
      wpT_buf.reset(new float[packed + kSlack]);
      std::fill(wpT_buf.get() + packed, wpT_buf.get() + packed + kSlack, 0.0f);
      pack_panels(wp, g.G, g.Og, g.CMg, g.threads, wpT_buf.get());
      bp_buf.assign(g.O + kSlack, 0.0f);
      if (bp) std::memcpy(bp_buf.data(), bp, sizeof(float) * g.O);
      g.wpT = wpT_buf.get();
      g.bp_pad = bp_buf.data();
    }
    if (whole) {
      sep_forward_whole(x, w, wT, b, wp, bp, out, g, tl, ymap.data(), xmap.data());
      post_stage_all(g, after, out);
      return;
    }
    // Bias as an extra GEMM input channel (tile_gemm) where copying the weight costs at most
    // a quarter of the output pass it saves. Not channels_last with few tiles: MKL was up
    // to 1.9x slower there with the odd row stride (CM + 1) this gives the intermediate.
    if (!g.own_gemm && bp && g.G == 1 && 4 * g.CM <= g.N * g.OH * g.OW &&
        !(nhwc && few_tiles)) {
      wpb_buf.resize(g.O * (g.CM + 1));
      for (i64 o = 0; o < g.O; ++o) {
        std::memcpy(wpb_buf.data() + o * (g.CM + 1), wp + o * g.CM, sizeof(float) * g.CM);
        wpb_buf[o * (g.CM + 1) + g.CM] = bp[o];
      }
      g.wpb = wpb_buf.data();
    }
    // Output layout from the caller (strides alone are ambiguous when a dimension is 1).
    const bool out_nhwc = g.out_nhwc != 0;
    const bool split_ok = nhwc ? (out_nhwc && g.wpT) : (!out_nhwc && g.os[3] == 1);
    if (g.own_gemm && split_ok && few_tiles && !bands) {
      sep_forward_split(x, w, wT, b, wp, bp, out, g, tl, ymap.data(), xmap.data(), out_nhwc);
      post_stage_all(g, after, out);
      return;
    }
  }

#if defined(SEPCONV_BF16_GEMM)
  std::vector<bf16> wp_pairs_buf, wp_even_buf;
  std::vector<float> bias_f_buf;
  if constexpr (std::is_same<S, bf16>::value)
    prep_bf16_gemm(g, wp, bp, wp_pairs_buf, wp_even_buf, bias_f_buf);
#endif
  const auto ir = inner_read<S, A>(g, wT);
  const bool touch = nhwc && touch_nhwc_input(g, sizeof(S));
  const bool touch_next = !nhwc && touch_planar_next(g, sizeof(S));
  g.stream_out = stream_tile_output(g) && !after.active();  // (it reads the tile back)
  std::atomic<i64> taken{0};  // (tiles handed out from both ends, below)
#pragma omp parallel num_threads(g.threads)
  {
    const i64 Pmax = tl.TH * tl.TW;
    const i64 Rmax = input_span(tl.TH, g.sy, g.KH, g.dy);
    const i64 Qmax = input_span(tl.TW, g.sx, g.KW, g.dx);
    const i64 qrow_max = ((Qmax + g.sx - 1) / g.sx) * g.sx;
    // Not a std::vector: zero-filling it on every call was 2 % of a batch-1 profile; the
    // depthwise writes every element the GEMM reads, but the slack is zeroed.
    const i64 mid_size = (Pmax + 16) * (g.CM + 1) + kSlack;  // (mid_channel_stride(P <= Pmax))
    std::unique_ptr<S[]> mid_own;
    S* const mid = kept_buffer(kKeptMid, mid_size, mid_own);
    std::memset(static_cast<void*>(mid + mid_size - kSlack), 0, sizeof(S) * kSlack);
    std::vector<A> buf(nhwc ? Rmax * Qmax * g.CM : Rmax * qrow_max + kSlack);
    std::vector<float> ftmp(
        std::is_same<S, bf16>::value ? std::max(Pmax * g.Og, (g.CMg + 1) / 2 * Pmax + 32) : 0);
    auto tile = [&](i64 t) {
      const auto [n, oy0, ox0, th, tw, P, R, Q, r0, q0] = tile_at(tl, g, t);
      const S* xn = x + n * g.xs[0];
      const i64 mcs = nhwc ? P : mid_channel_stride(P);
      if (nhwc) {
        const i64 mps = g.wpb ? g.CM + 1 : g.CM;  // room for tile_gemm's channel of ones
        if (touch) touch_nhwc(xn, g, oy0, ox0, th, tw);
        nhwc_tile<S, A>(xn, g, ymap.data(), xmap.data(), ir, oy0, ox0, th, tw, 0, g.C, buf.data(),
                        wT.data(), b.data(), mid, tw * mps, mps);
        clamp_mid(g, mid, P, g.CM, mps);
      } else {
        for (i64 c = 0; c < g.C; ++c) {
          // A later channel's rows: each channel's piece is short, which the hardware
          // prefetcher does not anticipate. (Touching the next one instead: row 1 1.04x,
          // 8x96x112x112 -> 24 s2 0.68x, 8x144x56x56 -> 24 1.2x the time on Zen 3; so only
          // where touch_planar_next says.)
          if (touch_next && c + 1 < g.C)
            touch_window(xn + (c + 1) * g.xs[1], g, r0, R, q0, Q);
          else if (g_reads == 1 && c + 2 < g.C)
            prefetch_window(xn + (c + 2) * g.xs[1], g, r0, R, q0, Q);
          const i64 cm = c * g.M;
          channel_tile<S, A, S>(xn + c * g.xs[1], g, direct, oy0, ox0, th, tw, r0, R, q0, Q,
                                ymap.data(), xmap.data(), buf.data(), w.data() + cm * g.T,
                                b.data() + cm, mid + cm * mcs, mcs, tw);
          clamp_mid(g, mid + cm * mcs, g.M, P, mcs);
        }
      }
      // Output tile: pixels are consecutive in (oy, ox) order (whole rows, or one row piece).
      S* o = out + n * g.os[0] + oy0 * g.os[2] + ox0 * g.os[3];
      tile_gemm<S>(g, mid, nhwc, P, mcs, wp, bp, o, g.os[1], g.os[3], ftmp.data());
      after.apply(g, out, n, oy0, th, ox0, tw);  // (while the tile is in cache)
    };
    if (bands) {  // (band i on thread i, call after call)
#pragma omp for schedule(static, 1)
      for (i64 t = 0; t < tl.count; ++t) tile(t);
    } else if (g.N == 1 && omp_get_num_threads() == 2) {
      // Batch 1 on two threads: one takes tiles from the top of the image, the other from
      // the bottom, until they meet. Each thread keeps its part of the image from call to
      // call and from layer to layer, and a thread that the machine slows still takes fewer
      // tiles. Taken in turn (dynamic), neighbouring tiles went to either thread, and on run
      // AF's Zen 2 VM (vCPUs on different core complexes) the next layer read half its input
      // from the other complex: from the ends MobileNetV1 at batch 1 took 0.944-0.983x the
      // time (channels_last 0.908x), its 112 x 112 and 56 x 56 stages 0.91-0.92x, MobileNetV2
      // 0.975-0.99x; bitwise the same.
      const bool top = omp_get_thread_num() == 0;
      for (i64 mine = 0; taken.fetch_add(1, std::memory_order_relaxed) < tl.count; ++mine)
        tile(top ? mine : tl.count - 1 - mine);
    } else {
      for_tasks(tl.count, image_a_thread(g.N, g.threads), tile);
    }
    if (g.stream_out) stream_fence();
  }
}

}  // namespace
