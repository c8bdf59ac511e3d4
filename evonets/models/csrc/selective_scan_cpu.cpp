// Fused CPU selective scan: forward and backward of evonets.selective_scan (see its docstring for the API).
//
// Math (per batch b, channel d, state n, time t; g = group of d):
//   z_t  = delta_t + delta_bias,   dt_t = softplus(z_t) (or z_t)
//   a_tn = exp(dt_t A_n)
//   h_tn = a_tn h_{t-1,n} + dt_t u_t B_{g,t,n},   h_{-1} = 0
//   y_t  = sum_n C_{g,t,n} h_tn + D u_t
//
// The state stays in registers / L1 while u, delta, B and C stream past, so a scan costs one read of the
// inputs and one write of the outputs instead of several passes over a (batch, channels, length, d_state)
// tensor. B and C arrive time-major, (batch, groups, length, d_state), so each step reads one contiguous row.
//  * Forward: kLanes channels of one group advance in lock-step, one channel per vector lane, with B_t[n] and
//    C_t[n] broadcast. y_t then needs no horizontal sum, and every d_state (1 included) fills the vectors.
//  * Backward: one channel at a time with kLanes states per vector (d_state zero-padded to a multiple of
//    kLanes). The gradients of B and C are sums over a group's channels; with states in lanes they accumulate
//    into (length, d_state) rows by plain vector adds, where channel lanes would need a horizontal sum per
//    (t, n) or kLanes-times larger accumulators.
// Inner loops have a fixed trip count of kLanes and `#pragma GCC ivdep` (the lane loops carry no dependence),
// so every clone compiles them to straight vector code; -fno-trapping-math lets the compiler if-convert the
// float min/max. Only ATen core headers and <torch/library.h> are included (no pybind11, no
// torch/extension.h) to keep the one-off JIT build short. The ops are registered with the dispatcher as
// `evonets_selective_scan::{forward,backward}` with CPU and Meta kernels; autograd is wired up in Python.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <vector>

