#pragma once
/// @file distributed.hpp
/// c10d helpers: the torchrun environment, a TCP store and a Gloo process group made from it,
/// global-norm gradient clipping over gradients sharded across ranks (FSDP / ZeRO style:
/// each rank holds some of the gradients; the norm is that of all of them together), and
/// data-parallel training (namespace torchkit::dist): broadcast_parameters, a bucketed
/// GradientReducer (DDP's gradient averaging), DistributedSampler, is_rank_zero.
///
///     auto group = torchkit::gloo_group_from_environment();   // under torchrun / tools/launch.sh
///     torchkit::dist::broadcast_parameters(model, *group);
///     torchkit::dist::GradientReducer reducer(model, *group);
///     loss.backward();
///     reducer.reduce();                                        // gradients averaged over the ranks
///     optimizer.step();
///
/// The c10d headers ship with LibTorch. Gloo's own headers do not always: the Gloo helpers
/// exist where `<gloo/algorithm.h>` is found (Debian: libgloo-dev) or TORCHKIT_WITH_GLOO is
/// defined to 1; clipping works with any group that has `allreduce` (Gloo, NCCL, MPI, yours).

#include <torchkit/clip.hpp>
#include <torchkit/concepts.hpp>
#include <torchkit/detail/config.hpp>
#include <torchkit/error.hpp>

#include <torchkit/detail/environment.hpp>
#include <torchkit/detail/shape.hpp>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/util/StringUtil.h>
#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <iterator>
#include <limits>
#include <memory>
#include <numeric>
#include <optional>
#include <ostream>
#include <streambuf>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <unordered_set>
#include <utility>
#include <vector>

#if __has_include(<torch/csrc/distributed/c10d/ProcessGroup.hpp>) && __has_include(<torch/csrc/distributed/c10d/TCPStore.hpp>)
/// 1 where LibTorch ships the c10d headers (ProcessGroup, TCPStore), else 0; the c10d helpers
/// exist only under 1.
#define TORCHKIT_HAS_C10D 1
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/Types.hpp>
#include <torchkit/detail/tcp_store.hpp>
#else
/// 1 where LibTorch ships the c10d headers (ProcessGroup, TCPStore), else 0; the c10d helpers
/// exist only under 1.
#define TORCHKIT_HAS_C10D 0
#endif

#ifndef TORCHKIT_WITH_GLOO
#if TORCHKIT_HAS_C10D && __has_include(<gloo/algorithm.h>) && \
    __has_include(<torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>)
/// 1 when the Gloo helpers (make_gloo_group, gloo_group_from_environment, ...) are compiled: by default
/// where `<gloo/algorithm.h>` and c10d's ProcessGroupGloo.hpp are found. Define it to 0 or 1
/// before including to choose.
#define TORCHKIT_WITH_GLOO 1
#else
/// 1 when the Gloo helpers (make_gloo_group, gloo_group_from_environment, ...) are compiled: by default
/// where `<gloo/algorithm.h>` and c10d's ProcessGroupGloo.hpp are found. Define it to 0 or 1
/// before including to choose.
#define TORCHKIT_WITH_GLOO 0
#endif
#endif

#if TORCHKIT_WITH_GLOO
#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO 1  // ProcessGroupGloo.hpp declares its class only under this macro
#endif
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif

namespace torchkit {

/// Where this process sits in a torchrun launch: the variables torchrun sets.
///
///     const auto where = torchkit::torchrun_environment();
///     if (where.rank == 0) std::cout << where << "\n";
struct TorchrunEnvironment {
  int rank = 0;              ///< RANK: this process among all of them
  int world_size = 1;        ///< WORLD_SIZE
  int local_rank = 0;        ///< LOCAL_RANK: this process on its node (default: RANK)
  int local_world_size = 1;  ///< LOCAL_WORLD_SIZE (default: WORLD_SIZE)
  std::string master_addr;   ///< MASTER_ADDR: where rank 0's store listens
  int master_port = 0;       ///< MASTER_PORT

