// Tests for capture.hpp: captured outputs equal a hand-written forward that stops at the layer
// (same modules, same weights) bit for bit; call order; gradients through captured outputs; the
// model and the thread's callbacks left as they were; the errors.
#include <torchkit/capture.hpp>

#include "test_support.hpp"

#include <ATen/record_function.h>

#include <string>
#include <utility>
#include <vector>

namespace F = torch::nn::functional;
using torchkit::CapturedOutputs;

namespace {

std::vector<std::string> names_of(const CapturedOutputs& outputs) {
  std::vector<std::string> names;
  for (const auto& [name, tensor] : outputs) {
    names.push_back(name);
  }
  return names;
}

std::vector<bool> training_flags(torch::nn::Module& model) {
  std::vector<bool> flags{model.is_training()};
  for (const auto& module : model.modules(/*include_self=*/false)) {
    flags.push_back(module->is_training());
  }
  return flags;
}

/// Every parameter and buffer, copied, with its requires_grad flag.
std::vector<std::pair<at::Tensor, bool>> state_of(torch::nn::Module& model) {
  std::vector<std::pair<at::Tensor, bool>> state;
  for (const auto& parameter : model.parameters()) {
    state.emplace_back(parameter.detach().clone(), parameter.requires_grad());
  }
  for (const auto& buffer : model.buffers()) {
    state.emplace_back(buffer.clone(), false);
  }
  return state;
}

bool same_state(const std::vector<std::pair<at::Tensor, bool>>& a, const std::vector<std::pair<at::Tensor, bool>>& b) {
  if (a.size() != b.size()) {
    return false;
  }
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (!torch::equal(a[i].first, b[i].first) || a[i].second != b[i].second) {
      return false;
    }
  }
  return true;
}

