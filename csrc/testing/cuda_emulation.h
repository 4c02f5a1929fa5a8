// CUDA's execution model on the host, for running the CUDA kernels of csrc/cuda/ in CI (no GPU).
//
// A test-only build (stn_ext/testing/cuda_emulation.py) compiles the production .cu source as
// host C++ with STN_EXT_CUDA_EMULATION defined; csrc/cuda/launch.cuh then includes this header
// instead of the CUDA runtime. What the kernels see is CUDA's model, not a serialisation of it:
//
// - a launch runs its grid block after block (in index order, or a shuffled order chosen by the
//   tests); the warps of a block run at once, each on its own host thread, and the 32 lanes of
//   a warp as contexts of that thread that take turns between sync points (a warp's lanes share
//   an instruction stream on the device too);
// - __syncthreads is a real barrier of the block's warps; a thread that returns from the kernel
//   no longer takes part in barriers, as an exited GPU thread;
// - __shfl_down_sync exchanges values between the lanes of a warp; lanes that have exited read
//   back as all-ones bits (NaN), as undefined on the device;
// - __shared__ variables are statics: one copy, seen by every thread of the block that runs;
// - gpuAtomicAdd is an atomic read-modify-write that really races between the warps' threads;
// - c10::Half and c10::BFloat16 are the same types as in the device build.
//
// Settings (grid-y limit, forced 64-bit indexing, block order, staging) and counters (launches,
// threads, atomic additions) are process-wide and set or read by the tests through the
// emulation library's ops.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <numeric>
#include <optional>
#include <random>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <ucontext.h>

// --- the CUDA language, as host C++ ------------------------------------------------------------

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x = 1, unsigned y = 1, unsigned z = 1) : x(x), y(y), z(z) {}
};
using uint3 = dim3;
struct alignas(16) uint4 {  // the vector type of 16-byte accesses
  unsigned x, y, z, w;
};
// A store with the default (write-back) cache policy.
inline void __stwb(uint4* p, uint4 value) { *p = value; }
using cudaStream_t = void*;

// The built-in index variables: per host thread, set by the launcher.
inline thread_local uint3 threadIdx, blockIdx;
inline thread_local dim3 blockDim, gridDim;
constexpr int warpSize = 32;

namespace stn_ext::emulation {

// What a test may change about the emulated device, and what it can read back.
struct Settings {
  int64_t max_grid_y = 65535;       // CUDA's limit; lowered to reach grid-stride loops
  bool force_64bit_indexing = false;
  uint64_t block_order_seed = 0;    // 0: blocks in index order; else a shuffled order
  bool stage_small_images = true;   // false: small images take the large images' kernels
  bool capturing_graph = false;     // true: the stream is capturing a CUDA graph
};

inline Settings& settings() {
  static Settings s;
  return s;
}

inline std::atomic<int64_t>& launch_count() {
  static std::atomic<int64_t> count{0};
  return count;
}

// Threads of all launches (grid size times block size), for tests of how a launch splits work.
inline std::atomic<int64_t>& launched_threads() {
  static std::atomic<int64_t> count{0};
  return count;
}

// Atomic additions of all launches, for tests of which path a kernel took.
inline std::atomic<int64_t>& atomic_adds() {
  static std::atomic<int64_t> count{0};
  return count;
}

[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "stn_ext CUDA emulation: %s\n", what);
  std::abort();
}

// A warp: its lanes' contexts and stacks, and the context of the host thread that schedules
// them (run_warp). A lane runs until it reaches a shuffle, __syncthreads or the end of the
// kernel, then the next lane runs.
struct Lane {
  enum class State { Runnable, AtWarpSync, AtBlockSync, Exited };
  ucontext_t context;
  uint3 thread_index;
  State state;
};

struct Warp {
  static constexpr size_t kStackBytes = 256 * 1024;
  Lane lane[warpSize];
  std::unique_ptr<char[]> stacks{new char[warpSize * kStackBytes]};  // pages touched when used
  ucontext_t scheduler;
  Lane* running = nullptr;
  std::barrier<>* block_barrier = nullptr;  // the __syncthreads barrier of the block's warps
  alignas(8) unsigned char shuffle_slots[warpSize][8];
};

// The warp that this host thread runs.
inline thread_local Warp* current_warp = nullptr;

// Called by a lane: stop at a sync point (or exit) and return to the warp's scheduler.
inline void suspend(Lane::State state) {
  Warp& warp = *current_warp;
  Lane& lane = *warp.running;
  lane.state = state;
  swapcontext(&lane.context, &warp.scheduler);
}

// Runs `lanes` threads, from block thread index first_thread on, through the kernel call `body`
// as the lanes of `warp`, until all have returned.
template <typename Body>
void run_warp(Warp& warp, int first_thread, int lanes, const dim3& block, const Body& body) {
  std::memset(warp.shuffle_slots, 0xFF, sizeof(warp.shuffle_slots));
  static thread_local const Body* lane_body;
  lane_body = &body;
  void (*lane_main)() = [] {
    (*lane_body)();
    suspend(Lane::State::Exited);
  };
  for (int l = 0; l < lanes; ++l) {
    Lane& lane = warp.lane[l];
    const unsigned t = static_cast<unsigned>(first_thread + l);
    lane.thread_index = uint3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
    lane.state = Lane::State::Runnable;
    getcontext(&lane.context);
    lane.context.uc_stack.ss_sp = warp.stacks.get() + l * Warp::kStackBytes;
    lane.context.uc_stack.ss_size = Warp::kStackBytes;
    lane.context.uc_link = nullptr;
    makecontext(&lane.context, lane_main, 0);
  }
  current_warp = &warp;
  for (;;) {
    for (int l = 0; l < lanes; ++l) {
      Lane& lane = warp.lane[l];
      if (lane.state != Lane::State::Runnable) continue;
      warp.running = &lane;
      threadIdx = lane.thread_index;
      swapcontext(&warp.scheduler, &lane.context);
    }
    // No lane can run: every live lane waits at the same sync point, or all have returned.
    int at_warp_sync = 0, at_block_sync = 0, exited = 0;
    for (int l = 0; l < lanes; ++l) {
      at_warp_sync += warp.lane[l].state == Lane::State::AtWarpSync;
      at_block_sync += warp.lane[l].state == Lane::State::AtBlockSync;
      exited += warp.lane[l].state == Lane::State::Exited;
    }
    if (exited == lanes) break;
    if (at_warp_sync > 0 && at_block_sync > 0) {
      fail("the lanes of a warp wait at different sync points");
    }
    if (at_block_sync > 0) warp.block_barrier->arrive_and_wait();
    for (int l = 0; l < lanes; ++l) {
      if (warp.lane[l].state != Lane::State::Exited) warp.lane[l].state = Lane::State::Runnable;
    }
  }
  warp.block_barrier->arrive_and_drop();  // an exited warp no longer holds up __syncthreads
}

}  // namespace stn_ext::emulation