  /// `rank 1 of 4 (local 1 of 4), master 10.0.0.1:29500`.
  [[nodiscard]] std::string to_string() const {
    return fmt::format("rank {} of {} (local {} of {}), master {}:{}", rank, world_size, local_rank, local_world_size,
                       master_addr, master_port);
  }
  /// Writes to_string() to `out`.
  friend std::ostream& operator<<(std::ostream& out, const TorchrunEnvironment& environment) {
    return out << environment.to_string();
  }
};

namespace detail::distributed {

using Lookup = std::function<std::optional<std::string>(std::string_view)>;

[[nodiscard]] inline std::optional<std::string> from_process_environment(std::string_view name) {
  const char* value = std::getenv(std::string(name).c_str());
  if (value == nullptr) return std::nullopt;
  return std::string(value);
}

[[nodiscard]] inline int parse_integer(const Lookup& lookup, std::string_view name, std::optional<int> fallback,
                                       int minimum, int maximum) {
  const auto text = lookup(name);
  if (!text) {
    TORCHKIT_CHECK(fallback.has_value(),
                   "torchrun_environment: {} is not set; start the program with torchrun, or set RANK, WORLD_SIZE, "
                   "MASTER_ADDR and MASTER_PORT",
                   name);
    return *fallback;
  }
  int value = 0;
  const char* end = text->data() + text->size();
  const auto [last, error] = std::from_chars(text->data(), end, value);
  TORCHKIT_CHECK(error == std::errc() && last == end && !text->empty() && value >= minimum && value <= maximum,
                 "torchrun_environment: {}='{}' is not an integer in [{}, {}]", name, *text, minimum, maximum);
  return value;
}

}  // namespace detail::distributed

/// Reads torchrun's variables through `lookup` (name -> value, nullopt when unset); the
/// process environment by default. PyTorch: what `init_process_group("env://")` reads.
///
/// @throws torchkit::Error when RANK, WORLD_SIZE, MASTER_ADDR or MASTER_PORT is missing, a
///         value is not an integer in range, or RANK >= WORLD_SIZE (the message names it).
///
///     const auto where = torchkit::torchrun_environment();
[[nodiscard]] inline TorchrunEnvironment torchrun_environment(
    const detail::distributed::Lookup& lookup = detail::distributed::from_process_environment) {
  using detail::distributed::parse_integer;
  constexpr int most = std::numeric_limits<int>::max();
  TorchrunEnvironment environment;
  environment.world_size = parse_integer(lookup, "WORLD_SIZE", std::nullopt, 1, most);
  environment.rank = parse_integer(lookup, "RANK", std::nullopt, 0, most);
  TORCHKIT_CHECK(environment.rank < environment.world_size,
                 "torchrun_environment: RANK={} is not below WORLD_SIZE={}", environment.rank, environment.world_size);
  environment.local_world_size = parse_integer(lookup, "LOCAL_WORLD_SIZE", environment.world_size, 1, most);
  environment.local_rank = parse_integer(lookup, "LOCAL_RANK", environment.rank, 0, most);
  TORCHKIT_CHECK(environment.local_rank < environment.local_world_size,
                 "torchrun_environment: LOCAL_RANK={} is not below LOCAL_WORLD_SIZE={}", environment.local_rank,
                 environment.local_world_size);
  const auto address = lookup("MASTER_ADDR");
  TORCHKIT_CHECK(address.has_value() && !address->empty(),
                 "torchrun_environment: MASTER_ADDR is {}; start the program with torchrun, or set it to rank 0's "
                 "host",
                 address ? "empty" : "not set");
  environment.master_addr = *address;
  environment.master_port = parse_integer(lookup, "MASTER_PORT", std::nullopt, 1, 65535);
  return environment;
}

#if TORCHKIT_HAS_C10D

/// Anything clip_grad_norm_ can reduce over: a c10d::ProcessGroup (LibTorch 1.13), a
/// c10d::Backend such as ProcessGroupGloo or ProcessGroupNCCL (2.x), or a class of yours with
/// the same `allreduce`, `getRank` and `getSize`.
template <class G>
concept CollectiveGroup =
    requires(G& group, std::vector<at::Tensor>& tensors) {
      group.allreduce(tensors, c10d::AllreduceOptions{})->wait();
      { group.getRank() } -> std::convertible_to<int>;
      { group.getSize() } -> std::convertible_to<int>;
    };

/// The c10d TCPStore of a torchrun launch: rank 0 hosts it at MASTER_ADDR:MASTER_PORT and
/// waits for the other ranks; every rank connects. PyTorch: the `env://` rendezvous. Uses
/// the libuv server where LibTorch has one and the classic server where it was built without
/// libuv (Debian's 2.x) or USE_LIBUV=0 is set.
///
/// @throws torchkit::Error when the ranks do not all meet within `timeout` (one never started
///         or died, MASTER_ADDR is wrong) or rank 0 cannot listen on MASTER_PORT (in use).
///
///     auto store = torchkit::store_from_environment(torchkit::torchrun_environment());
[[nodiscard]] inline c10::intrusive_ptr<c10d::Store> store_from_environment(
    const TorchrunEnvironment& environment, std::chrono::milliseconds timeout = std::chrono::minutes(30)) {
  c10d::TCPStoreOptions options;
  options.port = static_cast<std::uint16_t>(environment.master_port);
  options.isServer = environment.rank == 0;
  options.numWorkers = static_cast<std::size_t>(environment.world_size);
  options.waitWorkers = true;
  options.timeout = timeout;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  const char* reason = environment.rank == 0 ? "rank 0 hosts the store and waits for every rank"
                                             : "this rank connects to rank 0's store";
  try {
    auto store = detail::make_tcp_store(environment.master_addr, options);
    // LibTorch 1.13's server stops waiting for the workers at the timeout without an error
    // (2.x throws): every rank checks in, and rank 0 counts them.
    const std::string joined = "torchkit/store_from_environment/joined";
    int64_t count = store->add(joined, 1);
    while (environment.rank == 0 && count < environment.world_size) {
      TORCHKIT_CHECK(std::chrono::steady_clock::now() < deadline,
                     "store_from_environment: rank 0 of {} could not meet the other ranks at {}:{} within {} ms ({}): "
                     "{} of {} ranks arrived",
                     environment.world_size, environment.master_addr, environment.master_port, timeout.count(),
                     reason, count, environment.world_size);
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      count = store->add(joined, 0);
    }
    return store;
  } catch (const Error&) {
    throw;
  } catch (const std::exception& error) {
    detail::fail("store_from_environment: rank {} of {} could not meet the other ranks at {}:{} within {} ms ({}): {}",
                 environment.rank, environment.world_size, environment.master_addr, environment.master_port,
                 timeout.count(), reason, error.what());
  }
}

#if TORCHKIT_WITH_GLOO
/// A Gloo process group (CPU tensors) of `world_size` ranks meeting through `store`; this
/// process is `rank`. A c10d::ProcessGroup in LibTorch 1.13, a c10d::Backend in 2.x; both work
/// with clip_grad_norm_. PyTorch: `dist.new_group(backend="gloo")`.
///
/// @throws torchkit::Error for a null store, world_size < 1, rank outside [0, world_size), and
///         when the other ranks do not all connect within `timeout` (one never started or died).
///
///     auto store = c10::make_intrusive<c10d::HashStore>();   // threads of one process
///     auto group = torchkit::make_gloo_group(store, rank, 4);
[[nodiscard]] inline c10::intrusive_ptr<c10d::ProcessGroupGloo> make_gloo_group(
    const c10::intrusive_ptr<c10d::Store>& store, int rank, int world_size,
    std::chrono::milliseconds timeout = std::chrono::minutes(30)) {
  TORCHKIT_CHECK(store, "make_gloo_group: the store is null");
  TORCHKIT_CHECK(world_size >= 1, "make_gloo_group: world_size must be >= 1, got {}", world_size);
  TORCHKIT_CHECK(rank >= 0 && rank < world_size, "make_gloo_group: rank {} is outside [0, {})", rank, world_size);
  auto options = c10d::ProcessGroupGloo::Options::create(timeout);
  try {
    options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    return c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world_size, options);
  } catch (const std::exception& error) {
    detail::fail("make_gloo_group: rank {} of {} could not connect to the other ranks within {} ms (a rank did not join, "
         "died, or the store is unreachable): {}",
         rank, world_size, timeout.count(), error.what());
  }
}

/// The Gloo process group of a torchrun launch: torchrun_environment(), its TCP store, and a
/// Gloo group over it. PyTorch: `dist.init_process_group("gloo")`.
///
///     auto group = torchkit::gloo_group_from_environment();
///     torchkit::clip_grad_norm_(shard, 1.0, 2.0, *group);
[[nodiscard]] inline c10::intrusive_ptr<c10d::ProcessGroupGloo> gloo_group_from_environment(
    std::chrono::milliseconds timeout = std::chrono::minutes(30)) {
  const auto environment = torchrun_environment();
  return make_gloo_group(store_from_environment(environment, timeout), environment.rank, environment.world_size,
                         timeout);
}
#endif  // TORCHKIT_WITH_GLOO

