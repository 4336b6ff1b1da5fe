// Element types and vectors: bf16, the vector types and their loads and stores (plain,
// partial, streamed, masked), runtime switches from the environment, horizontal sums.
//
// One part of the kernels' single translation unit: sepconv_kernels.cpp includes the parts in
// order; each includes the parts whose names it uses.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <omp.h>
#include <unistd.h>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

typedef int64_t i64;

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
// zmm, spilled (run M); the loops are written for V<A>::L lanes and block by kVecRegs.
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
// The float broadcast by its intrinsic: zero + s is an add that cannot be dropped (-0.0 + 0.0
// is +0.0), so with AVX-512 it compiled to vaddss and a register broadcast, which shares the
// FMA ports, where the intrinsic is one broadcast load. Without AVX-512, as an initialiser
// list: zero + s went through the stack (xmm stores per broadcast).
#if defined(__AVX512F__)
template <> inline V<float>::t vset<float>(float s) { return (V<float>::t)_mm512_set1_ps(s); }
template <> inline V<double>::t vset<double>(double s) {
  return (V<double>::t)_mm512_set1_pd(s);
}
#elif defined(SEPCONV_VEC32)
template <> inline V<float>::t vset<float>(float s) { return V<float>::t{s, s, s, s, s, s, s, s}; }
#else
template <> inline V<float>::t vset<float>(float s) {
  return V<float>::t{s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s};
}
#endif
// Store a vector of accumulators into storage type S.
inline void vstS(float* p, V<float>::t v) { vst<float>(p, v); }
inline void vstS(double* p, V<double>::t v) { vst<double>(p, v); }
#if defined(__AVX512F__)
// bfloat16 as fromA and toA compute it, 16 lanes at once (lane by lane, the bfloat16
// depthwise loops took 1.7x the float32 ones' time; docs/performance.md, run W).
inline void vstS(bf16* p, V<float>::t v) {
  const __m512i u = _mm512_castps_si512((__m512)v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb)), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask((__m512)v, (__m512)v, _CMP_UNORD_Q);
  r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40)));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(r));
}
inline V<float>::t vldS(const bf16* p) {
  const __m512i u = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return (V<float>::t)_mm512_castsi512_ps(_mm512_slli_epi32(u, 16));
}
#else
inline void vstS(bf16* p, V<float>::t v) {
  for (int l = 0; l < V<float>::L; ++l) fromA(v[l], p + l);
}
inline V<float>::t vldS(const bf16* p) {
  V<float>::t v;
  for (int l = 0; l < V<float>::L; ++l) v[l] = toA(p[l]);
  return v;
}
#endif
// Load storage type S as accumulators.
inline V<float>::t vldS(const float* p) { return vld<float>(p); }
inline V<double>::t vldS(const double* p) { return vld<double>(p); }
// A vector of A from storage S: the same type, or bfloat16 widened to float.
template <typename S, typename A>
inline typename V<A>::t vld_from(const S* p) {
  if constexpr (std::is_same<S, A>::value)
    return vld<A>(p);
  else
    return vldS(p);
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

// f(std::integral_constant<int, n>()) for a run-time n in [1, Max] (clamped): a count as a
// template argument, so that loops over it unroll and arrays indexed by it stay in registers.
template <int Max, typename F>
inline void with_constant(i64 n, F&& f) {
  if constexpr (Max > 1) {
    if (n < Max) return with_constant<Max - 1>(n, std::forward<F>(f));
  }
  f(std::integral_constant<int, Max>());
}

// A core's L2 in bytes (1 MiB where the system does not say).
inline i64 l2_bytes() {
  static const i64 bytes = [] {
    const long v = sysconf(_SC_LEVEL2_CACHE_SIZE);
    return v > 0 ? i64(v) : i64(1) << 20;
  }();
  return bytes;
}

// The L3 that the first core shares, in bytes, as sysfs gives it ("16384K"): glibc's sysconf
// reports the whole socket's on AMD EPYC (256 MiB on run AF's VM, whose cache/index3 says
// 16 MiB). 32 MiB where sysfs does not say or index3 is not a level-3 cache.
inline i64 l3_bytes() {
  static const i64 bytes = [] {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index3/";
    std::ifstream level(dir + "level"), size(dir + "size");
    int lv = 0;
    long v = 0;
    char unit = 0;
    if (!(level >> lv) || lv != 3 || !(size >> v) || v <= 0) return i64(32) << 20;
    size >> unit;
    return i64(v) << (unit == 'M' ? 20 : unit == 'K' ? 10 : 0);
  }();
  return bytes;
}

// Whether a call's tasks go to the threads by image (for_tasks' by_image, the whole-call
// GEMMs, the backward's schedule): at least one image a thread. Fewer (batch 1) take
// schedules of their own.
inline bool image_a_thread(i64 N, i64 threads) { return N >= threads; }

// f(t) for the tasks [0, count) of the enclosing parallel region. by_image: tasks ordered
// by image with at least one image a thread; each thread then takes one run of consecutive
// tasks (static), so that it reads the images it wrote in the layer before, wherever the
// layers' loops split the images alike. Taken in turn (dynamic), half of each layer's input
// came from the other thread's caches: on run AG's Zen 2 VM, whose two vCPUs sit on
// different core complexes, MobileNetV2 at batch 8 took 0.92-0.94x the time of that
// statically, MobileNetV1 0.93-0.97x. Else in turn, which evens out uneven tasks and a
// thread that the machine slows (batch 1: the 1x1 call's tasks, unequal then, statically
// took 1.027x, run AF). Callers pass by_image also where they made a batch-1 call's tasks
// equal so that each thread's part stays the same from call to call (the 1x1 call and the
// depthwise, run AK), and the backward where each thread must take the same tasks on every
// call (deterministic gradients).
template <typename F>
inline void for_tasks(i64 count, bool by_image, F&& f) {
  if (by_image) {
#pragma omp for schedule(static)
    for (i64 t = 0; t < count; ++t) f(t);
  } else {
#pragma omp for schedule(dynamic, 1)
    for (i64 t = 0; t < count; ++t) f(t);
  }
}

}  // namespace
