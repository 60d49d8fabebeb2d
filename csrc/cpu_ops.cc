// CPU kernels for contiguous float32 tensors: elementwise ones, each one pass over memory (Paddle's ops make one
// pass per operation or more): the exact (erf) GELU and its gradient, and three inference-only fusions of the
// operations that follow RepMLPNet's products; a depthwise conv with its gradients, map by map in the cache; and the
// sum of the squares of many tensors at once (gradient clipping). Built and called by cpu_ops.py.
//
// Threads: the loops run on the OpenMP threads of Intel's runtime (libiomp5), the one that Paddle's MKL uses, to
// which cpu_ops.py links this library. Those threads are the ones spinning after each MKL product, so the loops
// start without waking or competing with anyone. Under GCC's libgomp, or with std::threads, a second set of
// threads spun on the cores that MKL needed next, which slowed training and inference alike (README, Speed).
// Without libiomp5 the pragmas are ignored and the loops run on the calling thread.
#include <algorithm>
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
constexpr int64_t kLanes = 8;                           // float32 values in an AVX2 register
constexpr int64_t kChunk = 4096;                        // values per task of the flat GELU loops
constexpr int64_t kParallelMinValues = 1 << 15;         // smaller tensors stay on the calling thread

void CheckInput(const paddle::Tensor& x, const char* op) {
  PD_CHECK(x.is_cpu() && x.dtype() == paddle::DataType::FLOAT32, op, " takes float32 CPU tensors");
}

void CheckSameShape(const paddle::Tensor& residual, const paddle::Tensor& x, const char* op) {
  PD_CHECK(residual.shape() == x.shape(), op, " adds tensors of one shape");
}

inline float Gelu(float value) { return 0.5f * value * (1.0f + erff(value * kSqrtHalf)); }

// d gelu / dx = Phi(x) + x * phi(x), phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
inline float GeluDerivative(float value) {
  const float cdf = 0.5f * (1.0f + erff(value * kSqrtHalf));
  const float pdf = kInvSqrtTwoPi * expf(-0.5f * value * value);
  return cdf + value * pdf;
}

// body(task) for every task in [0, tasks), split between the OpenMP threads when there are `values` enough
template <typename Body>
void ParallelFor(int64_t tasks, int64_t values, const Body& body) {
#pragma omp parallel for schedule(static) if (values >= kParallelMinValues)
  for (int64_t task = 0; task < tasks; ++task) {
    body(task);
  }
}

// body(begin, end) for the chunks of kChunk values of [0, size), split between the OpenMP threads
template <typename Body>
void ParallelChunks(int64_t size, const Body& body) {
  ParallelFor((size + kChunk - 1) / kChunk, size,
              [&](int64_t chunk) { body(chunk * kChunk, std::min(size, (chunk + 1) * kChunk)); });
}

// A tensor [N, C, ...] as N*C rows of `length` values each; row r belongs to channel r % C.
struct Rows {
  int64_t count, length;
};

Rows RowsOf(const paddle::Tensor& x) {
  PD_CHECK(x.shape().size() >= 2, "the CPU kernels take tensors [N, C, ...]");
  const int64_t count = x.shape()[0] * x.shape()[1];
  return {count, count > 0 ? x.numel() / count : 0};
}

// The eval-mode BN as y = x * scale + shift per channel, computed in double as repmlp.bn_scale_shift does.
struct ChannelAffine {
  std::vector<float> scale, shift;
};

ChannelAffine BatchNormAffine(const paddle::Tensor& x, const paddle::Tensor& mean, const paddle::Tensor& variance,
                              const paddle::Tensor& weight, const paddle::Tensor& bias, float epsilon) {
  const int64_t channels = mean.numel();
  PD_CHECK(x.shape().size() >= 2 && x.shape()[1] == channels, "the batch norm has ", channels,
           " channels, its input another number");
  ChannelAffine affine{std::vector<float>(channels), std::vector<float>(channels)};
  const float *mu = mean.data<float>(), *var = variance.data<float>(), *gamma = weight.data<float>(),
              *beta = bias.data<float>();
  for (int64_t c = 0; c < channels; ++c) {
    const double scale = gamma[c] / std::sqrt(static_cast<double>(var[c]) + epsilon);
    affine.scale[c] = static_cast<float>(scale);
    affine.shift[c] = static_cast<float>(beta[c] - mu[c] * scale);
  }
  return affine;
}

}  // namespace

// gelu(x) = x * Phi(x) = x / 2 * (1 + erf(x / sqrt(2)))
std::vector<paddle::Tensor> GeluForward(const paddle::Tensor& x) {
  CheckInput(x, "gelu_cpu");
  paddle::Tensor out = paddle::empty_like(x);
  const float* in = x.data<float>();
  float* result = out.data<float>();
  ParallelChunks(x.numel(), [&](int64_t begin, int64_t end) {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {
      result[i] = Gelu(in[i]);
    }
  });
  return {out};
}