namespace {

// Runtime-dispatched clones of the hot loops for AVX2+FMA and AVX-512 CPUs, with a baseline x86-64 version
// for everything else. This stays portable (the loader picks a clone from CPUID), unlike -march=native, which
// would bake the build machine's ISA into the cached library.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define EVONETS_SCAN_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define EVONETS_SCAN_CLONES
#endif

// The scalar math helpers must be inlined into the loops that call them, or those loops stay scalar.
#if defined(__GNUC__)
#define EVONETS_INLINE inline __attribute__((always_inline))
#else
#define EVONETS_INLINE inline
#endif

// Vector width of the kernels in floats (one AVX2 register; two SSE registers).
constexpr int64_t kLanes = 8;

// exp(x) from a round-to-nearest range reduction x = k ln2 + r, |r| <= ln2 / 2, a degree-6 Taylor polynomial
// for exp(r) and 2^k built from its bits (relative error < 3e-7, about 2 ulp). Written without library calls
// so that loops calling it vectorise (std::exp stays scalar). Clamping the integer k to [-127, 128] makes
// underflow return exactly 0 below x ~ -87.7 (never a denormal; the true result is < 1e-38) and overflow
// return inf; NaN propagates.
EVONETS_INLINE float exp_approx(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f;  // ln 2 split in two so k * kLn2Hi is exact
  constexpr float kLn2Lo = -2.12194440e-4f;
  constexpr float kRoundMagic = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  const float k = (x * kLog2e + kRoundMagic) - kRoundMagic;
  const float r = (x - k * kLn2Hi) - k * kLn2Lo;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t biased_exponent = std::min(std::max(static_cast<int32_t>(k), int32_t{-127}), int32_t{128}) + 127;
  const int32_t bits = biased_exponent << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// log1p(e) for e in [0, 1] as 2 atanh(s), s = e / (2 + e) <= 1/3, by its odd series up to s^15 (truncation
// < 2e-9, relative error with rounding < 3e-7); accurate for tiny e too, where log(1 + e) rounds 1 + e to 1.
EVONETS_INLINE float log1p_unit(float e) {
  const float s = e / (2.0f + e);
  const float s2 = s * s;
  float p = 1.0f / 15.0f;
  p = p * s2 + 1.0f / 13.0f;
  p = p * s2 + 1.0f / 11.0f;
  p = p * s2 + 1.0f / 9.0f;
  p = p * s2 + 1.0f / 7.0f;
  p = p * s2 + 1.0f / 5.0f;
  p = p * s2 + 1.0f / 3.0f;
  p = p * s2 + 1.0f;
  return 2.0f * s * p;
}

// softplus(z) = log(1 + e^z) = max(z, 0) + log1p(e^-|z|); for z > 20 this rounds to z, as PyTorch's
// thresholded softplus does. Its derivative is sigmoid(z).
EVONETS_INLINE float softplus(float z) { return std::max(z, 0.0f) + log1p_unit(exp_approx(-std::fabs(z))); }
EVONETS_INLINE float sigmoid(float z) { return 1.0f / (1.0f + exp_approx(-z)); }

struct ScanShape {
  int64_t batch, channels, length, groups, d_state;
  int64_t channels_per_group() const { return channels / groups; }
};

ScanShape check_inputs(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                       const at::Tensor& C, const at::Tensor& D, const at::Tensor& delta_bias) {
  TORCH_CHECK(u.dim() == 3, "u must be (batch, channels, length), got ", u.sizes());
  TORCH_CHECK(A.dim() == 2 && A.size(0) == u.size(1), "A must be (channels, d_state), got ", A.sizes());
  TORCH_CHECK(B.dim() == 4, "B must be (batch, groups, length, d_state), got ", B.sizes());
  const ScanShape s{u.size(0), u.size(1), u.size(2), B.size(1), A.size(1)};
  TORCH_CHECK(delta.sizes() == u.sizes(), "delta must have u's shape ", u.sizes(), ", got ", delta.sizes());
  TORCH_CHECK(s.groups > 0 && s.channels % s.groups == 0, "channels ", s.channels, " not divisible by groups ",
              s.groups);
  const std::vector<int64_t> bc_shape{s.batch, s.groups, s.length, s.d_state};
  TORCH_CHECK(B.sizes() == bc_shape, "B must be (batch, groups, length, d_state) = ", bc_shape, ", got ",
              B.sizes());
  TORCH_CHECK(C.sizes() == bc_shape, "C must be (batch, groups, length, d_state) = ", bc_shape, ", got ",
              C.sizes());
  TORCH_CHECK(D.dim() == 1 && D.size(0) == s.channels, "D must be (channels,), got ", D.sizes());
  TORCH_CHECK(delta_bias.dim() == 1 && delta_bias.size(0) == s.channels, "delta_bias must be (channels,), got ",
              delta_bias.sizes());
  for (const at::Tensor* t : {&u, &delta, &A, &B, &C, &D, &delta_bias}) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat && t->is_contiguous(),
                "the fused CPU selective scan takes contiguous float32 CPU tensors");
  }
  return s;
}

// dt_t = softplus(delta_t + bias) (or delta_t + bias) for one channel.
EVONETS_SCAN_CLONES
void compute_dt(const float* delta, float bias, int64_t length, bool delta_softplus, float* dt) {
  if (delta_softplus) {
    for (int64_t t = 0; t < length; ++t) dt[t] = softplus(delta[t] + bias);
  } else {
    for (int64_t t = 0; t < length; ++t) dt[t] = delta[t] + bias;
  }
}

