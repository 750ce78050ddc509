// Fuzz target: loading a learning-rate scheduler's state from a corrupted archive.
//
// The input picks a scheduler and how far it ran, saves its state to bytes, reads them back
// and rewrites the saved values key by key (dropped, another type, extreme or non-finite
// numbers, lists of another length, another scheduler's name, extra keys), then serialises the
// result to bytes again. A fresh scheduler loads those bytes: loading either works (and the
// scheduler steps on) or throws torchkit::Error leaving the scheduler and every group's lr as
// they were.
//
// Raw random bytes are not handed to LibTorch's archive reader: LibTorch's own reader
// (InputArchive::load_from, LibTorch 2.6) calls std::terminate on some corrupted archives (an
// exception thrown through torch::jit::Parser inside a noexcept function), which no caller can
// catch; this target tests what torchkit does with every archive LibTorch can read.
#include "fuzz_support.hpp"

#include <torchkit/lr.hpp>

#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>
#include <torch/optim/sgd.h>

#include <fuzzer/FuzzedDataProvider.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

namespace {

namespace lr = torchkit::lr;

/// A scheduler of one kind on its own two-group SGD optimizer.
struct Subject {
  std::vector<at::Tensor> weights{at::zeros({2}), at::zeros({3})};
  std::unique_ptr<torch::optim::SGD> optimizer;
  std::function<void()> step;
  std::function<void(torch::serialize::OutputArchive&)> save;
  std::function<void(torch::serialize::InputArchive&)> load;
  std::function<std::string()> describe;
};

constexpr int kinds = 8;

std::unique_ptr<Subject> make_subject(int kind) {
  auto subject = std::make_unique<Subject>();
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(std::vector<at::Tensor>{subject->weights[0]});
  groups.emplace_back(std::vector<at::Tensor>{subject->weights[1]},
                      std::make_unique<torch::optim::SGDOptions>(torch::optim::SGDOptions(0.05).momentum(0.9)));
  subject->optimizer = std::make_unique<torch::optim::SGD>(groups, torch::optim::SGDOptions(0.1).momentum(0.9));
  auto& optimizer = *subject->optimizer;
  const auto bind = [&](auto scheduler) {
    subject->step = [scheduler] { scheduler->step(); };
    subject->save = [scheduler](torch::serialize::OutputArchive& archive) { scheduler->save(archive); };
    subject->load = [scheduler](torch::serialize::InputArchive& archive) { scheduler->load(archive); };
    subject->describe = [scheduler] { return scheduler->to_string(); };
  };
  switch (kind) {
    case 0: bind(std::make_shared<lr::StepLR>(optimizer, 3, 0.5)); break;
    case 1: bind(std::make_shared<lr::MultiStepLR>(optimizer, std::vector<int64_t>{2, 5}, 0.3)); break;
    case 2: bind(std::make_shared<lr::CosineAnnealingWarmRestarts>(optimizer, 4, 2)); break;
    case 3: bind(std::make_shared<lr::OneCycleLR>(optimizer, lr::GroupValues(0.5), 40)); break;
    case 4: bind(std::make_shared<lr::CyclicLR>(optimizer, lr::GroupValues(0.01), lr::GroupValues(0.1), 4)); break;
    case 5: {
      auto warm = std::make_shared<lr::LinearLR>(optimizer, lr::LinearLROptions{.start_factor = 0.1, .total_iters = 3});
      auto cosine = std::make_shared<lr::CosineAnnealingLR>(optimizer, 10);
      bind(std::make_shared<lr::SequentialLR>(optimizer, std::vector<lr::AnyScheduler>{warm, cosine},
                                              std::vector<int64_t>{3}));
      break;
    }
    case 6: bind(std::make_shared<lr::ExponentialLR>(optimizer, 0.9)); break;
    default: {
      auto plateau = std::make_shared<lr::ReduceLROnPlateau>(optimizer);
      subject->step = [plateau] { plateau->step(1.0); };
      subject->save = [plateau](torch::serialize::OutputArchive& archive) { plateau->save(archive); };
      subject->load = [plateau](torch::serialize::InputArchive& archive) { plateau->load(archive); };
      subject->describe = [plateau] { return plateau->to_string(); };
      break;
    }
  }
  return subject;
}

std::vector<double> group_lrs(const torch::optim::Optimizer& optimizer) {
  std::vector<double> lrs;
  for (const auto& group : optimizer.param_groups()) {
    lrs.push_back(static_cast<const torch::optim::SGDOptions&>(group.options()).lr());
  }
  return lrs;
}

double fuzzed_double(FuzzedDataProvider& input) {
  switch (input.ConsumeIntegralInRange(0, 5)) {
    case 0: return std::numeric_limits<double>::quiet_NaN();
    case 1: return std::numeric_limits<double>::infinity();
    case 2: return -input.ConsumeFloatingPoint<double>();
    case 3: return 0.0;
    default: return input.ConsumeFloatingPoint<double>();
  }
}

int64_t fuzzed_int(FuzzedDataProvider& input) {
  switch (input.ConsumeIntegralInRange(0, 3)) {
    case 0: return std::numeric_limits<int64_t>::max();
    case 1: return std::numeric_limits<int64_t>::min();
    default: return input.ConsumeIntegralInRange<int64_t>(-100, 100);
  }
}

/// A value of another shape or type in place of `value`.
c10::IValue mutated(const c10::IValue& value, FuzzedDataProvider& input) {
  switch (input.ConsumeIntegralInRange(0, 7)) {
    case 0: return c10::IValue(fuzzed_int(input));
    case 1: return c10::IValue(fuzzed_double(input));
    case 2: return c10::IValue(input.ConsumeRandomLengthString(16));
    case 3: return c10::IValue(input.ConsumeBool());
    case 4: return c10::IValue();
    case 5: {
      c10::List<double> list;
      const int length = input.ConsumeIntegralInRange(0, 4);
      for (int i = 0; i < length; ++i) list.push_back(fuzzed_double(input));
      return c10::IValue(list);
    }
    case 6: {
      c10::List<int64_t> list;
      const int length = input.ConsumeIntegralInRange(0, 4);
      for (int i = 0; i < length; ++i) list.push_back(fuzzed_int(input));
      return c10::IValue(list);
    }
    default:
      if (value.isDoubleList()) {  // same type, values changed
        auto list = value.toDoubleList().copy();
        for (std::size_t i = 0; i < list.size(); ++i) {
          if (input.ConsumeBool()) list.set(i, fuzzed_double(input));
        }
        return c10::IValue(list);
      }
      if (value.isString()) {
        static const char* names[] = {"StepLR", "OneCycleLR", "CyclicLR", "SequentialLR", "ReduceLROnPlateau", "min"};
        return c10::IValue(std::string(names[input.ConsumeIntegralInRange(0, 5)]));
      }
      return value;
  }
}

/// Copies `from` into `to` key by key, rewriting what the input says; nested archives recurse.
void rewrite(torch::serialize::InputArchive& from, torch::serialize::OutputArchive& to, FuzzedDataProvider& input,
             int depth) {
  for (const auto& key : from.keys()) {
    torch::serialize::InputArchive nested;
    if (depth < 3 && from.try_read(key, nested)) {
      if (input.ConsumeIntegralInRange(0, 15) == 0) continue;  // drop a whole nested archive
      torch::serialize::OutputArchive copy(to.compilation_unit());
      rewrite(nested, copy, input, depth + 1);
      to.write(key, copy);
      continue;
    }
    c10::IValue value;
    if (!from.try_read(key, value)) continue;
    const int action = input.ConsumeIntegralInRange(0, 9);
    if (action == 0) continue;                                    // dropped
    to.write(key, action == 1 ? mutated(value, input) : value);   // rewritten or kept
  }
  if (input.ConsumeIntegralInRange(0, 7) == 0) {
    // An extra key. Its name stays an identifier: an archive is a TorchScript module, and
    // LibTorch cannot read back attributes with other names (std::terminate in its parser).
    static const char* extra_names[] = {"extra", "momentum_cycle", "base_momentums", "unknown_key"};
    to.write(extra_names[input.ConsumeIntegralInRange(0, 3)] + std::to_string(depth), mutated(c10::IValue(), input));
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider input(data, size);
  const int kind = input.ConsumeIntegralInRange(0, kinds - 1);

  auto source = make_subject(kind);
  const int steps = input.ConsumeIntegralInRange(0, 12);
  for (int i = 0; i < steps; ++i) source->step();
  torch::serialize::OutputArchive saved;
  source->save(saved);
  std::stringstream saved_bytes;
  saved.save_to(saved_bytes);
  torch::serialize::InputArchive original;
  original.load_from(saved_bytes);
  torch::serialize::OutputArchive rewritten;
  rewrite(original, rewritten, input, 0);
  std::stringstream bytes;
  rewritten.save_to(bytes);
  torch::serialize::InputArchive corrupted;
  corrupted.load_from(bytes);

  auto target = make_subject(kind);
  target->step();
  const std::string before = target->describe();
  const std::vector<double> lrs_before = group_lrs(*target->optimizer);
  if (torchkit::fuzz::accepts([&] { target->load(corrupted); })) {
    for (int i = 0; i < 3; ++i) {
      (void)torchkit::fuzz::accepts([&] { target->step(); });
    }
    (void)target->describe();
  } else {
    torchkit::fuzz::require(target->describe() == before, "a refused load leaves the scheduler as it was");
    const std::vector<double> lrs_after = group_lrs(*target->optimizer);
    for (std::size_t i = 0; i < lrs_before.size(); ++i) {
      torchkit::fuzz::require(lrs_after[i] == lrs_before[i] || (std::isnan(lrs_after[i]) && std::isnan(lrs_before[i])),
                              "a refused load leaves every group's lr as it was");
    }
  }
  return 0;
}