inline void __syncthreads() {
  stn_ext::emulation::suspend(stn_ext::emulation::Lane::State::AtBlockSync);
}

// __shfl_down_sync over a full warp (the only mask the kernels use): lane i gets lane i + delta's
// value, or its own where i + delta falls outside its `width`-lane segment.
template <typename T>
T __shfl_down_sync(unsigned mask, T value, unsigned delta, int width = warpSize) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>);
  namespace emu = stn_ext::emulation;
  if (mask != 0xffffffffu) emu::fail("__shfl_down_sync with a partial mask is not emulated");
  emu::Warp& warp = *emu::current_warp;
  const unsigned lane = static_cast<unsigned>(warp.running - warp.lane);
  std::memcpy(warp.shuffle_slots[lane], &value, sizeof(T));
  emu::suspend(emu::Lane::State::AtWarpSync);  // every lane has published its value
  const unsigned source = lane + delta;
  T result = value;
  if (source / width == lane / static_cast<unsigned>(width) && source < warpSize) {
    std::memcpy(&result, warp.shuffle_slots[source], sizeof(T));
  }
  emu::suspend(emu::Lane::State::AtWarpSync);  // every lane has read before slots are reused
  return result;
}

// ATen's gpuAtomicAdd, for the accumulation types the kernels use.
template <typename T>
inline T gpuAtomicAdd(T* address, T value) {
  static_assert(std::is_floating_point_v<T> || std::is_integral_v<T>,
                "the emulation has atomics for built-in arithmetic types only");
  stn_ext::emulation::atomic_adds().fetch_add(1, std::memory_order_relaxed);
  return std::atomic_ref<T>(*address).fetch_add(value, std::memory_order_relaxed);
}

// The host side of the CUDA runtime that the kernels' launchers use: devices and streams are
// the CPU's.
namespace c10::cuda {
struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
};
inline cudaStream_t getCurrentCUDAStream() { return nullptr; }
}  // namespace c10::cuda

namespace stn_ext {

// Runs kernel<<<grid, block>>>(args...) to completion (see the file comment).
template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t /*stream*/,
                   Args&&... args) {
  namespace emu = emulation;
  static std::mutex one_launch_at_a_time;  // __shared__ statics belong to one block at a time
  const std::lock_guard<std::mutex> lock(one_launch_at_a_time);
  const emu::Settings& settings = emu::settings();
  constexpr int64_t kMaxThreadsPerBlock = 1024;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > settings.max_grid_y ||
      grid.z > 65535) {
    emu::fail("invalid grid dimensions (a launch error on the device)");
  }
  const int threads = static_cast<int>(block.x * block.y * block.z);
  if (threads <= 0 || threads > kMaxThreadsPerBlock) emu::fail("invalid block size");
  ++emu::launch_count();
  emu::launched_threads() += int64_t{grid.x} * grid.y * grid.z * threads;

  std::vector<int64_t> order(static_cast<int64_t>(grid.x) * grid.y * grid.z);
  std::iota(order.begin(), order.end(), int64_t{0});
  if (settings.block_order_seed != 0) {
    std::shuffle(order.begin(), order.end(), std::mt19937_64(settings.block_order_seed));
  }

  const std::tuple<Params...> params(std::forward<Args>(args)...);
  auto body = [&] { std::apply(kernel, params); };
  const int warps = (threads + warpSize - 1) / warpSize;
  std::vector<emu::Warp> warp(warps);
  std::optional<std::barrier<>> block_barrier;
  size_t next = 0;
  auto start_block = [&]() noexcept {
    block_barrier.emplace(warps);
    for (emu::Warp& w : warp) w.block_barrier = &*block_barrier;
  };
  auto next_block = [&]() noexcept {
    ++next;
    start_block();
  };
  start_block();
  std::barrier block_done(warps, next_block);

  auto run_warp_thread = [&](int w) {
    blockDim = block;
    gridDim = grid;
    while (next < order.size()) {
      const int64_t b = order[next];
      blockIdx = uint3(b % grid.x, (b / grid.x) % grid.y,
                       b / (static_cast<int64_t>(grid.x) * grid.y));
      emu::run_warp(warp[w], w * warpSize, std::min(warpSize, threads - w * warpSize), block,
                    body);
      block_done.arrive_and_wait();  // the last warp to arrive starts the next block
    }
  };
  std::vector<std::thread> workers;
  workers.reserve(warps);
  for (int w = 0; w < warps; ++w) workers.emplace_back(run_warp_thread, w);
  for (std::thread& t : workers) t.join();
}

}  // namespace stn_ext
