// Fused depthwise(+pointwise) convolution kernels for CPU; see docs/performance.md.
//
// One translation unit with a plain C ABI, loaded with ctypes (no torch headers, so it
// compiles in seconds). Its parts are the headers included below, in order, one job each:
// element and vector types (vec.h), the call's geometry (geometry.h), BLAS (blas.h), the own
// GEMMs (gemm.h, gemm_bf16.h), padded copies (padding.h), reading ahead (reads.h), the planar
// and channels_last depthwise loops (planar.h, nhwc.h), output tiles (tiles.h, nhwc_tile.h),
// packed weights (pack.h), the forwards (sep_forward.h, the 1x1 one in pointwise.h, a stem's
// dense one in dense.h, dw_forward.h) and the backward (backward.h), with the buffers a thread
// keeps from call to call (kept.h), and a replayed plan's calls as one program (program.h);
// the C ABI is at the end of this file. Tensors arrive as raw pointers plus int64 strides;
// the pointwise GEMM goes to the BLAS that libtorch_cpu already carries (MKL: sgemm_, dgemm_,
// cblas_gemm_bf16bf16f32). Threads: OpenMP, as many as torch.get_num_threads().
//
// Everything is done as 2d: a 1d convolution is a 2d one with H = 1.
//
// Forward (separable): the output is cut into tiles of whole output rows (or pieces of
// one row when a row is too large). For each tile the depthwise output of all C*M
// channels is computed into a per-thread buffer that fits in L2, then one GEMM with the
// pointwise weight writes the output tile. The intermediate never reaches DRAM.
//
// Backward (separable and depthwise): tasks are (image, block of input channels). For
// a block, the padded input planes are copied into a cache-resident buffer, the
// depthwise output of the block is recomputed (for the pointwise weight gradient), the
// gradient of the intermediate of the block is one GEMM, and from it the depthwise
// weight/bias gradients and the input gradient of the block's channels follow. Blocks
// own disjoint input channels, so the input gradient needs no reduction; the weight
// gradients are summed per thread and reduced at the end.
//
// Two internal layouts: "planar" (one channel plane at a time, vectorised along the
// row; used for NCHW inputs) and "nhwc" (vectorised along channels; used when the
// input's channel stride is 1). Padding of any mode is applied while copying input
// into the per-tile buffer, through row/column index maps (-1 = zero).

#include "vec.h"
#include "geometry.h"
#include "blas.h"
#include "gemm.h"
#include "gemm_bf16.h"
#include "padding.h"
#include "reads.h"
#include "planar.h"
#include "nhwc.h"
#include "tiles.h"
#include "nhwc_tile.h"
#include "nhwc_ring.h"
#include "pack.h"
#include "kept.h"
#include "mid_stage.h"
#include "sep_forward.h"
#include "pointwise.h"
#include "dense.h"
#include "dw_forward.h"
#include "backward.h"
#include "program.h"

// ------------------------------------------------------------------ C ABI
// dtype codes: 0 float32, 1 float64, 2 bfloat16.

namespace {

template <typename S>
int sep_forward_as(const void* x, const void* wd, const void* bd, const void* wp, const void* bp,
                   void* out, const i64* geo, const void* const* norms) {
  const MidNorm<S> norm{(const S*)norms[0], (const S*)norms[1], (const S*)norms[2],
                        (const S*)norms[3]};
  const MidNorm<S> post{(const S*)norms[4], (const S*)norms[5], (const S*)norms[6],
                        (const S*)norms[7]};
  sep_forward<S>((const S*)x, (const S*)wd, (const S*)bd, (const S*)wp, (const S*)bp, (S*)out,
                 geo, norm, post);
  return 0;
}

}  // namespace

