// Tests for distributed.hpp: the torchrun environment, Gloo groups (threads of this process
// meeting through a HashStore, a one-rank world through the TCP store of a torchrun-like
// environment), and global-norm clipping of gradients sharded across ranks, checked against
// single-process clipping of all the gradients together.
#include <torchkit/distributed.hpp>

#include "test_support.hpp"

#if TORCHKIT_WITH_GLOO
#include <torch/csrc/distributed/c10d/HashStore.hpp>
#endif

#include <algorithm>
#include <barrier>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>
#include <unistd.h>

namespace {

using torchkit::test::message_of;
constexpr double infinity = std::numeric_limits<double>::infinity();

bool close(double actual, double expected, double tolerance) {
  if (std::isnan(expected)) return std::isnan(actual);
  if (std::isinf(expected)) return actual == expected;
  return std::abs(actual - expected) <= tolerance * std::max(std::abs(expected), 1e-30);
}

std::optional<std::string> get_variable(const char* name) {
  const char* value = std::getenv(name);
  return value == nullptr ? std::nullopt : std::optional<std::string>(value);
}

void set_variable(const char* name, const std::optional<std::string>& value) {
  if (value) {
    ::setenv(name, value->c_str(), 1);
  } else {
    ::unsetenv(name);
  }
}

torchkit::TorchrunEnvironment environment_from(const std::map<std::string, std::string>& variables) {
  return torchkit::torchrun_environment([&](std::string_view name) -> std::optional<std::string> {
    const auto found = variables.find(std::string(name));
    if (found == variables.end()) return std::nullopt;
    return found->second;
  });
}

#if TORCHKIT_HAS_C10D

/// An in-process group of `size` threads with c10d's allreduce interface: what every
/// CollectiveGroup must offer, without any transport. Each rank is one ThreadGroup object.
class ThreadGroup {
 public:
  struct Shared {
    explicit Shared(int size) : size(size), barrier(size) {}
    int size;
    std::barrier<> barrier;
    std::mutex mutex;
    std::vector<at::Tensor> contributions;
    int calls = 0;
  };
  struct Done {
    bool wait() { return true; }
  };

  ThreadGroup(std::shared_ptr<Shared> shared, int rank) : shared_(std::move(shared)), rank_(rank) {}
  int getRank() const { return rank_; }
  int getSize() const { return shared_->size; }

  std::unique_ptr<Done> allreduce(std::vector<at::Tensor>& tensors, const c10d::AllreduceOptions& options) {
    REQUIRE(tensors.size() == 1);
    {
      const std::lock_guard<std::mutex> lock(shared_->mutex);
      if (shared_->contributions.empty()) shared_->contributions.resize(static_cast<std::size_t>(shared_->size));
      shared_->contributions[static_cast<std::size_t>(rank_)] = tensors[0].clone();
      ++shared_->calls;
    }
    shared_->barrier.arrive_and_wait();
    at::Tensor result = shared_->contributions[0].clone();
    for (int r = 1; r < shared_->size; ++r) {
      const auto& other = shared_->contributions[static_cast<std::size_t>(r)];
      result = options.reduceOp == c10d::ReduceOp::MAX ? at::maximum(result, other) : result + other;
    }
    tensors[0].copy_(result);
    shared_->barrier.arrive_and_wait();
    if (rank_ == 0) shared_->contributions.clear();
    shared_->barrier.arrive_and_wait();
    return std::make_unique<Done>();
  }

 private:
  std::shared_ptr<Shared> shared_;
  int rank_;
};
static_assert(torchkit::CollectiveGroup<ThreadGroup>);
static_assert(torchkit::CollectiveGroup<c10d::ProcessGroup>);
#if TORCHKIT_WITH_GLOO
static_assert(torchkit::CollectiveGroup<c10d::ProcessGroupGloo>);
#endif

/// Parameters with gradients of mixed shapes and dtypes; `shard(r, n)` picks rank r's.
struct Model {
  std::vector<at::Tensor> params;

  explicit Model(int64_t seed) {
    torch::manual_seed(seed);
    const std::vector<std::pair<std::vector<int64_t>, at::ScalarType>> specs = {
        {{40, 3}, at::kFloat}, {{17}, at::kDouble}, {{9, 9}, at::kFloat}, {{70001}, at::kFloat},
        {{5}, at::kFloat},     {{33, 2}, at::kHalf}, {{128}, at::kFloat}};
    for (const auto& [shape, dtype] : specs) {
      auto p = torch::zeros(shape, torch::TensorOptions().dtype(dtype).requires_grad(true));
      p.mutable_grad() = (torch::randn(shape) * 0.5).to(dtype);
      params.push_back(p);
    }
  }
  std::vector<at::Tensor> shard(int rank, int size) const {
    std::vector<at::Tensor> mine;
    for (std::size_t i = 0; i < params.size(); ++i) {
      if (static_cast<int>(i % static_cast<std::size_t>(size)) == rank) mine.push_back(params[i]);
    }
    return mine;
  }
};

/// Runs `body(rank)` on `size` threads and rethrows the first failure.
template <class Body>
void on_ranks(int size, Body body) {
  std::vector<std::thread> threads;
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(size));
  for (int rank = 0; rank < size; ++rank) {
    threads.emplace_back([&, rank] {
      try {
        body(rank);
      } catch (...) {
        errors[static_cast<std::size_t>(rank)] = std::current_exception();
      }
    });
  }
  for (auto& thread : threads) thread.join();
  for (auto& error : errors) {
    if (error) std::rethrow_exception(error);
  }
}

