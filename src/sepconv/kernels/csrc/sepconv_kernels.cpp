// Fused depthwise(+pointwise) convolution kernels for CPU; see docs/performance.md.
//
// One translation unit with a plain C ABI, loaded with ctypes (no torch headers, so
// it compiles in seconds). Tensors arrive as raw pointers plus int64 strides; the
// pointwise GEMM goes to the BLAS that libtorch_cpu already carries (MKL: sgemm_,
// dgemm_, cblas_gemm_bf16bf16f32). Threads: OpenMP, as many as torch.get_num_threads().
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

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include <omp.h>
#include <unistd.h>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

typedef int64_t i64;

extern "C" {
void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*,
            const float*, const int*, const float*, const int*, const float*, float*, const int*);
void dgemm_(const char*, const char*, const int*, const int*, const int*, const double*,
            const double*, const int*, const double*, const int*, const double*, double*,
            const int*);
void cblas_gemm_bf16bf16f32(int layout, int transa, int transb, int m, int n, int k, float alpha,
                            const uint16_t* a, int lda, const uint16_t* b, int ldb, float beta,
                            float* c, int ldc);
}

namespace {

struct bf16 {
  uint16_t x;
};

inline float toA(float v) { return v; }
inline double toA(double v) { return v; }
inline float toA(bf16 v) {
  uint32_t u = uint32_t(v.x) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline void fromA(float v, float* d) { *d = v; }
inline void fromA(double v, double* d) { *d = v; }
inline void fromA(float v, bf16* d) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    d->x = uint16_t((u >> 16) | 0x40);  // quiet NaN
    return;
  }
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  d->x = uint16_t(u >> 16);
}

template <typename S> struct Acc { typedef float type; };
template <> struct Acc<double> { typedef double type; };

// One vector register: 64 bytes with AVX-512, else 32 (AVX2's ymm). With a 64-byte type on
// AVX2 every vector took two of the 16 ymm registers and the depthwise loops, blocked for 32
// zmm, spilled (run M); the loops below are written for V<A>::L lanes and block by kVecRegs.
// Other builds (no AVX2 and FMA: the non-native build, other architectures) keep the 64-byte
// type, which the own GEMM's 16-column blocks (micro_f32) assume where micro_avx2 is absent.
#if !defined(__AVX512F__) && defined(__AVX2__) && defined(__FMA__)
#define SEPCONV_VEC32 1
constexpr int kVecBytes = 32, kVecRegs = 16;
#else
constexpr int kVecBytes = 64, kVecRegs = 32;
#endif
template <typename A> struct V;
template <> struct V<float> {
  typedef float t __attribute__((vector_size(kVecBytes)));
  enum { L = kVecBytes / 4 };
};
template <> struct V<double> {
  typedef double t __attribute__((vector_size(kVecBytes)));
  enum { L = kVecBytes / 8 };
};

#if defined(__AVX512F__)
template <typename A> inline typename V<A>::t vld(const A* p) {
  typename V<A>::t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <typename A> inline void vst(A* p, typename V<A>::t v) { std::memcpy(p, &v, sizeof v); }
#else
// Without AVX-512 a memcpy of the vector took its address (the accumulators went to the
// stack and out again by 16-byte moves, when the vectors were 64 bytes); a plain access
// through an unaligned, may_alias vector type is one ymm move.
template <typename A> struct Unaligned {
  typedef A t __attribute__((vector_size(kVecBytes), aligned(alignof(A)), may_alias));
};
template <typename A> inline typename V<A>::t vld(const A* p) {
  return *reinterpret_cast<const typename Unaligned<A>::t*>(p);
}
template <typename A> inline void vst(A* p, typename V<A>::t v) {
  *reinterpret_cast<typename Unaligned<A>::t*>(p) = v;
}
#endif
template <typename A> inline typename V<A>::t vzero() {
  typename V<A>::t v;
  std::memset(&v, 0, sizeof v);
  return v;
}
template <typename A> inline typename V<A>::t vset(A s) { return vzero<A>() + s; }
// The float broadcast as an initialiser list: without AVX-512, zero + s went through the
// stack (xmm stores per broadcast), in the depthwise loops' weight broadcasts.
#if defined(SEPCONV_VEC32)
template <> inline V<float>::t vset<float>(float s) { return V<float>::t{s, s, s, s, s, s, s, s}; }
#elif !defined(__AVX512F__)
template <> inline V<float>::t vset<float>(float s) {
  return V<float>::t{s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s};
}
#endif
// Store a vector of accumulators into storage type S.
inline void vstS(float* p, V<float>::t v) { vst<float>(p, v); }
inline void vstS(double* p, V<double>::t v) { vst<double>(p, v); }
inline void vstS(bf16* p, V<float>::t v) {
  for (int l = 0; l < V<float>::L; ++l) fromA(v[l], p + l);
}
// Load storage type S as accumulators.
inline V<float>::t vldS(const float* p) { return vld<float>(p); }
inline V<double>::t vldS(const double* p) { return vld<double>(p); }
inline V<float>::t vldS(const bf16* p) {
  V<float>::t v;
  for (int l = 0; l < V<float>::L; ++l) v[l] = toA(p[l]);
  return v;
}

// Output stores of the depthwise kernels: non-temporal (bypassing the caches, no read for
// ownership) while a thread streams a large output, when the address is 64-byte aligned.
// initial-exec: a thread_local of a dlopen'ed library is otherwise reached through
// __tls_get_addr on every store (a few percent of the depthwise kernel's time).
thread_local bool t_stream __attribute__((tls_model("initial-exec"))) = false;
// Without AVX-512 plain stores: 32-byte non-temporal stores took 1.2x the time of the planar
// 3x3 depthwise on AMD Zen 3 (8x128x112x112).
inline void vstOut(float* p, V<float>::t v) {
#if defined(__AVX512F__)
  if (t_stream && (reinterpret_cast<uintptr_t>(p) & 63) == 0) {
    _mm512_stream_ps(p, (__m512)v);
    return;
  }
#endif
  vst<float>(p, v);
}
inline void vstOut(double* p, V<double>::t v) {
#if defined(__AVX512F__)
  if (t_stream && (reinterpret_cast<uintptr_t>(p) & 63) == 0) {
    _mm512_stream_pd(p, (__m512d)v);
    return;
  }
#endif
  vst<double>(p, v);
}
inline void vstOut(bf16* p, V<float>::t v) { vstS(p, v); }
// The first n (< L) lanes of v into storage type S: lane by lane, or one masked store where
// AVX-512 has it (the lane-by-lane loop cost as much as the FMAs of a 3x3 output vector).
template <typename S, typename Vec>
inline void vstPart(S* p, Vec v, i64 n) {
  for (i64 l = 0; l < n; ++l) fromA(v[l], p + l);
}
#if !defined(__AVX512F__)
// Through a buffer: element access (above) kept the vector on the stack on the full-store
// path as well.
template <typename A>
inline void vst_first(A* p, typename V<A>::t v, i64 n) {
  alignas(64) A tmp[V<A>::L];
  vst<A>(tmp, v);
  std::memcpy(p, tmp, sizeof(A) * n);
}
#if defined(SEPCONV_VEC32)
// Four, two and one lanes by plain stores. Through the buffer, a memcpy call of n floats made
// a row block's partial column vector cost four times a whole one (14 x 14 planes: 15.8 TSC
// cycles a vector against 4 on 56 x 56 ones); one masked store (_mm256_maskstore_ps) costs
// about 10 cycles on AMD Zen 3 (7 x 7 3x3 planes: 17.4 cycles a row against 7.0 with whole
// stores).
inline void vstPart(float* p, V<float>::t v, i64 n) {
  __m128 part = _mm256_castps256_ps128((__m256)v);
  if (n & 4) {
    _mm_storeu_ps(p, part);
    part = _mm256_extractf128_ps((__m256)v, 1);
    p += 4;
  }
  if (n & 2) {
    _mm_storel_pi(reinterpret_cast<__m64*>(p), part);
    part = _mm_movehl_ps(part, part);
    p += 2;
  }
  if (n & 1) _mm_store_ss(p, part);
}
#else
inline void vstPart(float* p, V<float>::t v, i64 n) { vst_first<float>(p, v, n); }
#endif
inline void vstPart(double* p, V<double>::t v, i64 n) { vst_first<double>(p, v, n); }
#endif
#if defined(__AVX512F__)
inline void vstPart(float* p, V<float>::t v, i64 n) {
  _mm512_mask_storeu_ps(p, __mmask16((1u << n) - 1), (__m512)v);
}
inline void vstPart(double* p, V<double>::t v, i64 n) {
  _mm512_mask_storeu_pd(p, __mmask8((1u << n) - 1), (__m512d)v);
}
#endif
// Whether environment variable `name` is unset or anything but "0" (switches that turn a
// path off for comparison; callers read it once).
inline bool env_not_zero(const char* name) {
  const char* v = std::getenv(name);
  return !(v && std::strcmp(v, "0") == 0);
}

// SEPCONV_KERNELS_STREAM=0: no non-temporal output stores at all (for comparison).
inline bool streaming_enabled() {
  static const bool enabled = env_not_zero("SEPCONV_KERNELS_STREAM");
  return enabled;
}

inline void stream_fence() {
#if defined(__AVX512F__) || defined(__AVX2__)
  _mm_sfence();
#endif
}

// Whether a large depthwise output goes through a per-thread staging buffer (stream_rows)
// rather than from the loops with vstOut's non-temporal stores. Without AVX-512 a vector
// store is half a cache line, and the loops write a line's two halves at different times:
// non-temporal stores then flush partial lines (the planar 3x3 depthwise took 1.2x the time
// of plain stores), and plain ones read every output line before writing it (AMD Zen 3,
// 8x128x112x112 3x3: 8 GB/s with plain stores). Staged, the loops write to L2 and the output
// is copied once with whole-line non-temporal stores.
constexpr bool kStageOutput = kVecBytes < 64;

// dst rows [0, rows) of `cols` elements (row stride dld) from src (row stride sld): the whole
// 64-byte lines of each row with non-temporal stores, the partial lines at its ends plainly.
template <typename S>
void stream_rows(const S* src, i64 sld, S* dst, i64 dld, i64 rows, i64 cols) {
  if (sld == cols && dld == cols) {  // one run
    cols *= rows;
    rows = 1;
  }
  for (i64 r = 0; r < rows; ++r) {
    const char* s = reinterpret_cast<const char*>(src + r * sld);
    char* d = reinterpret_cast<char*>(dst + r * dld);
    const i64 bytes = cols * i64(sizeof(S));
    const i64 head = std::min<i64>(bytes, (64 - (reinterpret_cast<uintptr_t>(d) & 63)) & 63);
    const i64 body = (bytes - head) & ~i64(63);
    std::memcpy(d, s, head);
#if defined(__AVX2__)
    for (i64 i = head; i < head + body; i += 64) {
      const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i));
      const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i + 32));
      _mm256_stream_si256(reinterpret_cast<__m256i*>(d + i), a);
      _mm256_stream_si256(reinterpret_cast<__m256i*>(d + i + 32), b);
    }
#else
    std::memcpy(d + head, s + head, body);
#endif
    std::memcpy(d + head + body, s + head + body, bytes - head - body);
  }
}

template <typename A> inline A hsum(typename V<A>::t v) {
  A s = 0;
  for (int l = 0; l < V<A>::L; ++l) s += v[l];
  return s;
}

// ------------------------------------------------------------------ geometry

struct Geo {
  i64 N, C, M, H, W, OH, OW, KH, KW, sy, sx, dy, dx, pt, pl, mode, O, G, threads, nhwc, budget;
  bool budget_set;  // the caller chose the budget (SEPCONV_KERNELS_TILE_BYTES)
  i64 CM, T, Hu, Wu, Qs, Qrow, CMg, Og, min_pixels, out_nhwc;
  i64 xs[4], os[4];
  const float* wpT = nullptr;     // pointwise weight packed in kPanel-column panels (own GEMM)
  const float* bp_pad = nullptr;  // pointwise bias with slack (own GEMM)
  const float* wpb = nullptr;     // [wp | bp], O x (CM + 1) (BLAS, planar mid, one group)
  bool own_gemm = false;          // forward tile GEMMs: own kernel (else BLAS)
  bool stream_out = false;        // own tile GEMMs store whole lines around the caches
};

Geo make_geo(const i64* g) {
  Geo r;
  r.N = g[0]; r.C = g[1]; r.M = g[2]; r.H = g[3]; r.W = g[4]; r.OH = g[5]; r.OW = g[6];
  r.KH = g[7]; r.KW = g[8]; r.sy = g[9]; r.sx = g[10]; r.dy = g[11]; r.dx = g[12];
  r.pt = g[13]; r.pl = g[14]; r.mode = g[15]; r.O = g[16]; r.G = g[17];
  r.threads = g[18] > 0 ? g[18] : 1; r.nhwc = g[19]; r.budget = g[20] > 0 ? g[20] : (256 << 10);
  r.budget_set = g[20] > 0;
  for (int i = 0; i < 4; ++i) { r.xs[i] = g[21 + i]; r.os[i] = g[25 + i]; }
  r.out_nhwc = g[29];  // 1 when the output has channels innermost
  r.CM = r.C * r.M;
  r.T = r.KH * r.KW;
  r.Hu = (r.OH - 1) * r.sy + (r.KH - 1) * r.dy + 1;
  r.Wu = (r.OW - 1) * r.sx + (r.KW - 1) * r.dx + 1;
  r.Qs = (r.Wu + r.sx - 1) / r.sx;
  r.Qrow = r.Qs * r.sx;
  r.G = r.G > 0 ? r.G : 1;
  r.CMg = r.CM / r.G;
  r.Og = r.O / r.G;
  r.min_pixels = 256;
  return r;
}

// Source index of padded coordinate p (input size n, low padding lo), or -1 for zero.
inline i64 src_index(i64 p, i64 n, i64 lo, i64 mode) {
  i64 i = p - lo;
  if (i >= 0 && i < n) return i;
  switch (mode) {
    case 1:  // reflect (edge not repeated)
      if (n == 1) return 0;
      while (i < 0 || i >= n) i = i < 0 ? -i : 2 * (n - 1) - i;
      return i;
    case 2:  // replicate
      return i < 0 ? 0 : n - 1;
    case 3:  // circular
      return ((i % n) + n) % n;
    default:
      return -1;
  }
}

std::vector<i64> make_map(i64 count, i64 n, i64 lo, i64 mode) {
  std::vector<i64> m(count);
  for (i64 p = 0; p < count; ++p) m[p] = src_index(p, n, lo, mode);
  return m;
}

// Stride 1 and dilation 1 in both directions (what the row-blocked and direct loops need).
inline bool unit_steps(const Geo& g) { return g.sx == 1 && g.sy == 1 && g.dx == 1 && g.dy == 1; }

// Position of padded column q (relative to a buffer start) in the stride-phase layout:
// columns with the same q % sx are stored together, so that every tap of a strided
// convolution reads consecutive elements.
inline i64 phase_pos(i64 q, i64 sx, i64 qs) { return (q % sx) * qs + q / sx; }

// ------------------------------------------------------------------ BLAS

// C = A.B + beta*C with matrices given by (rows, cols, row stride, col stride); one of the
// two strides of each matrix is 1.
struct Mat {
  const void* p;
  i64 rs, cs;
};

template <typename T>
void blas(char ta, char tb, int m, int n, int k, T alpha, const T* a, int lda, const T* b, int ldb,
          T beta, T* c, int ldc);
template <>
void blas<float>(char ta, char tb, int m, int n, int k, float alpha, const float* a, int lda,
                 const float* b, int ldb, float beta, float* c, int ldc) {
  sgemm_(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
}
template <>
void blas<double>(char ta, char tb, int m, int n, int k, double alpha, const double* a, int lda,
                  const double* b, int ldb, double beta, double* c, int ldc) {
  dgemm_(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
}

// Describe a row-major-ish (rows x cols) matrix as a column-major BLAS operand.
inline void as_colmajor(const Mat& x, i64 rows, i64 cols, char* trans, int* ld) {
  if (x.rs == 1 && (cols == 1 || x.cs >= std::max<i64>(rows, 1))) {
    *trans = 'N';
    *ld = int(std::max<i64>(x.cs, std::max<i64>(rows, 1)));
  } else {
    *trans = 'T';
    *ld = int(std::max<i64>(x.rs, std::max<i64>(cols, 1)));
  }
}

template <typename T>
void mm(i64 M, i64 N, i64 K, Mat A, Mat B, T* C, i64 crs, i64 ccs, T beta) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    for (i64 i = 0; i < M; ++i)
      for (i64 j = 0; j < N; ++j) C[i * crs + j * ccs] = beta == T(0) ? T(0) : beta * C[i * crs + j * ccs];
    return;
  }
  char ta, tb;
  int lda, ldb;
  if (ccs == 1 && !(crs == 1 && N > 1)) {
    // C row-major: C^T (N x M, col-major ld crs) = B^T A^T.
    Mat At{A.p, A.cs, A.rs}, Bt{B.p, B.cs, B.rs};
    as_colmajor(Bt, N, K, &ta, &lda);
    as_colmajor(At, K, M, &tb, &ldb);
    blas<T>(ta, tb, int(N), int(M), int(K), T(1), (const T*)B.p, lda, (const T*)A.p, ldb, beta, C,
            int(std::max<i64>(crs, N)));
  } else {
    as_colmajor(A, M, K, &ta, &lda);
    as_colmajor(B, K, N, &tb, &ldb);
    blas<T>(ta, tb, int(M), int(N), int(K), T(1), (const T*)A.p, lda, (const T*)B.p, ldb, beta, C,
            int(std::max<i64>(ccs, M)));
  }
}

// bfloat16 inputs, float32 output C (M x N) row-major with row stride ldc.
void mm_bf16(i64 M, i64 N, i64 K, Mat A, Mat B, float* C, i64 ldc) {
  if (M <= 0 || N <= 0) return;
  const int RowMajor = 101, NoTrans = 111, Trans = 112;
  int ta, tb, lda, ldb;
  if (A.cs == 1) { ta = NoTrans; lda = int(std::max<i64>(A.rs, K)); }
  else { ta = Trans; lda = int(std::max<i64>(A.cs, M)); }
  if (B.cs == 1) { tb = NoTrans; ldb = int(std::max<i64>(B.rs, N)); }
  else { tb = Trans; ldb = int(std::max<i64>(B.cs, K)); }
  cblas_gemm_bf16bf16f32(RowMajor, ta, tb, int(M), int(N), int(K), 1.0f, (const uint16_t*)A.p, lda,
                         (const uint16_t*)B.p, ldb, 0.0f, C, int(ldc));
}

// ------------------------------------------------------------------ own float32 GEMM
// C[M x N] = A[M x K] . B[K x N] + bias, for the forward's tile GEMMs. MKL picks its AVX2
// code path on AMD CPUs; this register-blocked AVX-512 kernel (MR rows x NV vectors of C in
// registers, B rows streamed from L1, A broadcast) reaches about twice its rate there (see
// docs/performance.md). Without AVX-512, micro_avx2 below does the same in 16-column blocks
// (8 for a last narrow one), K in blocks of kKC.
// A: element (i, k) at a[i*lda + k]; B: row-major, row stride ldb; C: row-major, row stride
// ldc. bias_row[i] or bias_col[j] (or neither) initialises C.
// Only valid columns of B are read and of C written; bias_col is read by whole vectors
// (callers give it slack).

