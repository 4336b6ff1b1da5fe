// Buffers that a thread keeps from call to call (kept_buffer, KeptZeroed).
//
// One part of the kernels' single translation unit: sepconv_kernels.cpp includes the parts in
// order; each includes the parts whose names it uses.
#pragma once

#include <algorithm>
#include <memory>

#include "vec.h"

namespace {

// Buffers that a thread keeps from call to call, one per slot, each up to kKeepBytes (larger
// ones are allocated per call, in `fallback`). glibc hands large freed blocks back to the
// system (it unmaps them, or trims its heaps), so that a fresh buffer of megabytes was
// page-faulted in again on every call: a loop of 8x384x14x14 -> 1536 calls took 16.3 ms a
// call instead of 11.9, 8x960x7x7 -> 320 3.0 ms instead of 1.9 (AMD Zen 3 VM). The tile
// intermediates are kept for the same reason, without a gain measured there (32x64x32x32 ->
// 128 5.5-5.7 ms either way). A slot's buffer is in use by one call at a time:
// slots are per thread (and element type), and a call uses each slot once. Buffers only
// grow: each thread, OpenMP's workers included, keeps its largest until it exits (whole-
// call buffers are at most a few MiB, whole_ok; tile intermediates the tile budget; the
// backward's, per block of channels, about three tile budgets, or 64 padded planes where
// those are larger: 13 MB for 224 x 224).
// The forward's slots (sep_forward.h), the backward's (backward.h), the 1x1 forward's
// (pointwise.h) and the own GEMM's (gemm.h), one per per-thread buffer of a call.
enum KeptSlot {
  kKeptMid,
  kKeptPanels,
  kKeptOut,
  kKeptBwdInput,
  kKeptBwdFold,
  kKeptBwdGradPad,
  kKeptBwdMid,
  kKeptBwdMidT,
  kKeptBwdPointwise,
  kKeptBwdGradMid,
  kKeptPwWeight,
  kKeptPwBias,
  kKeptGemmPanel,
  kKeptSlots
};
constexpr i64 kKeepBytes = i64(32) << 20;

// One thread's kept buffers of element type T, a buffer and its size per slot.
template <typename T>
struct KeptStore {
  std::unique_ptr<T[]> buf[kKeptSlots];
  i64 n[kKeptSlots] = {};
};

// The calling thread's store, on the heap: the library's thread_locals all live in the
// static TLS block (t_stream and t_ahead are initial-exec), which every dlopen'ed library
// shares and which is small. As thread_locals, the stores took 480 of the library's 560
// bytes there, and a third library loaded into a process failed ("cannot allocate memory
// in static TLS block"); as pointers they take 24.
template <typename T>
std::unique_ptr<KeptStore<T>>& kept_store_ptr() {
  thread_local std::unique_ptr<KeptStore<T>> store;
  return store;
}

template <typename T>
KeptStore<T>& kept_store() {
  std::unique_ptr<KeptStore<T>>& store = kept_store_ptr<T>();
  if (!store) store.reset(new KeptStore<T>());
  return *store;
}

template <typename T>
T* kept_buffer(KeptSlot slot, i64 n, std::unique_ptr<T[]>& fallback) {
  if (n * i64(sizeof(T)) > kKeepBytes) {
    fallback.reset(new T[n]);
    return fallback.get();
  }
  KeptStore<T>& kept = kept_store<T>();
  if (n > kept.n[slot]) {
    kept.buf[slot].reset();  // (not both at once; and no stale size if new throws)
    kept.n[slot] = 0;
    kept.buf[slot].reset(new T[n]);
    kept.n[slot] = n;
  }
  return kept.buf[slot].get();
}

// Frees the calling thread's kept buffers, of every element type that keeps any.
inline void release_kept() {
  kept_store_ptr<float>().reset();
  kept_store_ptr<double>().reset();
  kept_store_ptr<bf16>().reset();
}

// n elements of a kept buffer, zeroed, as a value-initialised std::vector<T>(n) would be
// (without its page faults: in the backward, whose per-thread buffers were vectors, row 1's
// training step took 438 minor page faults a step on the AMD Zen 3 VM, at 3-5 us each).
template <typename T>
struct KeptZeroed {
  std::unique_ptr<T[]> fallback;  // (beyond kKeepBytes)
  T* p;
  i64 n;
  KeptZeroed(KeptSlot slot, i64 count) : p(kept_buffer(slot, count, fallback)), n(count) {
    std::fill(p, p + n, T(0));
  }
  T* data() const { return p; }
  T* begin() const { return p; }
  T* end() const { return p + n; }
  T& operator[](i64 i) const { return p[i]; }
};

}  // namespace
