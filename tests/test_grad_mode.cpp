// Tests for grad_mode.hpp: NoGradScope, InferenceScope, EvalScope.
#include <torchkit/grad_mode.hpp>

#include "test_support.hpp"

#include <map>
#include <stdexcept>
#include <string>

namespace {

using torchkit::EvalScope;
using torchkit::InferenceScope;
using torchkit::NoGradScope;

// Every module's training flag by its dotted name ("" for the root), read with LibTorch's own
// named_modules(): the independent record to compare against.
std::map<std::string, bool> training_flags(const torch::nn::Module& model) {
  std::map<std::string, bool> flags;
  flags[""] = model.is_training();
  for (const auto& item : model.named_modules(/*name_prefix=*/"", /*include_self=*/false)) {
    flags[item.key()] = item.value()->is_training();
  }
  return flags;
}

bool all_in_eval(const torch::nn::Module& model) {
  for (const auto& [name, training] : training_flags(model)) {
    if (training) {
      return false;
    }
  }
  return true;
}

struct BlockImpl : torch::nn::Module {
  BlockImpl() {
    linear = register_module("linear", torch::nn::Linear(8, 8));
    norm = register_module("norm", torch::nn::BatchNorm1d(8));
    dropout = register_module("dropout", torch::nn::Dropout(0.5));
  }
  at::Tensor forward(const at::Tensor& x) { return dropout(norm(linear(x))); }
  torch::nn::Linear linear{nullptr};
  torch::nn::BatchNorm1d norm{nullptr};
  torch::nn::Dropout dropout{nullptr};
};
TORCH_MODULE(Block);

struct NetImpl : torch::nn::Module {
  NetImpl() {
    first = register_module("first", Block());
    second = register_module("second", Block());
    head = register_module("head", torch::nn::Linear(8, 3));
  }
  at::Tensor forward(const at::Tensor& x) { return head(second(first(x))); }
  Block first{nullptr}, second{nullptr};
  torch::nn::Linear head{nullptr};
};
TORCH_MODULE(Net);

// A model that deliberately keeps parts in eval: frozen batch norms, a frozen first block.
Net mixed_model() {
  Net net;
  net->train();
  net->first->eval();           // the whole first block, recursively
  net->second->norm->eval();    // one frozen batch norm inside a training block
  net->second->dropout->train();
  return net;
}

}  // namespace

TEST_CASE("NoGradScope turns grad mode off and restores it") {
  REQUIRE(c10::GradMode::is_enabled());
  const auto weight = torch::ones({3}, torch::requires_grad());
  {
    NoGradScope no_grad;
    CHECK(no_grad.previously_enabled());
    CHECK_FALSE(c10::GradMode::is_enabled());
    const auto output = weight * 2;
    CHECK_FALSE(output.requires_grad());
    CHECK_FALSE(output.grad_fn());
  }
  CHECK(c10::GradMode::is_enabled());
  CHECK((weight * 2).requires_grad());

  static_assert(!std::is_copy_constructible_v<NoGradScope> && !std::is_move_constructible_v<NoGradScope>);
  static_assert(!std::is_copy_assignable_v<NoGradScope> && !std::is_move_assignable_v<NoGradScope>);
}

TEST_CASE("NoGradScope nests and restores a mode that was already off") {
  {
    NoGradScope outer;
    {
      NoGradScope inner;
      CHECK_FALSE(inner.previously_enabled());
      CHECK_FALSE(c10::GradMode::is_enabled());
      {
        c10::AutoGradMode enable(true);  // someone turns it on inside
        CHECK(c10::GradMode::is_enabled());
      }
    }
    CHECK_FALSE(c10::GradMode::is_enabled());  // the inner scope restored "off"
  }
  CHECK(c10::GradMode::is_enabled());
  {
    c10::AutoGradMode disable(false);
    {
      NoGradScope scope;
      CHECK_FALSE(scope.previously_enabled());
    }
    CHECK_FALSE(c10::GradMode::is_enabled());
  }
  CHECK(c10::GradMode::is_enabled());
}

TEST_CASE("NoGradScope restores grad mode while an exception unwinds") {
  try {
    NoGradScope no_grad;
    throw std::runtime_error("validation failed");
  } catch (const std::runtime_error&) {
  }
  CHECK(c10::GradMode::is_enabled());
}