template <int MR, int NV>
inline void micro_f32(i64 K, const float* a, i64 lda, const float* b, i64 ldb, float* c, i64 ldc,
                      const float* bias_row, const float* bias_col, i64 nvalid) {
  typedef V<float>::t vec;
  constexpr int L = V<float>::L;
  vec acc[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) {
      if (bias_row)
        acc[i][v] = vset<float>(bias_row[i]);
      else if (bias_col)
        acc[i][v] = vld<float>(bias_col + v * L);
      else
        acc[i][v] = vzero<float>();
    }
  const i64 tail = nvalid - (NV - 1) * L;  // valid lanes of the last vector
  // Rows before the last may be read by whole vectors (past the row end lies the next row,
  // ldb >= N); the last row's partial vector is read lane by lane, so B is never read past
  // its last element (B may be a caller's tensor).
  const i64 kfull = tail >= L ? K : K - 1;
  for (i64 k = 0; k < K; ++k) {
    vec bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v + 1 < NV; ++v) bv[v] = vld<float>(b + k * ldb + v * L);
    if (k < kfull) {
      bv[NV - 1] = vld<float>(b + k * ldb + (NV - 1) * L);
    } else {
      bv[NV - 1] = vzero<float>();
      for (i64 l = 0; l < tail; ++l) bv[NV - 1][l] = b[k * ldb + (NV - 1) * L + l];
    }
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const float ai = a[i * lda + k];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] += ai * bv[v];
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) {
      const i64 n0 = v * L;
      if (n0 + L <= nvalid) {
        vst<float>(c + i * ldc + n0, acc[i][v]);
      } else {
        for (i64 l = 0; n0 + l < nvalid; ++l) c[i * ldc + n0 + l] = acc[i][v][l];
      }
    }
}

#if defined(__AVX512F__) || defined(SEPCONV_VEC32)
// The lanes of columns [first, first + lanes) that lie in [0, W), as a mask (arithmetic: a
// loop over the lanes took a third of a 3x3 block's time), and a load of those lanes (zeros
// elsewhere; the others are not read, so they may lie outside the plane).
#if defined(__AVX512F__)
typedef __mmask16 LaneMask;
inline LaneMask lanes_inside(i64 first, i64 lanes, i64 W) {
  const i64 lo = std::clamp<i64>(-first, 0, lanes), hi = std::clamp<i64>(W - first, lo, lanes);
  return __mmask16(((uint32_t(1) << hi) - 1) & ~((uint32_t(1) << lo) - 1));
}
inline V<float>::t load_inside(LaneMask m, const float* p) {
  return (V<float>::t)_mm512_maskz_loadu_ps(m, p);
}
#else
typedef __m256i LaneMask;
inline LaneMask lanes_inside(i64 first, i64 lanes, i64 W) {
  const i64 lo = std::clamp<i64>(-first, 0, lanes), hi = std::clamp<i64>(W - first, lo, lanes);
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_and_si256(_mm256_cmpgt_epi32(lane, _mm256_set1_epi32(int(lo - 1))),
                          _mm256_cmpgt_epi32(_mm256_set1_epi32(int(hi)), lane));
}
inline V<float>::t load_inside(LaneMask m, const float* p) {
  return (V<float>::t)_mm256_maskload_ps(p, m);
}
#endif
#endif

#if !defined(__AVX512F__) && defined(__AVX2__) && defined(__FMA__)
// Lanes [0, n) of v to p (n clamped to 0-8).
inline void store_lanes(float* p, __m256 v, i64 n) {
  if (n >= 8)
    _mm256_storeu_ps(p, v);
  else if (n > 0)
    vstPart(p, (V<float>::t)v, n);
}

// micro_f32<MR, 1> for CPUs without AVX-512, in intrinsics: GCC lowers the 64-byte vector
// type through the stack there (vmovq/vpinsrq per lane), which ran the tile GEMMs at a sixth
// of MKL's rate. 16 columns are two ymm registers; MR x 2 accumulators (12) fit the 16.
template <int MR, int NW = 2>
inline void micro_avx2(i64 K, const float* a, i64 lda, const float* b, i64 ldb, float* c,
                       i64 ldc, const float* bias_row, const float* bias_col, i64 nvalid,
                       bool stream, bool accumulate) {
  // NW ymm columns: 16 (NW = 2), or 8 for a last column block of 8 or fewer (an N of 24 as 16
  // + 16 did a quarter of its FMAs on zeros). accumulate: C += A B (a later block of K;
  // the biases were added with the first), else C = A B + biases.
  // A partial block (nvalid < NC) reads B's last row and C by masked loads, and writes C
  // lane by lane (store_lanes): copied through a buffer (memcpy), the accumulators' address
  // escaped and GCC kept them in memory, storing each on every k step, wherever it did not
  // inline this function (2.4x the time; earlier a memcpy inside the k loop, 2.3x).
  // Every index of acc is a constant (unrolled loops, column 1 written out): GCC keeps an
  // array with a variable index in memory.
  constexpr i64 NC = 8 * NW;
  const bool partial = nvalid < NC;
  const __m256i mask0 = lanes_inside(0, 8, nvalid), mask1 = lanes_inside(8, 8, nvalid);
  auto load_c = [&](const float* p, __m256i m) __attribute__((always_inline)) {
    return partial ? _mm256_maskload_ps(p, m) : _mm256_loadu_ps(p);
  };
  __m256 acc[MR][NW];
#pragma GCC unroll 12
  for (int i = 0; i < MR; ++i) {
    const float* ci = c + i * ldc;
    acc[i][0] = accumulate ? load_c(ci, mask0)
                : bias_row ? _mm256_set1_ps(bias_row[i])
                : bias_col ? _mm256_loadu_ps(bias_col)
                           : _mm256_setzero_ps();
    if constexpr (NW == 2)
      acc[i][NW - 1] = accumulate ? load_c(ci + 8, mask1)
                       : bias_row ? _mm256_set1_ps(bias_row[i])
                       : bias_col ? _mm256_loadu_ps(bias_col + 8)
                                  : _mm256_setzero_ps();
  }
  // Whole vectors of B's rows but the last ones, read masked (B may be a caller's tensor,
  // not to be read past its end): the last row, and more where rows are shorter than a
  // block (ldb < NC, the backward's B of a few pixels), whose whole vectors would reach past
  // the last row's valid columns.
  const i64 kfull = partial ? std::max<i64>(0, K - (NC - nvalid + ldb - 1) / ldb) : K;
  for (i64 k = 0; k < K; ++k) {
    const float* bk = b + k * ldb;
    const bool whole = k < kfull;
    const __m256 b0 = whole ? _mm256_loadu_ps(bk) : _mm256_maskload_ps(bk, mask0);
    const __m256 b1 = NW == 1 ? b0
                      : whole ? _mm256_loadu_ps(bk + 8)
                              : _mm256_maskload_ps(bk + 8, mask1);
#pragma GCC unroll 12
    for (int i = 0; i < MR; ++i) {
      const __m256 ai = _mm256_broadcast_ss(a + i * lda + k);
      acc[i][0] = _mm256_fmadd_ps(ai, b0, acc[i][0]);
      if constexpr (NW == 2) acc[i][NW - 1] = _mm256_fmadd_ps(ai, b1, acc[i][NW - 1]);
    }
  }
#pragma GCC unroll 12
  for (int i = 0; i < MR; ++i) {
    float* ci = c + i * ldc;
    if (NW == 2 && !partial && stream && (reinterpret_cast<uintptr_t>(ci) & 63) == 0) {
      _mm256_stream_ps(ci, acc[i][0]);  // one whole line
      _mm256_stream_ps(ci + 8, acc[i][NW - 1]);
    } else if (!partial) {
      _mm256_storeu_ps(ci, acc[i][0]);
      if constexpr (NW == 2) _mm256_storeu_ps(ci + 8, acc[i][NW - 1]);
    } else {  // (not by masked stores: about 10 cycles each on AMD Zen 3, see vstPart)
      store_lanes(ci, acc[i][0], nvalid);
      if constexpr (NW == 2) store_lanes(ci + 8, acc[i][NW - 1], nvalid - 8);
    }
  }
}
#define SEPCONV_MICRO_AVX2 1
#endif

// stream: whole-line stores of C bypass the caches; accumulate: C += A B (both only where
// micro_avx2 runs).
template <int NV>
inline void micro_rows(i64 mr, i64 K, const float* a, i64 lda, const float* b, i64 ldb, float* c,
                       i64 ldc, const float* bias_row, const float* bias_col, i64 nvalid,
                       bool stream = false, bool accumulate = false) {
#if defined(SEPCONV_MICRO_AVX2)
  if (NV == 1) {
    auto run = [&](auto mr_c, auto nw_c) {
      micro_avx2<decltype(mr_c)::value, decltype(nw_c)::value>(
          K, a, lda, b, ldb, c, ldc, bias_row, bias_col, nvalid, stream, accumulate);
    };
    auto by_rows = [&](auto nw_c) {
      switch (mr) {
        case 6: return run(std::integral_constant<int, 6>(), nw_c);
        case 5: return run(std::integral_constant<int, 5>(), nw_c);
        case 4: return run(std::integral_constant<int, 4>(), nw_c);
        case 3: return run(std::integral_constant<int, 3>(), nw_c);
        case 2: return run(std::integral_constant<int, 2>(), nw_c);
        default: return run(std::integral_constant<int, 1>(), nw_c);
      }
    };
    if (nvalid <= 8)
      by_rows(std::integral_constant<int, 1>());
    else
      by_rows(std::integral_constant<int, 2>());
    return;
  }
#endif
  switch (mr) {
    case 6: micro_f32<6, NV>(K, a, lda, b, ldb, c, ldc, bias_row, bias_col, nvalid); break;
    case 5: micro_f32<5, NV>(K, a, lda, b, ldb, c, ldc, bias_row, bias_col, nvalid); break;
    case 4: micro_f32<4, NV>(K, a, lda, b, ldb, c, ldc, bias_row, bias_col, nvalid); break;
    case 3: micro_f32<3, NV>(K, a, lda, b, ldb, c, ldc, bias_row, bias_col, nvalid); break;
    case 2: micro_f32<2, NV>(K, a, lda, b, ldb, c, ldc, bias_row, bias_col, nvalid); break;
    default: micro_f32<1, NV>(K, a, lda, b, ldb, c, ldc, bias_row, bias_col, nvalid); break;
  }
}

// Largest block of K per micro-kernel call without AVX-512 (gemm_f32): 256 rows of a
// 16-column block of B, 16 KiB of L1.
constexpr i64 kKC = 256;

// Bytes of A's rows per block in gemm_f32 (kept in L2 while all of B's columns pass).
constexpr i64 kABlockBytes = i64(192) << 10;

// Columns of B per micro-kernel call (gemm_f32), and the width of a packed B's panels
// (pack_panels), so that a call's block of B is contiguous: on AMD Zen 3 (L1 32 KiB), 16-
// column panels with K in blocks of kKC ran the channels_last GEMMs at 91-99 GFLOP/s a core
// where 64-column ones (rows 256 bytes apart, on 16 of L1's 64 sets, K unblocked) ran at
// 74-90: 196 x 960 -> 320 76 -> 96, 784 x 384 -> 1536 79 -> 94.
#if defined(__AVX512F__)
constexpr i64 kPanel = 64;  // 6 x 4 accumulators in 24 zmm
#else
constexpr i64 kPanel = 16;  // one vector of columns: micro_avx2 (6 x 4 vectors would be 48 ymm)
#endif

// Panels of kPanel columns that hold n columns.
constexpr i64 panel_count(i64 n) { return (n + kPanel - 1) / kPanel; }

// bias_row: M values (one per row of C) or null; bias_col: N values (+ slack) or null.
// pstride: 0 for a plain B; else B is packed in kPanel-column panels (pack_panels, ldb
// kPanel), panel j at b + j * pstride. stream (without AVX-512; ldc a multiple of 16): C's
// whole lines are written around the caches by the last block of K; with a plain B the
// column blocks start on line boundaries, with panels at C's columns 0, 16, ..., whose rows
// are then streamed only where those are line-aligned (a group's columns of a grouped
// channels_last output may not be).
void gemm_f32(i64 M, i64 N, i64 K, const float* a, i64 lda, const float* b, i64 ldb, float* c,
              i64 ldc, const float* bias_row, const float* bias_col, i64 pstride = 0,
              bool stream = false) {
  constexpr i64 MR = 6;
  // Rows of A in blocks that stay in L2 while all column blocks sweep past them, so a large
  // A (pointwise weight) is read from memory once per call, not once per column block.
  const i64 MB = std::max<i64>(MR, (kABlockBytes / std::max<i64>(K * 4, 1)) / MR * MR);
  // (streamed: a first block up to C's first line boundary; never with panels, which a
  // block must not straddle)
  const i64 lead =
      stream && !pstride ? ((64 - (reinterpret_cast<uintptr_t>(c) & 63)) & 63) / 4 : 0;
  // A plain B's K in blocks of at most kKC with micro_avx2 (accumulating into C: the same
  // sums in the same order), so that a column block of B (kc x 16 floats) stays in L1 while
  // the row blocks pass: with K = 384-960, 8x576x14x14 -> 96 / 8x384x14x14 -> 1536 7x7
  // took 0.94-0.95x the time (AMD Zen 3, L1 32 KiB). Packed panels too (see kPanel); not a
  // plain B of fewer than 64 columns (1x768x7x7 -> 3072, 49 columns: 1.07x).
#if defined(SEPCONV_MICRO_AVX2)
  const i64 nk = !pstride && N < 64 ? 1 : std::max<i64>(1, (K + kKC - 1) / kKC);
#else
  const i64 nk = 1;
#endif
  const i64 kc = std::max<i64>(1, (K + nk - 1) / nk);
  for (i64 mb0 = 0; mb0 < M; mb0 += MB) {
    const i64 mend = std::min(M, mb0 + MB);
    for (i64 n0 = 0, nb = 0; n0 < N; n0 += nb) {
      nb = std::min(n0 == 0 && lead > 0 ? lead : kPanel, N - n0);
      const i64 nv = (nb + 15) / 16;
      const float* bn = pstride ? b + (n0 / kPanel) * pstride + n0 % kPanel : b + n0;
      for (i64 k0 = 0; k0 == 0 || k0 < K; k0 += kc) {  // (once for K = 0: C = biases)
        const i64 kn = std::min(kc, K - k0);
        const bool first = k0 == 0, last = k0 + kn == K;
        const float* bk = bn + k0 * ldb;
        for (i64 m0 = mb0, mr = 0; m0 < mend; m0 += mr) {
          // Blocks of 6 rows, the last few evened out (128 = 18 x 6 + 4 x 5, not 21 x 6 + 2): a
          // block of 1 or 2 rows has too few accumulator chains to cover the FMA latency.
          const i64 left = (mend - m0 + MR - 1) / MR;  // blocks left
          mr = (mend - m0 + left - 1) / left;
          const float* br = bias_row && first ? bias_row + m0 : nullptr;
          const float* bc = bias_col && first ? bias_col + n0 : nullptr;
          const float* am = a + m0 * lda + k0;
          float* cm = c + m0 * ldc + n0;
          switch (nv) {
            case 4: micro_rows<4>(mr, kn, am, lda, bk, ldb, cm, ldc, br, bc, nb); break;
            case 3: micro_rows<3>(mr, kn, am, lda, bk, ldb, cm, ldc, br, bc, nb); break;
            case 2: micro_rows<2>(mr, kn, am, lda, bk, ldb, cm, ldc, br, bc, nb); break;
            default:
              micro_rows<1>(mr, kn, am, lda, bk, ldb, cm, ldc, br, bc, nb, stream && last, !first);
              break;
          }
        }
      }
    }
  }
}

// Which tile GEMMs use the own kernel rather than BLAS: 1 all, 0 none, 2 by layout and tile
// count (own_gemm_for). Set from Python at load (sepconv_set_own_gemm): MKL runs its
// AVX-512 code on Intel CPUs but its AVX2 code on AMD ones, so which is faster depends on
// the CPU and the layout (docs/performance.md).
int g_own_gemm = 1;

// Mode 2 (Intel): MKL was faster except on planar calls with few tiles (the own GEMM lets
// the threads share a tile) and channels-last calls with many tiles and a pointwise weight
// of more than 64 KiB (MKL re-reads a large weight for every tile; the own GEMM's panels
// stay in L2); MKL also for the whole-call GEMMs (sep_forward_whole), where it was measured.
// weight: elements of the pointwise weight.
bool own_gemm_for(bool nhwc, bool few_tiles, i64 weight, bool whole = false) {
  if (g_own_gemm != 2) return g_own_gemm == 1;
  if (whole) return false;
  return nhwc ? !few_tiles && weight > (i64(16) << 10) : few_tiles;
}

// ------------------------------------------------------------------ padded buffers

#if defined(__AVX512F__) || defined(__AVX2__)
// Stride-2 phase split of src[qa, qb): element q to d[(q & 1) * qs + (q >> 1)], 32 elements
// (AVX2: 16) at a time by two permutes (element by element it took five times as long as the
// convolution that reads it; on AVX2 37 % of 8x144x56x56 stride-2 depthwise's time).
inline void deinterleave2(const float* src, i64 qa, i64 qb, float* d, i64 qs) {
  i64 q = qa;
  if ((q & 1) && q < qb) {
    d[qs + (q >> 1)] = src[q];
    ++q;
  }
#if !defined(__AVX512F__)
  for (; q + 16 <= qb; q += 16) {  // q even
    const __m256 a = _mm256_loadu_ps(src + q), b = _mm256_loadu_ps(src + q + 8);
    // Per 128-bit lane: a0 a2 b0 b2 | a4 a6 b4 b6, then the 64-bit pairs in order.
    const __m256 e = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));
    const __m256 o = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));
    _mm256_storeu_ps(d + (q >> 1), _mm256_castpd_ps(_mm256_permute4x64_pd(
                                       _mm256_castps_pd(e), _MM_SHUFFLE(3, 1, 2, 0))));
    _mm256_storeu_ps(d + qs + (q >> 1), _mm256_castpd_ps(_mm256_permute4x64_pd(
                                            _mm256_castps_pd(o), _MM_SHUFFLE(3, 1, 2, 0))));
  }
  for (; q < qb; ++q) d[(q & 1) * qs + (q >> 1)] = src[q];
#else
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  for (; q < qb; q += 32) {  // q even
    const i64 n = std::min<i64>(32, qb - q);
    const __mmask16 m0 = __mmask16((1u << std::min<i64>(n, 16)) - 1);
    const __mmask16 m1 = __mmask16((1u << std::max<i64>(n - 16, 0)) - 1);
    const __m512 a = _mm512_maskz_loadu_ps(m0, src + q), b = _mm512_maskz_loadu_ps(m1, src + q + 16);
    _mm512_mask_storeu_ps(d + (q >> 1), __mmask16((1u << ((n + 1) / 2)) - 1),
                          _mm512_permutex2var_ps(a, even, b));
    _mm512_mask_storeu_ps(d + qs + (q >> 1), __mmask16((1u << (n / 2)) - 1),
                          _mm512_permutex2var_ps(a, odd, b));
  }
#endif
}

// One row of pad_planar at stride 2 (unit column stride, float): padded columns [0, Q)
// from q0, interior [qa, qb), each phase segment qs long.
__attribute__((noinline)) void pad_row_s2(const float* row, const Geo& g, const i64* xmap, i64 q0,
                                          i64 Q, i64 qa, i64 qb, i64 qs, float* d) {
  auto edge = [&](i64 q) {
    const i64 s = xmap[q0 + q];
    d[(q & 1) * qs + (q >> 1)] = s < 0 ? 0.0f : row[s];
  };
  for (i64 q = 0; q < qa; ++q) edge(q);
  deinterleave2(row + q0 - g.pl, qa, qb, d, qs);
  for (i64 q = qb; q < Q; ++q) edge(q);
  for (i64 ph = 0; ph < 2; ++ph)
    std::fill(d + ph * qs + (Q - ph + 1) / 2, d + (ph + 1) * qs, 0.0f);
}
#endif