// Scans kLanes channels of one group side by side. u, dt and y are (length, kLanes); A and h (scratch) are
// (d_state, kLanes); D is (kLanes,); B and C are the group's (length, d_state) rows.
EVONETS_SCAN_CLONES
void scan_lanes_forward(const float* u, const float* dt, const float* A, const float* B, const float* C,
                        const float* D, int64_t length, int64_t d_state, float* h, float* y) {
  std::fill(h, h + d_state * kLanes, 0.0f);
  for (int64_t t = 0; t < length; ++t) {
    const float* u_t = u + t * kLanes;
    const float* dt_t = dt + t * kLanes;
    const float* B_t = B + t * d_state;
    const float* C_t = C + t * d_state;
    float dt_u[kLanes], y_t[kLanes];
#pragma GCC ivdep
    for (int64_t lane = 0; lane < kLanes; ++lane) {
      dt_u[lane] = dt_t[lane] * u_t[lane];
      y_t[lane] = D[lane] * u_t[lane];
    }
    for (int64_t n = 0; n < d_state; ++n) {
      const float B_tn = B_t[n], C_tn = C_t[n];
      const float* A_n = A + n * kLanes;
      float* h_n = h + n * kLanes;
#pragma GCC ivdep
      for (int64_t lane = 0; lane < kLanes; ++lane) {
        h_n[lane] = exp_approx(dt_t[lane] * A_n[lane]) * h_n[lane] + dt_u[lane] * B_tn;
        y_t[lane] += C_tn * h_n[lane];
      }
    }
#pragma GCC ivdep
    for (int64_t lane = 0; lane < kLanes; ++lane) y[t * kLanes + lane] = y_t[lane];
  }
}

// dst[t * kLanes + lane] = rows[lane][t]: kLanes rows into time-major lanes, by kLanes x kLanes tiles so that
// both sides are read and written in contiguous runs.
EVONETS_SCAN_CLONES
void interleave(const float* const* rows, int64_t length, float* dst) {
  int64_t t = 0;
  for (; t + kLanes <= length; t += kLanes) {
    float tile[kLanes][kLanes];
    for (int64_t lane = 0; lane < kLanes; ++lane) {
      for (int64_t i = 0; i < kLanes; ++i) tile[lane][i] = rows[lane][t + i];
    }
    for (int64_t i = 0; i < kLanes; ++i) {
      for (int64_t lane = 0; lane < kLanes; ++lane) dst[(t + i) * kLanes + lane] = tile[lane][i];
    }
  }
  for (; t < length; ++t) {
    for (int64_t lane = 0; lane < kLanes; ++lane) dst[t * kLanes + lane] = rows[lane][t];
  }
}

// rows[lane][t] = src[t * kLanes + lane]: the inverse of interleave.
EVONETS_SCAN_CLONES
void deinterleave(const float* src, int64_t length, float* const* rows) {
  int64_t t = 0;
  for (; t + kLanes <= length; t += kLanes) {
    float tile[kLanes][kLanes];
    for (int64_t i = 0; i < kLanes; ++i) {
      for (int64_t lane = 0; lane < kLanes; ++lane) tile[lane][i] = src[(t + i) * kLanes + lane];
    }
    for (int64_t lane = 0; lane < kLanes; ++lane) {
      for (int64_t i = 0; i < kLanes; ++i) rows[lane][t + i] = tile[lane][i];
    }
  }
  for (; t < length; ++t) {
    for (int64_t lane = 0; lane < kLanes; ++lane) rows[lane][t] = src[t * kLanes + lane];
  }
}

// Per-thread scratch of the forward for one block of kLanes channels.
struct LaneBlock {
  std::vector<float> dt_rows;  // (kLanes, length): each channel's dt before interleaving
  std::vector<float> u, dt, y;  // (length, kLanes): one channel per lane
  std::vector<float> A, h;      // (d_state, kLanes)
  std::vector<float> D;         // (kLanes,)
  std::vector<float> sink;      // (length,): where lanes past the group's end write their y
  LaneBlock(int64_t length, int64_t d_state)
      : dt_rows(kLanes * length), u(length * kLanes), dt(length * kLanes), y(length * kLanes),
        A(d_state * kLanes), h(d_state * kLanes), D(kLanes), sink(length) {}
};