/// Layers with parameters called inside a custom forward, with functional operations between them.
struct ConvNetImpl : torch::nn::Module {
  ConvNetImpl() {
    conv1 = register_module("conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 6, 3).padding(1)));
    bn1 = register_module("bn1", torch::nn::BatchNorm2d(6));
    conv2 = register_module("conv2", torch::nn::Conv2d(torch::nn::Conv2dOptions(6, 8, 3).stride(2)));
    fc = register_module("fc", torch::nn::Linear(8 * 3 * 3, 5));
  }
  torch::Tensor forward(torch::Tensor x) {
    x = torch::relu(bn1(conv1(x)));
    x = F::max_pool2d(torch::relu(conv2(x)), F::MaxPool2dFuncOptions(1));
    return fc(x.flatten(1));
  }
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr};
  torch::nn::BatchNorm2d bn1{nullptr};
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(ConvNet);

/// A block whose forward ends with a module call.
struct BlockImpl : torch::nn::Module {
  BlockImpl() {
    linear = register_module("linear", torch::nn::Linear(8, 8));
    act = register_module("act", torch::nn::Tanh());
  }
  torch::Tensor forward(const torch::Tensor& x) { return act(linear(x)); }
  torch::nn::Linear linear{nullptr};
  torch::nn::Tanh act{nullptr};
};
TORCH_MODULE(Block);

/// A block whose forward ends with an operation of no module: its output cannot be known.
struct ResidualImpl : torch::nn::Module {
  ResidualImpl() { linear = register_module("linear", torch::nn::Linear(8, 8)); }
  torch::Tensor forward(const torch::Tensor& x) { return linear(x) * 0.5 + x; }
  torch::nn::Linear linear{nullptr};
};
TORCH_MODULE(Residual);

/// A custom module holding a Sequential (LibTorch cannot put a Sequential in a Sequential).
struct StageImpl : torch::nn::Module {
  StageImpl() { seq = register_module("seq", torch::nn::Sequential(torch::nn::Linear(8, 8), torch::nn::Sigmoid())); }
  torch::Tensor forward(const torch::Tensor& x) { return seq->forward(x); }
  torch::nn::Sequential seq{nullptr};
};
TORCH_MODULE(Stage);

/// Nested containers: a Sequential holding a custom module holding a Sequential, a custom block, a ModuleList, a head never called.
struct NestedNetImpl : torch::nn::Module {
  NestedNetImpl() {
    features = register_module(
        "features", torch::nn::Sequential(torch::nn::Linear(4, 8), torch::nn::ReLU(), Stage()));
    block = register_module("block", Block());
    residual = register_module("residual", Residual());
    blocks = register_module("blocks", torch::nn::ModuleList(Block(), Block()));
    unused = register_module("unused", torch::nn::Linear(8, 2));
    head = register_module("head", torch::nn::Linear(8, 3));
  }
  torch::Tensor forward(torch::Tensor x) {
    x = block(features->forward(x));
    x = residual(x);
    for (const auto& module : *blocks) {
      x = module->as<BlockImpl>()->forward(x);
    }
    return head(x);
  }
  torch::nn::Sequential features{nullptr};
  Block block{nullptr};
  Residual residual{nullptr};
  torch::nn::ModuleList blocks{nullptr};
  torch::nn::Linear unused{nullptr}, head{nullptr};
};
TORCH_MODULE(NestedNet);

/// ResNet's block: an in-place ReLU after bn1 and `out += identity` after bn2.
struct BasicBlockImpl : torch::nn::Module {
  BasicBlockImpl() {
    conv1 = register_module("conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(4, 4, 3).padding(1).bias(false)));
    bn1 = register_module("bn1", torch::nn::BatchNorm2d(4));
    relu = register_module("relu", torch::nn::ReLU(torch::nn::ReLUOptions(true)));
    conv2 = register_module("conv2", torch::nn::Conv2d(torch::nn::Conv2dOptions(4, 4, 3).padding(1).bias(false)));
    bn2 = register_module("bn2", torch::nn::BatchNorm2d(4));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    torch::Tensor out = relu(bn1(conv1(x)));
    out = bn2(conv2(out));
    out += x;
    return relu(out);
  }
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr};
  torch::nn::BatchNorm2d bn1{nullptr}, bn2{nullptr};
  torch::nn::ReLU relu{nullptr};
};
TORCH_MODULE(BasicBlock);

struct TwoBlockNetImpl : torch::nn::Module {
  TwoBlockNetImpl() {
    stem = register_module("stem", torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 4, 1)));
    layer = register_module("layer", torch::nn::Sequential(BasicBlock(), BasicBlock()));
    pool = register_module("pool", torch::nn::AdaptiveAvgPool2d(1));
    fc = register_module("fc", torch::nn::Linear(4, 2));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    torch::Tensor y = layer->forward(stem(x));
    return fc(pool(y).flatten(1));
  }
  torch::nn::Conv2d stem{nullptr};
  torch::nn::Sequential layer{nullptr};
  torch::nn::AdaptiveAvgPool2d pool{nullptr};
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(TwoBlockNet);

/// Randomised batch-norm statistics, so that eval-mode outputs are not the identity.
void randomise_buffers(torch::nn::Module& model) {
  torch::NoGradGuard no_grad;
  for (auto& module : model.modules()) {
    if (auto* bn = module->as<torch::nn::BatchNorm2dImpl>()) {
      bn->running_mean.uniform_(-0.5, 0.5);
      bn->running_var.uniform_(0.5, 2.0);
      bn->weight.uniform_(0.5, 1.5);
      bn->bias.uniform_(-0.2, 0.2);
    }
  }
}

}  // namespace

TEST_CASE("capture: Sequential children equal the forward stopped at them, bit for bit") {
  torch::manual_seed(0);
  torch::nn::Sequential net(torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 4, 3)), torch::nn::BatchNorm2d(4),
                            torch::nn::ReLU(), torch::nn::Flatten(), torch::nn::Linear(4 * 6 * 6, 5));
  randomise_buffers(*net);
  net->eval();
  const torch::Tensor x = torch::rand({2, 3, 8, 8});
  torch::NoGradGuard no_grad;
  const CapturedOutputs outputs = torchkit::capture(net, {"0", "2", "4"}, x);
  REQUIRE(names_of(outputs) == std::vector<std::string>{"0", "2", "4"});
  const torch::Tensor conv = net[0]->as<torch::nn::Conv2dImpl>()->forward(x);
  const torch::Tensor relu = torch::relu(net[1]->as<torch::nn::BatchNorm2dImpl>()->forward(conv));
  CHECK(torch::equal(outputs[0].second, conv));
  CHECK(torch::equal(outputs[1].second, relu));
  CHECK(torch::equal(outputs[2].second, net->forward(x)));
  // A glob and a regex over whole names; "0" does not select "0.x" (there is none) nor "4".
  CHECK(names_of(torchkit::capture(net, {"?"}, x)) == std::vector<std::string>{"0", "1", "2", "3", "4"});
  CHECK(names_of(torchkit::capture(net, {torchkit::regex("[13]")}, x)) == std::vector<std::string>{"1", "3"});
}