namespace detail::clip {

/// The global total norm over every rank's gradients, and the clip with it.
template <CollectiveGroup G>
at::Tensor distributed_norm_and_clip(const Collected& collected, double p, std::optional<double> max_norm,
                                     const ClipOptions& options, G& group, std::string_view function) {
  const at::NoGradGuard no_grad;
  const NormKind kind = norm_kind_of(p);
  std::optional<FastPass> pass;
  std::vector<at::Tensor> reference_norms;
  at::Tensor local;
  if (collected.gradients.empty()) {
    local = at::scalar_tensor(0.0, at::kFloat);
  } else if (options.foreach) {
    pass.emplace(collected, p);
    local = pass->total_norm();
  } else {
    local = reference_norms_and_total(collected, p, reference_norms);
  }
  const at::ScalarType dtype = local.scalar_type();
  // Each rank's share of the total, in double: |local|^p summed (p = 0: the count of
  // gradients with a non-zero element; inf: the largest, NaN kept aside since a max drops it).
  at::Tensor share = local.to(at::kDouble).reshape({1});
  c10d::AllreduceOptions reduce;
  if (kind == NormKind::infinity) {
    share = at::cat({at::nan_to_num(share, 0.0), share.isnan().to(at::kDouble)});
    reduce.reduceOp = c10d::ReduceOp::MAX;
  } else {
    if (kind == NormKind::two) share = share * share;
    if (kind == NormKind::general) share = share.pow(p);
    reduce.reduceOp = c10d::ReduceOp::SUM;
  }
  std::vector<at::Tensor> tensors{share.contiguous()};
  group.allreduce(tensors, reduce)->wait();
  const at::Tensor& reduced = tensors.front();
  at::Tensor total;
  if (kind == NormKind::infinity) {
    total = at::where(reduced[1] > 0, at::full({}, std::numeric_limits<double>::quiet_NaN(), reduced.options()),
                      reduced[0]);
  } else {
    total = reduced[0];
    if (kind == NormKind::two) total = total.sqrt();
    if (kind == NormKind::general) total = total.pow(1.0 / p);
  }
  total = total.to(dtype);
  if (options.error_if_nonfinite) {
    const double value = total.item<double>();
    if (!std::isfinite(value)) {
      std::optional<std::size_t> first;
      if (pass) {
        first = pass->first_nonfinite();
      } else {
        for (std::size_t k = 0; k < reference_norms.size() && !first; ++k) {
          if (!std::isfinite(reference_norms[k].item<double>())) first = k;
        }
      }
      if (!first) {
        fail("{}: the global total norm of order {} of the gradients is {} (non-finite), so they cannot be "
             "clipped; no gradient on this rank ({} of {}) is non-finite, another rank's is; no gradient was "
             "changed. Pass error_if_nonfinite = false to scale them by the non-finite norm anyway, as PyTorch does",
             function, p, std::isnan(value) ? std::string("nan") : fmt::format("{}", value), group.getRank(),
             group.getSize());
      }
      fail_nonfinite(collected, p, value, first, dtype,
                     fmt::format("{} (rank {} of {}, global norm)", function, group.getRank(), group.getSize()));
    }
  }
  if (max_norm && !collected.gradients.empty()) {
    const at::Tensor coefficient = clip_coefficient(total, *max_norm);
    if (pass) {
      pass->scale(coefficient);
    } else {
      for (const auto& gradient : collected.gradients) {
        gradient.grad->mul_(coefficient.to(gradient.grad->device()));
      }
    }
  }
  return total;
}

}  // namespace detail::clip

/// Global-norm clipping of gradients sharded across the ranks of `group`: every rank passes
/// the parameters whose gradients it holds; the total norm is that of all ranks' gradients
/// together (one allreduce of one number), and every rank scales its own by the same
/// coefficient. With one rank it equals clip_grad_norm_ (to rounding). PyTorch: FSDP's
/// `clip_grad_norm_`.
///
/// Every rank must call it (it is a collective). Bad arguments are checked on each rank before
/// the allreduce; pass the same max_norm and norm_type everywhere. The reduction runs on the
/// first local gradient's device (CPU for a rank with none): use a group for that device.
///
/// @returns the global total norm before clipping, a 0-dim tensor of the local gradients'
///          promoted dtype (float where a rank has none), on the reduction's device.
/// @throws torchkit::Error as clip_grad_norm_; with `error_if_nonfinite` on every rank, naming
///         this rank's first non-finite gradient or saying that another rank holds it.
///
///     auto group = torchkit::gloo_group_from_environment();
///     torchkit::clip_grad_norm_(model, 1.0, 2.0, *group);
template <ParameterSource P, CollectiveGroup G>
at::Tensor clip_grad_norm_(P&& params, double max_norm, double norm_type, G& group, ClipOptions options = {}) {
  constexpr std::string_view function = "clip_grad_norm_";
  detail::clip::check_max_norm(max_norm, function);
  detail::clip::check_norm_type(norm_type, function);
  const auto collected = detail::clip::collect(std::forward<P>(params), function, /*mutating=*/true);
  return detail::clip::distributed_norm_and_clip(collected, norm_type, max_norm, options, group, function);
}

/// clip_grad_norm_ with the group held by pointer, as the helpers above return it.
template <ParameterSource P, CollectiveGroup G>
at::Tensor clip_grad_norm_(P&& params, double max_norm, double norm_type, const c10::intrusive_ptr<G>& group,
                           ClipOptions options = {}) {
  TORCHKIT_CHECK(group, "clip_grad_norm_: the process group is null");
  return clip_grad_norm_(std::forward<P>(params), max_norm, norm_type, *group, options);
}

/// The global total norm of gradients sharded across the ranks of `group`, without clipping.
///
///     const double norm = torchkit::grad_norm(shard, 2.0, *group).item<double>();
template <ParameterSource P, CollectiveGroup G>
[[nodiscard]] at::Tensor grad_norm(P&& params, double norm_type, G& group, ClipOptions options = {}) {
  constexpr std::string_view function = "grad_norm";
  detail::clip::check_norm_type(norm_type, function);
  const auto collected = detail::clip::collect(std::forward<P>(params), function, /*mutating=*/false);
  return detail::clip::distributed_norm_and_clip(collected, norm_type, std::nullopt, options, group, function);
}

#endif  // TORCHKIT_HAS_C10D

// ---------------------------------------------------------------------------------------------
// Data parallel (namespace torchkit::dist): one process per device, every rank the same model.
// ---------------------------------------------------------------------------------------------

