#pragma once
// A replayed plan's kernel calls in one library call (sepconv/kernels/programs.py).
//
// Replayed in Python, each kernel call of a plan cost its Python (tensors' pointers, an output
// allocation, the ctypes call): 35-60 us between two calls in MobileNetV2 at batch 1, whose
// kernels evict that Python from the caches (docs/performance.md, run AL). A program is the
// plan's calls as steps of kStepWords words: the op, the dtype code, an element count, a
// thread count and nine argument references. A reference is (value << 3) | kind:
//   kind 0: null; 1: table[value] (a weight's pointer, read by Python on every call, or a
//   constant: a geometry array); 2: arena + value bytes (a buffer between two steps);
//   3: the program's input (value 0) or its output (value 1); 4: &table[value] (eight
//   consecutive entries: the norms of a separable call).

#include "geometry.h"

namespace {

enum ProgramOp : i64 { kOpSep = 1, kOpPointwise = 2, kOpDense = 3, kOpDepthwise = 4, kOpAdd = 5 };
constexpr int kStepWords = 13;
constexpr int kStepArgs = 9;

struct ProgramFrame {
  void* const* table;
  void* input;
  void* output;
  char* arena;
};

inline void* resolve(i64 ref, const ProgramFrame& frame) {
  const i64 value = ref >> 3;
  switch (ref & 7) {
    case 1:
      return frame.table[value];
    case 2:
      return frame.arena + value;
    case 3:
      return value == 0 ? frame.input : frame.output;
    case 4:
      return (void*)(frame.table + value);
  }
  return nullptr;
}

// out += residual over `count` float32 values (a block's shortcut, added in place as
// torch's add_ does: one rounding a value, the same bits).
inline void add_into(float* out, const float* residual, i64 count, int threads) {
  // (one thread under 64 Ki values: MobileNetV2's batch-1 shortcuts are 16-75 Ki values,
  // a few microseconds, less than waking a team)
#pragma omp parallel for simd num_threads(threads) if (count >= (1 << 16)) schedule(static)
  for (i64 i = 0; i < count; ++i) out[i] += residual[i];
}

}  // namespace
