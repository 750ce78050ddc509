#pragma once
/// @file distributed.hpp
/// c10d helpers: the torchrun environment, a TCP store and a Gloo process group made from it,
/// and global-norm gradient clipping over gradients sharded across ranks (FSDP / ZeRO style:
/// each rank holds some of the gradients; the norm is that of all of them together).
///
///     auto group = torchkit::gloo_group_from_environment();   // under torchrun
///     loss.backward();
///     torchkit::clip_grad_norm_(my_shard_of_parameters, 1.0, 2.0, *group);
///
/// The c10d headers ship with LibTorch. Gloo's own headers do not always: the Gloo helpers
/// exist where `<gloo/algorithm.h>` is found (Debian: libgloo-dev) or TORCHKIT_WITH_GLOO is
/// defined to 1; clipping works with any group that has `allreduce` (Gloo, NCCL, MPI, yours).

#include <torchkit/clip.hpp>
#include <torchkit/concepts.hpp>
#include <torchkit/detail/config.hpp>
#include <torchkit/error.hpp>

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <limits>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#if __has_include(<torch/csrc/distributed/c10d/ProcessGroup.hpp>) && __has_include(<torch/csrc/distributed/c10d/TCPStore.hpp>)
#define TORCHKIT_HAS_C10D 1
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/Types.hpp>
#include <torchkit/detail/tcp_store.hpp>
#else
#define TORCHKIT_HAS_C10D 0
#endif

#ifndef TORCHKIT_WITH_GLOO
#if TORCHKIT_HAS_C10D && __has_include(<gloo/algorithm.h>) && \
    __has_include(<torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>)
#define TORCHKIT_WITH_GLOO 1
#else
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
///     auto store = torchkit::store_from_environment(torchkit::torchrun_environment());
[[nodiscard]] inline c10::intrusive_ptr<c10d::Store> store_from_environment(
    const TorchrunEnvironment& environment, std::chrono::milliseconds timeout = std::chrono::minutes(30)) {
  c10d::TCPStoreOptions options;
  options.port = static_cast<std::uint16_t>(environment.master_port);
  options.isServer = environment.rank == 0;
  options.numWorkers = static_cast<std::size_t>(environment.world_size);
  options.waitWorkers = true;
  options.timeout = timeout;
  return detail::make_tcp_store(environment.master_addr, options);
}

#if TORCHKIT_WITH_GLOO
/// A Gloo process group (CPU tensors) of `world_size` ranks meeting through `store`; this
/// process is `rank`. A c10d::ProcessGroup in LibTorch 1.13, a c10d::Backend in 2.x; both work
/// with clip_grad_norm_. PyTorch: `dist.new_group(backend="gloo")`.
///
/// @throws torchkit::Error for a null store, world_size < 1, rank outside [0, world_size).
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
  options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
  return c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world_size, options);
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

}  // namespace torchkit