std::vector<paddle::Tensor> GeluBackward(const paddle::Tensor& x, const paddle::Tensor& grad_out) {
  CheckInput(x, "gelu_cpu");
  CheckInput(grad_out, "gelu_cpu");
  paddle::Tensor grad_x = paddle::empty_like(x);
  const float* in = x.data<float>();
  const float* grad = grad_out.data<float>();
  float* result = grad_x.data<float>();
  ParallelChunks(x.numel(), [&](int64_t begin, int64_t end) {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {
      result[i] = grad[i] * GeluDerivative(in[i]);
    }
  });
  return {grad_x};
}

// gelu(batch_norm(x)) with running statistics, x [N, C, ...]
std::vector<paddle::Tensor> BatchNormGelu(const paddle::Tensor& x, const paddle::Tensor& mean,
                                          const paddle::Tensor& variance, const paddle::Tensor& weight,
                                          const paddle::Tensor& bias, float epsilon) {
  CheckInput(x, "batch_norm_gelu_cpu");
  const ChannelAffine affine = BatchNormAffine(x, mean, variance, weight, bias, epsilon);
  paddle::Tensor out = paddle::empty_like(x);
  const Rows rows = RowsOf(x);
  const int64_t length = rows.length, channels = mean.numel();
  // A row's last length % kLanes values go through one vector call in a padded buffer, not scalar erff calls
  // (rows of 14 x 14 = 196 values end in 4)
  const int64_t body = length - length % kLanes;
  const float* x_data = x.data<float>();
  float* out_data = out.data<float>();
  ParallelFor(rows.count, x.numel(), [&](int64_t row) {
    const float scale = affine.scale[row % channels], shift = affine.shift[row % channels];
    const float* in = x_data + row * length;
    float* result = out_data + row * length;
#pragma omp simd
    for (int64_t i = 0; i < body; ++i) {
      result[i] = Gelu(in[i] * scale + shift);
    }
    if (body < length) {
      float tail[kLanes] = {};
      for (int64_t i = body; i < length; ++i) tail[i - body] = in[i] * scale + shift;
#pragma omp simd
      for (int64_t lane = 0; lane < kLanes; ++lane) tail[lane] = Gelu(tail[lane]);
      for (int64_t i = body; i < length; ++i) result[i] = tail[i - body];
    }
  });
  return {out};
}

// residual + batch_norm(x) with running statistics, both [N, C, ...]
std::vector<paddle::Tensor> BatchNormAdd(const paddle::Tensor& residual, const paddle::Tensor& x,
                                         const paddle::Tensor& mean, const paddle::Tensor& variance,
                                         const paddle::Tensor& weight, const paddle::Tensor& bias, float epsilon) {
  CheckInput(residual, "batch_norm_add_cpu");
  CheckInput(x, "batch_norm_add_cpu");
  CheckSameShape(residual, x, "batch_norm_add_cpu");
  const ChannelAffine affine = BatchNormAffine(x, mean, variance, weight, bias, epsilon);
  paddle::Tensor out = paddle::empty_like(x);
  const Rows rows = RowsOf(x);
  const int64_t length = rows.length, channels = mean.numel();
  const float *x_data = x.data<float>(), *residual_data = residual.data<float>();
  float* out_data = out.data<float>();
  ParallelFor(rows.count, x.numel(), [&](int64_t row) {
    const float scale = affine.scale[row % channels], shift = affine.shift[row % channels];
    const float* in = x_data + row * length;
    const float* skip = residual_data + row * length;
    float* result = out_data + row * length;
#pragma omp simd
    for (int64_t i = 0; i < length; ++i) {
      result[i] = skip[i] + (in[i] * scale + shift);
    }
  });
  return {out};
}