#endif  // TORCHKIT_HAS_C10D

}  // namespace

TEST_CASE("torchrun_environment reads torchrun's variables") {
  const auto environment = environment_from({{"RANK", "3"},
                                             {"WORLD_SIZE", "8"},
                                             {"LOCAL_RANK", "1"},
                                             {"LOCAL_WORLD_SIZE", "2"},
                                             {"MASTER_ADDR", "10.0.0.1"},
                                             {"MASTER_PORT", "29500"}});
  CHECK(environment.rank == 3);
  CHECK(environment.world_size == 8);
  CHECK(environment.local_rank == 1);
  CHECK(environment.local_world_size == 2);
  CHECK(environment.master_addr == "10.0.0.1");
  CHECK(environment.master_port == 29500);
  CHECK(environment.to_string() == "rank 3 of 8 (local 1 of 2), master 10.0.0.1:29500");
  std::ostringstream out;
  out << environment;
  CHECK(out.str() == environment.to_string());

  // LOCAL_* default to the global values (one node).
  const auto single = environment_from({{"RANK", "0"}, {"WORLD_SIZE", "1"}, {"MASTER_ADDR", "localhost"}, {"MASTER_PORT", "1234"}});
  CHECK(single.local_rank == 0);
  CHECK(single.local_world_size == 1);

  // The process environment by default.
  setenv("RANK", "1", 1);
  setenv("WORLD_SIZE", "2", 1);
  setenv("MASTER_ADDR", "127.0.0.1", 1);
  setenv("MASTER_PORT", "29400", 1);
  unsetenv("LOCAL_RANK");
  unsetenv("LOCAL_WORLD_SIZE");
  CHECK(torchkit::torchrun_environment().to_string() == "rank 1 of 2 (local 1 of 2), master 127.0.0.1:29400");
  for (const char* name : {"RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}) unsetenv(name);
}

TEST_CASE("torchrun_environment names a missing or malformed variable") {
  const std::map<std::string, std::string> good = {
      {"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "host"}, {"MASTER_PORT", "29500"}};
  auto without = [&](const std::string& name) {
    auto copy = good;
    copy.erase(name);
    return copy;
  };
  auto with = [&](const std::string& name, const std::string& value) {
    auto copy = good;
    copy[name] = value;
    return copy;
  };
  auto error_for = [](const std::map<std::string, std::string>& variables) {
    return message_of<torchkit::Error>([&] { (void)environment_from(variables); });
  };
  CHECK(error_for(without("RANK")).find("RANK is not set") != std::string::npos);
  CHECK(error_for(without("WORLD_SIZE")).find("WORLD_SIZE is not set") != std::string::npos);
  CHECK(error_for(without("MASTER_PORT")).find("MASTER_PORT is not set") != std::string::npos);
  CHECK(error_for(without("MASTER_ADDR")).find("MASTER_ADDR is not set") != std::string::npos);
  CHECK(error_for(with("MASTER_ADDR", "")).find("MASTER_ADDR is empty") != std::string::npos);
  CHECK(error_for(with("RANK", "abc")).find("RANK='abc' is not an integer in [0, ") != std::string::npos);
  CHECK(error_for(with("RANK", "-1")).find("RANK='-1'") != std::string::npos);
  CHECK(error_for(with("RANK", "1x")).find("RANK='1x'") != std::string::npos);
  CHECK(error_for(with("RANK", "2")).find("RANK=2 is not below WORLD_SIZE=2") != std::string::npos);
  CHECK(error_for(with("WORLD_SIZE", "0")).find("WORLD_SIZE='0' is not an integer in [1, ") != std::string::npos);
  CHECK(error_for(with("MASTER_PORT", "70000")).find("MASTER_PORT='70000' is not an integer in [1, 65535]") !=
        std::string::npos);
  CHECK(error_for(with("LOCAL_RANK", "5")).find("LOCAL_RANK=5 is not below LOCAL_WORLD_SIZE=2") != std::string::npos);
}

#if TORCHKIT_HAS_C10D

TEST_CASE("sharded global-norm clipping equals clipping every gradient in one process") {
  for (const int size : {1, 2, 3}) {
    for (const double p : {2.0, 1.0, 3.5, infinity, 0.0}) {
      for (const bool foreach : {true, false}) {
        CAPTURE(size);
        CAPTURE(p);
        CAPTURE(foreach);
        Model whole(5), sharded(5);
        const double expected_total = torchkit::grad_norm(whole.params, p).item<double>();
        const double max_norm = p == 0.0 ? 2.0 : expected_total / 3;
        torchkit::clip_grad_norm_(whole.params, max_norm, p, {.foreach = foreach});
        auto shared = std::make_shared<ThreadGroup::Shared>(size);
        std::vector<double> totals(static_cast<std::size_t>(size));
        on_ranks(size, [&](int rank) {
          ThreadGroup group(shared, rank);
          const auto total = torchkit::clip_grad_norm_(sharded.shard(rank, size), max_norm, p, group,
                                                       {.foreach = foreach});
          totals[static_cast<std::size_t>(rank)] = total.item<double>();
        });
        for (const double total : totals) {
          // The single-process total of a float16-containing set rounds per-tensor norms the
          // same way; the cross-rank sum adds one rounding of the local totals.
          CHECK(close(total, expected_total, 1e-5));
        }
        for (std::size_t i = 0; i < whole.params.size(); ++i) {
          const auto dtype = whole.params[i].grad().scalar_type();
          CHECK(at::allclose(sharded.params[i].grad().to(at::kDouble), whole.params[i].grad().to(at::kDouble),
                             dtype == at::kHalf ? 2e-3 : 1e-5, 1e-12));
        }
      }
    }
  }
}

TEST_CASE("a rank without gradients takes part; grad_norm does not clip") {
  Model whole(6), sharded(6);
  const double expected = torchkit::grad_norm(whole.params).item<double>();
  auto shared = std::make_shared<ThreadGroup::Shared>(3);
  on_ranks(3, [&](int rank) {
    ThreadGroup group(shared, rank);
    // Rank 2 holds nothing.
    const auto mine = rank == 2 ? std::vector<at::Tensor>{} : sharded.shard(rank, 2);
    const auto total = torchkit::grad_norm(mine, 2.0, group);
    CHECK(close(total.item<double>(), expected, 1e-5));
    if (rank == 2) CHECK((total.scalar_type() == at::kFloat));
  });
  for (std::size_t i = 0; i < whole.params.size(); ++i) {
    CHECK(sharded.params[i].grad().equal(whole.params[i].grad()));
  }
}

TEST_CASE("a NaN on one rank reaches every rank, also for the inf-norm") {
  for (const double p : {infinity, 2.0}) {
    Model sharded(7);
    sharded.params[1].mutable_grad()[3] = std::numeric_limits<double>::quiet_NaN();  // rank 1's
    auto shared = std::make_shared<ThreadGroup::Shared>(2);
    std::vector<std::string> messages(2);
    const auto before = sharded.params[0].grad().clone();
    on_ranks(2, [&](int rank) {
      ThreadGroup group(shared, rank);
      messages[static_cast<std::size_t>(rank)] = message_of<torchkit::Error>([&] {
        (void)torchkit::clip_grad_norm_(sharded.shard(rank, 2), 1.0, p, group, {.error_if_nonfinite = true});
      });
    });
    CAPTURE(messages[0]);
    CAPTURE(messages[1]);
    CHECK(messages[0].find("is nan") != std::string::npos);
    CHECK(messages[0].find("no gradient on this rank (0 of 2) is non-finite, another rank's is") != std::string::npos);
    CHECK(messages[1].find("rank 1 of 2") != std::string::npos);
    CHECK(messages[1].find("parameter 0") != std::string::npos);  // its first (global parameter 1)
    CHECK(sharded.params[0].grad().equal(before));
    // Without the flag every rank gets nan, as PyTorch would.
    on_ranks(2, [&](int rank) {
      ThreadGroup group(shared, rank);
      CHECK(std::isnan(torchkit::clip_grad_norm_(sharded.shard(rank, 2), 1.0, p, group).item<double>()));
    });
  }
}

TEST_CASE("distributed clipping rejects bad input before the allreduce") {
  Model model(8);
  auto shared = std::make_shared<ThreadGroup::Shared>(1);
  ThreadGroup group(shared, 0);
  const auto before = model.params[0].grad().clone();
  CHECK(message_of<torchkit::Error>([&] { (void)torchkit::clip_grad_norm_(model.params, 0.0, 2.0, group); })
            .find("max_norm must be a positive number, got 0") != std::string::npos);
  CHECK(message_of<torchkit::Error>([&] { (void)torchkit::clip_grad_norm_(model.params, 1.0, -2.0, group); })
            .find("norm_type must be 0, a positive number or inf, got -2") != std::string::npos);
  CHECK(message_of<torchkit::Error>([&] { (void)torchkit::grad_norm(model.params, std::nan(""), group); })
            .find("grad_norm: norm_type must be 0, a positive number or inf, got nan") != std::string::npos);
  auto misshapen = torch::zeros({2}, torch::requires_grad());
  misshapen.mutable_grad() = torch::ones({3});
  auto with_misshapen = model.params;
  with_misshapen.push_back(misshapen);
  CHECK(message_of<torchkit::Error>([&] { (void)torchkit::clip_grad_norm_(with_misshapen, 1e-3, 2.0, group); })
            .find("has shape [3] but the parameter has shape [2]") != std::string::npos);
  CHECK(shared->calls == 0);
  CHECK(model.params[0].grad().equal(before));
  c10::intrusive_ptr<c10d::ProcessGroup> null_group;
  CHECK(message_of<torchkit::Error>([&] { (void)torchkit::clip_grad_norm_(model.params, 1.0, 2.0, null_group); })
            .find("the process group is null") != std::string::npos);
}

TEST_CASE("store_from_environment: two ranks meet through the TCP store, with and without libuv") {
  // LibTorch 2.x asks for the libuv server by default; Debian's 2.6 and 2.14 are built without
  // libuv and must fall back to the classic server. USE_LIBUV=0 asks for the classic one.
  const std::optional<std::string> saved = get_variable("USE_LIBUV");
  int offset = 0;
  for (const char* use_libuv : {static_cast<const char*>(nullptr), "0", "1"}) {
    CAPTURE(std::string(use_libuv ? use_libuv : "unset"));
    set_variable("USE_LIBUV", use_libuv ? std::optional<std::string>(use_libuv) : std::nullopt);
    const std::string port = std::to_string(20000 + static_cast<int>((getpid() + 7919 + 101 * offset++) % 20000));
    std::vector<c10::intrusive_ptr<c10d::Store>> stores(2);
    std::vector<std::exception_ptr> errors(2);
    std::vector<std::thread> ranks;
    for (int rank = 0; rank < 2; ++rank) {
      ranks.emplace_back([&, rank] {
        try {
          const auto where = environment_from({{"RANK", std::to_string(rank)}, {"WORLD_SIZE", "2"},
                                               {"MASTER_ADDR", "127.0.0.1"}, {"MASTER_PORT", port}});
          stores[static_cast<std::size_t>(rank)] = torchkit::store_from_environment(where, std::chrono::seconds(60));
        } catch (...) {
          errors[static_cast<std::size_t>(rank)] = std::current_exception();
        }
      });
    }
    for (auto& thread : ranks) thread.join();
    for (auto& error : errors) {
      if (error) std::rethrow_exception(error);
    }
    stores[0]->set("greeting", std::vector<std::uint8_t>{'h', 'i'});
    CHECK(stores[1]->get("greeting") == std::vector<std::uint8_t>{'h', 'i'});
    stores[1]->set("reply", std::vector<std::uint8_t>{'o', 'k'});
    CHECK(stores[0]->get("reply") == std::vector<std::uint8_t>{'o', 'k'});
  }
  set_variable("USE_LIBUV", saved);
}

#if TORCHKIT_WITH_GLOO

TEST_CASE("Gloo: ranks on threads of this process clip a sharded set like one process") {
  Model whole(9), sharded(9);
  const double expected = torchkit::grad_norm(whole.params).item<double>();
  torchkit::clip_grad_norm_(whole.params, expected / 2);
  auto store = c10::make_intrusive<c10d::HashStore>();
  std::vector<double> totals(2);
  on_ranks(2, [&](int rank) {
    auto group = torchkit::make_gloo_group(store, rank, 2, std::chrono::seconds(60));
    CHECK(group->getSize() == 2);
    totals[static_cast<std::size_t>(rank)] =
        torchkit::clip_grad_norm_(sharded.shard(rank, 2), expected / 2, 2.0, group).item<double>();
  });
  CHECK(close(totals[0], expected, 1e-5));
  CHECK(close(totals[1], expected, 1e-5));
  for (std::size_t i = 0; i < whole.params.size(); ++i) {
    const auto dtype = whole.params[i].grad().scalar_type();
    CHECK(at::allclose(sharded.params[i].grad().to(at::kDouble), whole.params[i].grad().to(at::kDouble),
                       dtype == at::kHalf ? 2e-3 : 1e-5, 1e-12));
  }
}

TEST_CASE("Gloo: make_gloo_group rejects bad arguments") {
  auto store = c10::make_intrusive<c10d::HashStore>();
  CHECK(message_of<torchkit::Error>([&] { (void)torchkit::make_gloo_group(store, 2, 2); })
            .find("rank 2 is outside [0, 2)") != std::string::npos);
  CHECK(message_of<torchkit::Error>([&] { (void)torchkit::make_gloo_group(store, 0, 0); })
            .find("world_size must be >= 1, got 0") != std::string::npos);
  CHECK(message_of<torchkit::Error>([&] { (void)torchkit::make_gloo_group({}, 0, 1); })
            .find("the store is null") != std::string::npos);
}

TEST_CASE("Gloo: a one-rank world from a torchrun-like environment (TCP store on localhost)") {
  const int port = 20000 + static_cast<int>(getpid() % 20000);
  setenv("RANK", "0", 1);
  setenv("WORLD_SIZE", "1", 1);
  setenv("MASTER_ADDR", "127.0.0.1", 1);
  setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
  auto group = torchkit::gloo_group_from_environment(std::chrono::seconds(60));
  for (const char* name : {"RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}) unsetenv(name);
  Model whole(10), alone(10);
  const double expected = torchkit::clip_grad_norm_(whole.params, 0.5).item<double>();
  CHECK(close(torchkit::clip_grad_norm_(alone.params, 0.5, 2.0, *group).item<double>(), expected, 1e-6));
  for (std::size_t i = 0; i < whole.params.size(); ++i) {
    CHECK(at::allclose(alone.params[i].grad().to(at::kDouble), whole.params[i].grad().to(at::kDouble), 1e-5, 1e-12));
  }
}

#endif  // TORCHKIT_WITH_GLOO
#endif  // TORCHKIT_HAS_C10D

// ---------------------------------------------------------------------------------------------
// torchkit::dist: data-parallel training.
// ---------------------------------------------------------------------------------------------

TEST_CASE("dist::DistributedSampler yields Python 1.13's DistributedSampler indices") {
  const auto golden = torchkit::test::load_golden("distributed.json");
  const auto& cases = golden.at("sampler");
  REQUIRE(cases.size() > 1000);
  std::size_t checked = 0;
  for (const auto& item : cases) {
    torchkit::dist::DistributedSampler sampler(
        item.at("size").get<int64_t>(), item.at("num_replicas").get<int64_t>(), item.at("rank").get<int64_t>(),
        {.shuffle = item.at("shuffle").get<bool>(), .seed = item.at("seed").get<int64_t>(),
         .drop_last = item.at("drop_last").get<bool>()});
    sampler.set_epoch(item.at("epoch").get<int64_t>());
    const auto expected = item.at("indices").get<std::vector<int64_t>>();
    CAPTURE(item.dump().substr(0, 160));
    CHECK(sampler.indices() == expected);
    CHECK(sampler.size() == static_cast<int64_t>(expected.size()));
    ++checked;
  }
  MESSAGE("sampler cases: ", checked);
}

TEST_CASE("dist::DistributedSampler: the ranks together cover the data set; epochs reshuffle") {
  for (const int64_t size : {0, 5, 17, 64}) {
    for (const int64_t replicas : {1, 3, 4}) {
      for (const bool drop_last : {false, true}) {
        std::vector<int64_t> all;
        for (int64_t rank = 0; rank < replicas; ++rank) {
          torchkit::dist::DistributedSampler sampler(size, replicas, rank, {.seed = 3, .drop_last = drop_last});
          sampler.set_epoch(2);
          const auto mine = sampler.indices();
          CHECK(static_cast<int64_t>(mine.size()) == sampler.size());
          all.insert(all.end(), mine.begin(), mine.end());
        }
        std::sort(all.begin(), all.end());
        const int64_t distinct = std::unique(all.begin(), all.end()) - all.begin();
        // Padding repeats indices, dropping leaves fewer than size % replicas out.
        CHECK(distinct == (drop_last ? size - size % replicas : size));
      }
    }
  }
  torchkit::dist::DistributedSampler sampler(50, 2, 1);
  const auto first = sampler.indices();
  CHECK(sampler.indices() == first);  // the same epoch, the same order
  sampler.set_epoch(1);
  CHECK(sampler.epoch() == 1);
  CHECK(sampler.indices() != first);
  torchkit::dist::DistributedSampler ordered(7, 3, 2, {.shuffle = false});
  CHECK(ordered.indices() == std::vector<int64_t>{2, 5, 1});  // padded with index 0, 1 from the start
  CHECK(ordered.total_size() == 9);
}

TEST_CASE("dist::DistributedSampler rejects bad arguments") {
  using torchkit::dist::DistributedSampler;
  CHECK(message_of<torchkit::Error>([] { (void)DistributedSampler(10, 2, 2); })
            .find("DistributedSampler: rank 2 is outside [0, 2)") != std::string::npos);
  CHECK(message_of<torchkit::Error>([] { (void)DistributedSampler(10, 2, -1); })
            .find("rank -1 is outside [0, 2)") != std::string::npos);
  CHECK(message_of<torchkit::Error>([] { (void)DistributedSampler(10, 0, 0); })
            .find("num_replicas must be >= 1, got 0") != std::string::npos);
  CHECK(message_of<torchkit::Error>([] { (void)DistributedSampler(-1, 2, 0); })
            .find("the data set size must be >= 0, got -1") != std::string::npos);
}

TEST_CASE("dist::is_rank_zero and rank_zero_out follow RANK") {
  const auto saved = get_variable("RANK");
  set_variable("RANK", std::nullopt);
  CHECK(torchkit::dist::is_rank_zero());
  CHECK(&torchkit::dist::rank_zero_out() == &std::cout);
  set_variable("RANK", "0");
  CHECK(torchkit::dist::is_rank_zero());
  set_variable("RANK", "1");
  CHECK_FALSE(torchkit::dist::is_rank_zero());
  std::ostream& out = torchkit::dist::rank_zero_out();
  CHECK(&out != &std::cout);
  out << "dropped " << 42 << "\n";
  CHECK(out.good());
  torchkit::dist::print("dropped too {}\n", 1);
  set_variable("RANK", "x");
  CHECK_FALSE(torchkit::dist::is_rank_zero());
  set_variable("RANK", saved);
}

#if TORCHKIT_WITH_GLOO

namespace {

/// A small classifier: 6 -> 16 -> tanh -> 3 (and, when `extra`, a head used only on request).
struct NetImpl : torch::nn::Module {
  explicit NetImpl(bool extra = false) {
    first = register_module("first", torch::nn::Linear(6, 16));
    second = register_module("second", torch::nn::Linear(16, 3));
    if (extra) side = register_module("side", torch::nn::Linear(6, 3));
    never = register_module("never", torch::nn::Linear(2, 2));  // takes part in no loss
    never->weight.requires_grad_(false);
    never->bias.requires_grad_(false);
  }
  at::Tensor forward(const at::Tensor& x, bool use_side = false) {
    at::Tensor y = second(torch::tanh(first(x)));
    if (use_side) y = y + side(x);
    return y;
  }
  torch::nn::Linear first{nullptr}, second{nullptr}, side{nullptr}, never{nullptr};
};
TORCH_MODULE(Net);

/// Runs body(rank, group) on `size` threads, each with a Gloo group over one HashStore.
template <class Body>
void on_gloo_ranks(int size, Body body, std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
  auto store = c10::make_intrusive<c10d::HashStore>();
  on_ranks(size, [&](int rank) {
    auto group = torchkit::make_gloo_group(store, rank, size, timeout);
    body(rank, group);
  });
}

bool same_parameters(torch::nn::Module& a, torch::nn::Module& b, double tolerance) {
  const auto left = a.named_parameters();
  const auto right = b.named_parameters();
  for (const auto& item : left) {
    const at::Tensor& other = right[item.key()];
    if (!at::allclose(item.value(), other, tolerance, tolerance)) return false;
  }
  return true;
}

}  // namespace

TEST_CASE("dist: k SGD steps on two half-batches equal one process on the whole batch") {
  torch::manual_seed(11);
  const at::Tensor inputs = torch::randn({3, 8, 6});  // 3 steps of a global batch of 8
  const at::Tensor labels = torch::randint(0, 3, {3, 8}, torch::kLong);
  for (const int64_t accumulation : {int64_t{1}, int64_t{2}}) {
    for (const bool clip : {false, true}) {
     for (const bool set_to_none : {false, true}) {
      CAPTURE(accumulation);
      CAPTURE(clip);
      CAPTURE(set_to_none);
      torch::manual_seed(100);
      Net reference;  // rank 0's initial weights
      std::vector<Net> models;
      for (int rank = 0; rank < 2; ++rank) {
        torch::manual_seed(100 + rank);  // rank 1 starts elsewhere: broadcast must fix it
        models.emplace_back();
      }
      torch::optim::SGD reference_optimizer(reference->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
      for (int64_t step = 0; step < 3; ++step) {
        reference_optimizer.zero_grad();
        torch::nn::functional::cross_entropy(reference->forward(inputs[step]), labels[step]).backward();
        if (clip) torchkit::clip_grad_norm_(*reference, 0.05);
        reference_optimizer.step();
      }
      std::vector<int64_t> bucket_counts(2);
      on_gloo_ranks(2, [&](int rank, const auto& group) {
        Net& model = models[static_cast<std::size_t>(rank)];
        torchkit::dist::broadcast_parameters(model, group);
        // A small bucket size: several buckets, one tensor larger than a bucket.
        torchkit::dist::GradientReducer reducer(model, group, {.bucket_bytes = 200, .accumulation_steps = accumulation});
        bucket_counts[static_cast<std::size_t>(rank)] = reducer.buckets();
        torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
        std::vector<void*> places;
        for (int64_t step = 0; step < 3; ++step) {
          for (auto& p : model->parameters()) {
            if (!p.grad().defined()) continue;
            if (set_to_none) {
              p.mutable_grad() = at::Tensor();  // LibTorch 2.x's zero_grad(): a fresh gradient, copied in
            } else {
              p.mutable_grad().zero_();  // LibTorch 1.13's zero_grad(): in place, in the reducer's buffer
            }
          }
          const at::Tensor half_x = inputs[step].narrow(0, 4 * rank, 4);
          const at::Tensor half_y = labels[step].narrow(0, 4 * rank, 4);
          for (int64_t micro = 0; micro < accumulation; ++micro) {
            const int64_t n = 4 / accumulation;
            const auto loss = torch::nn::functional::cross_entropy(model->forward(half_x.narrow(0, micro * n, n)),
                                                                   half_y.narrow(0, micro * n, n));
            (loss / static_cast<double>(accumulation)).backward();
            const bool reduced = reducer.reduce();
            CHECK(reduced == (micro == accumulation - 1));
          }
          if (clip) torchkit::clip_grad_norm_(*model, 0.05);
          optimizer.step();
          std::vector<void*> now;
          for (auto& p : model->parameters()) {
            if (p.grad().defined()) now.push_back(p.grad().data_ptr());
          }
          if (step > 0 && !set_to_none) CHECK(now == places);  // gradients stay in the buffer
          places = now;
        }
      });
      CHECK(bucket_counts[0] == bucket_counts[1]);
      // Reverse order, 200 bytes: second.bias + second.weight (204 bytes), then first.bias +
      // first.weight (448 bytes: a tensor larger than the cap joins the open bucket and closes it).
      CHECK(bucket_counts[0] == 2);
      CHECK(same_parameters(*models[0], *reference, 1e-6));
      CHECK(same_parameters(*models[1], *reference, 1e-6));
      // Training changed them: the comparison is not between initial weights.
      torch::manual_seed(100);
      Net initial;
      CHECK_FALSE(same_parameters(*initial, *reference, 1e-3));
     }
    }
  }
}

TEST_CASE("dist::GradientReducer: buckets in reverse registration order; sum without averaging") {
  torch::manual_seed(1);
  std::vector<Net> models(2);
  on_gloo_ranks(2, [&](int rank, const auto& group) {
    Net& model = models[static_cast<std::size_t>(rank)];
    torchkit::dist::GradientReducer one(model, group);
    CHECK(one.buckets() == 1);
    torchkit::dist::GradientReducer reducer(model, group, {.bucket_bytes = 64 * 4, .average = false});
    const auto names = reducer.bucket_names();
    // 12 + 192 + 64 bytes reach the cap of 256; first.weight (384 bytes) starts the next.
    REQUIRE(names.size() == 2);
    CHECK(names[0] == std::vector<std::string>{"second.bias", "second.weight", "first.bias"});
    CHECK(names[1] == std::vector<std::string>{"first.weight"});
    for (auto& p : model->parameters()) {
      if (p.requires_grad()) p.mutable_grad() = torch::full_like(p, static_cast<double>(rank + 1));
    }
    CHECK(reducer.reduce());
    for (auto& p : model->parameters()) {
      if (p.requires_grad()) CHECK(p.grad().eq(3.0).all().item<bool>());
    }
    torchkit::dist::allreduce_gradients(model, *group);  // averages: (3 + 3) / 2
    for (auto& p : model->parameters()) {
      if (p.requires_grad()) CHECK(p.grad().eq(3.0).all().item<bool>());
      if (!p.requires_grad()) CHECK_FALSE(p.grad().defined());
    }
  });
}

TEST_CASE("dist::GradientReducer: a parameter without a gradient on one rank") {
  torch::manual_seed(2);
  std::vector<Net> models{Net(true), Net(true)};
  const at::Tensor x = torch::randn({4, 6});
  std::vector<std::string> messages(2);
  on_gloo_ranks(2, [&](int rank, const auto& group) {
    Net& model = models[static_cast<std::size_t>(rank)];
    torchkit::dist::broadcast_parameters(model, group);
    model->forward(x, /*use_side=*/rank == 0).sum().backward();
    const auto before = model->second->weight.grad().clone();
    {
      torchkit::dist::GradientReducer reducer(model, group);
      messages[static_cast<std::size_t>(rank)] = message_of<torchkit::Error>([&] { (void)reducer.reduce(); });
      CHECK(model->second->weight.grad().equal(before));  // nothing half-applied
      CHECK(model->side->weight.grad().defined() == (rank == 0));
    }
    torchkit::dist::GradientReducer reducer(model, group, {.find_unused_parameters = true});
    const auto side_before = rank == 0 ? model->side->weight.grad().clone() : at::Tensor();
    CHECK(reducer.reduce());
    // Rank 1 contributed zeros: both ranks hold rank 0's gradient over 2.
    REQUIRE(model->side->weight.grad().defined());
    if (rank == 0) CHECK(at::allclose(model->side->weight.grad(), side_before / 2));
    CHECK_FALSE(model->never->weight.grad().defined());
  });
  CHECK(at::equal(models[0]->side->weight.grad(), models[1]->side->weight.grad()));
  for (const auto& message : messages) {
    CAPTURE(message);
    CHECK(message.find("GradientReducer::reduce: parameter 'side.") != std::string::npos);
    CHECK(message.find("has no gradient on 1 of 2 ranks") != std::string::npos);
    CHECK(message.find("find_unused_parameters = true") != std::string::npos);
  }
  CHECK(messages[0].find("(this rank, 0: has one)") != std::string::npos);
  CHECK(messages[1].find("(this rank, 1: has none)") != std::string::npos);
}

TEST_CASE("dist::broadcast_parameters copies parameters and buffers and names a structural difference") {
  torch::manual_seed(3);
  auto make = [] {
    return torch::nn::Sequential(torch::nn::Linear(4, 5), torch::nn::BatchNorm1d(5), torch::nn::Linear(5, 2));
  };
  std::vector<torch::nn::Sequential> models{make(), make()};
  models[0]->forward(torch::randn({6, 4}));  // rank 0's batch norm statistics move
  on_gloo_ranks(2, [&](int rank, const auto& group) {
    torchkit::dist::broadcast_parameters(models[static_cast<std::size_t>(rank)], group, /*root=*/0);
  });
  for (const auto& item : models[0]->named_parameters()) {
    CHECK(item.value().equal(models[1]->named_parameters()[item.key()]));
  }
  for (const auto& item : models[0]->named_buffers()) {
    CHECK(item.value().equal(models[1]->named_buffers()[item.key()]));
  }
  CHECK(models[1]->named_buffers()["1.num_batches_tracked"].item<int64_t>() == 1);

  // Rank 1's second layer is wider: both ranks throw, nothing changes.
  std::vector<torch::nn::Sequential> different{
      make(), torch::nn::Sequential(torch::nn::Linear(4, 5), torch::nn::BatchNorm1d(5), torch::nn::Linear(5, 3))};
  const auto before = different[1]->named_parameters()["0.weight"].clone();
  std::vector<std::string> messages(2);
  on_gloo_ranks(2, [&](int rank, const auto& group) {
    messages[static_cast<std::size_t>(rank)] = message_of<torchkit::Error>(
        [&] { torchkit::dist::broadcast_parameters(different[static_cast<std::size_t>(rank)], group); });
  });
  CAPTURE(messages[0]);
  CAPTURE(messages[1]);
  CHECK(messages[1].find("broadcast_parameters: the model on rank 1 differs from rank 0's: entry 4 is "
                         "'2.weight parameter Float [3, 5]' here but '2.weight parameter Float [2, 5]' on rank 0") !=
        std::string::npos);
  CHECK(messages[0].find("the model on rank(s) 1 differs from rank 0's") != std::string::npos);
  CHECK(different[1]->named_parameters()["0.weight"].equal(before));

  // A missing layer; the reducer's own check.
  std::vector<torch::nn::Sequential> shorter{make(), torch::nn::Sequential(torch::nn::Linear(4, 5))};
  on_gloo_ranks(2, [&](int rank, const auto& group) {
    auto& model = shorter[static_cast<std::size_t>(rank)];
    const auto message = message_of<torchkit::Error>([&] { torchkit::dist::broadcast_parameters(model, group); });
    if (rank == 1) CHECK(message.find("this rank has 2 parameters and buffers, rank 0 has 9; the first one missing here is "
                                          "'1.weight parameter Float [5]'") != std::string::npos);
    CHECK(message_of<torchkit::Error>([&] { torchkit::dist::GradientReducer reducer(model, group); })
              .find("GradientReducer: the trainable parameters differ across the ranks") != std::string::npos);
  });
}

TEST_CASE("dist: bad options and a root outside the group") {
  Net model;
  auto store = c10::make_intrusive<c10d::HashStore>();
  auto group = torchkit::make_gloo_group(store, 0, 1);
  CHECK(message_of<torchkit::Error>([&] { torchkit::dist::GradientReducer r(model, group, {.bucket_bytes = 0}); })
            .find("GradientReducer: bucket_bytes must be > 0, got 0") != std::string::npos);
  CHECK(message_of<torchkit::Error>(
            [&] { torchkit::dist::GradientReducer r(model, group, {.accumulation_steps = 0}); })
            .find("accumulation_steps must be >= 1, got 0") != std::string::npos);
  CHECK(message_of<torchkit::Error>([&] { torchkit::dist::broadcast_parameters(model, group, 1); })
            .find("broadcast_parameters: root 1 is outside [0, 1)") != std::string::npos);
  c10::intrusive_ptr<c10d::ProcessGroupGloo> null_group;
  CHECK(message_of<torchkit::Error>([&] { torchkit::dist::GradientReducer r(model, null_group); })
            .find("the process group is null") != std::string::npos);
  Net with_sparse;
  with_sparse->register_buffer("table", torch::zeros({2, 2}).to_sparse());
  CHECK(message_of<torchkit::Error>([&] { torchkit::dist::broadcast_parameters(with_sparse, group); })
            .find("broadcast_parameters: buffer 'table' is not dense (layout Sparse)") != std::string::npos);
  // A sparse gradient: refused before any communication.
  torchkit::dist::GradientReducer reducer(model, group);
  model->first->weight.mutable_grad() = torch::zeros_like(model->first->weight).to_sparse();
  CHECK(message_of<torchkit::Error>([&] { (void)reducer.reduce(); })
            .find("the gradient of 'first.weight' is sparse") != std::string::npos);
}

TEST_CASE("dist: a rank that never joins or dies gives an error within the timeout") {
  using clock = std::chrono::steady_clock;
  // Never joins: rank 1 of 2 does not exist.
  auto start = clock::now();
  auto store = c10::make_intrusive<c10d::HashStore>();
  CHECK(message_of<torchkit::Error>([&] { (void)torchkit::make_gloo_group(store, 0, 2, std::chrono::seconds(2)); })
            .find("make_gloo_group: rank 0 of 2 could not connect to the other ranks within 2000 ms") !=
        std::string::npos);
  CHECK(clock::now() - start < std::chrono::seconds(20));

  // Through the TCP store of a torchrun-like environment: rank 0 waits for rank 1, which never
  // comes; rank 1 of another world finds no rank 0.
  for (const char* rank : {"0", "1"}) {
    CAPTURE(rank);
    // A port of its own for each (a store that failed may keep its port a little while).
    const std::string port = std::to_string(20000 + static_cast<int>((getpid() + 4999 + rank[0]) % 20000));
    start = clock::now();
    const auto where =
        environment_from({{"RANK", rank}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "127.0.0.1"}, {"MASTER_PORT", port}});
    const auto message = message_of<torchkit::Error>(
        [&] { (void)torchkit::store_from_environment(where, std::chrono::milliseconds(1500)); });
    CHECK(message.find(fmt::format("store_from_environment: rank {} of 2 could not meet the other ranks at "
                                   "127.0.0.1:{} within 1500 ms",
                                   rank, port)) != std::string::npos);
    CHECK(clock::now() - start < std::chrono::seconds(30));
  }

  // Dies: rank 1 joins, then leaves without reducing.
  Net model;
  model->forward(torch::randn({2, 6})).sum().backward();
  const auto before = model->first->weight.grad().clone();
  std::string message;
  start = clock::now();
  on_gloo_ranks(
      2,
      [&](int rank, const auto& group) {
        if (rank == 1) {
          Net twin;
          torchkit::dist::GradientReducer joined(twin, group);
          return;  // then leaves: its group is destroyed, the connection closes
        }
        torchkit::dist::GradientReducer reducer(model, group);
        message = message_of<torchkit::Error>([&] { (void)reducer.reduce(); });
      },
      std::chrono::seconds(3));
  CAPTURE(message);
  CHECK(message.find("a collective failed on rank 0 of 2") != std::string::npos);
  CHECK(model->first->weight.grad().equal(before));
  CHECK(clock::now() - start < std::chrono::seconds(30));
}

#endif  // TORCHKIT_WITH_GLOO