// Planar: padded rows [r0, r0+R) and columns [q0, q0+Q) of one input plane into buf
// (R rows of Qrow = sx*ceil(Q/sx) elements, stride-phase layout).
template <typename S, typename A>
void pad_planar(const S* plane, i64 sh, i64 sw, const Geo& g, const i64* ymap, const i64* xmap,
                i64 r0, i64 R, i64 q0, i64 Q, A* buf) {
  const i64 qs = (Q + g.sx - 1) / g.sx, qrow = qs * g.sx;
  const i64 qa = std::clamp<i64>(g.pl - q0, 0, Q), qb = std::clamp<i64>(g.pl + g.W - q0, 0, Q);
  for (i64 r = 0; r < R; ++r) {
    A* d = buf + r * qrow;
    const i64 sr = ymap[r0 + r];
    if (sr < 0) {
      std::memset(d, 0, sizeof(A) * qrow);
      continue;
    }
    const S* row = plane + sr * sh;
#if defined(__AVX512F__) || defined(__AVX2__)
    if constexpr (std::is_same<S, float>::value && std::is_same<A, float>::value) {
      // 0.6-0.85x the time of the element-by-element split on rows 28-112 wide (1.05x on
      // 14-wide ones, which are a small part of any network's time).
      if (g.sx == 2 && sw == 1 && qb > qa) {
        pad_row_s2(row, g, xmap, q0, Q, qa, qb, qs, d);
        continue;
      }
    }
#endif
    if (g.sx == 1) {
      for (i64 q = 0; q < qa; ++q) { i64 s = xmap[q0 + q]; d[q] = s < 0 ? A(0) : toA(row[s * sw]); }
      const S* src = row + (q0 + qa - g.pl) * sw;
      if (sw == 1 && std::is_same<S, A>::value) {
        std::memcpy(d + qa, src, sizeof(A) * (qb - qa));
      } else if (sw == 1) {
        for (i64 q = qa; q < qb; ++q) d[q] = toA(src[q - qa]);
      } else {
        for (i64 q = qa; q < qb; ++q) d[q] = toA(src[(q - qa) * sw]);
      }
      for (i64 q = qb; q < Q; ++q) { i64 s = xmap[q0 + q]; d[q] = s < 0 ? A(0) : toA(row[s * sw]); }
      for (i64 q = Q; q < qrow; ++q) d[q] = A(0);
    } else {
      const S* src = row + (q0 - g.pl) * sw;  // src[q * sw] for interior columns q
      for (i64 ph = 0; ph < g.sx; ++ph) {
        A* dp = d + ph * qs;
        i64 idx = 0, q = ph;
        for (; q < std::min(qa, Q); q += g.sx, ++idx) {
          const i64 s = xmap[q0 + q];
          dp[idx] = s < 0 ? A(0) : toA(row[s * sw]);
        }
        if (sw == 1) {
          for (; q < qb; q += g.sx, ++idx) dp[idx] = toA(src[q]);
        } else {
          for (; q < qb; q += g.sx, ++idx) dp[idx] = toA(src[q * sw]);
        }
        for (; q < Q; q += g.sx, ++idx) {
          const i64 s = xmap[q0 + q];
          dp[idx] = s < 0 ? A(0) : toA(row[s * sw]);
        }
        for (; idx < qs; ++idx) dp[idx] = A(0);
      }
    }
  }
}

// Whether the kernels bring their input into the cache ahead of reading it (sepconv_set_reads,
// set by CPU from Python): 0 no (what runs G-K measured on Intel), 1 yes (measured on AMD Zen
// 5, run L). There, without it, the depthwise loops' short column strips had only a few
// misses out at a time and read memory at 4-7 GB/s a thread. With it:
// - fused planar tiles prefetch a later channel's window into L2 (row 1 0.75-0.84x the time);
// - planar depthwise tasks touch their window first (touch_window: one load per cache line,
//   in memory order, so the misses go out together): 3x3 / 5x5 / 7x7 on 8x128x112x112
//   0.58 / 0.48 / 0.61x the time of prefetching it;
// - channels_last tiles touch theirs where the input exceeds kTouchBytes: 8x96x112x112 0.54x
//   (depthwise) and 0.72x (-> 24 s2). Smaller inputs took 1.03-1.18x: they are in the L3
//   already, and the pass only adds loads.
int g_reads = 0;
constexpr i64 kTouchBytes = i64(32) << 20;

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
    if (rows == 0) return;
    const uintptr_t first = uintptr_t(plane + rlo * g.xs[2] + clo) & ~uintptr_t(63);
    const uintptr_t last = uintptr_t(plane + rlo * g.xs[2] + chi - 1) | 63;
    line = reinterpret_cast<const char*>(first);
    span = i64(last + 1 - first);
    end = line + span;
    rs = g.xs[2] * i64(sizeof(S));
    per_block = (rows * (span / 64) + blocks - 1) / std::max<i64>(blocks, 1) + 1;
  }

  __attribute__((always_inline)) void issue() {
    for (i64 n = per_block; n > 0 && rows > 0; --n) {
      prefetch_line(uintptr_t(line));
      line += 64;
      if (line == end) {
        line = end - span + rs;
        end = line + span;
        --rows;
      }
    }
  }
};
thread_local AheadLines t_ahead __attribute__((tls_model("initial-exec")));

// Planar depthwise core: TH x TW outputs of one filter from a padded buffer (row length
// qrow, phase segment qs), written to dst with row stride drs.
//
// NV vectors of consecutive outputs at once, each with two partial sums (even and odd
// kernel columns), so 2*NV independent FMA chains hide the FMA latency. The last vector
// may be partial: it reads up to L - 1 elements past the row (buffers carry kSlack
// elements of slack) and stores only the `last` valid lanes.
template <int NV, int KW, typename S, typename A>
inline void conv_block(const A* b, i64 qrow, i64 dy, i64 KH, i64 kw_rt, const i64* offx,
                       const A* wv, A bias, S* d, i64 last, i64 in_step = V<A>::L,
                       i64 out_step = V<A>::L, bool all_partial = false) {
  typedef typename V<A>::t vec;
  constexpr int L = V<A>::L;
  const i64 kw = KW ? KW : kw_rt;
  vec a0[NV], a1[NV];
  for (int v = 0; v < NV; ++v) {
    a0[v] = vset<A>(bias);
    a1[v] = vzero<A>();
  }
  for (i64 ky = 0; ky < KH; ++ky) {
    const A* r = b + ky * dy * qrow;
    const A* w = wv + ky * kw;
    if constexpr (KW > 0) {
#pragma GCC unroll 8
      for (int kx = 0; kx < KW; ++kx) {
        const A wt = w[kx];
        const A* rr = r + offx[kx];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) {
          if (kx & 1)
            a1[v] += wt * vld<A>(rr + v * in_step);
          else
            a0[v] += wt * vld<A>(rr + v * in_step);
        }
      }
    } else {
      i64 kx = 0;
      for (; kx + 1 < kw; kx += 2) {
        const A w0 = w[kx], w1 = w[kx + 1];
        const A *r0 = r + offx[kx], *r1 = r + offx[kx + 1];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) {
          a0[v] += w0 * vld<A>(r0 + v * in_step);
          a1[v] += w1 * vld<A>(r1 + v * in_step);
        }
      }
      if (kx < kw) {
        const A w0 = w[kx];
        const A* r0 = r + offx[kx];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) a0[v] += w0 * vld<A>(r0 + v * in_step);
      }
    }
  }
  for (int v = 0; v < NV; ++v) {
    const vec z = a0[v] + a1[v];
    S* dv = d + v * out_step;
    if (last == L || (v + 1 < NV && !all_partial)) {
      vstOut(dv, z);
    } else {
      vstPart(dv, z, last);
    }
  }
}

// Stride 1, dilation 1, K x K filter: R consecutive output rows of one column vector at a
// time, one kernel column after another. The K weights of a kernel column are broadcast
// into registers once per block; each of the R + K - 1 input rows is then loaded at the
// column's shift (an unaligned load) and serves every output row that reads it. Per output
// vector: K * K FMAs, K * (R + K - 1) / R loads and K weight broadcasts per R rows, so that
// the FMA ports do nothing else. (Before: each input row was loaded once and its K shifts
// made by permutes, which share the FMA ports, and the weights were broadcast for every
// FMA: in L1, 3x3 / 5x5 / 7x7 at 6.1 / 15.4 / 28.1 cycles per output vector; now 5.2 /
// 12.7 / 24.5 with R = 8, the last two at the FMA bound.) Reads up to 15 + K - 1 elements
// past the column start of each row (buffers carry kSlack elements of slack); stores only
// the `last` valid lanes.
// SEPCONV_KERNELS_ROWS=0 turns the row-blocked stride-1 path off (for comparison).
inline bool s1_rows_enabled() {
  static const bool enabled = env_not_zero("SEPCONV_KERNELS_ROWS");
  return enabled;
}

// Input rows of a padded buffer (row length qrow) for rows_s1: begin(kx) starts at the
// block's first row at column shift kx, next() gives a row and steps to the next one (one
// pointer, kept opaque: precomputed, the R + K - 1 row addresses went through the stack and
// vector registers, 1.2x the time per block).
struct BufferRows {
  const float* b;
  i64 qrow;
  const float* p = nullptr;
  __attribute__((always_inline)) void begin(int kx) { p = b + kx; }
  __attribute__((always_inline)) V<float>::t next() {
    const V<float>::t v = vld<float>(p);
    p += qrow;
    asm("" : "+r"(p));
    return v;
  }
};

// Outputs [0, R) of a block (output rows, or channels_last pixels), each the sum of CH
// partial sums in accumulator type A, to d (stride drs; only the first `last` lanes).
template <int CH, int R, typename A, typename S>
__attribute__((always_inline)) inline void store_rows(const typename V<A>::t (&acc)[CH][R], S* d,
                                                      i64 drs, i64 last) {
  for (int i = 0; i < R; ++i, d += drs) {
    typename V<A>::t z = acc[0][i];
    for (int h = 1; h < CH; ++h) z += acc[h][i];
    if (last == V<A>::L) {
      vstOut(d, z);
    } else {
      vstPart(d, z, last);
    }
    asm("" : "+r"(d));  // (as for the rows)
  }
}

// always_inline: as a call per block, the prologue and the accumulators' trip through the
// stack cost as much as a 3x3 block's arithmetic.
template <int K, int R, typename S, typename Rows>
__attribute__((always_inline)) inline void rows_s1(Rows rows, const float* w, float bias, S* d,
                                                   i64 drs, i64 last) {
  typedef V<float>::t vec;
  // Partial sums over kernel columns where R is small: 8 independent FMA chains cover the
  // FMA latency with two FMA units (R = 4 with one chain per row: 7x7 at 31.4 cycles). 5x5
  // and 7x7 at R = 8 take two per row as well: with 8 chains of 25-49 FMAs the units idled
  // (AMD Zen 5: depthwise 7x7 0.89-0.95x the time, 5x5 0.98-0.99x; 3x3 1.02x: it keeps one).
  // With 16 registers (AVX2) CH * R stays at 8 or less: 8 accumulators, K weights and the row.
  constexpr int CH = kVecRegs >= 32 ? (R >= 8 ? (K >= 5 ? 2 : 1) : (R >= 4 ? 2 : 4))
                                    : (R >= 8 ? 1 : R >= 4 ? 2 : 4);
  vec acc[CH][R];
  for (int i = 0; i < R; ++i) {
    acc[0][i] = vset<float>(bias);
    for (int h = 1; h < CH; ++h) acc[h][i] = vzero<float>();
  }
#pragma GCC unroll 8
  for (int kx = 0; kx < K; ++kx) {
    vec wk[K];
#pragma GCC unroll 8
    for (int ky = 0; ky < K; ++ky) wk[ky] = vset<float>(w[ky * K + kx]);
    rows.begin(kx);
#pragma GCC unroll 16
    for (int r = 0; r < R + K - 1; ++r) {
      const vec v = rows.next();
#pragma GCC unroll 8
      for (int i = 0; i < R; ++i) {
        const int ky = r - i;
        if (ky >= 0 && ky < K) acc[kx % CH][i] += wk[ky] * v;
      }
    }
  }
  store_rows<CH, R, float>(acc, d, drs, last);
}

// Output rows (or pixels) [i0, i1) in blocks of RMAX (8 or 4), then four, two and one;
// block(i, R) computes [i, i + R), R a std::integral_constant.
template <int RMAX, typename Block>
__attribute__((always_inline)) inline void in_blocks(i64 i0, i64 i1, Block block) {
  i64 i = i0;
  if constexpr (RMAX >= 8)
    for (; i + 8 <= i1; i += 8) block(i, std::integral_constant<int, 8>());
  for (; i + 4 <= i1; i += 4) block(i, std::integral_constant<int, 4>());
  if (i + 2 <= i1) block(i, std::integral_constant<int, 2>()), i += 2;
  if (i < i1) block(i, std::integral_constant<int, 1>());
}

// Rows [0, n) in blocks of 8, then one block of the rest (1-7): block(i, R) as for in_blocks.
template <typename Block>
__attribute__((always_inline)) inline void in_exact_blocks(i64 n, Block block) {
  i64 i = 0;
  for (; i + 8 <= n; i += 8) block(i, std::integral_constant<int, 8>());
  switch (n - i) {
    case 7: block(i, std::integral_constant<int, 7>()); break;
    case 6: block(i, std::integral_constant<int, 6>()); break;
    case 5: block(i, std::integral_constant<int, 5>()); break;
    case 4: block(i, std::integral_constant<int, 4>()); break;
    case 3: block(i, std::integral_constant<int, 3>()); break;
    case 2: block(i, std::integral_constant<int, 2>()); break;
    case 1: block(i, std::integral_constant<int, 1>()); break;
    default: break;
  }
}

template <int K, typename S>
void conv_planar_s1(const float* buf, i64 qrow, const float* w, float bias, i64 TH, i64 TW, S* dst,
                    i64 drs) {
  constexpr i64 L = V<float>::L;
  for (i64 j = 0; j < TW; j += L) {
    const i64 last = std::min(L, TW - j);
    in_blocks<8>(0, TH, [&](i64 i, auto R) {
      t_ahead.issue();
      rows_s1<K, decltype(R)::value, S>(BufferRows{buf + i * qrow + j, qrow}, w, bias,
                                        dst + i * drs + j, drs, last);
    });
  }
}

// The in-place reads (conv_direct_s1) need masked loads: AVX-512 or AVX2 with FMA.
#if defined(__AVX512F__) || defined(SEPCONV_VEC32)
#define SEPCONV_DIRECT 1
typedef int32_t vi32 __attribute__((vector_size(kVecBytes)));

// Lanes [k, k + L) of the concatenation lo:hi (k a constant after unrolling).
__attribute__((always_inline)) inline V<float>::t shifted(V<float>::t lo, V<float>::t hi, int k) {
  vi32 lanes;
  for (int i = 0; i < V<float>::L; ++i) lanes[i] = i + k;
  return __builtin_shuffle(lo, hi, lanes);
}

// rows_s1 for blocks at a plane's left or right edge, whose rows arrive masked: each input
// row is loaded once, load(lo, hi) giving columns [0, L) and [L, 2L) of the next row, and
// its K shifts are made by permutes (masked loads at every shift took 1.3x the block's
// time, most of them split across cache lines). Two partial sums per row (even and odd
// kernel columns) for 2 * R independent FMA chains.
template <int K, int R, typename S, typename Load>
__attribute__((always_inline)) inline void rows_s1_permuted(Load load, const float* w, float bias,
                                                            S* d, i64 drs, i64 last) {
  typedef V<float>::t vec;
  vec acc[2][R];
  for (int i = 0; i < R; ++i) {
    acc[0][i] = vset<float>(bias);
    acc[1][i] = vzero<float>();
  }
#pragma GCC unroll 16
  for (int r = 0; r < R + K - 1; ++r) {
    vec lo, hi;
    load(lo, hi);
#pragma GCC unroll 16
    for (int kx = 0; kx < K; ++kx) {
      const vec sh = kx == 0 ? lo : shifted(lo, hi, kx);
#pragma GCC unroll 8
      for (int i = 0; i < R; ++i) {
        const int ky = r - i;
        if (ky >= 0 && ky < K) acc[kx & 1][i] += w[ky * K + kx] * sh;
      }
    }
  }
  store_rows<2, R, float>(acc, d, drs, last);
}

// a / b rounded down (b > 0).
inline i64 floor_div(i64 a, i64 b) { return a >= 0 ? a / b : -((b - 1 - a) / b); }

// Zeros for rows outside the plane (conv_direct_s1).
alignas(64) const float kZeroRow[32] = {};

// rows_s1's rows for blocks of conv_direct_s1 at a plane's edges: rows outside the plane
// read as zeros and, if Masked, each kernel column's shifted row is one masked load (lanes
// outside the plane read as zeros; masks[kx]: the lanes inside for kernel column kx). In L1
// the masked loads cost 1 % (3x3, 8 rows).
template <bool Masked>
struct PlaneRows {
  const float* p0;
  i64 sh, y0, H;
  const LaneMask* masks;
  const float* p = nullptr;
  i64 y = 0;
  LaneMask m{};
  __attribute__((always_inline)) void begin(int kx) {
    p = p0 + kx;
    y = y0;
    if (Masked) m = masks[kx];
  }
  __attribute__((always_inline)) V<float>::t next() {
    const float* q = uint64_t(y) < uint64_t(H) ? p : kZeroRow;
    p += sh;
    ++y;
    asm("" : "+r"(p));
    return Masked ? load_inside(m, q) : vld<float>(q);
  }
};