// residual + (x + bias) * gate, x [N, C, ...] with maps of L values, gate [N, C] (one value per map) and an optional
// bias [S, L] whose row c % S is added to the maps of channel c (C a multiple of S)
std::vector<paddle::Tensor> GatedAdd(const paddle::Tensor& residual, const paddle::Tensor& x,
                                     const paddle::Tensor& gate, const paddle::optional<paddle::Tensor>& bias) {
  CheckInput(residual, "gated_add_cpu");
  CheckInput(x, "gated_add_cpu");
  CheckInput(gate, "gated_add_cpu");
  CheckSameShape(residual, x, "gated_add_cpu");
  paddle::Tensor out = paddle::empty_like(x);
  const Rows rows = RowsOf(x);
  const int64_t length = rows.length;
  PD_CHECK(gate.numel() == rows.count, "gated_add_cpu takes one gate value per map");
  const float* bias_data = nullptr;
  int64_t bias_rows = 1;
  if (bias) {
    CheckInput(*bias, "gated_add_cpu");
    bias_rows = length > 0 ? bias->numel() / length : 1;
    PD_CHECK(bias->numel() == bias_rows * length && x.shape()[1] % bias_rows == 0,
             "gated_add_cpu takes a bias [S, H*W] with the channels a multiple of S");
    bias_data = bias->data<float>();
  }
  const float *x_data = x.data<float>(), *residual_data = residual.data<float>(), *gate_data = gate.data<float>();
  float* out_data = out.data<float>();
  ParallelFor(rows.count, x.numel(), [&](int64_t row) {
    const float scale = gate_data[row];
    const float* in = x_data + row * length;
    const float* skip = residual_data + row * length;
    float* result = out_data + row * length;
    if (bias_data == nullptr) {
#pragma omp simd
      for (int64_t i = 0; i < length; ++i) {
        result[i] = skip[i] + in[i] * scale;
      }
      return;
    }
    const float* shift = bias_data + (row % bias_rows) * length;
#pragma omp simd
    for (int64_t i = 0; i < length; ++i) {
      result[i] = skip[i] + (in[i] + shift[i]) * scale;
    }
  });
  return {out};
}

// Depthwise k x k convolution, stride 1, zero padding k / 2 (k odd): images [N, C, H, W], kernel [C, 1, k, k].
// Each map is small enough to stay in the L1/L2 cache while all k*k taps pass over it.
namespace {

struct DepthwiseShape {
  int64_t maps, channels, height, width, size;
};

DepthwiseShape DepthwiseShapeOf(const paddle::Tensor& images, const paddle::Tensor& kernel) {
  CheckInput(images, "depthwise_conv_cpu");
  CheckInput(kernel, "depthwise_conv_cpu");
  const auto& x = images.shape();
  const auto& k = kernel.shape();
  PD_CHECK(x.size() == 4 && k.size() == 4 && k[0] == x[1] && k[1] == 1 && k[2] == k[3] && k[2] % 2 == 1,
           "depthwise_conv_cpu takes images [N, C, H, W] and a kernel [C, 1, k, k] with k odd");
  return {x[0] * x[1], x[1], x[2], x[3], k[2]};
}

// out[m] = sum over taps of w[tap] * in[m] shifted by the tap (with the kernel turned by 180 degrees if `turned`)
void DepthwiseForward(const DepthwiseShape& shape, const float* in_data, const float* kernel_data, bool turned,
                      float* out_data) {
  const int64_t height = shape.height, width = shape.width, size = shape.size, pad = size / 2;
  ParallelFor(shape.maps, shape.maps * height * width * size, [&](int64_t map) {
    const float* in = in_data + map * height * width;
    const float* weights = kernel_data + (map % shape.channels) * size * size;
    float* out = out_data + map * height * width;
    std::fill(out, out + height * width, 0.0f);
    for (int64_t tap = 0; tap < size * size; ++tap) {
      const float weight = weights[turned ? size * size - 1 - tap : tap];
      const int64_t dy = tap / size - pad, dx = tap % size - pad;
      const int64_t x_begin = std::max<int64_t>(0, -dx), x_end = std::min(width, width - dx);
      for (int64_t y = std::max<int64_t>(0, -dy); y < std::min(height, height - dy); ++y) {
        const float* source = in + (y + dy) * width + dx;
        float* target = out + y * width;
#pragma omp simd
        for (int64_t x = x_begin; x < x_end; ++x) {
          target[x] += weight * source[x];
        }
      }
    }
  });
}

}  // namespace

std::vector<paddle::Tensor> DepthwiseConv(const paddle::Tensor& images, const paddle::Tensor& kernel) {
  const DepthwiseShape shape = DepthwiseShapeOf(images, kernel);
  paddle::Tensor out = paddle::empty_like(images);
  DepthwiseForward(shape, images.data<float>(), kernel.data<float>(), false, out.data<float>());
  return {out};
}