at::Tensor selective_scan_forward_cpu(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                      const at::Tensor& B, const at::Tensor& C, const at::Tensor& D,
                                      const at::Tensor& delta_bias, bool delta_softplus) {
  const ScanShape s = check_inputs(u, delta, A, B, C, D, delta_bias);
  at::Tensor y = at::empty(u.sizes(), u.options());
  const float *u_p = u.const_data_ptr<float>(), *delta_p = delta.const_data_ptr<float>(),
              *A_p = A.const_data_ptr<float>(), *B_p = B.const_data_ptr<float>(), *C_p = C.const_data_ptr<float>(),
              *D_p = D.const_data_ptr<float>(), *bias_p = delta_bias.const_data_ptr<float>();
  float* y_p = y.mutable_data_ptr<float>();
  const int64_t per_group = s.channels_per_group();
  const int64_t blocks_per_group = (per_group + kLanes - 1) / kLanes;
  const int64_t L = s.length, N = s.d_state;

  at::parallel_for(0, s.batch * s.groups * blocks_per_group, 1, [&](int64_t begin, int64_t end) {
    LaneBlock blk(L, N);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t pair = task / blocks_per_group;  // (batch, group) index
      const int64_t b = pair / s.groups, group = pair % s.groups;
      const int64_t first = group * per_group + (task % blocks_per_group) * kLanes;
      const int64_t count = std::min(kLanes, (group + 1) * per_group - first);
      // Lanes past the group's end run on u = dt = A = D = 0 (their state stays 0) and write y to `sink`.
      const float* u_rows[kLanes];
      const float* dt_rows[kLanes];
      float* y_rows[kLanes];
      for (int64_t lane = 0; lane < kLanes; ++lane) {
        const int64_t d = first + lane, row = (b * s.channels + d) * L;
        float* dt_row = blk.dt_rows.data() + lane * L;
        dt_rows[lane] = dt_row;
        if (lane < count) {
          compute_dt(delta_p + row, bias_p[d], L, delta_softplus, dt_row);
          u_rows[lane] = u_p + row;
          y_rows[lane] = y_p + row;
          for (int64_t n = 0; n < N; ++n) blk.A[n * kLanes + lane] = A_p[d * N + n];
          blk.D[lane] = D_p[d];
        } else {
          std::fill(dt_row, dt_row + L, 0.0f);
          u_rows[lane] = dt_row;  // zeros as well
          y_rows[lane] = blk.sink.data();
          for (int64_t n = 0; n < N; ++n) blk.A[n * kLanes + lane] = 0.0f;
          blk.D[lane] = 0.0f;
        }
      }
      interleave(u_rows, L, blk.u.data());
      interleave(dt_rows, L, blk.dt.data());
      const int64_t group_rows = pair * L * N;
      scan_lanes_forward(blk.u.data(), blk.dt.data(), blk.A.data(), B_p + group_rows, C_p + group_rows,
                         blk.D.data(), L, N, blk.h.data(), blk.y.data());
      deinterleave(blk.y.data(), L, y_rows);
    }
  });
  return y;
}

// Sum of kLanes partial sums, in a fixed order so that the result does not depend on the clone that ran.
inline float sum_lanes(const float* lanes) {
  static_assert(kLanes == 8, "sum_lanes adds 8 lanes");
  return ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6])) + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]));
}

// One channel's inputs for the backward; A, B and C have d_state padded to a multiple of kLanes.
struct ChannelInputs {
  const float* u;       // (length,)
  const float* dt;      // (length,)
  const float* dt_dz;   // (length,) d dt / d(delta + bias): sigmoid, or 1 without softplus
  const float* grad_y;  // (length,)
  const float* A;       // (d_state,)
  const float* B;       // (length, d_state)
  const float* C;       // (length, d_state)
  float D;
};