TEST_CASE("capture: layers with parameters inside a custom forward") {
  torch::manual_seed(1);
  ConvNet net;
  randomise_buffers(*net);
  net->eval();
  const torch::Tensor x = torch::rand({2, 3, 8, 8});
  torch::NoGradGuard no_grad;
  const CapturedOutputs outputs = torchkit::capture(net, {"conv1", "bn1", "conv2", "fc"}, x);
  REQUIRE(names_of(outputs) == std::vector<std::string>{"conv1", "bn1", "conv2", "fc"});
  const torch::Tensor conv1 = net->conv1(x);
  const torch::Tensor bn1 = net->bn1(conv1);
  const torch::Tensor conv2 = net->conv2(torch::relu(bn1));
  CHECK(torch::equal(outputs[0].second, conv1));
  CHECK(torch::equal(outputs[1].second, bn1));
  CHECK(torch::equal(outputs[2].second, conv2));
  CHECK(torch::equal(outputs[3].second, net->forward(x)));
}

TEST_CASE("capture: nested containers, custom blocks, ModuleList elements, a module called twice") {
  torch::manual_seed(2);
  NestedNet net;
  const torch::Tensor x = torch::rand({3, 4});
  torch::NoGradGuard no_grad;
  const CapturedOutputs outputs =
      torchkit::capture(net, {"features", "features.0", "features.2.seq.0", "block", "block.linear", "blocks.?"}, x);
  REQUIRE(names_of(outputs) == std::vector<std::string>{"features", "features.0", "features.2.seq.0", "block",
                                                        "block.linear", "blocks.0", "blocks.1"});
  const torch::Tensor f0 = net->features[0]->as<torch::nn::LinearImpl>()->forward(x);
  auto* stage = net->features[2]->as<StageImpl>();
  const torch::Tensor f10 = stage->seq->ptr<torch::nn::LinearImpl>(0)->forward(torch::relu(f0));
  const torch::Tensor features = stage->forward(torch::relu(f0));
  const torch::Tensor block_linear = net->block->linear(features);
  const torch::Tensor block = net->block(features);
  const torch::Tensor residual = net->residual(block);
  const torch::Tensor blocks0 = net->blocks[0]->as<BlockImpl>()->forward(residual);
  const torch::Tensor blocks1 = net->blocks[1]->as<BlockImpl>()->forward(blocks0);
  CHECK(torch::equal(outputs[0].second, features));
  CHECK(torch::equal(outputs[1].second, f0));
  CHECK(torch::equal(outputs[2].second, f10));
  CHECK(torch::equal(outputs[3].second, block));
  CHECK(torch::equal(outputs[4].second, block_linear));
  CHECK(torch::equal(outputs[5].second, blocks0));
  CHECK(torch::equal(outputs[6].second, blocks1));

  // A Sequential child called twice by its parent's custom forward: two entries, in order.
  struct TwiceImpl : torch::nn::Module {
    TwiceImpl() { block = register_module("block", Block()); }
    torch::Tensor forward(const torch::Tensor& x) { return block(block(x)); }
    Block block{nullptr};
  };
  auto twice = std::make_shared<TwiceImpl>();
  const torch::Tensor y = torch::rand({2, 8});
  const CapturedOutputs calls = torchkit::capture(twice, {"block"}, y);
  REQUIRE(names_of(calls) == std::vector<std::string>{"block", "block"});
  CHECK(torch::equal(calls[0].second, twice->block(y)));
  CHECK(torch::equal(calls[1].second, twice->block(twice->block(y))));
}