// Zero padding, stride 1, dilation 1, K x K filter, straight from the input plane (unit column
// stride, row stride sh) instead of a padded copy. Output rows [oy0, oy0 + TH), columns [ox0, ox0 +
// TW) to dst (row stride drs), in row blocks; in each, first the column vectors whose windows lie
// inside the plane's columns, in place (rows_s1; rows outside the plane read as zero rows,
// PlaneRows), in one tight loop, then the edge columns. Those need zero lanes: with AVX2, 3x3 ones
// in blocks of eight rows load each kernel column's shifted row masked (PlaneRows<true>); other 3x3
// ones take masked rows permuted (rows_s1_permuted; with AVX-512 all: masked loads at every shift
// took 1.3x the block's time there); 5x5 and 7x7 ones gather their window into a small buffer
// first. Only the output rows whose windows reach past the top or bottom row are edge rows, in
// blocks of four: with blocks of eight, 7x7 on AVX2 (AMD Zen 3) gathered 27 % of its blocks and
// took 1.03-1.09x the time of the padded copy. Row blocks outermost, column vectors inside: the
// plane is read in its memory order, which the hardware prefetcher follows. With every column in
// one loop, edge and inner blocks alternating (one inlined block with both paths), in L2 a 112 x
// 112 3x3 plane took 6.6 TSC cycles an output vector and its inner blocks 5.3 (AMD Zen 3; the
// kernel alone: 3.8); now 4.7 and 3.9 (56 x 56 7.0 -> 5.0, 28 x 28 9.8 -> 8.8). Depthwise
// 8x128x112x112 3x3 took 0.87-0.89x the time, fused 56 x 56 rows 0.94-0.98x. 3x3 planes without
// inner columns (14 x 14 on AVX2) keep blocks of four rows throughout: in the row-block order they
// took 1.06x.
//
// Used by the depthwise and the fused forward, where the copy is a store and a reload of
// every input element.
template <int K, typename S>
void conv_direct_s1(const float* plane, i64 sh, const Geo& g, i64 oy0, i64 ox0, i64 TH, i64 TW,
                    const float* w, float bias, S* dst, i64 drs) {
  typedef V<float>::t vec;
  constexpr i64 L = V<float>::L, WL = 2 * L;  // gathered window: rows of L + K - 1 columns
  alignas(64) float win[(8 + K - 1) * WL];
  // Lanes inside the row: columns [c0, c0 + L) and the K - 1 columns after them.
  auto inside = [&](i64 first, i64 lanes) { return lanes_inside(first, lanes, g.W); };
  // Column vectors [j_lo, j_hi) read no column outside the plane: their first padded column
  // c0 = ox0 + j - pl >= 0 and c0 + L + K - 1 <= W.
  const i64 vecs = (TW + L - 1) / L;
  const i64 j_lo = std::min(vecs, std::max<i64>(0, g.pl - ox0 + L - 1) / L) * L;
  const i64 j_hi =
      std::max(j_lo, std::min(vecs, floor_div(g.W - K + 1 + g.pl - ox0 - L, L) + 1) * L);
  // Column vector j of rows [i, i + R) at a left or right edge (masks and zero rows).
  auto edge_block = [&](i64 i, auto R, i64 j) __attribute__((always_inline)) {
    constexpr int RB = decltype(R)::value;
    t_ahead.issue();
    const i64 last = std::min(L, TW - j);
    const i64 c0 = ox0 + j - g.pl;  // input column of the block's first padded column
    const i64 y0 = oy0 + i - g.pt;  // input row of the block's first padded row
    S* d = dst + i * drs + j;
    if constexpr (K == 3 && kVecRegs < 32 && RB == 8) {
      LaneMask ms[K];
      for (int kx = 0; kx < K; ++kx) ms[kx] = inside(c0 + kx, L);
      rows_s1<K, RB, S>(PlaneRows<true>{plane + y0 * sh + c0, sh, y0, g.H, ms}, w, bias, d,
                        drs, last);
      return;
    }
    const LaneMask mlo = inside(c0, L), mhi = inside(c0 + L, K - 1);
    // The block's input rows one by one, zero outside the plane: one pointer stepped (and
    // kept opaque, as in BufferRows).
    i64 y = y0;
    const float* p = plane + y0 * sh + c0;
    auto rows = [&](vec& lo, vec& hi) __attribute__((always_inline)) {
      const float* q = uint64_t(y) < uint64_t(g.H) ? p : kZeroRow;
      lo = load_inside(mlo, q);
      hi = load_inside(mhi, q + L);
      p += sh;
      ++y;
      asm("" : "+r"(p));
    };
    if constexpr (K == 3) {
      rows_s1_permuted<K, RB, S>(rows, w, bias, d, drs, last);
    } else {
      for (i64 r = 0; r < RB + K - 1; ++r) {
        vec lo, hi;
        rows(lo, hi);
        vst<float>(win + r * WL, lo);
        vst<float>(win + r * WL + L, hi);
      }
      rows_s1<K, RB, S>(BufferRows{win, WL}, w, bias, d, drs, last);
    }
  };
  // Rows [i, i + R): the inner column vectors, then the edge ones. ZeroRows: some of the
  // block's input rows lie outside the plane.
  auto row_block = [&](i64 i, auto R, auto ZeroRows) __attribute__((always_inline)) {
    constexpr int RB = decltype(R)::value;
    const i64 y0 = oy0 + i - g.pt;
    const float* src = plane + y0 * sh + ox0 - g.pl;
    S* d = dst + i * drs;
    for (i64 j = j_lo; j < j_hi; j += L) {
      t_ahead.issue();
      const i64 last = std::min(L, TW - j);
      if constexpr (decltype(ZeroRows)::value)
        rows_s1<K, RB, S>(PlaneRows<false>{src + j, sh, y0, g.H, nullptr}, w, bias, d + j, drs,
                          last);
      else
        rows_s1<K, RB, S>(BufferRows{src + j, sh}, w, bias, d + j, drs, last);
    }
    for (i64 j = 0; j < TW; j += L) {
      if (j >= j_lo && j < j_hi) continue;
      if constexpr (K == 3 && kVecRegs >= 32 && RB == 8) {  // (rows_s1_permuted spills)
        edge_block(i, std::integral_constant<int, 4>(), j);
        edge_block(i + 4, std::integral_constant<int, 4>(), j);
      } else {
        edge_block(i, R, j);
      }
    }
  };
  if (K == 3 && j_lo == j_hi) {  // narrow: every column vector at an edge
    in_blocks<4>(0, TH, [&](i64 i, auto R) __attribute__((always_inline)) {
      for (i64 j = 0; j < TW; j += L) edge_block(i, R, j);
    });
    return;
  }
  // Output rows [top, bot) read no row outside the plane, rounded to blocks of four.
  const i64 top = std::min(TH, (std::clamp<i64>(g.pt - oy0, 0, TH) + 3) / 4 * 4);
  const i64 inner_end = std::clamp<i64>(g.H - K + g.pt - oy0 + 1, 0, TH);
  const i64 bot = std::max(top, TH - (TH - inner_end + 3) / 4 * 4);
  auto edge_rows = [&](i64 i, auto R)
                        __attribute__((always_inline)) { row_block(i, R, std::true_type()); };
  in_blocks<4>(0, top, edge_rows);
  in_blocks<8>(top, bot, [&](i64 i, auto R) __attribute__((always_inline)) {
    row_block(i, R, std::false_type());
  });
  in_blocks<4>(bot, TH, edge_rows);
}
#endif

#if defined(__AVX512F__)
// Stride 2, 3x3, zero padding, straight from the plane: R output rows of one column vector
// (16 outputs; row0 points at input row y0, column `base` of the first tap), from the 2R + 1
// input rows y0, y0 + 1, ...
// Each input row is three masked loads (columns [base, base + 32] and zeros outside the
// plane's [0, W)), its even and odd columns two two-source permutes and the even columns
// one further an alignr; rows outside the plane are skipped. Reading in place lets the
// loads overlap the arithmetic: through the padded copy (pad_row_s2, then conv_planar) the
// copy stalled on memory with nothing else to do (41 % of 8x144x56x56 -> 32 s2, against
// 17 % for the convolution).
template <int R, typename S>
__attribute__((always_inline)) inline void s2_block(const float* row0, i64 sh, i64 H, i64 y0,
                                                    const __mmask16 (&m)[3], const float* w,
                                                    float bias, S* d, i64 drs, i64 last) {
  typedef V<float>::t vec;
  const __m512i even =
      _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  vec acc[2][R];
  for (int o = 0; o < R; ++o) {
    acc[0][o] = vset<float>(bias);
    acc[1][o] = vzero<float>();
  }
#pragma GCC unroll 17
  for (int r = 0; r < 2 * R + 1; ++r) {
    if (uint64_t(y0 + r) >= uint64_t(H)) continue;  // a zero row
    const float* p = row0 + r * sh;
    const __m512 a = _mm512_maskz_loadu_ps(m[0], p), b = _mm512_maskz_loadu_ps(m[1], p + 16);
    const __m512 c = _mm512_maskz_loadu_ps(m[2], p + 32);
    const __m512 e0 = _mm512_permutex2var_ps(a, even, b);  // columns base + 2i
    const vec taps[3] = {
        (vec)e0,
        (vec)_mm512_permutex2var_ps(a, odd, b),  // base + 2i + 1
        (vec)_mm512_castsi512_ps(  // base + 2i + 2: e0 one lane on, then column base + 32
            _mm512_alignr_epi32(_mm512_castps_si512(c), _mm512_castps_si512(e0), 1))};
#pragma GCC unroll 8
    for (int o = 0; o < R; ++o) {
      const int ky = r - 2 * o;
      if (ky < 0 || ky > 2) continue;
      for (int kx = 0; kx < 3; ++kx) acc[kx & 1][o] += w[ky * 3 + kx] * taps[kx];
    }
  }
  store_rows<2, R, float>(acc, d, drs, last);
}

// conv_direct_s1's counterpart at stride 2 for 3x3 filters (MobileNet's downsampling):
// output rows [oy0, oy0 + TH), columns [ox0, ox0 + TW) to dst (row stride drs), in blocks of
// up to 8 rows, each block's column vectors in memory order.
template <typename S>
void conv_direct_s2(const float* plane, i64 sh, const Geo& g, i64 oy0, i64 ox0, i64 TH, i64 TW,
                    const float* w, float bias, S* dst, i64 drs) {
  constexpr i64 L = 16;
  auto inside = [&](i64 first, i64 lanes) { return lanes_inside(first, lanes, g.W); };
  in_blocks<8>(0, TH, [&](i64 i, auto R) {
    const i64 y0 = 2 * (oy0 + i) - g.pt;  // input row of the block's first window row
    for (i64 j = 0; j < TW; j += L) {
      const i64 base = 2 * (ox0 + j) - g.pl;  // input column of lane 0's first tap
      const __mmask16 m[3] = {inside(base, L), inside(base + L, L), inside(base + 2 * L, 1)};
      s2_block<decltype(R)::value, S>(plane + y0 * sh + base, sh, g.H, y0, m, w, bias,
                                      dst + i * drs + j, drs, std::min(L, TW - j));
    }
  });
}
#endif

#if defined(SEPCONV_VEC32)
// conv_direct_s2 without AVX-512: the same reads with AVX2's in-lane shuffles. Columns
// base + 2i (even), base + 2i + 1 (odd) and base + 2i + 2 of a row come from four loads
// (columns base + [0, 8), [8, 16), [2, 10), [10, 18)) and one _mm256_shuffle_ps each, in the
// lane order 0 1 4 5 2 3 6 7 (the shuffle stays within 128-bit halves); every tap of a sum
// has that order, so the sum is put in memory order once, before its store. Blocks of four
// output rows, two partial sums each (even and odd kernel columns): 8 accumulators, 3 taps
// and the loads in 16 registers. Against the padded copy (pad_row_s2, conv_planar), AMD Zen
// 3: depthwise 8x128x112x112 0.77x, 8x576x14x14 0.42x, 8x144x56x56 -> 32 0.83x the time.
template <int R, bool Masked, typename S>
__attribute__((always_inline)) inline void s2_block(const float* row0, i64 sh, i64 H, i64 y0,
                                                    const LaneMask (&m)[4], const float* w,
                                                    float bias, S* d, i64 drs, i64 last) {
  typedef V<float>::t vec;
  vec acc[2][R];
  for (int o = 0; o < R; ++o) {
    acc[0][o] = vset<float>(bias);
    acc[1][o] = vzero<float>();
  }
  auto load = [&](const float* p, int k) __attribute__((always_inline)) {
    return Masked ? _mm256_maskload_ps(p, m[k]) : _mm256_loadu_ps(p);
  };
#pragma GCC unroll 9
  for (int r = 0; r < 2 * R + 1; ++r) {
    if (uint64_t(y0 + r) >= uint64_t(H)) continue;  // a zero row
    const float* p = row0 + r * sh;
    const __m256 a = load(p, 0), b = load(p + 8, 1), a2 = load(p + 2, 2), b2 = load(p + 10, 3);
    const vec taps[3] = {(vec)_mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0)),
                         (vec)_mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1)),
                         (vec)_mm256_shuffle_ps(a2, b2, _MM_SHUFFLE(2, 0, 2, 0))};
#pragma GCC unroll 4
    for (int o = 0; o < R; ++o) {
      const int ky = r - 2 * o;
      if (ky < 0 || ky > 2) continue;
      for (int kx = 0; kx < 3; ++kx) acc[kx & 1][o] += w[ky * 3 + kx] * taps[kx];
    }
  }
  vec sum[1][R];
  for (int o = 0; o < R; ++o)
    sum[0][o] = (vec)_mm256_castpd_ps(_mm256_permute4x64_pd(
        _mm256_castps_pd((__m256)(acc[0][o] + acc[1][o])), _MM_SHUFFLE(3, 1, 2, 0)));
  store_rows<1, R, float>(sum, d, drs, last);
}

// (always_inline: as a call once per plane, 14 x 14 planes took 1.1-1.2x the time.)
template <typename S>
__attribute__((always_inline)) inline void conv_direct_s2(const float* plane, i64 sh,
                                                          const Geo& g, i64 oy0, i64 ox0,
                                                          i64 TH, i64 TW, const float* w,
                                                          float bias, S* dst, i64 drs) {
  constexpr i64 L = 8;
  auto inside = [&](i64 first) { return lanes_inside(first, L, g.W); };
  in_blocks<4>(0, TH, [&](i64 i, auto R) {
    constexpr int RB = decltype(R)::value;
    const i64 y0 = 2 * (oy0 + i) - g.pt;  // input row of the block's first window row
    for (i64 j = 0; j < TW; j += L) {
      const i64 base = 2 * (ox0 + j) - g.pl;  // input column of lane 0's first tap
      const LaneMask m[4] = {inside(base), inside(base + L), inside(base + 2),
                             inside(base + L + 2)};
      const float* row0 = plane + y0 * sh + base;
      S* d = dst + i * drs + j;
      const i64 last = std::min(L, TW - j);
      if (base >= 0 && base + 2 * L + 2 <= g.W) {
        s2_block<RB, false, S>(row0, sh, g.H, y0, m, w, bias, d, drs, last);
      } else {
        s2_block<RB, true, S>(row0, sh, g.H, y0, m, w, bias, d, drs, last);
      }
    }
  });
}
#endif

#if defined(SEPCONV_DIRECT)
// Whether conv_narrow_s1 takes a tile: whole output rows of a plane whose input and output
// rows fit one vector (AVX-512: 14 x 14 and 7 x 7 planes of MobileNet and ConvNeXt; AVX2: 7
// x 7 ones, whose rows leave lane 7 free to be the zero that shifts bring in).
inline bool narrow_ok(const Geo& g, i64 ox0, i64 TW) {
  constexpr i64 widest = kVecRegs >= 32 ? 16 : 7;
  return g.W <= widest && g.OW <= widest && ox0 == 0 && TW == g.OW;
}

// A narrow row (narrow_ok) in one vector and its K column shifts: lane x of shift(v, kx) is
// input column x + kx - pl, zero outside [0, W). AVX-512: single-source permutes with
// zeroing masks; AVX2: permutes whose lanes outside read lane 7, which the load left zero.
template <int K>
struct NarrowShifts {
  typedef V<float>::t vec;
#if defined(__AVX512F__)
  __mmask16 load_mask;
  __m512i idx[K];
  __mmask16 keep[K];
  explicit NarrowShifts(const Geo& g) : load_mask(__mmask16((uint32_t(1) << g.W) - 1)) {
    const __m512i lanes =
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (int kx = 0; kx < K; ++kx) {
      const __m512i src = _mm512_add_epi32(lanes, _mm512_set1_epi32(int(kx - g.pl)));
      keep[kx] = _mm512_cmpge_epi32_mask(src, _mm512_setzero_si512()) &
                 _mm512_cmplt_epi32_mask(src, _mm512_set1_epi32(int(g.W)));
      idx[kx] = _mm512_and_si512(src, _mm512_set1_epi32(15));  // (masked lanes: any index)
    }
  }
  __attribute__((always_inline)) vec load(const float* p) const {
    return (vec)_mm512_maskz_loadu_ps(load_mask, p);
  }
  __attribute__((always_inline)) vec shift(vec v, int kx) const {
    return (vec)_mm512_maskz_permutexvar_ps(keep[kx], idx[kx], (__m512)v);
  }
#else
  LaneMask load_mask;
  __m256i idx[K];
  explicit NarrowShifts(const Geo& g) : load_mask(lanes_inside(0, 8, g.W)) {
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    // (Lanes inside [0, W) by two vector compares on src, not lanes_inside: its scalar clamps
    // for each of K shifts, once per plane, took 7x7 on 7 x 7 planes 1.04x the time.)
    for (int kx = 0; kx < K; ++kx) {
      const __m256i src = _mm256_add_epi32(lanes, _mm256_set1_epi32(int(kx - g.pl)));
      const __m256i inside =
          _mm256_andnot_si256(_mm256_cmpgt_epi32(_mm256_setzero_si256(), src),
                              _mm256_cmpgt_epi32(_mm256_set1_epi32(int(g.W)), src));
      idx[kx] = _mm256_blendv_epi8(_mm256_set1_epi32(7), src, inside);
    }
  }
  __attribute__((always_inline)) vec load(const float* p) const {
    return (vec)_mm256_maskload_ps(p, load_mask);
  }
  __attribute__((always_inline)) vec shift(vec v, int kx) const {
    return (vec)_mm256_permutevar8x32_ps((__m256)v, idx[kx]);
  }
#endif
};

// conv_direct_s1 for narrow planes (narrow_ok): each input row is one masked load, its K
// column shifts K - 1 single-source permutes (NarrowShifts), and rows outside the plane are
// skipped. Blocks of up to 8 output rows, then one block of the rest. As blocks of
// conv_direct_s1's edge path (masked loads of two vectors, two-source permutes, blocks of 4,
// 2 and 1 rows), in L1 14 x 14 / 7 x 7 3x3 planes took 13.7 / 15.5 cycles per row, now 9.2 /
// 10.5; 7 x 7 7x7 ones 57.0 -> 29.8 (AVX-512). AVX2 (AMD Zen 3), 7 x 7 planes, with the
// partial stores of vstPart: 3x3 24.4 -> 10.4 TSC cycles a row, 5x5 35 -> 17.4, 7x7 52 -> 28;
// depthwise 8x960x7x7 0.66x the time.
template <int K, typename S>
void conv_narrow_s1(const float* plane, i64 sh, const Geo& g, i64 oy0, i64 TH, const float* w,
                    float bias, S* dst, i64 drs) {
  typedef V<float>::t vec;
  const NarrowShifts<K> row(g);
  in_exact_blocks(TH, [&](i64 i, auto R) __attribute__((always_inline)) {
    constexpr int RB = decltype(R)::value;
    constexpr int CH = RB >= 4 ? 1 : 2;  // independent FMA chains where the block is short
    vec acc[CH][RB];
    for (int r = 0; r < RB; ++r) {
      acc[0][r] = vset<float>(bias);
      for (int h = 1; h < CH; ++h) acc[h][r] = vzero<float>();
    }
    const i64 y0 = oy0 + i - g.pt;  // input row of the block's first window row
#pragma GCC unroll 16
    for (int r = 0; r < RB + K - 1; ++r) {
      if (uint64_t(y0 + r) >= uint64_t(g.H)) continue;  // a zero row
      const vec v = row.load(plane + (y0 + r) * sh);
#pragma GCC unroll 8
      for (int kx = 0; kx < K; ++kx) {
        const vec shifted = row.shift(v, kx);
#pragma GCC unroll 8
        for (int o = 0; o < RB; ++o) {
          const int ky = r - o;
          if (ky >= 0 && ky < K) acc[kx % CH][o] += w[ky * K + kx] * shifted;
        }
      }
    }
    store_rows<CH, RB, float>(acc, dst + i * drs, drs, g.OW);
  });
}
#endif

// Whether conv_direct applies: float input, zero padding, unit column stride, and stride and
// dilation 1 with a square 3, 5 or 7 filter, or stride 2 with a 3x3 one.
#if defined(SEPCONV_DIRECT)
inline bool direct_ok(const Geo& g, bool is_float) {
  const bool s1 = unit_steps(g) && g.KH == g.KW && (g.KW == 3 || g.KW == 5 || g.KW == 7);
  const bool s2 = g.sy == 2 && g.sx == 2 && g.dy == 1 && g.dx == 1 && g.KH == 3 && g.KW == 3;
  return is_float && g.mode == 0 && g.xs[3] == 1 && (s1 || s2) && s1_rows_enabled();
}
#else
inline bool direct_ok(const Geo&, bool) { return false; }
#endif

// One plane's depthwise output straight from the plane (direct_ok(g) holds; without AVX-512
// or AVX2 it never does): conv_direct_s2 at stride 2, conv_narrow_s1 for narrow planes
// (narrow_ok), else conv_direct_s1.
#if defined(SEPCONV_DIRECT)
template <typename S>
void conv_direct(const float* plane, const Geo& g, i64 oy0, i64 ox0, i64 TH, i64 TW,
                 const float* w, float bias, S* dst, i64 drs) {
  if (g.sy == 2) {
    conv_direct_s2<S>(plane, g.xs[2], g, oy0, ox0, TH, TW, w, bias, dst, drs);
    return;
  }
  if (narrow_ok(g, ox0, TW)) {
    switch (g.KW) {
      case 3: conv_narrow_s1<3, S>(plane, g.xs[2], g, oy0, TH, w, bias, dst, drs); return;
      case 5: conv_narrow_s1<5, S>(plane, g.xs[2], g, oy0, TH, w, bias, dst, drs); return;
      default: conv_narrow_s1<7, S>(plane, g.xs[2], g, oy0, TH, w, bias, dst, drs); return;
    }
  }
  switch (g.KW) {
    case 3: conv_direct_s1<3, S>(plane, g.xs[2], g, oy0, ox0, TH, TW, w, bias, dst, drs); break;
    case 5: conv_direct_s1<5, S>(plane, g.xs[2], g, oy0, ox0, TH, TW, w, bias, dst, drs); break;
    default: conv_direct_s1<7, S>(plane, g.xs[2], g, oy0, ox0, TH, TW, w, bias, dst, drs); break;
  }
}
#else
template <typename S>
void conv_direct(const float*, const Geo&, i64, i64, i64, i64, const float*, float, S*, i64) {}
#endif

