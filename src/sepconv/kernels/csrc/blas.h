// The BLAS that libtorch_cpu carries (MKL): sgemm_, dgemm_, cblas_gemm_bf16bf16f32.
//
// One part of the kernels' single translation unit: sepconv_kernels.cpp includes the parts in
// order; each includes the parts whose names it uses.
#pragma once

#include "vec.h"

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

}  // namespace