TEST_CASE("capture: outputs that cannot be identified are refused, saying which and why") {
  using torchkit::test::message_of;
  torch::manual_seed(3);
  NestedNet net;
  const torch::Tensor x = torch::rand({3, 4});
  // `return linear(x) * 0.5 + x`: the operations after the linear belong to no module.
  const std::string residual = message_of<torchkit::Error>([&] { (void)torchkit::capture(net, {"residual"}, x); });
  CHECK(residual.find("capture: the output of 'residual' (Residual) cannot be identified") != std::string::npos);
  CHECK(residual.find("aten::mul") != std::string::npos);
  // Its linear is fine.
  CHECK(torchkit::capture(net, {"residual.linear"}, x).size() == 1);

  TwoBlockNet resnet;
  randomise_buffers(*resnet);
  resnet->eval();
  const torch::Tensor image = torch::rand({1, 3, 6, 6});
  torch::NoGradGuard no_grad;
  // bn1's output is changed in place by the ReLU(inplace), bn2's by `out += x`.
  for (const char* name : {"layer.0.bn1", "layer.1.bn2"}) {
    const std::string in_place = message_of<torchkit::Error>([&] { (void)torchkit::capture(resnet, {name}, image); });
    CHECK(in_place.find(fmt::format("the output of '{}' (BatchNorm2d) cannot be identified", name)) != std::string::npos);
    CHECK(in_place.find("changed it in place") != std::string::npos);
  }
  // The blocks themselves end with the ReLU module: exact, also inside the Sequential walked in
  // a custom forward.
  const CapturedOutputs blocks = torchkit::capture(resnet, {"layer.?", "layer.0.relu", "layer"}, image);
  REQUIRE(names_of(blocks) ==
          std::vector<std::string>{"layer", "layer.0", "layer.0.relu", "layer.0.relu", "layer.1"});
  const torch::Tensor stem = resnet->stem(image);
  const torch::Tensor block0 = resnet->layer[0]->as<BasicBlockImpl>()->forward(stem);
  const torch::Tensor block1 = resnet->layer[1]->as<BasicBlockImpl>()->forward(block0);
  CHECK(torch::equal(blocks[1].second, block0));
  CHECK(torch::equal(blocks[3].second, block0));  // the second call of the shared ReLU is the block's output
  CHECK(torch::equal(blocks[4].second, block1));
  CHECK(torch::equal(blocks[0].second, block1));
}

TEST_CASE("capture: the model and the thread are left as they were, also when forward throws") {
  using torchkit::test::message_of;
  torch::manual_seed(4);
  ConvNet net;
  net->train();
  net->bn1->eval();
  net->conv2->bias.requires_grad_(false);
  const auto flags = training_flags(*net);
  const auto state = state_of(*net);
  const bool grad_mode = at::GradMode::is_enabled();

  // Eval mode of the caller is kept, and in train mode the batch norm updates its statistics as
  // the hand-written forward would.
  (void)torchkit::capture(net, {"conv1"}, torch::rand({2, 3, 8, 8}));
  CHECK(training_flags(*net) == flags);
  CHECK(same_state(state, state_of(*net)));  // bn1 is in eval mode: no statistics changed
  CHECK_FALSE(at::hasThreadLocalCallbacks());

  // Forward throws (two channels for a three-channel convolution).
  const std::string failed =
      message_of<torchkit::Error>([&] { (void)torchkit::capture(net, {"conv1"}, torch::rand({2, 2, 8, 8})); });
  CHECK(failed.find("capture: the forward pass of ConvNet failed") != std::string::npos);
  CHECK(training_flags(*net) == flags);
  CHECK(same_state(state, state_of(*net)));
  CHECK_FALSE(at::hasThreadLocalCallbacks());
  CHECK(at::GradMode::is_enabled() == grad_mode);

  // Bad input: each names the value; nothing changes.
  CHECK(message_of<torchkit::Error>([&] { (void)torchkit::capture(net, {"conv3"}, torch::rand({2, 3, 8, 8})); })
            .find("capture: pattern \"conv3\" matches no module of ConvNet; closest module names: \"conv1\"") !=
        std::string::npos);
  CHECK(message_of<torchkit::Error>([&] { (void)torchkit::capture(net, torchkit::PatternList{}, torch::rand({2, 3, 8, 8})); })
            .find("capture: no patterns given") != std::string::npos);
  CHECK(message_of<torchkit::Error>([&] { (void)torchkit::capture(net, {"conv1"}, 3.5); })
            .find("capture: ") != std::string::npos);
  CHECK(message_of<torchkit::Error>([&] { (void)torchkit::capture(net, {"conv1"}, 3.5); })
            .find("forward does not take these arguments; inputs tried: 3.5") != std::string::npos);
  NestedNet nested;
  const torch::Tensor x = torch::rand({3, 4});
  CHECK(message_of<torchkit::Error>([&] { (void)torchkit::capture(nested, {"unused"}, x); })
            .find("capture: module 'unused' (Linear) was never called") != std::string::npos);
  CHECK(message_of<torchkit::Error>([&] { (void)torchkit::capture(nested, {"blocks"}, x); })
            .find("capture: pattern \"blocks\" matches 'blocks', a ModuleList that has no forward of its own") !=
        std::string::npos);
  CHECK(training_flags(*net) == flags);
  CHECK(same_state(state, state_of(*net)));
  CHECK_FALSE(at::hasThreadLocalCallbacks());
}