template <int KW, typename S, typename A>
void conv_planar_k(const A* buf, i64 qrow, i64 qs, const A* w, A bias, i64 TH, i64 TW,
                   const Geo& g, S* dst, i64 drs) {
  constexpr i64 L = V<A>::L;
  i64 offx[64];
  std::vector<i64> offx_big;
  i64* ox = offx;
  if (g.KW > 64) {
    offx_big.resize(g.KW);
    ox = offx_big.data();
  }
  for (i64 kx = 0; kx < g.KW; ++kx) {
    const i64 q = kx * g.dx;
    ox[kx] = (q % g.sx) * qs + q / g.sx;
  }
  i64 i0 = 0;
  if (TW <= L) {
    // Narrow rows (one vector each): four rows at once for independent FMA chains.
    for (; i0 + 4 <= TH; i0 += 4)
      conv_block<4, KW, S, A>(buf + i0 * g.sy * qrow, qrow, g.dy, g.KH, g.KW, ox, w, bias,
                              dst + i0 * drs, TW, g.sy * qrow, drs, true);
  }
  for (i64 i = i0; i < TH; ++i) {
    const A* b = buf + i * g.sy * qrow;
    S* d = dst + i * drs;
    i64 j = 0;
    for (; j + 4 * L <= TW; j += 4 * L)
      conv_block<4, KW, S, A>(b + j, qrow, g.dy, g.KH, g.KW, ox, w, bias, d + j, L);
    const i64 rem = TW - j;
    if (rem <= 0) continue;
    const i64 nv = (rem + L - 1) / L, last = rem - (nv - 1) * L;
    switch (nv) {
      case 1: conv_block<1, KW, S, A>(b + j, qrow, g.dy, g.KH, g.KW, ox, w, bias, d + j, last); break;
      case 2: conv_block<2, KW, S, A>(b + j, qrow, g.dy, g.KH, g.KW, ox, w, bias, d + j, last); break;
      case 3: conv_block<3, KW, S, A>(b + j, qrow, g.dy, g.KH, g.KW, ox, w, bias, d + j, last); break;
      default: conv_block<4, KW, S, A>(b + j, qrow, g.dy, g.KH, g.KW, ox, w, bias, d + j, last); break;
    }
  }
}

template <typename S, typename A>
void conv_planar(const A* buf, i64 qrow, i64 qs, const A* w, A bias, i64 TH, i64 TW, const Geo& g,
                 S* dst, i64 drs) {
  if constexpr (std::is_same<A, float>::value) {
    if (unit_steps(g) && g.KH == g.KW && s1_rows_enabled()) {
      switch (g.KW) {
        case 3: conv_planar_s1<3, S>(buf, qrow, w, bias, TH, TW, dst, drs); return;
        case 5: conv_planar_s1<5, S>(buf, qrow, w, bias, TH, TW, dst, drs); return;
        case 7: conv_planar_s1<7, S>(buf, qrow, w, bias, TH, TW, dst, drs); return;
        default: break;
      }
    }
  }
  switch (g.KW) {
    case 1: conv_planar_k<1, S, A>(buf, qrow, qs, w, bias, TH, TW, g, dst, drs); break;
    case 3: conv_planar_k<3, S, A>(buf, qrow, qs, w, bias, TH, TW, g, dst, drs); break;
    case 4: conv_planar_k<4, S, A>(buf, qrow, qs, w, bias, TH, TW, g, dst, drs); break;
    case 5: conv_planar_k<5, S, A>(buf, qrow, qs, w, bias, TH, TW, g, dst, drs); break;
    case 7: conv_planar_k<7, S, A>(buf, qrow, qs, w, bias, TH, TW, g, dst, drs); break;
    default: conv_planar_k<0, S, A>(buf, qrow, qs, w, bias, TH, TW, g, dst, drs); break;
  }
}

// Elements of slack at the end of every buffer conv_planar reads (see its partial vector).
constexpr i64 kSlack = 64;

// The depthwise output of one input channel's M filters (weights w[m * T + t], biases b[m])
// over one output tile (first row/column oy0/ox0, th x tw, reading the padded window of R x Q
// from r0/q0): straight from the plane where `direct` (direct_ok), else through the padded
// copy in buf. Filter m's output goes to dst + m * dms, row stride drs.
template <typename S, typename A, typename D>
void channel_tile(const S* plane, const Geo& g, bool direct, i64 oy0, i64 ox0, i64 th, i64 tw,
                  i64 r0, i64 R, i64 q0, i64 Q, const i64* ymap, const i64* xmap, A* buf,
                  const A* w, const A* b, D* dst, i64 dms, i64 drs) {
  if constexpr (std::is_same<S, float>::value) {
    if (direct) {
      for (i64 m = 0; m < g.M; ++m)
        conv_direct<D>(plane, g, oy0, ox0, th, tw, w + m * g.T, b[m], dst + m * dms, drs);
      return;
    }
  }
  pad_planar<S, A>(plane, g.xs[2], g.xs[3], g, ymap, xmap, r0, R, q0, Q, buf);
  const i64 qs = (Q + g.sx - 1) / g.sx, qrow = qs * g.sx;
  for (i64 m = 0; m < g.M; ++m)
    conv_planar<D, A>(buf, qrow, qs, w + m * g.T, b[m], th, tw, g, dst + m * dms, drs);
}

// Whether conv_nhwc takes its stride-1 path (conv_nhwc_s1), the one that can read the
// channel-blocked layout: stride and dilation 1 along the row, whole channel vectors, a
// 3, 5 or 7 wide filter.
template <typename A>
inline bool nhwc_s1_ok(const Geo& g, i64 cb) {
  return g.sx == 1 && g.dx == 1 && cb % V<A>::L == 0 && (g.KW == 3 || g.KW == 5 || g.KW == 7);
}

// Block stride of pad_nhwc's channel-blocked layout for an R x Q window of cb channels, or 0
// where conv_nhwc cannot read it (its stride-1 path, nhwc_s1_ok, can) or gains nothing from
// it. With all channels of a pixel together and a pixel stride that is a multiple of 512 B
// (128, 256, ... float channels), a channel vector's input lines fall on 8 or fewer of L1's
// 64 sets, and the 3x3 block ran at a third of its FMA rate from L2; blocked, its lines are
// contiguous (in-cache 4x56 pixels x 128 channels: 14.4 -> 8.6 cycles per output vector).
// Other strides measured 0.98-1.13x with it (the blocked copy costs more than it saves).
template <typename A>
inline i64 nhwc_block_stride(const Geo& g, i64 cb, i64 R, i64 Q) {
  return nhwc_s1_ok<A>(g, cb) && (cb * i64(sizeof(A))) % 512 == 0 ? R * Q * V<A>::L : 0;
}

// Channels [k0, k0 + kn) of pad_nhwc's window (channel k = input channel c0 + k / M) into
// dk + (r * Q + q) * ps.
template <typename S, typename A>
void pad_nhwc_piece(const S* img, i64 sh, i64 sw, i64 sc, const Geo& g, const i64* ymap,
                    const i64* xmap, i64 r0, i64 R, i64 q0, i64 Q, i64 c0, i64 k0, i64 kn, A* dk,
                    i64 ps) {
  const i64 M = g.M;
  for (i64 r = 0; r < R; ++r) {
    const i64 sr = ymap[r0 + r];
    for (i64 q = 0; q < Q; ++q) {
      A* d = dk + (r * Q + q) * ps;
      const i64 sq = xmap[q0 + q];
      if (sr < 0 || sq < 0) {
        std::memset(d, 0, sizeof(A) * kn);
        continue;
      }
      const S* p = img + sr * sh + sq * sw + c0 * sc;
      if (M == 1 && sc == 1 && std::is_same<S, A>::value && kn == V<A>::L) {
        // One channel vector (the channel-blocked layout): a vector move, not a memcpy call
        // per pixel (the blocked copy was a quarter of the channels_last 7x7 depthwise's time
        // on AVX2; 8x128x112x112 3x3 / 5x5 / 7x7 0.96 / 0.99 / 0.94x the time).
        vst<A>(d, vld<A>(reinterpret_cast<const A*>(p) + k0));
      } else if (M == 1 && sc == 1 && std::is_same<S, A>::value) {
        std::memcpy(d, p + k0, sizeof(A) * kn);
      } else if (M == 1) {
        for (i64 k = 0; k < kn; ++k) d[k] = toA(p[(k0 + k) * sc]);
      } else {
        for (i64 k = 0; k < kn; ++k) d[k] = toA(p[((k0 + k) / M) * sc]);
      }
    }
  }
}

// NHWC: padded rows [r0, r0+R), columns [q0, q0+Q) of input channels [c0, c0+cin) of one
// image into buf[R][Q][cin*M] (each input channel repeated M times); or, with a block stride
// bs > 0 (nhwc_block_stride), in blocks of one channel vector: channel k of pixel (r, q) at
// buf[(k / L) * bs + (r * Q + q) * L + k % L], written block by block so that the writes are
// sequential (pixel by pixel, each pixel's writes went to cb / L places a block apart: twice
// the time).
template <typename S, typename A>
void pad_nhwc(const S* img, i64 sh, i64 sw, i64 sc, const Geo& g, const i64* ymap, const i64* xmap,
              i64 r0, i64 R, i64 q0, i64 Q, i64 c0, i64 cin, A* buf, i64 bs = 0) {
  const i64 cb = cin * g.M, L = V<A>::L;
  if (bs == 0 && g.M == 1 && sc == 1 && sw == cb && std::is_same<S, A>::value) {
    // Whole pixels, as stored in the image: a row's interior is one copy (against one copy
    // per pixel: stride-2 channels_last layers 0.93-0.97x the time, depthwise 0.90-0.96x).
    const i64 qa = std::clamp<i64>(g.pl - q0, 0, Q), qb = std::clamp<i64>(g.pl + g.W - q0, qa, Q);
    // Columns [from, to) of row r, pixel by pixel (zero rows, and the padding columns).
    auto pixels = [&](i64 r, i64 from, i64 to) {
      pad_nhwc_piece<S, A>(img, sh, sw, sc, g, ymap, xmap, r0 + r, 1, q0 + from, to - from, c0,
                           0, cb, buf + (r * Q + from) * cb, cb);
    };
    for (i64 r = 0; r < R; ++r) {
      const i64 sr = ymap[r0 + r];
      if (sr < 0) {
        pixels(r, 0, Q);
        continue;
      }
      std::memcpy(buf + (r * Q + qa) * cb, img + sr * sh + (q0 + qa - g.pl) * sw + c0,
                  sizeof(A) * (qb - qa) * cb);
      pixels(r, 0, qa);
      pixels(r, qb, Q);
    }
    return;
  }
  if (bs == 0) {
    pad_nhwc_piece<S, A>(img, sh, sw, sc, g, ymap, xmap, r0, R, q0, Q, c0, 0, cb, buf, cb);
    return;
  }
  for (i64 k0 = 0; k0 < cb; k0 += L)
    pad_nhwc_piece<S, A>(img, sh, sw, sc, g, ymap, xmap, r0, R, q0, Q, c0, k0, L,
                         buf + (k0 / L) * bs, L);
}

// NHWC depthwise core: TH x TW pixels, cb channels, from buf[R][Q][cb]; weights wT[t*ldw + c],
// bias[c]; output pixel (i, j) channel c at dst[i*drs + j*dps + c].
//
// PB pixels of one row times one channel vector at once: each weight vector load serves
// PB FMAs and the PB accumulators are independent chains.
template <int PB, typename S, typename A>
inline void nhwc_block(const A* b, i64 pstep, const i64* off, i64 T, const A* wT, i64 ldw,
                       const A* bias, i64 c, S* d, i64 dps) {
  typedef typename V<A>::t vec;
  vec acc[PB];
  const vec b0 = vld<A>(bias + c);
  for (int p = 0; p < PB; ++p) acc[p] = b0;
  for (i64 t = 0; t < T; ++t) {
    const vec w = vld<A>(wT + t * ldw + c);
    const A* src = b + off[t] + c;
#pragma GCC unroll 8
    for (int p = 0; p < PB; ++p) acc[p] += w * vld<A>(src + p * pstep);
  }
  for (int p = 0; p < PB; ++p) vstOut(d + p * dps + c, acc[p]);
}

// Stride 1, dilation 1 along the row: the PB + KW - 1 input vectors of a kernel row are
// loaded once and reused by all KW taps (register sliding window). b, w, bias and d point at
// the block's channel vector; input pixels are ps apart, rows rstep; weights ldw per tap.
// Fewer than 8 pixels (row tails) of 5x5 and 7x7 filters keep 8 / PB partial sums per pixel:
// one chain each ran at the FMA latency (7x7 rows 14 wide: 81 cycles per output vector for
// 25 of FMAs). 3x3 tails do not gain from them (their short chains overlap anyway).
// always_inline: called per block, the accumulators went through the stack before and after
// (in-cache 4x56 pixels x 16 channels: 8.4 ns per output vector as a call, 6.9 inlined).
template <int PB, int KW, typename S, typename A>
__attribute__((always_inline)) inline void nhwc_block_s1(const A* b, i64 ps, i64 rstep, i64 KH,
                                                         const A* w, i64 ldw, const A* bias,
                                                         S* d, i64 dps) {
  typedef typename V<A>::t vec;
  constexpr int CH = PB >= 8 || KW == 3 ? 1 : 8 / PB;
  vec acc[CH][PB];
  for (int p = 0; p < PB; ++p) {
    acc[0][p] = vld<A>(bias);
    for (int h = 1; h < CH; ++h) acc[h][p] = vzero<A>();
  }
  for (i64 ky = 0; ky < KH; ++ky) {
    const A* r = b + ky * rstep;
    const A* wr = w + ky * KW * ldw;
    if constexpr (kVecRegs < 32) {
      // 16 registers: the KW weight vectors stay in registers and each input vector is
      // loaded once and met by every tap that reads it (the PB + KW - 1 input vectors and
      // PB accumulators below took 19-23 ymm registers for 8 pixels and spilled).
      vec wv[KW];
#pragma GCC unroll 8
      for (int kx = 0; kx < KW; ++kx) wv[kx] = vld<A>(wr + kx * ldw);
      const A* rq = r;
#pragma GCC unroll 16
      for (int q = 0; q < PB + KW - 1; ++q, rq += ps) {
        const vec x = vld<A>(rq);
        asm("" : "+r"(rq));
#pragma GCC unroll 8
        for (int kx = 0; kx < KW; ++kx) {
          const int p = q - kx;
          if (p >= 0 && p < PB) acc[(ky * KW + kx) % CH][p] += wv[kx] * x;
        }
      }
      continue;
    }
    vec xv[PB + KW - 1];
    // One pointer stepped by ps, kept opaque (the empty asm): otherwise the compiler
    // precomputes all PB + KW - 1 addresses, runs out of registers and shuttles them through
    // vector registers (42 vmovq per 8-pixel 3x3 block, on the FMA ports; C = 16 in L1:
    // 12.0 cycles per output vector, 5.5 with the opaque pointer).
    const A* rq = r;
#pragma GCC unroll 16
    for (int q = 0; q < PB + KW - 1; ++q, rq += ps) {
      xv[q] = vld<A>(rq);
      asm("" : "+r"(rq));
    }
#pragma GCC unroll 8
    for (int kx = 0; kx < KW; ++kx) {
      const vec wv = vld<A>(wr + kx * ldw);
#pragma GCC unroll 8
      for (int p = 0; p < PB; ++p) acc[(ky * KW + kx) % CH][p] += wv * xv[p + kx];
    }
  }
  store_rows<CH, PB, A>(acc, d, dps, V<A>::L);
}

// The stride-1 path of conv_nhwc (cb a multiple of L): from buf[R][Q][cb], or with block
// stride bs > 0 from pad_nhwc's channel-blocked layout.
template <int KW, typename S, typename A>
void conv_nhwc_s1(const A* buf, i64 Q, i64 cb, const A* wT, i64 ldw, const A* bias, i64 TH,
                  i64 TW, const Geo& g, S* dst, i64 drs, i64 dps, i64 bs) {
  const i64 L = V<A>::L;
  const i64 ps = bs > 0 ? L : cb;  // pixel step in the buffer
  const i64 rstep = g.dy * Q * ps;
  // Channel vectors outermost, then rows, then pixels: the blocks of one channel vector share
  // most of their input lines, which then stay in L1 from one output row to the next (with
  // the channels inside the rows, the other channels evicted them in between; pixels
  // inside channels: 7x7 blocks touched all channels of 7 x 14 pixels, about L1's size).
  // In-cache 4x56 pixels x 128 channels: 10.8 ns per output vector, against 12.0 rows-outer.
  for (i64 c = 0; c < cb; c += L) {
    const A* bc = bs > 0 ? buf + (c / L) * bs : buf + c;
    for (i64 i = 0; i < TH; ++i) {
      const A* brow = bc + i * g.sy * Q * ps;
      S* drow = dst + i * drs + c;
      auto block = [&](i64 j, auto pb) __attribute__((always_inline)) {
        nhwc_block_s1<decltype(pb)::value, KW, S, A>(brow + j * ps, ps, rstep, g.KH, wT + c, ldw,
                                                     bias + c, drow + j * dps, dps);
      };
      in_blocks<8>(0, TW, block);
    }
  }
}

// NHWC depthwise of TH x TW output pixels and cb channels from pad_nhwc's buffer (block
// stride bs as given to pad_nhwc; 0 for buf[R][Q][cb], which every geometry can use).
template <typename S, typename A>
void conv_nhwc(const A* buf, i64 Q, i64 cb, const A* wT, i64 ldw, const A* bias, i64 TH, i64 TW,
               const Geo& g, S* dst, i64 drs, i64 dps, i64 bs = 0) {
  if (nhwc_s1_ok<A>(g, cb)) {
    switch (g.KW) {
      case 3: conv_nhwc_s1<3, S, A>(buf, Q, cb, wT, ldw, bias, TH, TW, g, dst, drs, dps, bs); return;
      case 5: conv_nhwc_s1<5, S, A>(buf, Q, cb, wT, ldw, bias, TH, TW, g, dst, drs, dps, bs); return;
      default: conv_nhwc_s1<7, S, A>(buf, Q, cb, wT, ldw, bias, TH, TW, g, dst, drs, dps, bs); return;
    }
  }
  const i64 L = V<A>::L;
  const i64 T = g.T;
  std::vector<i64> offv(T);
  i64* off = offv.data();
  for (i64 ky = 0; ky < g.KH; ++ky)
    for (i64 kx = 0; kx < g.KW; ++kx) off[ky * g.KW + kx] = (ky * g.dy * Q + kx * g.dx) * cb;
  const i64 pstep = g.sx * cb;  // buffer distance between neighbouring output pixels
  const i64 cv = cb / L * L;
  for (i64 i = 0; i < TH; ++i) {
    const A* brow = buf + i * g.sy * Q * cb;
    S* drow = dst + i * drs;
    i64 j = 0;
    for (; j + 8 <= TW; j += 8)
      for (i64 c = 0; c < cv; c += L)
        nhwc_block<8, S, A>(brow + j * pstep, pstep, off, T, wT, ldw, bias, c, drow + j * dps, dps);
    for (; j + 4 <= TW; j += 4)
      for (i64 c = 0; c < cv; c += L)
        nhwc_block<4, S, A>(brow + j * pstep, pstep, off, T, wT, ldw, bias, c, drow + j * dps, dps);
    for (; j < TW; ++j)
      for (i64 c = 0; c < cv; c += L)
        nhwc_block<1, S, A>(brow + j * pstep, pstep, off, T, wT, ldw, bias, c, drow + j * dps, dps);
    if (cv < cb) {
      for (i64 jj = 0; jj < TW; ++jj) {
        const A* b = brow + jj * pstep;
        S* d = drow + jj * dps;
        for (i64 c = cv; c < cb; ++c) {
          A a = bias[c];
          for (i64 t = 0; t < T; ++t) a += wT[t * ldw + c] * b[off[t] + c];
          fromA(a, d + c);
        }
      }
    }
  }
}