TEST_CASE("InferenceScope turns inference mode on and restores it") {
  REQUIRE_FALSE(c10::InferenceMode::is_enabled());
  const auto weight = torch::ones({3}, torch::requires_grad());
  {
    InferenceScope inference;
    CHECK_FALSE(inference.previously_enabled());
    CHECK(c10::InferenceMode::is_enabled());
    CHECK_FALSE(c10::GradMode::is_enabled());
    const auto output = weight * 2;
    CHECK(output.is_inference());
    CHECK_FALSE(output.requires_grad());
    {
      InferenceScope off(false);  // torch.inference_mode(False) inside
      CHECK(off.previously_enabled());
      CHECK_FALSE(c10::InferenceMode::is_enabled());
      CHECK(c10::GradMode::is_enabled());
      {
        InferenceScope again;
        CHECK(c10::InferenceMode::is_enabled());
      }
      CHECK_FALSE(c10::InferenceMode::is_enabled());
    }
    CHECK(c10::InferenceMode::is_enabled());
  }
  CHECK_FALSE(c10::InferenceMode::is_enabled());
  CHECK(c10::GradMode::is_enabled());
  const auto normal = weight * 2;
  CHECK_FALSE(normal.is_inference());
  CHECK(normal.requires_grad());

  try {
    InferenceScope inference;
    throw std::runtime_error("boom");
  } catch (const std::runtime_error&) {
  }
  CHECK_FALSE(c10::InferenceMode::is_enabled());
  CHECK(c10::GradMode::is_enabled());

  static_assert(!std::is_copy_constructible_v<InferenceScope> && !std::is_move_constructible_v<InferenceScope>);
}

TEST_CASE("EvalScope puts every submodule in eval and restores each one's own flag") {
  Net net = mixed_model();
  const auto before = training_flags(*net);
  // The fixture really is mixed: some modules train, some do not.
  CHECK(before.at(""));
  CHECK_FALSE(before.at("first"));
  CHECK_FALSE(before.at("first.dropout"));
  CHECK(before.at("second"));
  CHECK_FALSE(before.at("second.norm"));
  CHECK(before.at("second.dropout"));
  CHECK(before.at("head"));
  {
    EvalScope eval(net);
    CHECK(eval.was_training());
    CHECK(all_in_eval(*net));
  }
  CHECK(training_flags(*net) == before);
}

TEST_CASE("EvalScope changes what the model computes: dropout off, batch norm uses running statistics") {
  torch::manual_seed(0);
  Net net;
  net->train();
  const auto input = torch::randn({16, 8});
  const auto running_mean = net->first->norm->running_mean.clone();
  {
    EvalScope eval(net);
    NoGradScope no_grad;
    const auto a = net->forward(input);
    const auto b = net->forward(input);
    CHECK(torch::equal(a, b));                                             // dropout is off
    CHECK(torch::equal(net->first->norm->running_mean, running_mean));  // statistics not updated
    CHECK_FALSE(a.requires_grad());
    // Independent: the eval forward pass written out by hand.
    const auto block = [](Block b, const at::Tensor& x) {
      const auto& norm = b->norm;
      const auto y = b->linear(x);
      return (y - norm->running_mean) / torch::sqrt(norm->running_var + norm->options.eps()) * norm->weight +
             norm->bias;
    };
    const auto expected = net->head(block(net->second, block(net->first, input)));
    CHECK(torch::allclose(a, expected, 1e-5, 1e-6));
  }
  CHECK(net->is_training());
  const auto trained = net->forward(input);
  CHECK_FALSE(torch::equal(net->first->norm->running_mean, running_mean));  // training mode again
  CHECK(trained.requires_grad());
}

TEST_CASE("EvalScope restores the flags while an exception unwinds, and nests") {
  Net net = mixed_model();
  const auto before = training_flags(*net);
  try {
    EvalScope eval(net);
    throw std::runtime_error("validation failed");
  } catch (const std::runtime_error&) {
  }
  CHECK(training_flags(*net) == before);

  {
    EvalScope outer(net);
    {
      EvalScope inner(net);
      CHECK_FALSE(inner.was_training());
      CHECK(all_in_eval(*net));
    }
    CHECK(all_in_eval(*net));  // the inner scope restored "all eval"
    {
      EvalScope part(net->second);  // a scope on a submodule only
      CHECK(all_in_eval(*net));
    }
    CHECK(all_in_eval(*net));
  }
  CHECK(training_flags(*net) == before);
}