extern "C" {

int sepconv_abi_version() { return 12; }

// Input bytes from which channels_last tiles touch their input first where the reads are on
// (kTouchBytes): auto's training rule for channels_last 3x3 depthwise calls follows it.
i64 sepconv_touch_bytes() { return kTouchBytes; }

// The vector width the library was compiled for, in bits: 512 with AVX-512, 256 with AVX2.
// (Reported by kernels.info(); with AVX2 and FMA the loops use one ymm register a vector.)
int sepconv_vector_bits() {
#if defined(__AVX512F__)
  return 512;
#elif defined(__AVX2__)
  return 256;
#else
  return 128;
#endif
}

// Tile GEMMs: 1 the own kernel, 0 BLAS (MKL from libtorch), 2 by layout and tile
// count (own_gemm_for). Returns the old value. Not to be changed while a kernel runs.
int sepconv_set_own_gemm(int mode) {
  const int old = g_own_gemm;
  g_own_gemm = (mode >= 0 && mode <= 2) ? mode : 1;
  return old;
}

// Input brought into the cache ahead of the loops: 0 no, 1 yes (g_reads). Returns the old value.
// Not to be changed while a kernel runs.
int sepconv_set_reads(int mode) {
  const int old = g_reads;
  g_reads = mode == 1 ? 1 : 0;
  return old;
}

// Frees the buffers that the calling thread and the OpenMP workers of a team of `threads`
// keep between calls (kept.h); later calls allocate them again.
void sepconv_release_buffers(int threads) {
#pragma omp parallel num_threads(threads > 0 ? threads : 1)
  release_kept();
}

// The separable forward. geo[30..33] may ask for the inference stage between the
// convolutions, geo[34..37] for the one after them (mid_stage.h); norms: eight pointers, the
// batch norms' mean, var, weight and bias of the stage between (C*M values each) and of the
// stage after (O values each), null where there is none (weight and bias may be null).
int sepconv_sep_forward(int dtype, const void* x, const void* wd, const void* bd, const void* wp,
                        const void* bp, void* out, const i64* geo, const void* const* norms) {
  switch (dtype) {
    case 0:
      return sep_forward_as<float>(x, wd, bd, wp, bp, out, geo, norms);
    case 1:
      return sep_forward_as<double>(x, wd, bd, wp, bp, out, geo, norms);
    case 2:
      return sep_forward_as<bf16>(x, wd, bd, wp, bp, out, geo, norms);
  }
  return 1;
}

// The 1x1 convolution of inference, float32 (pointwise.h): out = clamp(norm(w x + b)).
// geo: see PwGeo; mean, var, nw, nb: the norm's tensors (O values; null without a norm; nw
// and nb may be null), b may be null.
int sepconv_pw_forward(const void* x, const void* w, const void* b, const void* mean,
                       const void* var, const void* nw, const void* nb, void* out,
                       const i64* geo) {
  const MidNorm<float> norm{(const float*)mean, (const float*)var, (const float*)nw,
                            (const float*)nb};
  pw_forward((const float*)x, (const float*)w, (const float*)b, norm, (float*)out, geo);
  return 0;
}

// The dense convolution of few input channels of inference (a stem), float32 (dense.h).
int sepconv_dense_forward(const void* x, const void* w, const void* b, const void* mean,
                          const void* var, const void* nw, const void* nb, void* out,
                          const i64* geo) {
  const MidNorm<float> norm{(const float*)mean, (const float*)var, (const float*)nw,
                            (const float*)nb};
  dense_forward((const float*)x, (const float*)w, (const float*)b, norm, (float*)out, geo);
  return 0;
}

int sepconv_dw_forward(int dtype, const void* x, const void* wd, const void* bd, void* out,
                       const i64* geo) {
  switch (dtype) {
    case 0:
      dw_forward<float>((const float*)x, (const float*)wd, (const float*)bd, (float*)out, geo);
      return 0;
    case 1:
      dw_forward<double>((const double*)x, (const double*)wd, (const double*)bd, (double*)out, geo);
      return 0;
    case 2:
      dw_forward<bf16>((const bf16*)x, (const bf16*)wd, (const bf16*)bd, (bf16*)out, geo);
      return 0;
  }
  return 1;
}

// Gradients: dwd (CM*T), dbd (CM or null), dwp (O*CMg or null, separable only), dbp (O or
// null: the output gradient's sums, the pointwise bias gradient; computed with dwp only) in
// float32 for dtype 0 and float64 for dtype 1. wp == null means depthwise alone.
// deterministic != 0: the same results on every call with as many threads
// (torch.use_deterministic_algorithms).
int sepconv_backward(int dtype, const void* x, const void* wd, const void* wp, const void* gy,
                     const i64* gys, void* gx, const i64* gxs, void* dwd, void* dbd, void* dwp,
                     void* dbp, const i64* geo, int deterministic) {
  switch (dtype) {
    case 0:
      backward<float>((const float*)x, (const float*)wd, (const float*)wp, (const float*)gy, gys,
                      (float*)gx, gxs, (float*)dwd, (float*)dbd, (float*)dwp, (float*)dbp, geo,
                      deterministic != 0);
      return 0;
    case 1:
      backward<double>((const double*)x, (const double*)wd, (const double*)wp, (const double*)gy,
                       gys, (double*)gx, gxs, (double*)dwd, (double*)dbd, (double*)dwp,
                       (double*)dbp, geo, deterministic != 0);
      return 0;
  }
  return 1;
}

// A replayed plan's calls in one call (program.h): `count` steps of kStepWords words; table:
// the pointers references of kind 1 and 4 name; input, output: the plan's; arena: the
// buffers between its steps. Returns the first nonzero code of a step (2: an unknown op).
int sepconv_run_program(const i64* steps, i64 count, void* const* table, void* input,
                        void* output, void* arena) {
  const ProgramFrame frame{table, input, output, (char*)arena};
  for (i64 s = 0; s < count; ++s) {
    const i64* step = steps + s * kStepWords;
    void* a[kStepArgs];
    for (int i = 0; i < kStepArgs; ++i) a[i] = resolve(step[4 + i], frame);
    const int code = (int)step[1];
    int rc = 2;
    switch (step[0]) {
      case kOpSep:
        rc = sepconv_sep_forward(code, a[0], a[1], a[2], a[3], a[4], a[5], (const i64*)a[6],
                                 (const void* const*)a[7]);
        break;
      case kOpPointwise:
        rc = sepconv_pw_forward(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], (const i64*)a[8]);
        break;
      case kOpDense:
        rc = sepconv_dense_forward(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7],
                                   (const i64*)a[8]);
        break;
      case kOpDepthwise:
        rc = sepconv_dw_forward(code, a[0], a[1], a[2], a[3], (const i64*)a[4]);
        break;
      case kOpAdd:
        add_into((float*)a[0], (const float*)a[1], step[2], (int)step[3]);
        rc = 0;
        break;
    }
    if (rc != 0) return rc;
  }
  return 0;
}
}