namespace dist {

/// What DistributedSampler shuffles and drops; the defaults are PyTorch's.
struct DistributedSamplerOptions {
  bool shuffle = true;     ///< a new permutation every epoch (seed + epoch)
  int64_t seed = 0;        ///< the same on every rank
  bool drop_last = false;  ///< drop the tail instead of padding with indices from the start
};

/// The indices of the data set that one rank reads in an epoch, exactly those of PyTorch's
/// `torch.utils.data.DistributedSampler(dataset, num_replicas, rank, shuffle, seed, drop_last)`
/// with `set_epoch(e)`: a permutation from a generator seeded with `seed + epoch` (the
/// identity without shuffle), padded by repeating it from the start to a multiple of
/// `num_replicas` (or, with drop_last, cut to one), and every `num_replicas`-th index from
/// `rank` on. Every rank gets `size()` indices; together they cover the data set. The
/// permutation is LibTorch's CPU randperm, the same algorithm from PyTorch 1.13 to 2.x for
/// sizes below 2^32 / 20 (checked against Python 1.13's indices in tests/golden/).
///
/// @throws torchkit::Error when size < 0, num_replicas < 1 or rank is outside
///         [0, num_replicas).
///
///     torchkit::dist::DistributedSampler sampler(dataset_size, world_size, rank, {.seed = 7});
///     for (int64_t epoch = 0; epoch < epochs; ++epoch) {
///       sampler.set_epoch(epoch);
///       for (const int64_t index : sampler.indices()) { ... }
///     }
class DistributedSampler {
 public:
  /// The sampler of rank `rank` out of `num_replicas` (the world size) for a data set of `size`
  /// samples; `options` as PyTorch's keyword arguments (shuffle, seed, drop_last).
  DistributedSampler(int64_t size, int64_t num_replicas, int64_t rank, DistributedSamplerOptions options = {})
      : size_(size), num_replicas_(num_replicas), rank_(rank), options_(options) {
    TORCHKIT_CHECK(size >= 0, "DistributedSampler: the data set size must be >= 0, got {}", size);
    TORCHKIT_CHECK(num_replicas >= 1, "DistributedSampler: num_replicas must be >= 1, got {}", num_replicas);
    TORCHKIT_CHECK(rank >= 0 && rank < num_replicas,
                   "DistributedSampler: rank {} is outside [0, {}) (num_replicas = {})", rank, num_replicas,
                   num_replicas);
    if (options.drop_last && size % num_replicas != 0) {
      per_rank_ = size / num_replicas;  // Python: ceil((size - num_replicas) / num_replicas)
    } else {
      per_rank_ = size / num_replicas + (size % num_replicas != 0 ? 1 : 0);
    }
  }

  /// The epoch whose permutation indices() gives (PyTorch's `set_epoch`); any value.
  void set_epoch(int64_t epoch) noexcept { epoch_ = epoch; }
  /// The epoch set by set_epoch() (0 at first).
  [[nodiscard]] int64_t epoch() const noexcept { return epoch_; }
  /// How many indices each rank gets (Python's `len(sampler)`).
  [[nodiscard]] int64_t size() const noexcept { return per_rank_; }
  /// size() times num_replicas: the data set size after padding or dropping.
  [[nodiscard]] int64_t total_size() const noexcept { return per_rank_ * num_replicas_; }
  /// The number of ranks the data set is split among.
  [[nodiscard]] int64_t num_replicas() const noexcept { return num_replicas_; }
  /// This sampler's rank, in [0, num_replicas()).
  [[nodiscard]] int64_t rank() const noexcept { return rank_; }
  /// The options, as given.
  [[nodiscard]] const DistributedSamplerOptions& options() const noexcept { return options_; }

  /// This rank's indices for the current epoch, in the order Python yields them.
  [[nodiscard]] std::vector<int64_t> indices() const {
    std::vector<int64_t> order(static_cast<std::size_t>(size_));
    if (options_.shuffle) {
      // torch.Generator().manual_seed(seed + epoch); torch.randperm(size, generator=g)
      auto generator = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(options_.seed) +
                                                               static_cast<uint64_t>(epoch_));
      const at::Tensor permutation = at::randperm(size_, generator, at::TensorOptions().dtype(at::kLong));
      const int64_t* values = permutation.data_ptr<int64_t>();
      std::copy(values, values + size_, order.begin());
    } else {
      std::iota(order.begin(), order.end(), int64_t{0});
    }
    std::vector<int64_t> mine;
    mine.reserve(static_cast<std::size_t>(per_rank_));
    // Position k of the padded (or cut) list is order[k % size]: padding repeats from the start.
    for (int64_t k = rank_; k < total_size(); k += num_replicas_) {
      mine.push_back(order[static_cast<std::size_t>(k % size_)]);
    }
    return mine;
  }

 private:
  int64_t size_;
  int64_t num_replicas_;
  int64_t rank_;
  DistributedSamplerOptions options_;
  int64_t per_rank_ = 0;
  int64_t epoch_ = 0;
};

/// True in the process that should print summaries, reports and progress: RANK is unset (not
/// launched by torchrun or tools/launch.sh) or 0. Never throws; a malformed RANK counts as not
/// zero. PyTorch: `not dist.is_initialized() or dist.get_rank() == 0`.
///
///     if (torchkit::dist::is_rank_zero()) std::cout << torchkit::summary(model, {3, 32, 32});
[[nodiscard]] inline bool is_rank_zero() {
  const auto rank = torchkit::detail::get_environment("RANK");
  return !rank || rank->empty() || *rank == "0";
}

namespace detail {
struct NullBuffer : std::streambuf {
  int overflow(int c) override { return c; }
};
}  // namespace detail

/// std::cout on rank zero (see is_rank_zero), a stream that drops everything on the others:
/// print once per launch, not once per process.
///
///     torchkit::dist::rank_zero_out() << "epoch " << epoch << " loss " << loss << "\n";
[[nodiscard]] inline std::ostream& rank_zero_out() {
  if (is_rank_zero()) return std::cout;
  static detail::NullBuffer buffer;
  static std::ostream null(&buffer);
  return null;
}

/// fmt::print on rank zero only.
///
///     torchkit::dist::print("accuracy {:.1f}%\n", 100 * accuracy);
template <class... Args>
void print(fmt::format_string<Args...> format, Args&&... args) {
  if (is_rank_zero()) fmt::print(format, std::forward<Args>(args)...);
}

#if TORCHKIT_HAS_C10D

using torchkit::CollectiveGroup;
using torchkit::store_from_environment;
using torchkit::torchrun_environment;
using torchkit::TorchrunEnvironment;
#if TORCHKIT_WITH_GLOO
using torchkit::gloo_group_from_environment;
using torchkit::make_gloo_group;
#endif

/// A CollectiveGroup that can also broadcast: every c10d process group and backend.
template <class G>
concept BroadcastGroup = CollectiveGroup<G> && requires(G& group, std::vector<at::Tensor>& tensors) {
  group.broadcast(tensors, c10d::BroadcastOptions{})->wait();
};

