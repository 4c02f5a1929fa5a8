// What the CUDA kernels of both sampling ops share (affine_grid_sample_cuda.cu, the fused 2-D
// affine op; grid_sample_cuda.cu, the general ops): launch geometry, a fixed-order block sum,
// and the deterministic grad_input path from sorted tap records.
//
// Deterministic grad_input (under torch.use_deterministic_algorithms(True)): instead of adding
// each tap's weight * grad_output into grad_input with atomics, a backward kernel writes one
// record per tap, (key, weight): tap k of output point p of image n is record
// (n * points + p) * taps_per_point + k, its key n * plane + (the tap's pixel in the input plane,
// x fastest), or N * plane (sorted last) for a tap that adds nothing. A stable sort groups the
// records by input pixel (keeping record order within a pixel), and gather_input_grad sums each
// input pixel's records in that fixed order, writing grad_input once, in its final dtype. Correct
// for any sample points (folds, singular maps, dense grids): nothing assumes an inverse map, and
// the work is sized by the shape, never by the values.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <type_traits>

#include "launch.cuh"

namespace stn_ext {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// One block row per kThreads work items of an image (its output points, or (point, channel
// group) pairs: ChannelSplit), one block column per image (a grid-stride loop over images beyond
// the device's grid-y limit).
inline dim3 grid_for(int64_t points, int64_t batch) {
  const int64_t blocks = (points + kThreads - 1) / kThreads;
  TORCH_CHECK_VALUE(blocks <= std::numeric_limits<int32_t>::max(),
                    "stn_ext: the CUDA kernels take up to ",
                    int64_t{std::numeric_limits<int32_t>::max()} * kThreads,
                    " work items (output points, times channel groups) per image, got ", points);
  return dim3(static_cast<unsigned>(blocks),
              static_cast<unsigned>(std::min(batch, max_grid_dim_y())));
}

// A block of kThreads threads, one pixel each, as a 2-D tile of an image: kTileW x kTileH
// pixels, each warp an 8 x 4 patch of it. Under a rotation the taps of a warp's pixels then fall
// in few rows of the other image, and a block's in a compact patch that stays in L1. Arithmetic,
// 45 degrees at scale 1: a row of 32 pixels reads along a diagonal spanning 23 input rows (with
// the bilinear taps' second row, 24 cache lines a warp access); an 8 x 4 patch spans
// (8 + 4) * 0.71 = 8.5 rows of ~9 pixels (10 rows, each within one or two 32-byte sectors).
struct PixelTiles {
  static constexpr int kTileW = 32, kTileH = kThreads / kTileW;
  static constexpr int kWarpTileW = 8, kWarpTileH = 32 / kWarpTileW;
  static constexpr int kWarpsAcross = kTileW / kWarpTileW;
  static_assert(kTileH == (kWarps / kWarpsAcross) * kWarpTileH, "warp patches fill the tile");

  uint32_t across;  // tiles in a row of the image (fewer than the grid's 2^31 blocks)

  __host__ __device__ explicit PixelTiles(int64_t width)
      : across(static_cast<uint32_t>((width + kTileW - 1) / kTileW)) {}

  static int64_t count(int64_t height, int64_t width) {
    return (width + kTileW - 1) / kTileW * ((height + kTileH - 1) / kTileH);
  }

  // This thread's pixel (may lie past the image's edge: the caller checks).
  template <typename index_t>
  __device__ void pixel(index_t* y, index_t* x) const {
    const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    *x = static_cast<index_t>(blockIdx.x % across) * kTileW +
         static_cast<index_t>(warp % kWarpsAcross * kWarpTileW + lane % kWarpTileW);
    *y = static_cast<index_t>(blockIdx.x / across) * kTileH +
         static_cast<index_t>(warp / kWarpsAcross * kWarpTileH + lane / kWarpTileW);
  }
};

// grid_for a launch of one thread per pixel of (height, width) images, in PixelTiles.
inline dim3 grid_for_tiles(int64_t height, int64_t width, int64_t batch) {
  return grid_for(PixelTiles::count(height, width) * kThreads, batch);
}

template <typename T>
__device__ inline T quiet_nan() {
  return std::numeric_limits<T>::quiet_NaN();
}

// Sum of each of kValues values over the block, in a fixed order; the result is valid in
// thread 0. Every thread of the block must call it.
template <int kValues, typename T>
__device__ inline void block_sum(T (&v)[kValues]) {
  __shared__ T warp_sums[kWarps][kValues];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int k = 0; k < kValues; ++k) {
    for (int delta = 16; delta > 0; delta /= 2) v[k] += __shfl_down_sync(0xffffffff, v[k], delta);
  }
  if (lane == 0) {
#pragma unroll
    for (int k = 0; k < kValues; ++k) warp_sums[warp][k] = v[k];
  }
  __syncthreads();
  if (threadIdx.x == 0) {
#pragma unroll
    for (int k = 0; k < kValues; ++k) {
      T s = warp_sums[0][k];
      for (int i = 1; i < kWarps; ++i) s += warp_sums[i][k];
      v[k] = s;
    }
  }
  __syncthreads();  // warp_sums is reused by the next image of a grid-stride loop
}