TEST_CASE("FeatureCapture: records during the caller's own forward; gradients of the captured outputs") {
  torch::manual_seed(5);
  ConvNet net;
  randomise_buffers(*net);
  net->eval();
  const torch::Tensor x = torch::rand({2, 3, 8, 8});
  at::Tensor score;
  {
    torchkit::FeatureCapture capture(net, {"conv2", "bn1"});
    CHECK(capture.recording());
    CHECK(at::hasThreadLocalCallbacks());
    score = net->forward(x).select(1, 3).sum();
    const CapturedOutputs& outputs = capture.outputs();
    CHECK_FALSE(capture.recording());
    CHECK_FALSE(at::hasThreadLocalCallbacks());
    REQUIRE(names_of(outputs) == std::vector<std::string>{"bn1", "conv2"});
    // The captured tensors are the forward's own: Grad-CAM's gradient of the score with respect
    // to conv2's output equals the one from a hand-written forward.
    const at::Tensor grad = torch::autograd::grad({score}, {outputs[1].second})[0];
    const torch::Tensor conv2 = net->conv2(torch::relu(net->bn1(net->conv1(x)))).detach().requires_grad_(true);
    const torch::Tensor hand_score =
        net->fc(F::max_pool2d(torch::relu(conv2), F::MaxPool2dFuncOptions(1)).flatten(1)).select(1, 3).sum();
    const at::Tensor hand_grad = torch::autograd::grad({hand_score}, {conv2})[0];
    CHECK(torch::equal(outputs[1].second.detach(), conv2.detach()));
    CHECK(torch::allclose(grad, hand_grad, 0.0, 0.0));
    // A second call returns the same outputs; nothing later is recorded.
    (void)net->forward(x);
    CHECK(capture.outputs().size() == 2);
  }
  CHECK_FALSE(at::hasThreadLocalCallbacks());

  // Two forward calls before outputs(): each call of each module, in order; backward between
  // them is not recorded.
  {
    torchkit::FeatureCapture capture(net, {"fc"});
    const torch::Tensor first = net->forward(x);
    first.sum().backward();
    const torch::Tensor second = net->forward(x * 2);
    const CapturedOutputs& outputs = capture.outputs();
    REQUIRE(names_of(outputs) == std::vector<std::string>{"fc", "fc"});
    CHECK(torch::equal(outputs[0].second, first));
    CHECK(torch::equal(outputs[1].second, second));
  }
  // Bad input: at construction (nothing installed) and at outputs() (a module never called).
  using torchkit::test::message_of;
  CHECK(message_of<torchkit::Error>([&] { torchkit::FeatureCapture capture(net, {"fc2"}); })
            .find("FeatureCapture: pattern \"fc2\" matches no module of ConvNet") != std::string::npos);
  CHECK_FALSE(at::hasThreadLocalCallbacks());
  torchkit::FeatureCapture unused(net, {"fc"});
  CHECK(message_of<torchkit::Error>([&] { (void)unused.outputs(); })
            .find("FeatureCapture::outputs: module 'fc' (Linear) was never called") != std::string::npos);
  CHECK(message_of<torchkit::Error>([&] { (void)unused.outputs(); })
            .find("was never called") != std::string::npos);
}