namespace detail {

using torchkit::detail::fail;

/// Parameters (or parameters and buffers) of a module, each tensor once, registration order.
struct Entry {
  std::string name;
  at::Tensor tensor;
  bool buffer = false;
};

[[nodiscard]] inline std::vector<Entry> entries_of(const torch::nn::Module& module, bool with_buffers,
                                                   bool trainable_only) {
  std::vector<Entry> entries;
  std::unordered_set<const void*> seen;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) {
    if (trainable_only && !item.value().requires_grad()) continue;
    if (seen.insert(item.value().unsafeGetTensorImpl()).second) entries.push_back({item.key(), item.value(), false});
  }
  if (with_buffers) {
    for (const auto& item : module.named_buffers(/*recurse=*/true)) {
      if (!item.value().defined()) continue;
      if (seen.insert(item.value().unsafeGetTensorImpl()).second) entries.push_back({item.key(), item.value(), true});
    }
  }
  return entries;
}

/// `4.weight parameter Float [5, 144]`: what must be equal on every rank.
[[nodiscard]] inline std::string describe(const Entry& entry) {
  return fmt::format("{} {} {} {}", entry.name, entry.buffer ? "buffer" : "parameter",
                     c10::toString(entry.tensor.scalar_type()), torchkit::detail::shape_string(entry.tensor.sizes()));
}

[[nodiscard]] inline std::vector<std::string> describe_all(const std::vector<Entry>& entries) {
  std::vector<std::string> lines;
  lines.reserve(entries.size());
  for (const auto& entry : entries) lines.push_back(describe(entry));
  return lines;
}

[[nodiscard]] inline std::string join_lines(const std::vector<std::string>& lines) {
  std::string text;
  for (const auto& line : lines) text += line + "\n";
  return text;
}

[[nodiscard]] inline std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> lines;
  std::size_t begin = 0;
  while (begin < text.size()) {
    const std::size_t end = text.find('\n', begin);
    lines.push_back(text.substr(begin, end - begin));
    begin = end == std::string::npos ? text.size() : end + 1;
  }
  return lines;
}

/// Where this rank's model first differs from the root's; empty when it does not.
[[nodiscard]] inline std::string first_difference(const std::vector<std::string>& mine,
                                                  const std::vector<std::string>& root, int root_rank) {
  const std::size_t common = std::min(mine.size(), root.size());
  for (std::size_t k = 0; k < common; ++k) {
    if (mine[k] != root[k]) {
      return fmt::format("entry {} is '{}' here but '{}' on rank {}", k, mine[k], root[k], root_rank);
    }
  }
  if (mine.size() == root.size()) return {};
  if (mine.size() > root.size()) {
    return fmt::format("this rank has {} parameters and buffers, rank {} has {}; the first extra one here is '{}'",
                       mine.size(), root_rank, root.size(), mine[common]);
  }
  return fmt::format("this rank has {} parameters and buffers, rank {} has {}; the first one missing here is '{}'",
                     mine.size(), root_rank, root.size(), root[common]);
}

/// FNV-1a, 62 bits (so that its negation fits an int64 tensor).
[[nodiscard]] inline int64_t fingerprint(const std::string& text) {
  uint64_t hash = 1469598103934665603ULL;
  for (const char c : text) {
    hash ^= static_cast<unsigned char>(c);
    hash *= 1099511628211ULL;
  }
  return static_cast<int64_t>(hash >> 2);
}

/// Tensors of one dtype and device, flattened one after another into `flat` (plus `extra`
/// trailing elements): what one collective call moves.
struct Bucket {
  std::vector<std::size_t> members;  ///< indices into the entry list
  std::vector<int64_t> offsets;      ///< of each member in flat
  int64_t elements = 0;              ///< members' elements (flat has more when extra > 0)
  int64_t bytes = 0;
  at::Tensor flat;
  at::Tensor grads;  ///< GradientReducer: the reduced gradients, which the parameters' .grad share
};

/// Buckets of at most `cap` bytes (a bigger tensor gets one of its own), one dtype and device
/// each, filled in the order of `order`; `extra` elements are appended to each flat buffer.
[[nodiscard]] inline std::vector<Bucket> assign_buckets(const std::vector<at::Tensor>& tensors,
                                                        const std::vector<std::size_t>& order, int64_t cap,
                                                        bool flags) {
  std::vector<Bucket> buckets;
  std::vector<std::pair<std::pair<at::ScalarType, at::Device>, std::size_t>> open;  // key -> bucket
  for (const std::size_t index : order) {
    const at::Tensor& tensor = tensors[index];
    const std::pair<at::ScalarType, at::Device> key{tensor.scalar_type(), tensor.device()};
    auto found = std::find_if(open.begin(), open.end(), [&](const auto& item) { return item.first == key; });
    if (found == open.end()) {
      buckets.emplace_back();
      open.emplace_back(key, buckets.size() - 1);
      found = std::prev(open.end());
    }
    Bucket& bucket = buckets[found->second];
    bucket.members.push_back(index);
    bucket.offsets.push_back(bucket.elements);
    bucket.elements += tensor.numel();
    bucket.bytes += tensor.numel() * static_cast<int64_t>(tensor.element_size());
    if (bucket.bytes >= cap) open.erase(found);  // full: the next tensor of this kind opens another
  }
  for (auto& bucket : buckets) {
    const at::Tensor& first = tensors[bucket.members.front()];
    const int64_t extra = flags ? static_cast<int64_t>(bucket.members.size()) : 0;
    bucket.flat = at::empty({bucket.elements + extra}, first.options().requires_grad(false));
  }
  return buckets;
}

/// Waits for every started collective, then rethrows the first failure as an Error.
template <class Works>
void wait_all(Works& works, std::string_view function, int rank, int size) {
  std::string failure;
  for (auto& wait : works) {
    try {
      wait();
    } catch (const std::exception& error) {
      if (failure.empty()) failure = error.what();
    }
  }
  works.clear();
  if (!failure.empty()) {
    fail("{}: a collective failed on rank {} of {} (another rank died, did not take part, or the group's timeout "
         "passed); nothing was changed: {}",
         function, rank, size, failure);
  }
}

/// Starts `tensor`'s allreduce (or, with root >= 0, broadcast from root) and returns its wait.
template <class G>
[[nodiscard]] std::function<void()> start(G& group, const at::Tensor& tensor, std::optional<c10d::ReduceOp> op,
                                          int root = -1) {
  std::vector<at::Tensor> tensors{tensor};
  if (root >= 0) {
    c10d::BroadcastOptions options;
    options.rootRank = root;
    auto work = group.broadcast(tensors, options);
    auto held = std::make_shared<decltype(work)>(std::move(work));
    return [held] { (*held)->wait(); };
  } else {
    c10d::AllreduceOptions options;
    if (op) options.reduceOp = *op;
    auto work = group.allreduce(tensors, options);
    auto held = std::make_shared<decltype(work)>(std::move(work));
    return [held] { (*held)->wait(); };
  }
}

}  // namespace detail