// --- Lanes across channels -----------------------------------------------------------------
// With channels innermost (channels_last) a thread per output point looping its channels makes
// each warp access touch 32 points' worth of cache lines. Instead, when every pixel's channels
// are whole aligned 16-byte vectors, the kernels give each point C / kVec threads, consecutive
// threads taking consecutive groups of kVec channels with one vector load (or store) per tap:
// a warp's accesses are contiguous runs of 16-byte vectors. kVec == 1 is the one-thread-per-point
// layout of any strides.
// Arithmetic, bf16 with 64 channels (a pixel's channels are one 128-byte line): a thread per
// point reads one 2-byte channel of 32 different lines per warp access, 64 times per tap (a line
// is fetched again once evicted, and each access costs 32 sectors for 64 useful bytes); with
// kVec = 8, 8 lanes read one pixel's line in full, a warp 4 lines per access, one access per
// tap: every byte fetched is used, and the load instructions per pixel drop 8-fold.

constexpr int kVectorBytes = 16;

template <typename scalar_t>
constexpr int kChannelVector = kVectorBytes / static_cast<int>(sizeof(scalar_t));

// kVec consecutive elements, loaded and stored as one access.
template <typename scalar_t, int kVec>
struct alignas(sizeof(scalar_t) * kVec) Pack {
  scalar_t v[kVec];
};

template <int kVec, typename scalar_t>
__device__ inline Pack<scalar_t, kVec> load_pack(const scalar_t* p) {
  return *reinterpret_cast<const Pack<scalar_t, kVec>*>(p);
}

// A 16-byte vector is stored by __stwb (one st.global.v4): stored as a struct (or a uint4), it
// comes out of the compiler as one store per element where the address is 64-bit arithmetic.
template <int kVec, typename scalar_t>
__device__ inline void store_pack(scalar_t* p, const Pack<scalar_t, kVec>& pack) {
  if constexpr (sizeof(pack) == sizeof(uint4)) {
    uint4 bits;
    memcpy(&bits, &pack, sizeof(bits));
    __stwb(reinterpret_cast<uint4*>(p), bits);
  } else {
    *reinterpret_cast<Pack<scalar_t, kVec>*>(p) = pack;
  }
}

// The work of one thread: output point `point`, channels [begin, end) in steps of kVec.
template <typename index_t>
struct ChannelWork {
  int64_t point;
  index_t begin, end;
};

// How a launch splits (output point, channel) pairs among threads; items are numbered points
// first, channel groups fastest.
template <int kVec>
struct ChannelSplit {
  int64_t groups;  // threads per output point: 1, or channels / kVec

  __host__ __device__ explicit ChannelSplit(int64_t channels)
      : groups(kVec == 1 ? 1 : channels / kVec) {}
  __host__ __device__ int64_t items(int64_t points) const { return points * groups; }
  template <typename index_t>
  __device__ ChannelWork<index_t> work(int64_t item, index_t channels) const {
    const index_t begin = static_cast<index_t>(item % groups) * kVec;
    return {item / groups, begin, kVec == 1 ? channels : static_cast<index_t>(begin + kVec)};
  }
};

// grid_for a launch whose threads split each point's channels by ChannelSplit<kVec>.
template <int kVec>
dim3 grid_for_channels(int64_t channels, int64_t points, int64_t batch) {
  return grid_for(ChannelSplit<kVec>(channels).items(points), batch);
}

// kChannelVector<scalar_t> if every tensor's pixels hold their channels as whole aligned
// vectors (channel stride 1, channel count a multiple of the vector, every other stride of an
// axis longer than 1 a multiple of it, data 16-byte aligned), else 1.
template <typename scalar_t>
int channel_vector_width(std::initializer_list<at::Tensor> tensors) {
  constexpr int kVec = kChannelVector<scalar_t>;
  for (const at::Tensor& t : tensors) {
    bool whole = t.size(1) % kVec == 0 && t.stride(1) == 1 &&
                 reinterpret_cast<uintptr_t>(t.const_data_ptr()) % kVectorBytes == 0;
    for (int64_t d = 0; whole && d < t.dim(); ++d) {
      whole = d == 1 || t.size(d) == 1 || t.stride(d) % kVec == 0;
    }
    if (!whole) return 1;
  }
  return kVec;
}