// One channel's gradients. dB and dC are accumulated (+=) because the channels of a group share B and C.
struct ChannelGrads {
  float* du;           // (length,)
  float* ddelta;       // (length,)
  float* dA;           // (d_state,)
  float* dB;           // (length, d_state), accumulated
  float* dC;           // (length, d_state), accumulated
  float* dD;           // scalar
  float* ddelta_bias;  // scalar
};

// Backward of one channel. Recomputes the forward states into `states` ((length + 1, d_state), row 0 is
// h_{-1} = 0) and the decays into `decays` ((length, d_state)); ~200 kB each at length 3136, d_state 16, so
// they stay in L2. Then runs the adjoint recursion backwards in time, with the state adjoint in `carry`:
//   gh_t  = g_t C_t + a_{t+1} gh_{t+1}                 (dL/dh_t)
//   dC_t += g_t h_t,   dB_t += gh_t dt_t u_t,   dA += gh_t a_t h_{t-1} dt_t
//   du_t  = g_t D + dt_t <gh_t, B_t>
//   ddt_t = <gh_t a_t h_{t-1}, A> + u_t <gh_t, B_t>,   ddelta_t = ddt_t dt_dz_t
EVONETS_SCAN_CLONES
void scan_channel_backward(const ChannelInputs& in, int64_t length, int64_t d_state, float* states,
                           float* decays, float* carry, const ChannelGrads& out) {
  std::fill(states, states + d_state, 0.0f);
  for (int64_t t = 0; t < length; ++t) {
    const float dt_t = in.dt[t];
    const float dt_u = dt_t * in.u[t];
    const float* B_t = in.B + t * d_state;
    const float* h_prev = states + t * d_state;
    float* h = states + (t + 1) * d_state;
    float* a_t = decays + t * d_state;
    for (int64_t block = 0; block < d_state; block += kLanes) {
#pragma GCC ivdep
      for (int64_t lane = 0; lane < kLanes; ++lane) {
        const int64_t n = block + lane;
        a_t[n] = exp_approx(dt_t * in.A[n]);
        h[n] = a_t[n] * h_prev[n] + dt_u * B_t[n];
      }
    }
  }

  std::fill(carry, carry + d_state, 0.0f);
  std::fill(out.dA, out.dA + d_state, 0.0f);
  float dD = 0.0f, ddelta_bias = 0.0f;
  for (int64_t t = length - 1; t >= 0; --t) {
    const float g = in.grad_y[t];
    const float u_t = in.u[t];
    const float dt_t = in.dt[t];
    const float dt_u = dt_t * u_t;
    const float* B_t = in.B + t * d_state;
    const float* C_t = in.C + t * d_state;
    const float* a_t = decays + t * d_state;
    const float* h_prev = states + t * d_state;
    const float* h = states + (t + 1) * d_state;
    float* dB_t = out.dB + t * d_state;
    float* dC_t = out.dC + t * d_state;
    float gh_dot_B[kLanes] = {}, decay_grad[kLanes] = {};
    for (int64_t block = 0; block < d_state; block += kLanes) {
#pragma GCC ivdep
      for (int64_t lane = 0; lane < kLanes; ++lane) {
        const int64_t n = block + lane;
        const float gh = g * C_t[n] + carry[n];
        dC_t[n] += g * h[n];
        dB_t[n] += gh * dt_u;
        gh_dot_B[lane] += gh * B_t[n];
        const float gh_ah = gh * a_t[n] * h_prev[n];  // dL/d(dt_t A_n)
        out.dA[n] += gh_ah * dt_t;
        decay_grad[lane] += gh_ah * in.A[n];
        carry[n] = a_t[n] * gh;
      }
    }
    const float gh_B = sum_lanes(gh_dot_B);
    out.du[t] = g * in.D + dt_t * gh_B;
    const float dz = (sum_lanes(decay_grad) + u_t * gh_B) * in.dt_dz[t];
    out.ddelta[t] = dz;
    ddelta_bias += dz;
    dD += g * u_t;
  }
  *out.dD = dD;
  *out.ddelta_bias = ddelta_bias;
}