// The images' gradient is the forward conv of the output's gradient with the kernel turned by 180 degrees; the
// kernel's gradient sums, per tap, the output's gradient times the shifted images over every map of its channel
// (in double, over rows summed in float).
std::vector<paddle::Tensor> DepthwiseConvBackward(const paddle::Tensor& images, const paddle::Tensor& kernel,
                                                  const paddle::Tensor& grad_out) {
  const DepthwiseShape shape = DepthwiseShapeOf(images, kernel);
  CheckInput(grad_out, "depthwise_conv_cpu");
  paddle::Tensor grad_images = paddle::empty_like(images);
  paddle::Tensor grad_kernel = paddle::empty_like(kernel);
  DepthwiseForward(shape, grad_out.data<float>(), kernel.data<float>(), true, grad_images.data<float>());
  const int64_t height = shape.height, width = shape.width, size = shape.size, pad = size / 2;
  const int64_t images_per_channel = shape.maps / shape.channels;
  const float *in_data = images.data<float>(), *grad_data = grad_out.data<float>();
  float* result = grad_kernel.data<float>();
  ParallelFor(shape.channels, shape.maps * height * width * size, [&](int64_t channel) {
    for (int64_t tap = 0; tap < size * size; ++tap) {
      const int64_t dy = tap / size - pad, dx = tap % size - pad;
      const int64_t x_begin = std::max<int64_t>(0, -dx), x_end = std::min(width, width - dx);
      double total = 0.0;
      for (int64_t image = 0; image < images_per_channel; ++image) {
        const int64_t map = image * shape.channels + channel;
        const float* in = in_data + map * height * width;
        const float* grad = grad_data + map * height * width;
        for (int64_t y = std::max<int64_t>(0, -dy); y < std::min(height, height - dy); ++y) {
          const float* source = in + (y + dy) * width + dx;
          const float* target = grad + y * width;
          float row = 0.0f;
#pragma omp simd reduction(+ : row)
          for (int64_t x = x_begin; x < x_end; ++x) {
            row += target[x] * source[x];
          }
          total += row;
        }
      }
      result[channel * size * size + tap] = static_cast<float>(total);
    }
  });
  return {grad_images, grad_kernel};
}

// The sum of the squares of every value of every tensor (gradients, for their global norm), in double: the values
// in chunks of kChunk, each summed in float lanes and then added in double, the chunks split between the threads.
std::vector<paddle::Tensor> SumOfSquares(const std::vector<paddle::Tensor>& tensors) {
  struct Chunk {
    const float* values;
    int64_t size;
  };
  std::vector<Chunk> chunks;
  int64_t total_values = 0;
  for (const paddle::Tensor& tensor : tensors) {
    CheckInput(tensor, "sum_of_squares_cpu");
    const float* values = tensor.data<float>();
    for (int64_t start = 0; start < tensor.numel(); start += kChunk) {
      chunks.push_back({values + start, std::min(kChunk, tensor.numel() - start)});
    }
    total_values += tensor.numel();
  }
  std::vector<double> partial(chunks.size());
  ParallelFor(static_cast<int64_t>(chunks.size()), total_values, [&](int64_t index) {
    const float* values = chunks[index].values;
    const int64_t size = chunks[index].size;
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < size; ++i) {
      sum += values[i] * values[i];
    }
    partial[index] = sum;
  });
  paddle::Tensor out = paddle::empty({1}, paddle::DataType::FLOAT64, paddle::CPUPlace());
  double total = 0.0;
  for (double value : partial) total += value;
  *out.data<double>() = total;
  return {out};
}

PD_BUILD_OP(gelu_cpu).Inputs({"X"}).Outputs({"Out"}).SetKernelFn(PD_KERNEL(GeluForward));

PD_BUILD_GRAD_OP(gelu_cpu)
    .Inputs({"X", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X")})
    .SetKernelFn(PD_KERNEL(GeluBackward));

PD_BUILD_OP(batch_norm_gelu_cpu)
    .Inputs({"X", "Mean", "Variance", "Weight", "Bias"})
    .Outputs({"Out"})
    .Attrs({"epsilon: float"})
    .SetKernelFn(PD_KERNEL(BatchNormGelu));

PD_BUILD_OP(batch_norm_add_cpu)
    .Inputs({"Residual", "X", "Mean", "Variance", "Weight", "Bias"})
    .Outputs({"Out"})
    .Attrs({"epsilon: float"})
    .SetKernelFn(PD_KERNEL(BatchNormAdd));

PD_BUILD_OP(gated_add_cpu)
    .Inputs({"Residual", "X", "Gate", paddle::Optional("Bias")})
    .Outputs({"Out"})
    .SetKernelFn(PD_KERNEL(GatedAdd));

PD_BUILD_OP(depthwise_conv_cpu).Inputs({"X", "Kernel"}).Outputs({"Out"}).SetKernelFn(PD_KERNEL(DepthwiseConv));

PD_BUILD_GRAD_OP(depthwise_conv_cpu)
    .Inputs({"X", "Kernel", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X"), paddle::Grad("Kernel")})
    .SetKernelFn(PD_KERNEL(DepthwiseConvBackward));

PD_BUILD_OP(sum_of_squares_cpu)
    .Inputs({paddle::Vec("X")})
    .Outputs({"Out"})
    .SetKernelFn(PD_KERNEL(SumOfSquares));