/// Makes every rank's model equal to rank `root`'s: broadcasts all parameters and buffers
/// (batch-norm statistics included), flattened into one buffer per dtype and device, so that
/// data-parallel training starts from the same weights everywhere. First checks that every
/// rank holds the same structure (names, kinds, dtypes and shapes, registration order); if one
/// differs, every rank throws and no tensor is changed. A collective: every rank calls it.
/// PyTorch: what `DistributedDataParallel(model)` does at construction.
///
/// @throws torchkit::Error when root is outside [0, group size), a parameter or buffer is
///         sparse, the models differ across ranks (this rank's error names the first
///         difference), or a collective fails (a rank died or the group's timeout passed).
///
///     auto group = torchkit::dist::gloo_group_from_environment();
///     torchkit::dist::broadcast_parameters(model, *group);
template <ModuleLike M, BroadcastGroup G>
void broadcast_parameters(M& model, G& group, int root = 0) {
  constexpr std::string_view function = "broadcast_parameters";
  const int rank = group.getRank();
  const int size = group.getSize();
  TORCHKIT_CHECK(root >= 0 && root < size, "{}: root {} is outside [0, {}) (the ranks of the group)", function, root,
                 size);
  const auto entries = detail::entries_of(module_of(model), /*with_buffers=*/true, /*trainable_only=*/false);
  for (const auto& entry : entries) {
    TORCHKIT_CHECK(entry.tensor.layout() == at::kStrided, "{}: {} '{}' is not dense (layout {})", function,
                   entry.buffer ? "buffer" : "parameter", entry.name, c10::str(entry.tensor.layout()));
  }
  const at::NoGradGuard no_grad;
  const at::Device device = entries.empty() ? at::Device(at::kCPU) : entries.front().tensor.device();
  const auto options = at::TensorOptions().device(device);
  std::vector<std::function<void()>> works;
  // 1. The root's structure, to every rank.
  const auto mine = detail::describe_all(entries);
  const std::string text = detail::join_lines(mine);
  at::Tensor length = at::full({1}, static_cast<int64_t>(text.size()), options.dtype(at::kLong));
  works.push_back(detail::start(group, length, std::nullopt, root));
  detail::wait_all(works, function, rank, size);
  const int64_t root_length = length.to(at::kCPU).item<int64_t>();
  at::Tensor bytes = at::empty({root_length}, options.dtype(at::kByte));
  if (rank == root) {
    bytes.copy_(at::from_blob(const_cast<char*>(text.data()), {root_length}, at::kByte));
  }
  works.push_back(detail::start(group, bytes, std::nullopt, root));
  detail::wait_all(works, function, rank, size);
  const at::Tensor root_bytes = bytes.to(at::kCPU).contiguous();
  const std::string root_text(reinterpret_cast<const char*>(root_bytes.data_ptr<uint8_t>()),
                              static_cast<std::size_t>(root_length));
  const std::string difference = detail::first_difference(mine, detail::split_lines(root_text), root);
  // 2. Every rank learns which ranks differ, so that all of them throw.
  at::Tensor differs = at::zeros({size}, options.dtype(at::kLong));
  if (!difference.empty()) differs[rank] = 1;
  works.push_back(detail::start(group, differs, c10d::ReduceOp::SUM));
  detail::wait_all(works, function, rank, size);
  const at::Tensor flags = differs.to(at::kCPU);
  std::vector<int> differing;
  for (int r = 0; r < size; ++r) {
    if (flags[r].item<int64_t>() != 0) differing.push_back(r);
  }
  if (!differing.empty()) {
    std::string ranks;
    for (const int r : differing) ranks += (ranks.empty() ? "" : ", ") + std::to_string(r);
    if (!difference.empty()) {
      detail::fail("{}: the model on rank {} differs from rank {}'s: {}; no parameter was changed on any rank",
                   function, rank, root, difference);
    }
    detail::fail("{}: the model on rank(s) {} differs from rank {}'s in the names, dtypes or shapes of its parameters "
                 "and buffers (that rank's error names the difference); no parameter was changed on any rank",
                 function, ranks, root);
  }
  if (entries.empty()) return;
  // 3. The values, one flat buffer per dtype and device (at most 25 MB each).
  std::vector<at::Tensor> tensors;
  std::vector<std::size_t> order;
  for (std::size_t k = 0; k < entries.size(); ++k) {
    tensors.push_back(entries[k].tensor);
    order.push_back(k);
  }
  auto buckets = detail::assign_buckets(tensors, order, int64_t{25} << 20, /*flags=*/false);
  for (auto& bucket : buckets) {
    if (rank == root) {
      for (std::size_t m = 0; m < bucket.members.size(); ++m) {
        const at::Tensor& tensor = tensors[bucket.members[m]];
        bucket.flat.narrow(0, bucket.offsets[m], tensor.numel()).copy_(tensor.reshape({-1}));
      }
    }
    works.push_back(detail::start(group, bucket.flat, std::nullopt, root));
  }
  detail::wait_all(works, function, rank, size);
  if (rank == root) return;
  for (const auto& bucket : buckets) {
    for (std::size_t m = 0; m < bucket.members.size(); ++m) {
      at::Tensor tensor = tensors[bucket.members[m]];
      tensor.copy_(bucket.flat.narrow(0, bucket.offsets[m], tensor.numel()).view(tensor.sizes()));
    }
  }
}

/// broadcast_parameters with the group held by pointer, as make_gloo_group returns it.
template <ModuleLike M, BroadcastGroup G>
void broadcast_parameters(M& model, const c10::intrusive_ptr<G>& group, int root = 0) {
  TORCHKIT_CHECK(group, "broadcast_parameters: the process group is null");
  broadcast_parameters(model, *group, root);
}

/// How GradientReducer buckets and averages.
struct ReducerOptions {
  /// Gradients are flattened into buffers of about this many bytes (a larger tensor gets one
  /// of its own), one all-reduce each; PyTorch's `bucket_cap_mb = 25`.
  int64_t bucket_bytes = int64_t{25} << 20;
  /// Divide the summed gradients by the number of ranks (false: keep the sum).
  bool average = true;
  /// false: a trainable parameter without a gradient on some rank is an error (on every
  /// rank). true (DDP's `find_unused_parameters=True`): it counts as a zero gradient there;
  /// a parameter without a gradient on every rank keeps none.
  bool find_unused_parameters = false;
  /// Gradient accumulation (DDP's `no_sync`): reduce() communicates on every k-th call only;
  /// the k - 1 calls before just count (the gradients keep accumulating locally).
  int64_t accumulation_steps = 1;
};

