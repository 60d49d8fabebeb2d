// The exact (erf) GELU and its gradient for contiguous float32 CPU tensors: one pass over memory each, with
// glibc's vectorised erff and expf (libmvec). Built and called by cpu_ops.py.
//
// They run on the calling thread. More threads measured slower within a training step: libgomp's (OpenMP) keep
// spinning on the cores that Paddle's MKL needs next (T224 step 9.5 -> 8.0 images/s), and std::threads compete
// with MKL's own Intel OpenMP threads, which spin between products (T224 step 852 ms on one thread, 860 on two).
#include <cmath>
#include <vector>

#include "paddle/extension.h"

// libmvec has AVX2 variants of these: declaring them SIMD-callable lets the loops below vectorise without
// -ffast-math, which would give up NaN and infinity semantics (a diverging run must still show its NaN loss).
extern "C" float erff(float) noexcept __attribute__((simd("notinbranch")));
extern "C" float expf(float) noexcept __attribute__((simd("notinbranch")));

namespace {

constexpr float kSqrtHalf = 0.70710678118654752f;    // 1 / sqrt(2)
constexpr float kInvSqrtTwoPi = 0.39894228040143268f;  // 1 / sqrt(2 pi)

void CheckInput(const paddle::Tensor& x) {
  PD_CHECK(x.is_cpu() && x.dtype() == paddle::DataType::FLOAT32, "gelu_cpu takes float32 CPU tensors");
}

}  // namespace

// gelu(x) = x * Phi(x) = x / 2 * (1 + erf(x / sqrt(2)))
std::vector<paddle::Tensor> GeluForward(const paddle::Tensor& x) {
  CheckInput(x);
  paddle::Tensor out = paddle::empty_like(x);
  const float* in = x.data<float>();
  float* result = out.data<float>();
  const int64_t size = x.numel();
#pragma omp simd
  for (int64_t i = 0; i < size; ++i) {
    result[i] = 0.5f * in[i] * (1.0f + erff(in[i] * kSqrtHalf));
  }
  return {out};
}

// d gelu / dx = Phi(x) + x * phi(x), phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
std::vector<paddle::Tensor> GeluBackward(const paddle::Tensor& x, const paddle::Tensor& grad_out) {
  CheckInput(x);
  CheckInput(grad_out);
  paddle::Tensor grad_x = paddle::empty_like(x);
  const float* in = x.data<float>();
  const float* grad = grad_out.data<float>();
  float* result = grad_x.data<float>();
  const int64_t size = x.numel();
#pragma omp simd
  for (int64_t i = 0; i < size; ++i) {
    const float value = in[i];
    const float cdf = 0.5f * (1.0f + erff(value * kSqrtHalf));
    const float pdf = kInvSqrtTwoPi * expf(-0.5f * value * value);
    result[i] = grad[i] * (cdf + value * pdf);
  }
  return {grad_x};
}

PD_BUILD_OP(gelu_cpu).Inputs({"X"}).Outputs({"Out"}).SetKernelFn(PD_KERNEL(GeluForward));

PD_BUILD_GRAD_OP(gelu_cpu)
    .Inputs({"X", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X")})
    .SetKernelFn(PD_KERNEL(GeluBackward));