// Weights in accumulator type: wd[cm][t], wT[t][cm], bias[cm].
template <typename S, typename A>
void prep_weights(const S* wd, const S* bd, const Geo& g, std::vector<A>& w, std::vector<A>& wT,
                  std::vector<A>& b) {
  w.resize(g.CM * g.T);
  wT.resize(g.CM * g.T);
  b.assign(g.CM, A(0));
  for (i64 c = 0; c < g.CM; ++c) {
    for (i64 t = 0; t < g.T; ++t) {
      w[c * g.T + t] = toA(wd[c * g.T + t]);
      wT[t * g.CM + c] = w[c * g.T + t];
    }
    if (bd) b[c] = toA(bd[c]);
  }
}

struct Tiles {
  i64 TH, TW, ny, nx, count;
};

// Input rows (or columns) that `outs` consecutive output rows (columns) read.
inline i64 input_span(i64 outs, i64 stride, i64 kernel, i64 dilation) {
  return (outs - 1) * stride + (kernel - 1) * dilation + 1;
}

// Whether channels_last tiles touch their input (g_reads, kTouchBytes); elem: bytes per element.
inline bool touch_nhwc_input(const Geo& g, i64 elem) {
  return g_reads == 1 && g.N * g.C * g.H * g.W * elem > kTouchBytes;
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
        const i64 rs = g.dy * sh;
        switch (g.KW) {
          case 3: nhwc_block_s1<PB, 3, S, A>(xb + c, sw, rs, g.KH, w, L, bias + c, db + c, dps); break;
          case 5: nhwc_block_s1<PB, 5, S, A>(xb + c, sw, rs, g.KH, w, L, bias + c, db + c, dps); break;
          default: nhwc_block_s1<PB, 7, S, A>(xb + c, sw, rs, g.KH, w, L, bias + c, db + c, dps); break;
        }
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

// dst[c * dld + r] = src[r * sld + c] for rows [0, rows) and columns [0, cols), in 32 x 32
// blocks. The inner loop runs along the side with the larger leading dimension, so that the
// other side steps by the smaller one: stepping by 4 KiB (the pixels of a 32 x 32 plane) put
// a block's accesses into one cache set, and the backward took 1.9x the time.
template <typename S>
void transpose(const S* src, i64 sld, S* dst, i64 dld, i64 rows, i64 cols) {
  constexpr i64 B = 32;
  for (i64 r0 = 0; r0 < rows; r0 += B)
    for (i64 c0 = 0; c0 < cols; c0 += B) {
      const i64 r1 = std::min(rows, r0 + B), c1 = std::min(cols, c0 + B);
      if (sld <= dld) {
        for (i64 c = c0; c < c1; ++c)
          for (i64 r = r0; r < r1; ++r) dst[c * dld + r] = src[r * sld + c];
      } else {
        for (i64 r = r0; r < r1; ++r)
          for (i64 c = c0; c < c1; ++c) dst[c * dld + r] = src[r * sld + c];
      }
    }
}

// dst[g][k][o] = src[g][o][k] for each group: (Og x CMg) -> (CMg x Og).
template <typename S>
void transpose_groups(const S* src, S* dst, i64 G, i64 Og, i64 CMg) {
  for (i64 gi = 0; gi < G; ++gi)
    transpose(src + gi * Og * CMg, CMg, dst + gi * Og * CMg, Og, Og, CMg);
}

#if defined(__AVX2__)
// dst[c * dld + r] = src[r * sld + c] for r, c in [0, 8): 8 loads, 24 shuffles, 8 stores
// (element by element, packing ConvNeXt's 768 -> 3072 weight was 12 % of the layer's time).
inline void transpose8x8(const float* src, i64 sld, float* dst, i64 dld) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * sld);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);  // rows i, i+1 interleaved, lanes 0-1, 4-5
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {  // columns 0/4, 1/5, 2/6, 3/7 of four rows
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(dst + i * dld, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
    _mm256_storeu_ps(dst + (i + 4) * dld, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
  }
}
#endif

// Rows [k0, k1) of panel j of B = src^T, src being N x K row-major (B's columns are src's
// rows): dst[(j*K + k)*kPanel + o] = src[(j*kPanel + o)*K + k], zero past N.
void pack_panel_part(const float* src, i64 N, i64 K, i64 j, i64 k0, i64 k1, float* dst) {
  const i64 ob = std::min<i64>(kPanel, N - j * kPanel);
  float* d = dst + j * K * kPanel;
  const float* rows = src + j * kPanel * K;
  auto one_by_one = [&](i64 oa, i64 oz, i64 ka) {  // rows [oa, oz), k from ka
    for (i64 o = oa; o < oz; ++o)
      for (i64 k = ka; k < k1; ++k) d[k * kPanel + o] = rows[o * K + k];
  };
  i64 o = 0;
#if defined(__AVX2__)
  for (; o + 8 <= ob; o += 8) {  // blocks of 8 x 8, then the last k one by one
    i64 k = k0;
    for (; k + 8 <= k1; k += 8) transpose8x8(rows + o * K + k, K, d + k * kPanel + o, kPanel);
    one_by_one(o, o + 8, k);
  }
#endif
  one_by_one(o, ob, k0);
  for (i64 o = ob; o < kPanel; ++o)
    for (i64 k = k0; k < k1; ++k) d[k * kPanel + o] = 0.0f;
}

// Panel j of a plain B (K x N, row stride ldb), zero past N:
// dst[(j*K + k)*kPanel + o] = b[k*ldb + j*kPanel + o].
void pack_panel_rows(const float* b, i64 ldb, i64 K, i64 N, i64 j, float* dst) {
  const i64 ob = std::min<i64>(kPanel, N - j * kPanel);
  float* d = dst + j * K * kPanel;
  for (i64 k = 0; k < K; ++k, d += kPanel) {
    std::memcpy(d, b + k * ldb + j * kPanel, sizeof(float) * ob);
    std::fill(d + ob, d + kPanel, 0.0f);
  }
}

// Pointwise weight (G groups of Og x CMg, row-major) packed per group in kPanel-column
// panels, panel[j][k][0..kPanel) = wp[j*kPanel + ., k], zero past Og. In blocks of 16 k, so
// that the 16 destination rows being written stay in L1 while the source rows are read
// contiguously, and over the threads: with large weights and few pixels (batch 1) packing
// is a real part of the call.
void pack_panels(const float* wp, i64 G, i64 Og, i64 CMg, i64 threads, float* dst) {
  constexpr i64 KB = 16;
  const i64 panels = panel_count(Og), kblocks = (CMg + KB - 1) / KB;
  const i64 tasks = G * panels * kblocks;
  const i64 nth = G * Og * CMg >= (i64(1) << 16) ? threads : 1;
#pragma omp parallel for num_threads(nth) schedule(static)
  for (i64 t = 0; t < tasks; ++t) {
    const i64 gi = t / (panels * kblocks), j = (t / kblocks) % panels, k0 = (t % kblocks) * KB;
    pack_panel_part(wp + gi * Og * CMg, Og, CMg, j, k0, std::min(CMg, k0 + KB),
                    dst + gi * panels * CMg * kPanel);
  }
}

// Group gi's packed pointwise weight (g.wpT) from its column col (a multiple of kPanel) on.
inline const float* packed_cols(const Geo& g, i64 gi, i64 col) {
  return g.wpT + (gi * panel_count(g.Og) * kPanel + col) * g.CMg;
}

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
  // ftmp: P x Og floats.
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

// Few tiles (batch 1, small images): the threads share each tile instead, first the
// depthwise over channels, then the GEMM over output-channel blocks.
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
#pragma omp for schedule(dynamic, 4)
      for (i64 ct = 0; ct < ctasks; ++ct) {
        const i64 c0 = ct * cblock, cin = std::min(cblock, g.C - c0), cm0 = c0 * g.M;
        if (nhwc) {
          nhwc_tile<float, float>(xn, g, ymap, xmap, ir, oy0, ox0, th, tw, c0, cin, buf.data(),
                                  wT.data(), b.data(), mid.data(), tw * g.CM, g.CM);
        } else {
          channel_tile<float, float, float>(xn + c0 * g.xs[1], g, direct, oy0, ox0, th, tw, r0, R,
                                            q0, Q, ymap, xmap, buf.data(), w.data() + cm0 * g.T,
                                            b.data() + cm0, mid.data() + cm0 * P, P, tw);
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
// - planar input with few tiles (batch 1, small planes), where the threads sharing each tile
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

// Whether sep_forward_whole's own GEMM takes a channels_last call through the planar GEMM,
// transposing the intermediate and the output in cache, instead of packing the pointwise
// weight in panels: where packing would move more than transposing. 1x768x7x7 -> 3072 took
// 0.45x the time this way, 1x960x7x7 -> 160 / 320 0.85-0.92x; 8x960x7x7 -> 160 and
// 8x576x14x14 -> 160 s2 took 1.25-1.35x (packing there is cheap).
bool whole_transposed(const Geo& g) {
  return g.nhwc && 2 * g.N * g.OH * g.OW * (g.CM + g.O) < g.O * g.CM;
}

// Buffers that a thread keeps from call to call, one per slot, each up to kKeepBytes (larger
// ones are allocated per call, in `fallback`). glibc hands large freed blocks back to the
// system (it unmaps them, or trims its heaps), so that a fresh buffer of megabytes was
// page-faulted in again on every call: a loop of 8x384x14x14 -> 1536 calls took 16.3 ms a
// call instead of 11.9, 8x960x7x7 -> 320 3.0 ms instead of 1.9 (AMD Zen 3 VM). The tile
// intermediates are kept for the same reason, without a gain measured there (32x64x32x32 ->
// 128 5.5-5.7 ms either way). A slot's buffer is in use by one call at a time:
// slots are per thread (and element type), and a call uses each slot once. Buffers only
// grow: each thread, OpenMP's workers included, keeps its largest until it exits (whole-
// call buffers are at most a few MiB, whole_ok; tile intermediates the tile budget).
enum KeptSlot { kKeptMid, kKeptPanels, kKeptOut, kKeptSlots };
constexpr i64 kKeepBytes = i64(32) << 20;
template <typename T>
T* kept_buffer(KeptSlot slot, i64 n, std::unique_ptr<T[]>& fallback) {
  thread_local std::unique_ptr<T[]> kept[kKeptSlots];
  thread_local i64 kept_n[kKeptSlots] = {};
  if (n * i64(sizeof(T)) > kKeepBytes) {
    fallback.reset(new T[n]);
    return fallback.get();
  }
  if (n > kept_n[slot]) {
    kept[slot].reset();  // (not both at once; and no stale size if new throws)
    kept_n[slot] = 0;
    kept[slot].reset(new T[n]);
    kept_n[slot] = n;
  }
  return kept[slot].get();
}

// Small intermediates (whole_ok): the depthwise output of the whole
// call first (channels_last: N*OH*OW pixels x CM; NCHW: CM planes of all images' pixels),
// then one GEMM per thread over a block of output channels (NCHW: into a buffer, from which
// each image's planes are copied out with the bias; at batch 1 straight into the output
// planes), or, channels_last with 128 or more
// pixels a thread, over a share of the pixels. Tile by tile, each GEMM re-reads the
// whole pointwise weight for a few dozen pixels (ConvNeXt's 768 -> 3072 at 7 x 7: 9.4 MB for
// 49 pixels).
void sep_forward_whole(const float* x, const std::vector<float>& w, const std::vector<float>& wT,
                       const std::vector<float>& b, const float* wp, const float* bp, float* out,
                       const Geo& g, const Tiles& tl, const i64* ymap, const i64* xmap) {
  const i64 Pimg = g.OH * g.OW, P = g.N * Pimg, ops = g.os[3];
  std::unique_ptr<float[]> mid_own, midP_own;  // (beyond kKeepBytes)
  float* const mid = kept_buffer(kKeptMid, P * g.CM + kSlack, mid_own);
  const bool nhwc = g.nhwc != 0;
  const bool transposed = g.own_gemm && whole_transposed(g);
  const auto ir = inner_read<float, float>(g, wT);
  const bool direct = !nhwc && direct_ok(g, true);
  // Output channels per thread, in whole vectors.
  const i64 per = ((g.O + g.threads - 1) / g.threads + 15) / 16 * 16;
  // The own planar GEMM's B (mid^T, or mid where a thread's block of the weight is read in
  // several blocks of rows, so that B is read more than once) in panels (see kPanel), packed
  // once for all threads. 1x768x7x7 -> 3072 took 0.86x, 1x960x7x7 -> 320 0.90x, 8x768x7x7
  // -> 3072 0.94x, 8x384x14x14 -> 1536 0.98x the time; 1x192x28x28 -> 32 (B read once)
  // 1.10-1.18x, hence not.
  const bool panelled = transposed || (g.own_gemm && !nhwc && per * g.CM * 4 > kABlockBytes);
  // Batch 1, planar output, own GEMM: straight into the output planes, not through a buffer
  // copied out with the biases (1x384x14x14 -> 1536 0.93-0.97x). The bias then starts each
  // sum instead of being added to it: the same image rounds differently at batch 1 and 8
  // (up to 1.2e-4 apart on ConvNeXt's layers). Image by image at batch 8, 7 x 7 planes (49
  // columns a GEMM) took 1.15x.
  const bool direct_out = g.own_gemm && !nhwc && g.N == 1;
  const i64 panels = panel_count(P);
  float* const midP =
      panelled ? kept_buffer(kKeptPanels, panels * kPanel * g.CM + kSlack, midP_own) : nullptr;
#pragma omp parallel num_threads(g.threads)
  {
    std::vector<float> buf(nhwc ? input_span(tl.TH, g.sy, g.KH, g.dy) *
                                      input_span(tl.TW, g.sx, g.KW, g.dx) * g.CM
                                : g.Hu * g.Qrow + kSlack);
    if (nhwc) {
#pragma omp for schedule(dynamic, 1)
      for (i64 t = 0; t < tl.count; ++t) {
        const Tile s = tile_at(tl, g, t);
        nhwc_tile<float, float>(x + s.n * g.xs[0], g, ymap, xmap, ir, s.oy0, s.ox0, s.th, s.tw,
                                0, g.C, buf.data(), wT.data(), b.data(),
                                mid + (s.n * Pimg + s.oy0 * g.OW + s.ox0) * g.CM,
                                g.OW * g.CM, g.CM);
      }
    } else {
#pragma omp for schedule(dynamic, 4)
      for (i64 nc = 0; nc < g.N * g.C; ++nc) {
        const i64 n = nc / g.C, cm = (nc % g.C) * g.M;
        channel_tile<float, float, float>(x + n * g.xs[0] + (nc % g.C) * g.xs[1], g, direct, 0, 0,
                                          g.OH, g.OW, 0, g.Hu, 0, g.Wu, ymap, xmap, buf.data(),
                                          w.data() + cm * g.T, b.data() + cm,
                                          mid + cm * P + n * Pimg, P, g.OW);
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
    if (panelled) {
#pragma omp for schedule(static)
      for (i64 j = 0; j < panels; ++j) {
        if (transposed)  // (mid's rows are B's columns)
          pack_panel_part(mid, P, g.CM, j, 0, g.CM, midP);
        else
          pack_panel_rows(mid, P, g.CM, P, j, midP);
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
        if (panelled)
          gemm_f32(nb, P, g.CM, wp + o0 * g.CM, g.CM, midP, kPanel, C, ldc, br, nullptr,
                   kPanel * g.CM);
        else if (g.own_gemm)
          gemm_f32(nb, P, g.CM, wp + o0 * g.CM, g.CM, mid, P, C, ldc, br, nullptr);
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

// A core's L2 in bytes (1 MiB where the system does not say).
inline i64 l2_bytes() {
  static const i64 bytes = [] {
    const long v = sysconf(_SC_LEVEL2_CACHE_SIZE);
    return v > 0 ? i64(v) : i64(1) << 20;
  }();
  return bytes;
}

// Whether the own tile GEMMs write their output around the caches (Geo::stream_out): without
// AVX-512, where the micro-kernel's 16-column store is one whole line, for planar output
// planes or channels_last pixels of whole lines and outputs of 4 MiB or more (smaller ones
// may serve the next layer from the cache). Plain stores read each output line first; on
// AMD Zen 3 streaming took 0.87-0.97x the time on 56x56 and 28x28 planes (8x192x28x28 ->
// 768 7x7 0.92-0.94x).
constexpr i64 kStreamGemmBytes = i64(4) << 20;
inline bool stream_tile_output(const Geo& g) {
  const bool planar = !g.nhwc && !g.out_nhwc && g.os[3] == 1 && g.os[1] % 16 == 0;
  const bool nhwc = g.nhwc && g.out_nhwc && g.os[1] == 1 && g.os[3] % 16 == 0 && g.wpT;
  return kVecBytes < 64 && streaming_enabled() && g.own_gemm && (planar || nhwc) &&
         g.N * g.O * g.OH * g.OW * 4 >= kStreamGemmBytes;
}

template <typename S>
void sep_forward(const S* x, const S* wd, const S* bd, const S* wp, const S* bp, S* out,
                 const i64* geo) {
  typedef typename Acc<S>::type A;
  Geo g = make_geo(geo);
  std::vector<A> w, wT, b;
  prep_weights<S, A>(wd, bd, g, w, wT, b);
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
  // 1 MiB tiles 8x192x28x28 -> 32 and 8x384x14x14 -> 64 took 0.82x the time; with larger
  // images (8x96x112x112 -> 24 s2) such tiles took 1.1x.
  const i64 image_bytes = g.OH * g.OW * bpp;
  if (!nhwc && !g.budget_set && image_bytes <= (i64(1) << 20))
    g.budget = std::max(g.budget, image_bytes);
  const Tiles tl = make_tiles(g, bpp, 3 * g.threads);
  // Few tiles (batch 1, small images): the threads share each tile (own GEMM only).
  const bool few_tiles = g.threads > 1 && tl.count < 2 * g.threads;
  std::unique_ptr<float[]> wpT_buf;
  std::vector<float> bp_buf, wpb_buf;
  if constexpr (std::is_same<S, float>::value) {
    const bool whole = whole_ok(g, few_tiles);
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
    if (g.own_gemm && split_ok && few_tiles) {
      sep_forward_split(x, w, wT, b, wp, bp, out, g, tl, ymap.data(), xmap.data(), out_nhwc);
      return;
    }
  }

  const auto ir = inner_read<S, A>(g, wT);
  const bool touch = nhwc && touch_nhwc_input(g, sizeof(S));
  g.stream_out = stream_tile_output(g);
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
    std::vector<float> ftmp(std::is_same<S, bf16>::value ? Pmax * g.Og : 0);
#pragma omp for schedule(dynamic, 1)
    for (i64 t = 0; t < tl.count; ++t) {
      const auto [n, oy0, ox0, th, tw, P, R, Q, r0, q0] = tile_at(tl, g, t);
      const S* xn = x + n * g.xs[0];
      const i64 mcs = nhwc ? P : mid_channel_stride(P);
      if (nhwc) {
        const i64 mps = g.wpb ? g.CM + 1 : g.CM;  // room for tile_gemm's channel of ones
        if (touch) touch_nhwc(xn, g, oy0, ox0, th, tw);
        nhwc_tile<S, A>(xn, g, ymap.data(), xmap.data(), ir, oy0, ox0, th, tw, 0, g.C, buf.data(),
                        wT.data(), b.data(), mid, tw * mps, mps);
      } else {
        for (i64 c = 0; c < g.C; ++c) {
          // A later channel's rows: each channel's piece is short, which the hardware
          // prefetcher does not anticipate. (Touching the next one instead: row 1 1.04x,
          // 8x96x112x112 -> 24 s2 0.68x, 8x144x56x56 -> 24 1.2x the time.)
          if (g_reads == 1 && c + 2 < g.C)
            prefetch_window(xn + (c + 2) * g.xs[1], g, r0, R, q0, Q);
          const i64 cm = c * g.M;
          channel_tile<S, A, S>(xn + c * g.xs[1], g, direct, oy0, ox0, th, tw, r0, R, q0, Q,
                                ymap.data(), xmap.data(), buf.data(), w.data() + cm * g.T,
                                b.data() + cm, mid + cm * mcs, mcs, tw);
        }
      }
      // Output tile: pixels are consecutive in (oy, ox) order (whole rows, or one row piece).
      S* o = out + n * g.os[0] + oy0 * g.os[2] + ox0 * g.os[3];
      tile_gemm<S>(g, mid, nhwc, P, mcs, wp, bp, o, g.os[1], g.os[3], ftmp.data());
    }
    if (g.stream_out) stream_fence();
  }
}

// ------------------------------------------------------------------ depthwise forward

template <typename S>
void dw_forward(const S* x, const S* wd, const S* bd, S* out, const i64* geo) {
  typedef typename Acc<S>::type A;
  const Geo g = make_geo(geo);
  std::vector<A> w, wT, b;
  prep_weights<S, A>(wd, bd, g, w, wT, b);
  const auto ymap = make_map(g.Hu, g.H, g.pt, g.mode);
  const auto xmap = make_map(g.Wu, g.W, g.pl, g.mode);
  // Large outputs go around the caches (they would only evict the input).
  const bool stream = streaming_enabled() && !std::is_same<S, bf16>::value &&
                      g.N * g.CM * g.OH * g.OW * i64(sizeof(S)) >= (i64(16) << 20);
  // Staged output (kStageOutput): the tile to a buffer, then stream_rows; where the loops
  // store directly, vstOut streams.
  const bool stage = stream && kStageOutput;
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
#pragma omp for schedule(dynamic, 1)
      for (i64 t = 0; t < tl.count; ++t) {
        const Tile s = tile_at(tl, g, t);
        if (touch) touch_nhwc(x + s.n * g.xs[0], g, s.oy0, s.ox0, s.th, s.tw);
        S* o = out + s.n * g.os[0] + s.oy0 * g.os[2] + s.ox0 * g.os[3];
        nhwc_tile<S, A>(x + s.n * g.xs[0], g, ymap.data(), xmap.data(), ir, s.oy0, s.ox0, s.th,
                        s.tw, 0, g.C, buf.data(), wT.data(), b.data(),
                        staged ? tile_out.data() : o, staged ? s.tw * g.CM : g.os[2],
                        staged ? g.CM : g.os[3]);
        if (staged) stream_rows(tile_out.data(), s.tw * g.CM, o, g.os[2], s.th, s.tw * g.CM);
      }
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
  // Consecutive tasks per thread: within a chunk a task prefetches the next one's window
  // (AheadLines); 16 rather than 4 took 0.97-0.98x the time (fewer cold chunk starts).
  const i64 chunk = std::clamp<i64>(tasks / (4 * g.threads), 1, 16);
  const auto plane = [&](i64 nc) { return x + nc / g.C * g.xs[0] + nc % g.C * g.xs[1]; };
#pragma omp parallel num_threads(g.threads)
  {
    t_stream = stream && !staged;
    const i64 Rmax = input_span(tl.TH, g.sy, g.KH, g.dy);
    const i64 Qmax = input_span(tl.TW, g.sx, g.KW, g.dx);
    std::vector<A> buf(Rmax * (((Qmax + g.sx - 1) / g.sx) * g.sx) + kSlack);
    std::vector<S> tile_out(staged ? g.M * tl.TH * tl.TW + kSlack : 0);
#pragma omp for schedule(dynamic, chunk)
    for (i64 t = 0; t < tasks; ++t) {
      const auto [nc, oy0, ox0, th, tw, P, R, Q, r0, q0] = tile_at(tl, g, t);
      const i64 n = nc / g.C, c = nc % g.C, cm = c * g.M;
      if (g_reads == 1) {
        // The task's own window, touched first where the previous task did not prefetch it
        // all (a chunk's first task; loops that issue none); then the next one's, ahead.
        // (Touching the next task's window in a burst was 1.05-1.2x slower: its plane
        // displaced this one's from L1.)
        if (t % chunk == 0 || t_ahead.rows > 0)
          touch_window(plane(nc), g, r0, R, q0, Q);
        t_ahead = AheadLines();
        if (t + 1 < tasks && (t + 1) % chunk != 0) {
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
    }
    stream_fence();
    t_stream = false;
    t_ahead = AheadLines();
  }
}

// ------------------------------------------------------------------ backward

// Weight and bias gradient of one planar channel, any stride and dilation: dw[t] +=
// sum_{i,j} gm[i, j] * buf[i * sy * qrow + off[t] + j] (off: the taps' buffer offsets),
// db += sum gm. gm: OH x OW, row stride gs.
template <typename A>
void bwd_weight_any(const Geo& g, const A* buf, const A* gm, i64 gs, const i64* off, A* dw, A* db) {
  typedef typename V<A>::t vec;
  const i64 L = V<A>::L;
  for (i64 t = 0; t < g.T; ++t) {
    vec acc = vzero<A>();
    A tail = 0;
    for (i64 i = 0; i < g.OH; ++i) {
      const A* b = buf + i * g.sy * g.Qrow + off[t];
      const A* r = gm + i * gs;
      i64 j = 0;
      for (; j + L <= g.OW; j += L) acc += vld<A>(r + j) * vld<A>(b + j);
#if defined(__AVX512F__)
      if constexpr (std::is_same<A, float>::value) {
        if (j < g.OW) {  // the row's last partial vector, masked (see bwd_weight_s1)
          const __mmask16 m = __mmask16((1u << (g.OW - j)) - 1);
          acc += (vec)_mm512_maskz_loadu_ps(m, r + j) * (vec)_mm512_maskz_loadu_ps(m, b + j);
          continue;
        }
      }
#endif
      for (; j < g.OW; ++j) tail += r[j] * b[j];
    }
    dw[t] += hsum<A>(acc) + tail;
  }
  if (db) {
    vec acc = vzero<A>();
    A tail = 0;
    for (i64 i = 0; i < g.OH; ++i) {
      const A* r = gm + i * gs;
      i64 j = 0;
      for (; j + L <= g.OW; j += L) acc += vld<A>(r + j);
      for (; j < g.OW; ++j) tail += r[j];
    }
    *db += hsum<A>(acc) + tail;
  }
}

#if defined(__AVX512F__)
// Weight and bias gradient of one planar channel at stride 1, dilation 1, K x K filter:
// dw[ky, kx] += sum_{i,j} gm[i, j] * buf[i + ky, j + kx], db += sum gm. Per kernel row, each
// gm vector is loaded once for its K taps (unaligned input loads), two vectors at a time for
// 2K independent FMA chains, and a row's last partial vector is masked (element by element,
// a 56-wide row's tail took more time than its three full vectors). Reads up to 15 + K
// elements past a buffer row (buffers carry kSlack elements of slack).
template <int K>
void bwd_weight_s1(const float* buf, i64 qrow, const float* gm, i64 gs, i64 OH, i64 OW, float* dw,
                   float* db) {
  typedef V<float>::t vec;
  const i64 full = OW / 16;
  const __mmask16 tail = __mmask16((1u << (OW % 16)) - 1);
  vec bsum = vzero<float>();
  for (int ky = 0; ky < K; ++ky) {
    vec acc[2][K];
    for (int kx = 0; kx < K; ++kx) acc[0][kx] = acc[1][kx] = vzero<float>();
    auto step = [&](int a, const vec gv, const float* b) {
#pragma GCC unroll 8
      for (int kx = 0; kx < K; ++kx) acc[a][kx] += gv * vld<float>(b + kx);
      if (ky == 0) bsum += gv;
    };
    for (i64 i = 0; i < OH; ++i) {
      const float* r = gm + i * gs;
      const float* b = buf + (i + ky) * qrow;
      i64 v = 0;
      for (; v + 2 <= full; v += 2) {
        step(0, vld<float>(r + 16 * v), b + 16 * v);
        step(1, vld<float>(r + 16 * v + 16), b + 16 * v + 16);
      }
      if (v < full) step(0, vld<float>(r + 16 * v), b + 16 * v), ++v;
      if (tail) step(1, (vec)_mm512_maskz_loadu_ps(tail, r + 16 * v), b + 16 * v);
    }
    for (int kx = 0; kx < K; ++kx) dw[ky * K + kx] += hsum<float>(acc[0][kx] + acc[1][kx]);
  }
  if (db) *db += hsum<float>(bsum);
}
#endif

// Weight and bias gradient of one planar channel: bwd_weight_s1 where it applies (float,
// stride and dilation 1, square 3/5/7 filter), else bwd_weight_any.
template <typename A>
void bwd_weight(const Geo& g, const A* buf, const A* gm, i64 gs, const i64* off, A* dw, A* db) {
#if defined(__AVX512F__)
  if constexpr (std::is_same<A, float>::value) {
    if (unit_steps(g) && g.KH == g.KW) {
      switch (g.KW) {
        case 3: bwd_weight_s1<3>(buf, g.Qrow, gm, gs, g.OH, g.OW, dw, db); return;
        case 5: bwd_weight_s1<5>(buf, g.Qrow, gm, gs, g.OH, g.OW, dw, db); return;
        case 7: bwd_weight_s1<7>(buf, g.Qrow, gm, gs, g.OH, g.OW, dw, db); return;
        default: break;
      }
    }
  }
#endif
  bwd_weight_any<A>(g, buf, gm, gs, off, dw, db);
}

// Depthwise weight/bias gradient and padded-input gradient of one planar channel:
// gm (OH x OW, row stride gs, col stride 1), buf the padded input plane (Hu x qrow).
template <typename A>
void bwd_planar_channel(const Geo& g, const A* buf, const A* gm, i64 gs, const A* w, A* dw, A* db,
                        A* gbuf /* Hu x qrow, accumulated */, bool need_gx) {
  const i64 L = V<A>::L;
  const i64 T = g.T, qrow = g.Qrow, qs = g.Qs;
  i64 off[T];
  for (i64 ky = 0; ky < g.KH; ++ky)
    for (i64 kx = 0; kx < g.KW; ++kx) {
      i64 q = kx * g.dx;
      off[ky * g.KW + kx] = ky * g.dy * qrow + (q % g.sx) * qs + q / g.sx;
    }
  bwd_weight<A>(g, buf, gm, gs, off, dw, db);
  if (!need_gx) return;
  // Input gradient (in padded coordinates): gbuf[i*sy + ky*dy, j*sx + kx*dx] += w[t] * gm[i, j].
  for (i64 i = 0; i < g.OH; ++i) {
    const A* r = gm + i * gs;
    for (i64 t = 0; t < T; ++t) {
      A* b = gbuf + i * g.sy * qrow + off[t];
      const A wt = w[t];
      i64 j = 0;
      for (; j + L <= g.OW; j += L) vst<A>(b + j, vld<A>(b + j) + wt * vld<A>(r + j));
      for (; j < g.OW; ++j) b[j] += wt * r[j];
    }
  }
}

// Fold the padded-coordinate gradient gbuf (planar, Hu x qrow) into the input plane gradient
// (zeroed here first).
template <typename S, typename A>
void fold_planar(const Geo& g, const A* gbuf, const i64* ymap, const i64* xmap, S* gx, i64 sh,
                 i64 sw) {
  std::vector<A> acc(g.H * g.W, A(0));
  // Strided: the padded columns that land inside the plane and their buffer positions, once
  // (phase_pos per element and row divided by a run-time stride: half the strided
  // backward's time).
  struct Col {
    i64 x, pos;
  };
  std::vector<Col> cols;
  if (g.sx > 1)
    for (i64 q = 0; q < g.Wu; ++q)
      if (xmap[q] >= 0) cols.push_back({xmap[q], phase_pos(q, g.sx, g.Qs)});
  const i64 n_cols = i64(cols.size());
  for (i64 r = 0; r < g.Hu; ++r) {
    const i64 sr = ymap[r];
    if (sr < 0) continue;
    const A* b = gbuf + r * g.Qrow;
    A* a = acc.data() + sr * g.W;
    if (g.sx == 1) {
      const i64 qa = std::min(g.pl, g.Wu), qb = std::min(g.pl + g.W, g.Wu);
      for (i64 q = 0; q < qa; ++q) if (xmap[q] >= 0) a[xmap[q]] += b[q];
      for (i64 q = qa; q < qb; ++q) a[q - g.pl] += b[q];
      for (i64 q = qb; q < g.Wu; ++q) if (xmap[q] >= 0) a[xmap[q]] += b[q];
    } else {
      for (i64 k = 0; k < n_cols; ++k) a[cols[k].x] += b[cols[k].pos];
    }
  }
  for (i64 y = 0; y < g.H; ++y) {
    S* d = gx + y * sh;
    const A* a = acc.data() + y * g.W;
    for (i64 x = 0; x < g.W; ++x) fromA(a[x], d + x * sw);
  }
}

// NHWC: weight/bias gradient (dwT non-null) and padded-input gradient (need_gx) for a block
// of cb channels (expanded). gm pixel p, channel c at gm[p*gps + c]; buf/gbuf [Hu][Wu][cb].
template <typename A>
void bwd_nhwc_block(const Geo& g, i64 cb, const A* buf, const A* gm, i64 gps, const A* wT, i64 ldw,
                    A* dwT /* [t][cb] */, A* db, A* gbuf, bool need_gx) {
  typedef typename V<A>::t vec;
  const i64 L = V<A>::L;
  const i64 T = g.T, Q = g.Wu;
  i64 off[T];
  for (i64 ky = 0; ky < g.KH; ++ky)
    for (i64 kx = 0; kx < g.KW; ++kx) off[ky * g.KW + kx] = (ky * g.dy * Q + kx * g.dx) * cb;
  const i64 cv = cb / L * L;
  const i64 P = g.OH * g.OW;
  // Weight and bias gradients (unless dwT is null): one register accumulator per (tap,
  // channel vector).
  for (i64 c = 0; dwT && c < cv; c += L) {
    for (i64 t = 0; t < T; ++t) {
      vec a0 = vzero<A>(), a1 = vzero<A>();
      for (i64 i = 0; i < g.OH; ++i) {
        const A* gp = gm + i * g.OW * gps + c;
        const A* b = buf + i * g.sy * Q * cb + off[t] + c;
        i64 j = 0;
        for (; j + 2 <= g.OW; j += 2) {
          a0 += vld<A>(gp + j * gps) * vld<A>(b + j * g.sx * cb);
          a1 += vld<A>(gp + (j + 1) * gps) * vld<A>(b + (j + 1) * g.sx * cb);
        }
        if (j < g.OW) a0 += vld<A>(gp + j * gps) * vld<A>(b + j * g.sx * cb);
      }
      const vec sum = a0 + a1;
      for (int l = 0; l < L; ++l) dwT[t * cb + c + l] += sum[l];
    }
    if (db) {
      vec a0 = vzero<A>();
      for (i64 p = 0; p < P; ++p) a0 += vld<A>(gm + p * gps + c);
      for (int l = 0; l < L; ++l) db[c + l] += a0[l];
    }
  }
  for (i64 c = cv; dwT && c < cb; ++c) {
    for (i64 t = 0; t < T; ++t) {
      A a = 0;
      for (i64 i = 0; i < g.OH; ++i)
        for (i64 j = 0; j < g.OW; ++j)
          a += gm[(i * g.OW + j) * gps + c] * buf[(i * g.sy * Q + j * g.sx) * cb + off[t] + c];
      dwT[t * cb + c] += a;
    }
    if (db) {
      A a = 0;
      for (i64 p = 0; p < P; ++p) a += gm[p * gps + c];
      db[c] += a;
    }
  }
  if (!need_gx) return;
  // Input gradient (padded coordinates): scatter each output gradient through the taps.
  for (i64 i = 0; i < g.OH; ++i)
    for (i64 j = 0; j < g.OW; ++j) {
      const A* gp = gm + (i * g.OW + j) * gps;
      A* gb = gbuf + (i * g.sy * Q + j * g.sx) * cb;
      for (i64 c = 0; c < cv; c += L) {
        const vec gv = vld<A>(gp + c);
        for (i64 t = 0; t < T; ++t)
          vst<A>(gb + off[t] + c, vld<A>(gb + off[t] + c) + gv * vld<A>(wT + t * ldw + c));
      }
      for (i64 c = cv; c < cb; ++c)
        for (i64 t = 0; t < T; ++t) gb[off[t] + c] += gp[c] * wT[t * ldw + c];
    }
}

// NHWC weight and bias gradient at stride 1, dilation 1 (KH x KW filter), cb a multiple of
// the vector width: dwT[t][c] += sum_{i,j} gm[i, j, c] * buf[i + ky, j + kx, c], db[c] +=
// sum gm. Row by row, so that a row of gm and the KH buffer rows it meets stay in L1 (one
// pass over the whole block per tap streamed megabytes through L2); each gm vector is loaded
// once for its KW taps, two pixels at a time for independent FMA chains.
template <int KW>
void bwd_nhwc_weight_s1(const Geo& g, i64 cb, const float* buf, const float* gm, i64 gps,
                        float* dwT, float* db) {
  typedef V<float>::t vec;
  const i64 Q = g.Wu, OW = g.OW;
  for (i64 i = 0; i < g.OH; ++i) {
    const float* gr = gm + i * OW * gps;
    for (i64 c = 0; c < cb; c += V<float>::L) {
      vec bsum = vzero<float>();
      for (i64 ky = 0; ky < g.KH; ++ky) {
        const float* br = buf + ((i + ky) * Q) * cb + c;
        // Two pixels at a time where 2 * KW accumulators fit the registers with the gm vector
        // and the bias sum (AVX2's 16 hold them up to KW = 6); else one (KW chains).
        constexpr int PX = 2 * KW + 3 <= kVecRegs ? 2 : 1;
        vec acc[2][KW];
        for (int kx = 0; kx < KW; ++kx) acc[0][kx] = acc[1][kx] = vzero<float>();
        auto pixel = [&](int a, i64 j) {
          const vec gv = vld<float>(gr + j * gps + c);
#pragma GCC unroll 8
          for (int kx = 0; kx < KW; ++kx) acc[a][kx] += gv * vld<float>(br + (j + kx) * cb);
          if (ky == 0) bsum += gv;
        };
        i64 j = 0;
        for (; j + 2 <= OW; j += 2) pixel(0, j), pixel(PX - 1, j + 1);
        if (j < OW) pixel(0, j);
        for (int kx = 0; kx < KW; ++kx) {
          float* d = dwT + (ky * KW + kx) * cb + c;
          vst<float>(d, vld<float>(d) + acc[0][kx] + acc[1][kx]);
        }
      }
      if (db) vst<float>(db + c, vld<float>(db + c) + bsum);
    }
  }
}

// Whether bwd_nhwc_weight_s1 applies (float accumulators, stride and dilation 1, 1-7 taps per
// row, whole channel vectors).
template <typename A>
inline bool bwd_nhwc_weight_s1_ok(const Geo& g, i64 cb) {
  return std::is_same<A, float>::value && unit_steps(g) && g.KW >= 1 && g.KW <= 7 &&
         cb % V<float>::L == 0;
}

template <typename A>
void bwd_nhwc_weight(const Geo& g, i64 cb, const A* buf, const A* gm, i64 gps, A* dwT, A* db) {
  if constexpr (std::is_same<A, float>::value) {
    switch (g.KW) {
      case 1: bwd_nhwc_weight_s1<1>(g, cb, buf, gm, gps, dwT, db); return;
      case 2: bwd_nhwc_weight_s1<2>(g, cb, buf, gm, gps, dwT, db); return;
      case 3: bwd_nhwc_weight_s1<3>(g, cb, buf, gm, gps, dwT, db); return;
      case 4: bwd_nhwc_weight_s1<4>(g, cb, buf, gm, gps, dwT, db); return;
      case 5: bwd_nhwc_weight_s1<5>(g, cb, buf, gm, gps, dwT, db); return;
      case 6: bwd_nhwc_weight_s1<6>(g, cb, buf, gm, gps, dwT, db); return;
      default: bwd_nhwc_weight_s1<7>(g, cb, buf, gm, gps, dwT, db); return;
    }
  }
}

template <typename S, typename A>
void fold_nhwc(const Geo& g, i64 cin, const A* gbuf, const i64* ymap, const i64* xmap, S* gx,
               i64 sh, i64 sw, i64 sc) {
  const i64 M = g.M, cb = cin * M;
  std::vector<A> acc(g.H * g.W * cin, A(0));
  for (i64 r = 0; r < g.Hu; ++r) {
    const i64 sr = ymap[r];
    if (sr < 0) continue;
    for (i64 q = 0; q < g.Wu; ++q) {
      const i64 sq = xmap[q];
      if (sq < 0) continue;
      const A* b = gbuf + (r * g.Wu + q) * cb;
      A* a = acc.data() + (sr * g.W + sq) * cin;
      if (M == 1)
        for (i64 c = 0; c < cin; ++c) a[c] += b[c];
      else
        for (i64 c = 0; c < cin; ++c)
          for (i64 m = 0; m < M; ++m) a[c] += b[c * M + m];
    }
  }
  for (i64 y = 0; y < g.H; ++y)
    for (i64 x = 0; x < g.W; ++x) {
      const A* a = acc.data() + (y * g.W + x) * cin;
      S* d = gx + y * sh + x * sw;
      for (i64 c = 0; c < cin; ++c) fromA(a[c], d + c * sc);
    }
}

// Backward of separable (wp != null) or depthwise (wp == null) convolution.
// gy: output gradient, strides gys[4]; gx (may be null): input gradient, strides gxs[4].
// dwd (CM*T), dbd (CM, may be null), dwp (O*CMg, may be null): accumulator-type results.
template <typename S>
void backward(const S* x, const S* wd, const S* wp, const S* gy, const i64* gys, S* gx,
              const i64* gxs, typename Acc<S>::type* dwd, typename Acc<S>::type* dbd,
              typename Acc<S>::type* dwp, const i64* geo) {
  typedef typename Acc<S>::type A;
  const Geo g = make_geo(geo);
  const bool sep = wp != nullptr;
  std::vector<A> w, wT, b;
  prep_weights<S, A>(wd, nullptr, g, w, wT, b);
  std::vector<S> wpT;  // per group: wpT[k, o] = wp[o, k] (CMg x Og)
  if (sep && std::is_same<S, float>::value) {
    wpT.resize(g.G * g.CMg * g.Og);
    transpose_groups<S>(wp, wpT.data(), g.G, g.Og, g.CMg);
  }
  const auto ymap = make_map(g.Hu, g.H, g.pt, g.mode);
  const auto xmap = make_map(g.Wu, g.W, g.pl, g.mode);
  const bool nhwc = g.nhwc != 0;
  const i64 P = g.OH * g.OW, HWu = g.Hu * (nhwc ? g.Wu : g.Qrow);
  // Zero padding, stride and dilation 1, one filter per channel: the input gradient is the
  // convolution of the output gradient (OH x OW, zero-padded by K - 1 - padding) with the
  // flipped filter, written straight into gx by the forward's loops (planar: conv_direct,
  // square 3/5/7 filters; NHWC: conv_nhwc on a padded copy, channels innermost in gx)
  // instead of scattered into a padded plane and folded back.
  const bool s1_zero = g.mode == 0 && g.M == 1 && unit_steps(g) && std::is_same<A, float>::value;
  const bool gx_direct = gx && s1_zero &&
                         (nhwc ? gxs[1] == 1 : gxs[3] == 1 && direct_ok(g, true));
  const bool fold = gx && !gx_direct;  // input gradient through gb and a fold (any geometry)
  Geo gt = g;  // the transposed problem
  gt.H = g.OH, gt.W = g.OW, gt.OH = g.H, gt.OW = g.W;
  gt.pt = g.KH - 1 - g.pt, gt.pl = g.KW - 1 - g.pl;
  gt.Hu = g.H + g.KH - 1, gt.Wu = g.W + g.KW - 1;  // its padded input (NHWC copy)
  gt.xs[2] = g.OW, gt.xs[3] = 1;
  // Flipped filters: planar wflip[cm][t], NHWC wflip[t][cm] (conv_nhwc's layout).
  std::vector<A> wflip(gx_direct ? g.CM * g.T : 0);
  for (i64 cm = 0; gx_direct && cm < g.CM; ++cm)
    for (i64 t = 0; t < g.T; ++t)
      wflip[nhwc ? t * g.CM + cm : cm * g.T + t] = w[cm * g.T + g.T - 1 - t];
  // NHWC: index maps of the transposed problem's zero-padded input (pad_nhwc).
  const auto tymap = gx_direct && nhwc ? make_map(gt.Hu, g.OH, gt.pt, 0) : std::vector<i64>();
  const auto txmap = gx_direct && nhwc ? make_map(gt.Wu, g.OW, gt.pl, 0) : std::vector<i64>();
  // Channel blocks: ranges of input channels inside one pointwise group.
  const i64 cin_group = sep ? g.CMg / g.M : g.C;
  const i64 per_ch = g.M * (HWu * 2 + P * (sep ? 3 : 0)) * i64(sizeof(A));
  i64 cblk = std::max<i64>(1, g.budget * 3 / std::max<i64>(per_ch, 1));
  // NHWC blocks are whole channel vectors where they can be (the vector loops; blocks of a
  // few channels take the scalar-tail path: 1x32x112x112 channels_last took 5.8x PyTorch's
  // time in blocks of 8 channels, the depthwise backward 10x in blocks of 7), even when one
  // vector's planes exceed the budget.
  const i64 vec_ch = nhwc && g.M <= V<A>::L ? V<A>::L / g.M : 1;
  if (nhwc) cblk = std::max(vec_ch, cblk / vec_ch * vec_ch);
  if (sep) cblk = std::max<i64>(cblk, (64 + g.M - 1) / g.M);  // wide enough GEMMs
  cblk = std::min(cblk, cin_group);
  // Enough tasks for the threads, but blocks of at least one vector.
  const i64 groups = sep ? g.G : 1;
  while (cblk > vec_ch && g.N * groups * ((cin_group + cblk - 1) / cblk) < 2 * g.threads) {
    const i64 half = (cblk + 1) / 2;
    cblk = std::max(vec_ch, half % vec_ch != 0 ? half / vec_ch * vec_ch : half);
  }
  const i64 nblk = (cin_group + cblk - 1) / cblk;
  const i64 tasks = g.N * groups * nblk;
  const i64 nth = g.threads;
  std::vector<A> dwd_t(nth * g.CM * g.T, A(0)), dbd_t(dbd ? nth * g.CM : 0, A(0));
  std::vector<A> dwp_t(sep && dwp ? nth * g.O * g.CMg : 0, A(0));
  // The pointwise weight gradient through the own GEMM where it runs the tile GEMMs (AMD),
  // the output gradient's pixels are consecutive and a group has 64 or more outputs: MKL's
  // AVX2 code took 28 % of row 1's training step. The training step of row 1 took 0.84x
  // (NCHW) / 0.88x (channels_last) the time; with 24 outputs (8x144x56x56 -> 24) 1.03-1.06x.
  const bool own_dwp = std::is_same<S, float>::value && sep && dwp && g.Og >= 64 &&
                       (nhwc ? gys[1] == 1 && gys[2] == g.OW * gys[3]
                             : gys[3] == 1 && gys[2] == g.OW) &&
                       own_gemm_for(false, false, g.O * g.CMg);

#pragma omp parallel num_threads(nth)
  {
    const int tid = omp_get_thread_num();
    const i64 cbm_max = cblk * g.M;
    std::vector<A> xb(nhwc ? HWu * cbm_max : HWu * cblk + kSlack);
    std::vector<A> gb(fold ? (nhwc ? HWu * cbm_max : HWu) : 0);
    std::vector<A> gpad(gx_direct && nhwc ? gt.Hu * gt.Wu * cbm_max : 0);
    const std::vector<A> zeros(cbm_max, A(0));
    std::vector<S> mid(sep ? P * cbm_max : 0);
    std::vector<S> midT(own_dwp ? P * cbm_max : 0), dwp_tile(own_dwp ? g.Og * cbm_max : 0);
    std::vector<A> gmid(sep ? P * cbm_max : 0);
    std::vector<A> dwT_local(nhwc ? g.T * cbm_max : 0);
    A* my_dwd = dwd_t.data() + tid * g.CM * g.T;
    A* my_dbd = dbd ? dbd_t.data() + tid * g.CM : nullptr;
    A* my_dwp = dwp_t.empty() ? nullptr : dwp_t.data() + tid * g.O * g.CMg;
#pragma omp for schedule(dynamic, 1)
    for (i64 t = 0; t < tasks; ++t) {
      const i64 n = t / (groups * nblk), gi = (t / nblk) % groups, bi = t % nblk;
      const i64 c0 = gi * cin_group + bi * cblk;
      const i64 cin = std::min(cblk, gi * cin_group + cin_group - c0);
      const i64 cbm = cin * g.M, cm0 = c0 * g.M;
      const i64 coff = cm0 - gi * g.CMg;  // column offset inside the group's pointwise weight
      const S* xn = x + n * g.xs[0];
      const S* gyn = gy + n * gys[0];
      // 1. Padded input of the block.
      if (nhwc) {
        pad_nhwc<S, A>(xn, g.xs[2], g.xs[3], g.xs[1], g, ymap.data(), xmap.data(), 0, g.Hu, 0,
                       g.Wu, c0, cin, xb.data());
      } else {
        for (i64 c = 0; c < cin; ++c)
          pad_planar<S, A>(xn + (c0 + c) * g.xs[1], g.xs[2], g.xs[3], g, ymap.data(), xmap.data(),
                           0, g.Hu, 0, g.Wu, xb.data() + c * HWu);
      }
      // 2. Gradient of the intermediate for the block (and the pointwise weight gradient).
      const A* gm;
      i64 gm_cs, gm_ps;  // channel stride, pixel stride (row stride = OW * pixel stride)
      if (sep) {
        std::vector<A> zero_bias;
        if (nhwc) {
          zero_bias.assign(cbm, A(0));
          conv_nhwc<S, A>(xb.data(), g.Wu, cbm, wT.data() + cm0, g.CM, zero_bias.data(), g.OH,
                          g.OW, g, mid.data(), g.OW * cbm, cbm);
        } else {
          for (i64 j = 0; j < cbm; ++j)
            conv_planar<S, A>(xb.data() + (j / g.M) * HWu, g.Qrow, g.Qs, w.data() + (cm0 + j) * g.T,
                              A(0), g.OH, g.OW, g, mid.data() + j * P, g.OW);
        }
        // gmid[p, j] = sum_o gy[p, o] * wp[o, coff + j]    (P x cbm) = (P x Og) . (Og x cbm)
        Mat G_{gyn + gi * g.Og * gys[1], gys[3], gys[1]};
        Mat W_{wp + gi * g.Og * g.CMg + coff, g.CMg, 1};
        bool done = false;
        if constexpr (std::is_same<S, float>::value) {
          if (own_gemm_for(nhwc, false, g.O * g.CMg)) {
            if (!nhwc && gys[3] == 1 && gys[2] == g.OW) {
              // gmid[j, p] = sum_o wpT[coff + j, o] * gy[o, p]
              gemm_f32(cbm, P, g.Og, wpT.data() + gi * g.CMg * g.Og + coff * g.Og, g.Og,
                       gyn + gi * g.Og * gys[1], gys[1], gmid.data(), P, nullptr, nullptr);
              done = true;
            } else if (nhwc && gys[1] == 1 && gys[2] == g.OW * gys[3]) {
              // gmid[p, j] = sum_o gy[p, o] * wp[o, coff + j]
              gemm_f32(P, cbm, g.Og, gyn + gi * g.Og, gys[3], wp + gi * g.Og * g.CMg + coff,
                       g.CMg, gmid.data(), cbm, nullptr, nullptr);
              done = true;
            }
          }
        }
        if (!done) {
          if (nhwc)
            mm<A>(P, cbm, g.Og, G_, W_, gmid.data(), cbm, 1, A(0));
          else
            mm<A>(P, cbm, g.Og, G_, W_, gmid.data(), 1, P, A(0));
        }
        // dwp[o, coff + j] += sum_p gy[p, o] * mid[p, j]   (Og x cbm) = (Og x P) . (P x cbm)
        if (my_dwp) {
          A* dwp_g = my_dwp + gi * g.Og * g.CMg + coff;
          if constexpr (std::is_same<S, float>::value) {
            if (own_dwp && !nhwc) {
              // The own GEMM reads B with j consecutive: mid transposed first, in cache (a
              // copy per 2 * Og FMAs), and the product added to dwp.
              transpose(mid.data(), P, midT.data(), cbm, cbm, P);
              gemm_f32(g.Og, cbm, P, gyn + gi * g.Og * gys[1], gys[1], midT.data(), cbm,
                       dwp_tile.data(), cbm, nullptr, nullptr);
              for (i64 o = 0; o < g.Og; ++o)
                for (i64 j = 0; j < cbm; ++j) dwp_g[o * g.CMg + j] += dwp_tile[o * cbm + j];
            } else if (own_dwp) {
              // dwp^T[j, o] = sum_p midT[j, p] * gy[p, o], on mid transposed (cbm x P).
              transpose(mid.data(), cbm, midT.data(), P, P, cbm);
              gemm_f32(cbm, g.Og, P, midT.data(), P, gyn + gi * g.Og, gys[3], dwp_tile.data(),
                       g.Og, nullptr, nullptr);
              for (i64 j = 0; j < cbm; ++j)
                for (i64 o = 0; o < g.Og; ++o) dwp_g[o * g.CMg + j] += dwp_tile[j * g.Og + o];
            }
          }
          if (!own_dwp) {
            Mat Gt{gyn + gi * g.Og * gys[1], gys[1], gys[3]};
            Mat Mm = nhwc ? Mat{mid.data(), cbm, 1} : Mat{mid.data(), 1, P};
            mm<A>(g.Og, cbm, P, Gt, Mm, dwp_g, g.CMg, 1, A(1));
          }
        }
        gm = gmid.data();
        gm_cs = nhwc ? 1 : P;
        gm_ps = nhwc ? cbm : 1;
      } else {
        // Depthwise alone: the intermediate gradient is gy itself (dense, in the layout of
        // the computation; the caller guarantees it).
        gm = (const A*)(gyn + cm0 * gys[1]);
        gm_cs = gys[1];
        gm_ps = gys[3];
      }
      // 3. Depthwise weight/bias gradients and the input gradient.
      if (nhwc) {
        if (fold) std::fill(gb.begin(), gb.begin() + HWu * cbm, A(0));
        std::fill(dwT_local.begin(), dwT_local.end(), A(0));
        std::vector<A> dbl(cbm, A(0));
        A* dbp = my_dbd ? dbl.data() : nullptr;
        if (bwd_nhwc_weight_s1_ok<A>(g, cbm)) {
          bwd_nhwc_weight<A>(g, cbm, xb.data(), gm, gm_ps, dwT_local.data(), dbp);
          if (fold)  // the scatter alone
            bwd_nhwc_block<A>(g, cbm, xb.data(), gm, gm_ps, wT.data() + cm0, g.CM, nullptr,
                              nullptr, gb.data(), true);
        } else {
          bwd_nhwc_block<A>(g, cbm, xb.data(), gm, gm_ps, wT.data() + cm0, g.CM,
                            dwT_local.data(), dbp, gb.data(), fold);
        }
        for (i64 tt = 0; tt < g.T; ++tt)
          for (i64 j = 0; j < cbm; ++j) my_dwd[(cm0 + j) * g.T + tt] += dwT_local[tt * cbm + j];
        if (my_dbd)
          for (i64 j = 0; j < cbm; ++j) my_dbd[cm0 + j] += dbl[j];
        S* gxb = gx ? gx + n * gxs[0] + c0 * gxs[1] : nullptr;
        if (fold) {
          fold_nhwc<S, A>(g, cin, gb.data(), ymap.data(), xmap.data(), gxb, gxs[2], gxs[3],
                          gxs[1]);
        } else if (gx) {
          const i64 bs = nhwc_block_stride<A>(gt, cbm, gt.Hu, gt.Wu);
          pad_nhwc<A, A>(gm, g.OW * gm_ps, gm_ps, 1, gt, tymap.data(), txmap.data(), 0, gt.Hu, 0,
                         gt.Wu, 0, cbm, gpad.data(), bs);
          conv_nhwc<S, A>(gpad.data(), gt.Wu, cbm, wflip.data() + cm0, g.CM, zeros.data(), g.H,
                          g.W, gt, gxb, gxs[2], gxs[3], bs);
        }
      } else {
        for (i64 c = 0; c < cin; ++c) {
          if (fold) std::fill(gb.begin(), gb.end(), A(0));
          for (i64 m = 0; m < g.M; ++m) {
            const i64 j = c * g.M + m;
            bwd_planar_channel<A>(g, xb.data() + c * HWu, gm + j * gm_cs, g.OW,
                                  w.data() + (cm0 + j) * g.T, my_dwd + (cm0 + j) * g.T,
                                  my_dbd ? my_dbd + cm0 + j : nullptr, gb.data(), fold);
          }
          S* gxc = gx ? gx + n * gxs[0] + (c0 + c) * gxs[1] : nullptr;
          if (fold) {
            fold_planar<S, A>(g, gb.data(), ymap.data(), xmap.data(), gxc, gxs[2], gxs[3]);
          } else if (gx) {
            if constexpr (std::is_same<S, float>::value)
              conv_direct<S>(gm + c * gm_cs, gt, 0, 0, g.H, g.W, wflip.data() + (cm0 + c) * g.T,
                             0.0f, gxc, gxs[2]);
          }
        }
      }
    }
  }
  // Reduce per-thread accumulators.
  for (i64 i = 0; i < g.CM * g.T; ++i) {
    A s = 0;
    for (i64 t = 0; t < nth; ++t) s += dwd_t[t * g.CM * g.T + i];
    dwd[i] = s;
  }
  if (dbd)
    for (i64 i = 0; i < g.CM; ++i) {
      A s = 0;
      for (i64 t = 0; t < nth; ++t) s += dbd_t[t * g.CM + i];
      dbd[i] = s;
    }
  if (sep && dwp)
    for (i64 i = 0; i < g.O * g.CMg; ++i) {
      A s = 0;
      for (i64 t = 0; t < nth; ++t) s += dwp_t[t * g.O * g.CMg + i];
      dwp[i] = s;
    }
}

}  // namespace

// ------------------------------------------------------------------ C ABI
// dtype codes: 0 float32, 1 float64, 2 bfloat16.

extern "C" {

int sepconv_abi_version() { return 5; }

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

int sepconv_sep_forward(int dtype, const void* x, const void* wd, const void* bd, const void* wp,
                        const void* bp, void* out, const i64* geo) {
  switch (dtype) {
    case 0:
      sep_forward<float>((const float*)x, (const float*)wd, (const float*)bd, (const float*)wp,
                         (const float*)bp, (float*)out, geo);
      return 0;
    case 1:
      sep_forward<double>((const double*)x, (const double*)wd, (const double*)bd,
                          (const double*)wp, (const double*)bp, (double*)out, geo);
      return 0;
    case 2:
      sep_forward<bf16>((const bf16*)x, (const bf16*)wd, (const bf16*)bd, (const bf16*)wp,
                        (const bf16*)bp, (bf16*)out, geo);
      return 0;
  }
  return 1;
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

// Gradients: dwd (CM*T), dbd (CM or null), dwp (O*CMg or null, separable only) in float32
// for dtype 0 and float64 for dtype 1. wp == null means depthwise alone.
int sepconv_backward(int dtype, const void* x, const void* wd, const void* wp, const void* gy,
                     const i64* gys, void* gx, const i64* gxs, void* dwd, void* dbd, void* dwp,
                     const i64* geo) {
  switch (dtype) {
    case 0:
      backward<float>((const float*)x, (const float*)wd, (const float*)wp, (const float*)gy, gys,
                      (float*)gx, gxs, (float*)dwd, (float*)dbd, (float*)dwp, geo);
      return 0;
    case 1:
      backward<double>((const double*)x, (const double*)wd, (const double*)wp, (const double*)gy,
                       gys, (double*)gx, gxs, (double*)dwd, (double*)dbd, (double*)dwp, geo);
      return 0;
  }
  return 1;
}
}