/// Averages the gradients of a model across the ranks of a group after `backward`, as
/// PyTorch's `DistributedDataParallel` does: the trainable parameters are assigned once, in
/// reverse registration order, to buckets of about `bucket_bytes` (one dtype and device each);
/// reduce() copies each bucket's gradients into one flat buffer, starts one SUM all-reduce
/// per bucket (all in flight together), waits, and writes the average back in one pass per
/// bucket. Each bucket carries one extra element per parameter saying whether this rank has
/// its gradient, so every rank sees the same unused parameters and acts the same. Gradients
/// are only written after every bucket arrived and was checked: a failure leaves them as they
/// were.
///
/// After reduce(), every gradient shares the reducer's gradient buffer (DDP's
/// `gradient_as_bucket_view`, without view tracking): zeroed in place and accumulated by the
/// next backward, it is packed with one copy per bucket. A gradient that was replaced (set to
/// none, assigned) is copied and pointed at the buffer again. The gradient tensor object is
/// thus replaced by reduce(); read `p.grad()` afresh, as optimizers do.
///
/// The constructor is a collective (it checks that every rank has the same trainable
/// parameters); so is each communicating reduce(). The group must outlive the reducer, unless
/// passed as an intrusive_ptr. After reduce() every rank holds the same gradients: clip them
/// with the one-process clip_grad_norm_(model, ...), then step.
///
/// @throws torchkit::Error when bucket_bytes <= 0 or accumulation_steps < 1, or the trainable
///         parameters differ across ranks (on every rank; run broadcast_parameters first).
///
///     torchkit::dist::broadcast_parameters(model, *group);
///     torchkit::dist::GradientReducer reducer(model, *group);
///     loss.backward();
///     reducer.reduce();
///     optimizer.step();
class GradientReducer {
 public:
  template <ModuleLike M, CollectiveGroup G>
  GradientReducer(M& model, G& group, ReducerOptions options = {})
      : GradientReducer(module_of(model), {group.getRank(), group.getSize()}, options,
                        [&group](const at::Tensor& tensor, c10d::ReduceOp op) {
                          return detail::start(group, tensor, op);
                        }) {}

  template <ModuleLike M, CollectiveGroup G>
  GradientReducer(M& model, const c10::intrusive_ptr<G>& group, ReducerOptions options = {})
      : GradientReducer(module_of(model), rank_and_size(group), options,
                        [group](const at::Tensor& tensor, c10d::ReduceOp op) {
                          return detail::start(*group, tensor, op);
                        }) {}

  /// After backward: averages (or sums) every trainable parameter's gradient across the ranks.
  /// With accumulation_steps = k, only every k-th call communicates; the others return false
  /// at once. Returns true when the gradients were reduced (step the optimizer then).
  ///
  /// @throws torchkit::Error when a gradient is sparse or its shape, dtype or device is not its
  ///         parameter's (this rank only: the others then wait until the group's timeout), when
  ///         a parameter has no gradient on some rank and find_unused_parameters is false
  ///         (every rank), or a collective fails. No gradient is changed then.
  ///
  ///     loss.backward();
  ///     if (reducer.reduce()) optimizer.step();
  bool reduce() {
    constexpr std::string_view function = "GradientReducer::reduce";
    if (++calls_ < options_.accumulation_steps) return false;
    for (std::size_t k = 0; k < params_.size(); ++k) {
      const at::Tensor& param = params_[k];
      const at::Tensor& grad = param.grad();
      if (!grad.defined()) continue;
      TORCHKIT_CHECK(grad.layout() == at::kStrided, "{}: the gradient of '{}' is sparse; only dense gradients are "
                     "reduced; no gradient was changed", function, names_[k]);
      TORCHKIT_CHECK(grad.sizes() == param.sizes() && grad.scalar_type() == param.scalar_type() &&
                         grad.device() == param.device(),
                     "{}: the gradient of '{}' is {} {} on {}, its parameter {} {} on {}; no gradient was changed",
                     function, names_[k], c10::toString(grad.scalar_type()),
                     torchkit::detail::shape_string(grad.sizes()), grad.device().str(),
                     c10::toString(param.scalar_type()), torchkit::detail::shape_string(param.sizes()),
                     param.device().str());
    }
    calls_ = 0;
    const at::NoGradGuard no_grad;
    std::vector<std::function<void()>> works;
    // backed[b][m]: the gradient already lives in bucket b's gradient buffer (after an earlier
    // reduce(), while it is zeroed and accumulated in place): no per-tensor copy needed.
    std::vector<std::vector<bool>> backed(buckets_.size());
    for (std::size_t b = 0; b < buckets_.size(); ++b) {
      auto& bucket = buckets_[b];
      const auto count = static_cast<int64_t>(bucket.members.size());
      std::vector<double> present(bucket.members.size());
      bool all_backed = true;
      for (std::size_t m = 0; m < bucket.members.size(); ++m) {
        const at::Tensor& grad = params_[bucket.members[m]].grad();
        backed[b].push_back(in_buffer(grad, bucket, m));
        all_backed = all_backed && backed[b].back();
        present[m] = grad.defined() ? 1 : 0;
      }
      if (all_backed) {
        bucket.flat.narrow(0, 0, bucket.elements).copy_(bucket.grads);  // one copy for the bucket
      } else {
        for (std::size_t m = 0; m < bucket.members.size(); ++m) {
          const at::Tensor& grad = params_[bucket.members[m]].grad();
          at::Tensor slice = bucket.flat.narrow(0, bucket.offsets[m], params_[bucket.members[m]].numel());
          if (grad.defined()) {
            slice.view(grad.sizes()).copy_(grad);
          } else {
            slice.zero_();
          }
        }
      }
      bucket.flat.narrow(0, bucket.elements, count).copy_(at::tensor(present, at::TensorOptions().dtype(at::kDouble)));
      works.push_back(launch_(bucket.flat, c10d::ReduceOp::SUM));
    }
    detail::wait_all(works, function, rank_, size_);
    // Every rank now sees the same counts: check them all before writing any gradient.
    std::vector<std::vector<int64_t>> counts;
    for (const auto& bucket : buckets_) {
      const auto count = static_cast<int64_t>(bucket.members.size());
      const at::Tensor flags = bucket.flat.narrow(0, bucket.elements, count).to(at::kCPU, at::kDouble).contiguous();
      const double* values = flags.data_ptr<double>();
      counts.emplace_back();
      for (int64_t m = 0; m < count; ++m) counts.back().push_back(std::llround(values[m]));
    }
    if (!options_.find_unused_parameters) {
      for (std::size_t b = 0; b < buckets_.size(); ++b) {
        for (std::size_t m = 0; m < buckets_[b].members.size(); ++m) {
          const int64_t with = counts[b][m];
          if (with == size_) continue;
          const std::size_t k = buckets_[b].members[m];
          detail::fail("{}: parameter '{}' has no gradient on {} of {} ranks (this rank, {}: {}); it took no part in "
                       "the loss there. Freeze it, or pass find_unused_parameters = true to count it as zero (as "
                       "DDP does); no gradient was changed on any rank",
                       function, names_[k], size_ - with, size_, rank_,
                       params_[k].grad().defined() ? "has one" : "has none");
        }
      }
    }
    // The result into each bucket's gradient buffer in one pass; gradients not yet living there
    // are pointed at it (parameters no rank has a gradient for keep none).
    const at::Tensor divisor = at::scalar_tensor(static_cast<double>(size_), at::kDouble);
    for (std::size_t b = 0; b < buckets_.size(); ++b) {
      auto& bucket = buckets_[b];
      const at::Tensor summed = bucket.flat.narrow(0, 0, bucket.elements);
      if (options_.average) {
        at::div_out(bucket.grads, summed, divisor);
      } else {
        bucket.grads.copy_(summed);
      }
      for (std::size_t m = 0; m < bucket.members.size(); ++m) {
        if (counts[b][m] == 0 || backed[b][m]) continue;
        at::Tensor param = params_[bucket.members[m]];
        const at::Tensor place = bucket.grads.narrow(0, bucket.offsets[m], param.numel()).view(param.sizes());
        at::Tensor grad = at::empty({0}, place.options());
        grad.set_(place.storage(), place.storage_offset(), place.sizes(), place.strides());
        param.mutable_grad() = grad;
      }
    }
    return true;
  }