// Calls f(std::integral_constant<int, kVec>{}) with the width channel_vector_width chose.
template <typename scalar_t, typename F>
void with_channel_vector(int width, F&& f) {
  if (width == 1) {
    f(std::integral_constant<int, 1>{});
  } else {
    TORCH_INTERNAL_ASSERT(width == kChannelVector<scalar_t>);
    f(std::integral_constant<int, kChannelVector<scalar_t>>{});
  }
}

// Sizes and element strides of an (N, C, *spatial) tensor with kDim spatial axes, stored x first
// (the order of grid coordinates): axis 0 is the last dimension.
template <int kDim>
struct PointGeometry {
  int64_t n, c, sn, sc;
  int64_t size[kDim], stride[kDim];

  static PointGeometry of(const at::Tensor& t) {
    PointGeometry g;
    g.n = t.size(0);
    g.c = t.size(1);
    g.sn = t.stride(0);
    g.sc = t.stride(1);
    for (int a = 0; a < kDim; ++a) {
      g.size[a] = t.size(t.dim() - 1 - a);
      g.stride[a] = t.stride(t.dim() - 1 - a);
    }
    return g;
  }
  __host__ __device__ int64_t points() const {
    int64_t p = 1;
    for (int a = 0; a < kDim; ++a) p *= size[a];
    return p;
  }
  // The element offset within a channel plane of point `point` (x fastest).
  __host__ __device__ int64_t offset_of(int64_t point) const {
    int64_t o = 0;
    for (int a = 0; a < kDim; ++a) {
      o += (point % size[a]) * stride[a];
      point /= size[a];
    }
    return o;
  }
};

// grad_input from tap records sorted by key (see the top of this file): one thread per input
// pixel sums its run of records, channel by channel, and writes the result once.
template <typename scalar_t, int kDim>
__global__ void __launch_bounds__(kThreads)
    gather_input_grad_kernel(const scalar_t* __restrict__ grad_output, PointGeometry<kDim> gout,
                             const int64_t* __restrict__ sorted_key,
                             const int64_t* __restrict__ record_of,
                             const at::opmath_type<scalar_t>* __restrict__ record_weight,
                             int64_t records, int taps_per_point,
                             scalar_t* __restrict__ grad_input, PointGeometry<kDim> gin) {
  using T = at::opmath_type<scalar_t>;
  const int64_t plane = gin.points();
  const int64_t pixel = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (pixel >= plane) return;
  const int64_t out_points = gout.points();
  auto lower_bound = [&](int64_t key) {
    int64_t lo = 0, hi = records;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (sorted_key[mid] < key) lo = mid + 1; else hi = mid;
    }
    return lo;
  };
  const int64_t pixel_offset = gin.offset_of(pixel);
  for (int64_t n = blockIdx.y; n < gin.n; n += gridDim.y) {
    const int64_t key = n * plane + pixel;
    const int64_t first = lower_bound(key), last = lower_bound(key + 1);
    scalar_t* dst = grad_input + n * gin.sn + pixel_offset;
    const scalar_t* go = grad_output + n * gout.sn;
    for (int64_t c = 0; c < gin.c; ++c) {
      T acc = T(0);
      for (int64_t r = first; r < last; ++r) {
        const int64_t record = record_of[r];
        const int64_t out_point = record / taps_per_point - n * out_points;
        acc += record_weight[record] * T(go[c * gout.sc + gout.offset_of(out_point)]);
      }
      dst[c * gin.sc] = static_cast<scalar_t>(acc);
    }
  }
}

// grad_input (of `input`'s sizes, in `layout`) from the records a backward kernel wrote.
template <int kDim>
at::Tensor gather_input_grad(const at::Tensor& grad_output, const at::Tensor& input,
                             at::MemoryFormat layout, const at::Tensor& record_key,
                             const at::Tensor& record_weight, int taps_per_point) {
  // Stable: the records of one input pixel keep their order, whatever the sort does.
  const auto [sorted_key, record_of] = record_key.sort(/*stable=*/true, /*dim=*/0,
                                                       /*descending=*/false);
  at::Tensor grad_input = at::empty_like(input, layout);
  const PointGeometry<kDim> gin = PointGeometry<kDim>::of(grad_input);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "gather_input_grad", [&] {
        launch_kernel(gather_input_grad_kernel<scalar_t, kDim>, grid_for(gin.points(), gin.n),
                      kThreads, stream, grad_output.const_data_ptr<scalar_t>(),
                      PointGeometry<kDim>::of(grad_output), sorted_key.const_data_ptr<int64_t>(),
                      record_of.const_data_ptr<int64_t>(),
                      record_weight.const_data_ptr<at::opmath_type<scalar_t>>(),
                      record_key.numel(), taps_per_point,
                      grad_input.mutable_data_ptr<scalar_t>(), gin);
      });
  return grad_input;
}

}  // namespace
}  // namespace stn_ext