// dt and d dt / d(delta + bias) of one channel for the backward.
EVONETS_SCAN_CLONES
void compute_dt_and_slope(const float* delta, float bias, int64_t length, bool delta_softplus, float* dt,
                          float* dt_dz) {
  if (delta_softplus) {
#pragma GCC ivdep
    for (int64_t t = 0; t < length; ++t) {
      const float z = delta[t] + bias;
      dt[t] = softplus(z);
      dt_dz[t] = sigmoid(z);
    }
  } else {
    for (int64_t t = 0; t < length; ++t) {
      dt[t] = delta[t] + bias;
      dt_dz[t] = 1.0f;
    }
  }
}

// Copy of x with its last dimension zero-padded to `size`.
at::Tensor pad_last_dim(const at::Tensor& x, int64_t size) {
  if (x.size(-1) == size) return x;
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = size;
  at::Tensor padded = at::zeros(shape, x.options());
  padded.narrow(-1, 0, x.size(-1)).copy_(x);
  return padded;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
selective_scan_backward_cpu(const at::Tensor& grad_y, const at::Tensor& u, const at::Tensor& delta,
                            const at::Tensor& A, const at::Tensor& B, const at::Tensor& C, const at::Tensor& D,
                            const at::Tensor& delta_bias, bool delta_softplus) {
  const ScanShape s = check_inputs(u, delta, A, B, C, D, delta_bias);
  TORCH_CHECK(grad_y.sizes() == u.sizes() && grad_y.scalar_type() == at::kFloat && grad_y.is_contiguous(),
              "grad_y must be a contiguous float32 tensor of u's shape");
  const int64_t L = s.length, N = s.d_state;
  const int64_t padded_N = (N + kLanes - 1) / kLanes * kLanes;
  const at::Tensor A_pad = pad_last_dim(A, padded_N), B_pad = pad_last_dim(B, padded_N),
                   C_pad = pad_last_dim(C, padded_N);

  // B and C are shared by the channels of a group, so their gradients are sums over channels. Each task owns
  // a slice of one group's channels and a private (length, d_state) accumulator: no atomics, no races.
  // Groups are split into `splits` slices until there are about 4 tasks per thread, for load balance.
  const int64_t per_group = s.channels_per_group();
  const int64_t pairs = s.batch * s.groups;
  const int64_t splits = std::min(per_group, (4 * at::get_num_threads() + pairs - 1) / pairs);
  const int64_t slice = (per_group + splits - 1) / splits;
  const int64_t plane = L * padded_N;
  at::Tensor dB_parts = at::zeros({pairs, splits, L, padded_N}, u.options());
  at::Tensor dC_parts = at::zeros({pairs, splits, L, padded_N}, u.options());
  // A, D and delta_bias are per channel: per-(batch, channel) partials, summed over the batch at the end.
  at::Tensor dA_parts = at::empty({s.batch, s.channels, padded_N}, u.options());
  at::Tensor dD_parts = at::empty({s.batch, s.channels}, u.options());
  at::Tensor dbias_parts = at::empty({s.batch, s.channels}, u.options());
  at::Tensor du = at::empty(u.sizes(), u.options());
  at::Tensor ddelta = at::empty(u.sizes(), u.options());

  const float *gy_p = grad_y.const_data_ptr<float>(), *u_p = u.const_data_ptr<float>(),
              *delta_p = delta.const_data_ptr<float>(), *A_p = A_pad.const_data_ptr<float>(),
              *B_p = B_pad.const_data_ptr<float>(), *C_p = C_pad.const_data_ptr<float>(),
              *D_p = D.const_data_ptr<float>(), *bias_p = delta_bias.const_data_ptr<float>();
  float *dB_p = dB_parts.mutable_data_ptr<float>(), *dC_p = dC_parts.mutable_data_ptr<float>(),
        *dA_p = dA_parts.mutable_data_ptr<float>(), *dD_p = dD_parts.mutable_data_ptr<float>(),
        *dbias_p = dbias_parts.mutable_data_ptr<float>(), *du_p = du.mutable_data_ptr<float>(),
        *ddelta_p = ddelta.mutable_data_ptr<float>();

  at::parallel_for(0, pairs * splits, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> states((L + 1) * padded_N), decays(L * padded_N), carry(padded_N), dt(L), dt_dz(L);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t pair = task / splits;  // (batch, group) index
      const int64_t b = pair / s.groups, group = pair % s.groups;
      const int64_t first = group * per_group + (task % splits) * slice;
      const int64_t last = std::min(first + slice, (group + 1) * per_group);
      for (int64_t d = first; d < last; ++d) {
        const int64_t row = b * s.channels + d;
        compute_dt_and_slope(delta_p + row * L, bias_p[d], L, delta_softplus, dt.data(), dt_dz.data());
        const ChannelInputs in{u_p + row * L,      dt.data(),          dt_dz.data(),       gy_p + row * L,
                               A_p + d * padded_N, B_p + pair * plane, C_p + pair * plane, D_p[d]};
        const ChannelGrads out{du_p + row * L,      ddelta_p + row * L, dA_p + row * padded_N, dB_p + task * plane,
                               dC_p + task * plane, dD_p + row,         dbias_p + row};
        scan_channel_backward(in, L, padded_N, states.data(), decays.data(), carry.data(), out);
      }
    }
  });

  at::Tensor dB = splits == 1 ? dB_parts.select(1, 0) : dB_parts.sum(1);
  at::Tensor dC = splits == 1 ? dC_parts.select(1, 0) : dC_parts.sum(1);
  // Contiguous outputs, as the Meta kernel promises (compiled graphs rely on those strides).
  const std::vector<int64_t> bc_shape{s.batch, s.groups, L, padded_N};
  return {du,
          ddelta,
          dA_parts.sum(0).narrow(-1, 0, N).contiguous(),
          dB.view(bc_shape).narrow(-1, 0, N).contiguous(),
          dC.view(bc_shape).narrow(-1, 0, N).contiguous(),
          dD_parts.sum(0),
          dbias_parts.sum(0)};
}