TEST_CASE("EvalScope restores the flags even when the model is switched inside the scope") {
  Net net = mixed_model();
  const auto before = training_flags(*net);
  {
    EvalScope eval(net);
    net->train();  // user code switches back to training inside
    net->second->eval();
  }
  CHECK(training_flags(*net) == before);
}

TEST_CASE("EvalScope handles a submodule shared by two parents") {
  // shared sits under both `a` and `b`, which are in different modes; `shared` has its own.
  for (const bool shared_training : {true, false}) {
    for (const bool a_training : {true, false}) {
      CAPTURE(shared_training);
      CAPTURE(a_training);
      auto root = std::make_shared<torch::nn::Module>();
      auto a = root->register_module("a", std::make_shared<torch::nn::Module>());
      auto b = root->register_module("b", std::make_shared<torch::nn::Module>());
      auto shared = torch::nn::Linear(2, 2);
      a->register_module("shared", shared);
      b->register_module("shared", shared);
      root->train();
      a->train(a_training);
      b->train(!a_training);
      shared->train(shared_training);
      const bool root_flag = root->is_training(), a_flag = a->is_training(), b_flag = b->is_training(),
                 shared_flag = shared->is_training();
      {
        EvalScope eval(root);
        CHECK_FALSE(a->is_training());
        CHECK_FALSE(b->is_training());
        CHECK_FALSE(shared->is_training());
      }
      CHECK(root->is_training() == root_flag);
      CHECK(a->is_training() == a_flag);
      CHECK(b->is_training() == b_flag);
      CHECK(shared->is_training() == shared_flag);
    }
  }
}

TEST_CASE("EvalScope accepts every ModuleLike") {
  torch::nn::Linear holder(2, 2);
  {
    EvalScope eval(holder);
    CHECK_FALSE(holder->is_training());
  }
  CHECK(holder->is_training());

  std::shared_ptr<torch::nn::SequentialImpl> impl =
      torch::nn::Sequential(torch::nn::Linear(2, 2), torch::nn::Dropout(0.2)).ptr();
  {
    EvalScope eval(impl);
    CHECK(all_in_eval(*impl));
  }
  CHECK(impl->is_training());

  torch::nn::LinearImpl plain(torch::nn::LinearOptions(2, 2));  // a module not held by a shared_ptr
  plain.eval();
  {
    EvalScope eval(plain);
    CHECK_FALSE(plain.is_training());
  }
  CHECK_FALSE(plain.is_training());  // it was in eval before

  // The scope keeps a holder's module alive.
  std::weak_ptr<torch::nn::Module> watched;
  {
    auto temporary = std::make_shared<torch::nn::Module>();
    watched = temporary;
    auto scope = std::make_unique<EvalScope>(temporary);
    temporary.reset();
    CHECK_FALSE(watched.expired());
    scope.reset();
  }
  CHECK(watched.expired());

  static_assert(!std::is_copy_constructible_v<EvalScope> && !std::is_move_constructible_v<EvalScope>);
  static_assert(!std::is_constructible_v<EvalScope, const torch::nn::Linear&>);  // eval needs a mutable model
  static_assert(!std::is_constructible_v<EvalScope, torch::nn::Linear&&>);       // and one that outlives it
  static_assert(!std::is_constructible_v<EvalScope, at::Tensor&>);
}

TEST_CASE("EvalScope rejects an empty holder or a null pointer and changes nothing") {
  torch::nn::Linear empty(nullptr);
  const auto message = torchkit::test::message_of<torchkit::Error>([&] { EvalScope eval(empty); });
  CHECK(message.find("empty") != std::string::npos);
  std::shared_ptr<torch::nn::Module> null;
  const auto null_message = torchkit::test::message_of<torchkit::Error>([&] { EvalScope eval(null); });
  CHECK(null_message.find("null") != std::string::npos);
}

TEST_CASE("EvalScope leaves the model as it was when a train() override throws") {
  struct Stubborn : torch::nn::Module {
    Stubborn() { register_module("child", torch::nn::Linear(2, 2)); }
    void train(bool on) override {
      TORCHKIT_CHECK(on, "Stubborn refuses eval mode");
      torch::nn::Module::train(on);
    }
  };
  auto root = std::make_shared<torch::nn::Module>();
  auto child = root->register_module("child", torch::nn::Linear(2, 2));
  root->register_module("stubborn", std::make_shared<Stubborn>());
  root->train();
  child->eval();
  const auto before = training_flags(*root);
  CHECK_THROWS_AS([&] { EvalScope eval(root); }(), torchkit::Error);
  CHECK(training_flags(*root) == before);
}