  /// How many buckets (all-reduce calls per reduce()).
  [[nodiscard]] int64_t buckets() const noexcept { return static_cast<int64_t>(buckets_.size()); }
  /// The parameter names of each bucket, in the order they are reduced.
  [[nodiscard]] std::vector<std::vector<std::string>> bucket_names() const {
    std::vector<std::vector<std::string>> names;
    for (const auto& bucket : buckets_) {
      names.emplace_back();
      for (const std::size_t k : bucket.members) names.back().push_back(names_[k]);
    }
    return names;
  }
  /// reduce() calls since the last communicating one (0 .. accumulation_steps - 1).
  [[nodiscard]] int64_t pending() const noexcept { return calls_; }
  [[nodiscard]] const ReducerOptions& options() const noexcept { return options_; }

 private:
  using Launch = std::function<std::function<void()>(const at::Tensor&, c10d::ReduceOp)>;

  template <class G>
  static std::pair<int, int> rank_and_size(const c10::intrusive_ptr<G>& group) {
    TORCHKIT_CHECK(group, "GradientReducer: the process group is null");
    return {group->getRank(), group->getSize()};
  }

  GradientReducer(torch::nn::Module& module, std::pair<int, int> rank_and_size, ReducerOptions options, Launch launch)
      : options_(options), rank_(rank_and_size.first), size_(rank_and_size.second), launch_(std::move(launch)) {
    constexpr std::string_view function = "GradientReducer";
    TORCHKIT_CHECK(options.bucket_bytes > 0, "{}: bucket_bytes must be > 0, got {}", function, options.bucket_bytes);
    TORCHKIT_CHECK(options.accumulation_steps >= 1, "{}: accumulation_steps must be >= 1, got {}", function,
                   options.accumulation_steps);
    const auto entries = detail::entries_of(module, /*with_buffers=*/false, /*trainable_only=*/true);
    for (const auto& entry : entries) {
      params_.push_back(entry.tensor);
      names_.push_back(entry.name);
    }
    // The same trainable parameters everywhere: max and min of a fingerprint and the count.
    const int64_t print = detail::fingerprint(detail::join_lines(detail::describe_all(entries)));
    const auto count = static_cast<int64_t>(entries.size());
    const at::Device device = params_.empty() ? at::Device(at::kCPU) : params_.front().device();
    at::Tensor check = at::tensor(std::vector<int64_t>{print, -print, count, -count}, at::kLong).to(device);
    std::vector<std::function<void()>> works;
    works.push_back(launch_(check, c10d::ReduceOp::MAX));
    detail::wait_all(works, function, rank_, size_);
    const at::Tensor seen = check.to(at::kCPU);
    const int64_t* values = seen.data_ptr<int64_t>();
    TORCHKIT_CHECK(values[0] == -values[1] && values[2] == -values[3],
                   "{}: the trainable parameters differ across the ranks (names, dtypes or shapes; this rank has {}, "
                   "the ranks have between {} and {}); make the models equal and call broadcast_parameters, which "
                   "names the difference",
                   function, count, -values[3], values[2]);
    std::vector<std::size_t> order(params_.size());
    std::iota(order.rbegin(), order.rend(), std::size_t{0});  // reverse registration order
    buckets_ = detail::assign_buckets(params_, order, options.bucket_bytes, /*flags=*/true);
    for (auto& bucket : buckets_) bucket.grads = at::zeros({bucket.elements}, bucket.flat.options());
  }

  /// Whether `grad` is member m's place in the bucket's gradient buffer (set by an earlier reduce).
  [[nodiscard]] bool in_buffer(const at::Tensor& grad, const detail::Bucket& bucket, std::size_t m) const {
    if (!grad.defined() || !grad.has_storage() || !grad.storage().is_alias_of(bucket.grads.storage())) return false;
    const at::Tensor& param = params_[bucket.members[m]];
    return grad.storage_offset() == bucket.grads.storage_offset() + bucket.offsets[m] &&
           grad.sizes() == param.sizes() && grad.is_contiguous();
  }

  ReducerOptions options_;
  int rank_;
  int size_;
  Launch launch_;
  std::vector<at::Tensor> params_;
  std::vector<std::string> names_;
  std::vector<detail::Bucket> buckets_;
  int64_t calls_ = 0;
};

/// One-shot form of GradientReducer: buckets and averages `model`'s gradients across `group`
/// (a collective). Building the buckets each call costs a little; keep a GradientReducer in a
/// training loop.
///
/// @throws torchkit::Error as GradientReducer and GradientReducer::reduce.
///
///     loss.backward();
///     torchkit::dist::allreduce_gradients(model, *group);
template <ModuleLike M, CollectiveGroup G>
void allreduce_gradients(M& model, G& group, ReducerOptions options = {}) {
  TORCHKIT_CHECK(options.accumulation_steps == 1,
                 "allreduce_gradients: accumulation_steps must be 1 in the one-shot form, got {}; keep a "
                 "GradientReducer for accumulation",
                 options.accumulation_steps);
  GradientReducer reducer(model, group, options);
  (void)reducer.reduce();
}

#endif  // TORCHKIT_HAS_C10D

}  // namespace dist

}  // namespace torchkit