// Meta kernels: output shapes only, so torch.compile / FakeTensor tracing sees through the ops.
at::Tensor selective_scan_forward_meta(const at::Tensor& u, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                       const at::Tensor&, const at::Tensor&, const at::Tensor&, bool) {
  return at::empty(u.sizes(), u.options());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
selective_scan_backward_meta(const at::Tensor&, const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                             const at::Tensor& B, const at::Tensor& C, const at::Tensor& D,
                             const at::Tensor& delta_bias, bool) {
  return {at::empty(u.sizes(), u.options()), at::empty(delta.sizes(), delta.options()),
          at::empty(A.sizes(), A.options()),  at::empty(B.sizes(), B.options()),
          at::empty(C.sizes(), C.options()),  at::empty(D.sizes(), D.options()),
          at::empty(delta_bias.sizes(), delta_bias.options())};
}

}  // namespace

TORCH_LIBRARY(evonets_selective_scan, m) {
  m.def(
      "forward(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor D, Tensor delta_bias, "
      "bool delta_softplus) -> Tensor");
  m.def(
      "backward(Tensor grad_y, Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor D, "
      "Tensor delta_bias, bool delta_softplus) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(evonets_selective_scan, CPU, m) {
  m.impl("forward", &selective_scan_forward_cpu);
  m.impl("backward", &selective_scan_backward_cpu);
}

TORCH_LIBRARY_IMPL(evonets_selective_scan, Meta, m) {
  m.impl("forward", &selective_scan_forward_meta);
  m.impl("backward", &selective_scan_backward_meta);
}
