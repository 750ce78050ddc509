// Tests for summary.hpp (tip 2): rows, totals and tables against torchinfo's reference cases, the
// Python-hook recordings in golden/summary.json, and hand computation; model state left alone;
// bad input.
#include <torchkit/summary.hpp>

#include "test_support.hpp"

#include <ATen/record_function.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace F = torch::nn::functional;
using torchkit::Summary;
using torchkit::SummaryOptions;
using torchkit::SummaryStyle;

namespace {

// --- the models of golden/summary_golden.py, the same layers in the same order ----------------

struct SingleInputNetImpl : torch::nn::Module {
  SingleInputNetImpl() {
    conv1 = register_module("conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 10, 5)));
    conv2 = register_module("conv2", torch::nn::Conv2d(torch::nn::Conv2dOptions(10, 20, 5)));
    conv2_drop = register_module("conv2_drop", torch::nn::Dropout2d(0.3));
    fc1 = register_module("fc1", torch::nn::Linear(320, 50));
    fc2 = register_module("fc2", torch::nn::Linear(50, 10));
  }
  torch::Tensor forward(torch::Tensor x) {
    x = torch::relu(F::max_pool2d(conv1(x), F::MaxPool2dFuncOptions(2)));
    x = torch::relu(F::max_pool2d(conv2_drop(conv2(x)), F::MaxPool2dFuncOptions(2)));
    x = x.view({-1, 320});
    x = torch::relu(fc1(x));
    x = fc2(x);
    return torch::log_softmax(x, 1);
  }
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr};
  torch::nn::Dropout2d conv2_drop{nullptr};
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(SingleInputNet);

torch::nn::Sequential linear_relu_sequential() {
  return torch::nn::Sequential(torch::nn::Linear(128, 128), torch::nn::ReLU(), torch::nn::Linear(128, 128),
                               torch::nn::ReLU(), torch::nn::Linear(128, 1));
}

struct LSTMNetImpl : torch::nn::Module {
  LSTMNetImpl() {
    embedding = register_module("embedding", torch::nn::Embedding(20, 300));
    encoder = register_module("encoder", torch::nn::LSTM(torch::nn::LSTMOptions(300, 512).num_layers(2).batch_first(true)));
    decoder = register_module("decoder", torch::nn::Linear(512, 20));
  }
  std::tuple<torch::Tensor, std::tuple<torch::Tensor, torch::Tensor>> forward(torch::Tensor x) {
    auto [output, hidden] = encoder(embedding(x));
    return {decoder(output), hidden};
  }
  torch::nn::Embedding embedding{nullptr};
  torch::nn::LSTM encoder{nullptr};
  torch::nn::Linear decoder{nullptr};
};
TORCH_MODULE(LSTMNet);

struct RecursiveNetImpl : torch::nn::Module {
  RecursiveNetImpl() { conv1 = register_module("conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(64, 64, 3).padding(1))); }
  torch::Tensor forward(torch::Tensor x) {
    for (int i = 0; i < 6; ++i) {
      x = conv1(x);
    }
    return x;
  }
  torch::nn::Conv2d conv1{nullptr};
};
TORCH_MODULE(RecursiveNet);

struct BlockImpl : torch::nn::Module {
  BlockImpl() {
    linear = register_module("linear", torch::nn::Linear(8, 8));
    act = register_module("act", torch::nn::ReLU());
  }
  torch::Tensor forward(const torch::Tensor& x) { return act(linear(x)); }
  torch::nn::Linear linear{nullptr};
  torch::nn::ReLU act{nullptr};
};
TORCH_MODULE(Block);

struct SharedBlockNetImpl : torch::nn::Module {
  SharedBlockNetImpl() {
    block = register_module("block", Block());
    head = register_module("head", torch::nn::Linear(8, 2));
  }
  torch::Tensor forward(const torch::Tensor& x) { return head(block(block(x))); }
  Block block{nullptr};
  torch::nn::Linear head{nullptr};
};
TORCH_MODULE(SharedBlockNet);

struct BasicBlockImpl : torch::nn::Module {
  BasicBlockImpl(int64_t inplanes, int64_t planes, int64_t stride = 1) {
    using torch::nn::Conv2dOptions;
    conv1 = register_module("conv1", torch::nn::Conv2d(Conv2dOptions(inplanes, planes, 3).stride(stride).padding(1).bias(false)));
    bn1 = register_module("bn1", torch::nn::BatchNorm2d(planes));
    relu = register_module("relu", torch::nn::ReLU(torch::nn::ReLUOptions(true)));
    conv2 = register_module("conv2", torch::nn::Conv2d(Conv2dOptions(planes, planes, 3).padding(1).bias(false)));
    bn2 = register_module("bn2", torch::nn::BatchNorm2d(planes));
    if (stride != 1 || inplanes != planes) {
      downsample = register_module(
          "downsample", torch::nn::Sequential(torch::nn::Conv2d(Conv2dOptions(inplanes, planes, 1).stride(stride).bias(false)),
                                              torch::nn::BatchNorm2d(planes)));
    }
  }
  torch::Tensor forward(torch::Tensor x) {
    torch::Tensor identity = x;
    torch::Tensor out = relu(bn1(conv1(x)));
    out = bn2(conv2(out));
    if (downsample) {
      identity = downsample->forward(x);
    }
    out += identity;
    return relu(out);
  }
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr};
  torch::nn::BatchNorm2d bn1{nullptr}, bn2{nullptr};
  torch::nn::ReLU relu{nullptr};
  torch::nn::Sequential downsample{nullptr};
};
TORCH_MODULE(BasicBlock);

struct MiniResNetImpl : torch::nn::Module {
  MiniResNetImpl() {
    conv1 = register_module("conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 64, 7).stride(2).padding(3).bias(false)));
    bn1 = register_module("bn1", torch::nn::BatchNorm2d(64));
    relu = register_module("relu", torch::nn::ReLU(torch::nn::ReLUOptions(true)));
    maxpool = register_module("maxpool", torch::nn::MaxPool2d(torch::nn::MaxPool2dOptions(3).stride(2).padding(1)));
    layer1 = register_module("layer1", torch::nn::Sequential(BasicBlock(64, 64), BasicBlock(64, 64)));
    layer2 = register_module("layer2", torch::nn::Sequential(BasicBlock(64, 128, 2), BasicBlock(128, 128)));
    avgpool = register_module("avgpool", torch::nn::AdaptiveAvgPool2d(1));
    fc = register_module("fc", torch::nn::Linear(128, 10));
  }
  torch::Tensor forward(torch::Tensor x) {
    x = maxpool(relu(bn1(conv1(x))));
    x = layer2->forward(layer1->forward(x));
    x = torch::flatten(avgpool(x), 1);
    return fc(x);
  }
  torch::nn::Conv2d conv1{nullptr};
  torch::nn::BatchNorm2d bn1{nullptr};
  torch::nn::ReLU relu{nullptr};
  torch::nn::MaxPool2d maxpool{nullptr};
  torch::nn::Sequential layer1{nullptr}, layer2{nullptr};
  torch::nn::AdaptiveAvgPool2d avgpool{nullptr};
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(MiniResNet);

struct MixedTrainableImpl : torch::nn::Module {
  MixedTrainableImpl() {
    fc1 = register_module("fc1", torch::nn::Linear(10, 10));
    norm = register_module("norm", torch::nn::BatchNorm1d(10));
    fc2 = register_module("fc2", torch::nn::Linear(10, 5));
    for (auto& parameter : fc1->parameters()) {
      parameter.requires_grad_(false);
    }
    fc2->bias.requires_grad_(false);
  }
  torch::Tensor forward(const torch::Tensor& x) { return fc2(torch::relu(norm(fc1(x)))); }
  torch::nn::Linear fc1{nullptr};
  torch::nn::BatchNorm1d norm{nullptr};
  torch::nn::Linear fc2{nullptr};
};
TORCH_MODULE(MixedTrainable);

// Holds the weight it is given (shared with another module) and a bias of its own.
struct TiedLinearImpl : torch::nn::Module {
  explicit TiedLinearImpl(const torch::Tensor& shared_weight) {
    weight = register_parameter("weight", shared_weight);
    bias = register_parameter("bias", torch::zeros({shared_weight.size(0)}));
  }
  torch::Tensor forward(const torch::Tensor& x) { return F::linear(x, weight, bias); }
  torch::Tensor weight, bias;
};
TORCH_MODULE(TiedLinear);

struct TiedNetImpl : torch::nn::Module {
  TiedNetImpl() {
    encoder = register_module("encoder", torch::nn::Linear(4, 4));
    decoder = register_module("decoder", TiedLinear(encoder->weight));
  }
  torch::Tensor forward(const torch::Tensor& x) { return decoder(torch::relu(encoder(x))); }
  torch::nn::Linear encoder{nullptr};
  TiedLinear decoder{nullptr};
};
TORCH_MODULE(TiedNet);

struct MultiInputNetImpl : torch::nn::Module {
  MultiInputNetImpl() {
    fc_a = register_module("fc_a", torch::nn::Linear(3, 4));
    fc_b = register_module("fc_b", torch::nn::Linear(5, 4));
  }
  torch::Tensor forward(const torch::Tensor& a, const torch::Tensor& b) {
    const torch::Tensor first = fc_a(a);  // in this order, as Python evaluates `fc_a(a) + fc_b(b)`
    return first + fc_b(b);
  }
  torch::nn::Linear fc_a{nullptr}, fc_b{nullptr};
};
TORCH_MODULE(MultiInputNet);

struct ChildImpl : torch::nn::Module {
  ChildImpl() {
    sequential = register_module("_sequential", torch::nn::Sequential(torch::nn::Linear(5, 5), torch::nn::Linear(5, 5)));
    between = register_module("_between", torch::nn::Linear(5, 5));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    torch::Tensor out = sequential->forward(x);
    out = between(out);
    for (auto& layer : *sequential) {
      out = layer.forward(out);
    }
    out = sequential->forward(x);
    for (auto& layer : *sequential) {
      out = layer.forward(out);
    }
    return out;
  }
  torch::nn::Sequential sequential{nullptr};
  torch::nn::Linear between{nullptr};
};
TORCH_MODULE(Child);

struct NestedContainersImpl : torch::nn::Module {
  NestedContainersImpl() {
    layers = register_module("_layers", torch::nn::ModuleList(torch::nn::Linear(5, 5), Child(), torch::nn::Linear(5, 5)));
    heads = register_module("heads", torch::nn::ModuleDict(torch::OrderedDict<std::string, std::shared_ptr<Module>>{
                                          {"used", torch::nn::Linear(5, 3).ptr()}, {"unused", torch::nn::Linear(5, 7).ptr()}}));
  }
  torch::Tensor forward(torch::Tensor x) {
    x = layers[0]->as<torch::nn::Linear>()->forward(x);
    x = layers[1]->as<Child>()->forward(x);
    x = layers[2]->as<torch::nn::Linear>()->forward(x);
    return heads["used"]->as<torch::nn::Linear>()->forward(x);
  }
  torch::nn::ModuleList layers{nullptr};
  torch::nn::ModuleDict heads{nullptr};
};
TORCH_MODULE(NestedContainers);

// --- helpers --------------------------------------------------------------------------------

std::vector<int64_t> shape_of(const nlohmann::json& value) { return value.get<std::vector<int64_t>>(); }

/// Compares the called rows (those with an output shape) with the calls Python's hooks saw, and
/// the totals; rows of the types in `skip` are left out on both sides.
void check_against_golden(const Summary& summary, const std::string& name, const std::set<std::string>& skip = {}) {
  INFO("golden case ", name);
  const nlohmann::json golden = torchkit::test::load_golden("summary.json").at(name);
  std::vector<const Summary::Row*> called;
  for (const auto& row : summary.rows()) {
    if (!row.output_shape.empty() && skip.count(row.type) == 0) {
      called.push_back(&row);
    }
  }
  std::vector<nlohmann::json> expected;
  for (const auto& call : golden.at("calls")) {
    if (skip.count(call.at("type").get<std::string>()) == 0) {
      expected.push_back(call);
    }
  }
  REQUIRE(called.size() == expected.size());
  for (std::size_t i = 0; i < called.size(); ++i) {
    INFO("call ", i, ": ", called[i]->type, " '", called[i]->name, "'");
    CHECK(called[i]->type == expected[i].at("type").get<std::string>());
    CHECK(called[i]->depth == expected[i].at("depth").get<int>());
    CHECK(called[i]->output_shape == shape_of(expected[i].at("shape")));
    CHECK(called[i]->recursive == expected[i].at("recursive").get<bool>());
    CHECK(called[i]->params == expected[i].at("params").get<int64_t>());
    if (expected[i].at("leaf").get<bool>()) {
      CHECK(called[i]->mult_adds == expected[i].at("mult_adds").get<int64_t>());
    }
  }
  CHECK(summary.total_params() == golden.at("total_params").get<int64_t>());
  CHECK(summary.trainable_params() == golden.at("trainable_params").get<int64_t>());
  CHECK(summary.non_trainable_params() ==
        golden.at("total_params").get<int64_t>() - golden.at("trainable_params").get<int64_t>());
  CHECK(summary.total_mult_adds() == golden.at("total_mult_adds").get<int64_t>());
  CHECK(summary.input_bytes() == golden.at("input_bytes").get<int64_t>());
  CHECK(summary.forward_backward_bytes() == golden.at("forward_backward_bytes").get<int64_t>());
  CHECK(summary.param_bytes() == golden.at("param_bytes").get<int64_t>());
  CHECK(summary.total_bytes() == summary.input_bytes() + summary.forward_backward_bytes() + summary.param_bytes());
}

const Summary::Row& row_named(const Summary& summary, std::string_view name) {
  for (const auto& row : summary.rows()) {
    if (row.name == name) {
      return row;
    }
  }
  FAIL("no row named '" << name << "'");
  return summary.rows().front();
}

/// Every module's training flag, the model first, then its submodules in pre-order.
std::vector<bool> training_flags(torch::nn::Module& model) {
  std::vector<bool> flags{model.is_training()};
  for (const auto& module : model.modules(/*include_self=*/false)) {
    flags.push_back(module->is_training());
  }
  return flags;
}

std::vector<torch::Tensor> buffer_copies(torch::nn::Module& model) {
  std::vector<torch::Tensor> copies;
  for (const auto& buffer : model.buffers()) {
    copies.push_back(buffer.clone());
  }
  return copies;
}

bool buffers_equal(torch::nn::Module& model, const std::vector<torch::Tensor>& copies) {
  const auto buffers = model.buffers();
  if (buffers.size() != copies.size()) {
    return false;
  }
  for (std::size_t i = 0; i < buffers.size(); ++i) {
    if (!torch::equal(buffers[i], copies[i])) {
      return false;
    }
  }
  return true;
}

struct ThrowingNetImpl : torch::nn::Module {
  ThrowingNetImpl() {
    fc = register_module("fc", torch::nn::Linear(3, 3));
    norm = register_module("norm", torch::nn::BatchNorm1d(3));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    const torch::Tensor hidden = norm(fc(x));
    TORCH_CHECK(hidden.size(1) == 4, "ThrowingNet needs 4 features after fc, got ", hidden.size(1));
    return hidden;
  }
  torch::nn::Linear fc{nullptr};
  torch::nn::BatchNorm1d norm{nullptr};
};
TORCH_MODULE(ThrowingNet);

}  // namespace

// --- reference cases -------------------------------------------------------------------------

TEST_CASE("summary: torchinfo's SingleInputNet, rows and totals") {
  SingleInputNet net;
  const Summary summary = torchkit::summary(net, {1, 28, 28});
  const auto& rows = summary.rows();
  REQUIRE(rows.size() == 6);
  const std::vector<std::string> names{"", "conv1", "conv2", "conv2_drop", "fc1", "fc2"};
  const std::vector<std::string> types{"SingleInputNet", "Conv2d", "Conv2d", "Dropout2d", "Linear", "Linear"};
  const std::vector<std::vector<int64_t>> shapes{{2, 10}, {2, 10, 24, 24}, {2, 20, 8, 8}, {2, 20, 8, 8}, {2, 50}, {2, 10}};
  const std::vector<int64_t> params{21840, 260, 5020, 0, 16050, 510};
  // Conv: params x N x H x W; Linear: params x N.
  const std::vector<int64_t> mult_adds{975200, 260 * 2 * 24 * 24, 5020 * 2 * 8 * 8, 0, 16050 * 2, 510 * 2};
  for (std::size_t i = 0; i < rows.size(); ++i) {
    INFO("row ", i);
    CHECK(rows[i].name == names[i]);
    CHECK(rows[i].type == types[i]);
    CHECK(rows[i].depth == (i == 0 ? 0 : 1));
    CHECK(rows[i].output_shape == shapes[i]);
    CHECK(rows[i].params == params[i]);
    CHECK(rows[i].trainable_params == params[i]);
    CHECK(rows[i].mult_adds == mult_adds[i]);
    CHECK_FALSE(rows[i].recursive);
  }
  // The issue's numbers: 21,840 params; 975.20k mult-adds; 113.60 kB forward/backward; 87.36 kB params.
  CHECK(summary.total_params() == 21840);
  CHECK(summary.trainable_params() == 21840);
  CHECK(summary.non_trainable_params() == 0);
  CHECK(summary.total_mult_adds() == 975200);
  CHECK(summary.forward_backward_bytes() == 113600);
  CHECK(summary.param_bytes() == 87360);
  CHECK(summary.input_bytes() == 2 * 1 * 28 * 28 * 4);
  CHECK(summary.total_bytes() == 6272 + 113600 + 87360);
  CHECK(summary.has_forward_pass());
  check_against_golden(summary, "single_input_net");
}

TEST_CASE("summary: SingleInputNet prints as torchinfo prints it") {
  SingleInputNet net;
  const std::string expected =
      "==========================================================================================\n"
      "Layer (type:depth-idx)                   Output Shape              Param #\n"
      "==========================================================================================\n"
      "SingleInputNet                           [2, 10]                   --\n"
      "├─Conv2d: 1-1                            [2, 10, 24, 24]           260\n"
      "├─Conv2d: 1-2                            [2, 20, 8, 8]             5,020\n"
      "├─Dropout2d: 1-3                         [2, 20, 8, 8]             --\n"
      "├─Linear: 1-4                            [2, 50]                   16,050\n"
      "└─Linear: 1-5                            [2, 10]                   510\n"
      "==========================================================================================\n"
      "Total params: 21,840\n"
      "Trainable params: 21,840\n"
      "Non-trainable params: 0\n"
      "Total mult-adds (M): 0.98\n"
      "==========================================================================================\n"
      "Input size (MB): 0.01\n"
      "Forward/backward pass size (MB): 0.11\n"
      "Params size (MB): 0.09\n"
      "Estimated Total Size (MB): 0.21\n"
      "==========================================================================================";
  const Summary summary = torchkit::summary(net, {1, 28, 28});
  CHECK(summary.to_string() == expected);
  std::ostringstream out;
  out << summary;
  CHECK(out.str() == expected);
}

TEST_CASE("summary: the Flat style is pytorch-summary's table") {
  SingleInputNet net;
  const std::string expected =
      "----------------------------------------------------------------\n"
      "        Layer (type)               Output Shape         Param #\n"
      "================================================================\n"
      "            Conv2d-1           [-1, 10, 24, 24]             260\n"
      "            Conv2d-2             [-1, 20, 8, 8]           5,020\n"
      "         Dropout2d-3             [-1, 20, 8, 8]               0\n"
      "            Linear-4                   [-1, 50]          16,050\n"
      "            Linear-5                   [-1, 10]             510\n"
      "    SingleInputNet-6                   [-1, 10]               0\n"
      "================================================================\n"
      "Total params: 21,840\n"
      "Trainable params: 21,840\n"
      "Non-trainable params: 0\n"
      "----------------------------------------------------------------\n"
      "Input size (MB): 0.01\n"
      "Forward/backward pass size (MB): 0.11\n"
      "Params size (MB): 0.09\n"
      "Estimated Total Size (MB): 0.21\n"
      "----------------------------------------------------------------";
  CHECK(torchkit::summary(net, {1, 28, 28}, {.style = SummaryStyle::Flat}).to_string() == expected);
  CHECK(torchkit::summary(net, {1, 28, 28}).to_string(SummaryStyle::Flat) == expected);

  // With real inputs the shapes are printed as given, batch included.
  const std::string given = torchkit::summary_of(net, torch::rand({3, 1, 28, 28})).to_string(SummaryStyle::Flat);
  CHECK(given.find("[3, 10, 24, 24]") != std::string::npos);
  CHECK(given.find("[-1") == std::string::npos);
}

TEST_CASE("summary: torchinfo's Sequential of Linear and ReLU") {
  torch::nn::Sequential model = linear_relu_sequential();
  const Summary summary = torchkit::summary(model, {128}, {.batch_size = 64});
  CHECK(summary.total_params() == 33153);
  CHECK(summary.total_mult_adds() == 128 * 128 * 64 + 128 * 64 + 128 * 128 * 64 + 128 * 64 + 129 * 64);
  CHECK(summary.total_mult_adds() == 2121792);
  CHECK(summary.to_string().find("Total mult-adds (M): 2.12\n") != std::string::npos);
  // The children of a Sequential are walked one by one: names are their indices.
  const auto& rows = summary.rows();
  REQUIRE(rows.size() == 6);
  CHECK(rows[0].type == "Sequential");
  CHECK(rows[0].output_shape == std::vector<int64_t>{64, 1});
  for (int i = 0; i < 5; ++i) {
    CHECK(rows[static_cast<std::size_t>(i) + 1].name == std::to_string(i));
    CHECK(rows[static_cast<std::size_t>(i) + 1].type == (i % 2 == 0 ? "Linear" : "ReLU"));
  }
  check_against_golden(summary, "linear_relu_sequential");

  const std::string expected =
      "============================================================================================================================================\n"
      "Layer (type:depth-idx)                   Output Shape              Param #                   Mult-Adds                 Trainable\n"
      "============================================================================================================================================\n"
      "Sequential                               [64, 1]                   --                        --                        True\n"
      "├─Linear: 1-1                            [64, 128]                 16,512                    1,056,768                 True\n"
      "├─ReLU: 1-2                              [64, 128]                 --                        --                        --\n"
      "├─Linear: 1-3                            [64, 128]                 16,512                    1,056,768                 True\n"
      "├─ReLU: 1-4                              [64, 128]                 --                        --                        --\n"
      "└─Linear: 1-5                            [64, 1]                   129                       8,256                     True\n"
      "============================================================================================================================================\n"
      "Total params: 33,153\n"
      "Trainable params: 33,153\n"
      "Non-trainable params: 0\n"
      "Total mult-adds (M): 2.12\n"
      "============================================================================================================================================\n"
      "Input size (MB): 0.03\n"
      "Forward/backward pass size (MB): 0.13\n"
      "Params size (MB): 0.13\n"
      "Estimated Total Size (MB): 0.30\n"
      "============================================================================================================================================";
  CHECK(torchkit::summary(model, {128}, {.batch_size = 64, .show_mult_adds = true, .show_trainable = true}).to_string() ==
        expected);
}

TEST_CASE("summary: recurrent layers report the first tensor of their tuple output") {
  LSTMNet net;
  const Summary summary = torchkit::summary(net, {100}, {.batch_size = 1, .dtype = torch::kLong});
  // torchinfo's lstm.out: 3,784,580 params, forward/backward 0.67 MB, params 15.14 MB.
  check_against_golden(summary, "lstm_net");
  const auto& lstm = row_named(summary, "encoder");
  CHECK(lstm.output_shape == std::vector<int64_t>{1, 100, 512});
  // RNN weights: params x prod(output[:2]).
  CHECK(lstm.mult_adds == 3768320LL * 1 * 100);
  CHECK(row_named(summary, "decoder").mult_adds == 10260 * 1 * 100);
  CHECK(row_named(summary, "embedding").mult_adds == 6000 * 1);
  const std::string text = summary.to_string();
  CHECK(text.find("Forward/backward pass size (MB): 0.67\n") != std::string::npos);
  CHECK(text.find("Params size (MB): 15.14\n") != std::string::npos);
  CHECK(text.find("Estimated Total Size (MB): 15.80\n") != std::string::npos);

  // A GRU as the last child of a Sequential: its (output, h_n) tuple gives the first tensor.
  torch::nn::Sequential sequential(torch::nn::Linear(6, 8), torch::nn::GRU(torch::nn::GRUOptions(8, 12)));
  const Summary gru = torchkit::summary(sequential, {4, 6}, {.batch_size = 5});
  REQUIRE(gru.rows().size() == 3);
  CHECK(gru.rows()[2].type == "GRU");
  CHECK(gru.rows()[2].output_shape == std::vector<int64_t>{5, 4, 12});
  CHECK(gru.rows()[0].output_shape == std::vector<int64_t>{5, 4, 12});
  const int64_t gru_params = 3 * 12 * 8 + 3 * 12 * 12 + 2 * 3 * 12;
  CHECK(gru.rows()[2].params == gru_params);
  CHECK(gru.rows()[2].mult_adds == gru_params * 5 * 4);
}

TEST_CASE("summary: a module called again is a new row marked recursive") {
  RecursiveNet net;
  const Summary summary = torchkit::summary_of(net, torch::rand({1, 64, 28, 28}));
  check_against_golden(summary, "recursive_net");
  const std::string text = summary.to_string();
  // torchinfo's recursive.out.
  CHECK(text.find("├─Conv2d: 1-1                            [1, 64, 28, 28]           36,928\n"
                  "├─Conv2d: 1-2                            [1, 64, 28, 28]           (recursive)\n") != std::string::npos);
  CHECK(text.find("└─Conv2d: 1-6                            [1, 64, 28, 28]           (recursive)\n") != std::string::npos);
  CHECK(text.find("Total mult-adds (M): 173.71\n") != std::string::npos);
  CHECK(text.find("Forward/backward pass size (MB): 2.41\n") != std::string::npos);
  CHECK(text.find("Estimated Total Size (MB): 2.76\n") != std::string::npos);

  // A block with submodules called twice in a row: the block and its children repeat.
  SharedBlockNet shared;
  const Summary twice = torchkit::summary(shared, {8});
  check_against_golden(twice, "shared_block_net");
  REQUIRE(twice.rows().size() == 8);
  CHECK(twice.rows()[4].name == "block");
  CHECK(twice.rows()[4].recursive);

  // The same module twice in a Sequential.
  torch::nn::Linear linear(4, 4);
  torch::nn::Sequential sequential(linear, torch::nn::Tanh(), linear);
  const Summary repeated = torchkit::summary(sequential, {4});
  REQUIRE(repeated.rows().size() == 4);
  CHECK_FALSE(repeated.rows()[1].recursive);
  CHECK(repeated.rows()[3].recursive);
  CHECK(repeated.total_params() == 20);
  CHECK(repeated.total_mult_adds() == 2 * 20 * 2);
  CHECK(repeated.to_string().find("(recursive)") != std::string::npos);
}

TEST_CASE("summary: any forward, ResNet's blocks with a reused ReLU") {
  MiniResNet net;
  const Summary summary = torchkit::summary(net, {3, 64, 64});
  check_against_golden(summary, "mini_resnet");
  // The block's ReLU is called twice; the downsample runs before the second call.
  const auto& rows = summary.rows();
  std::vector<std::string> block;
  bool inside = false;
  for (const auto& row : rows) {
    if (row.name == "layer2.0") {
      inside = true;
      continue;
    }
    if (inside && row.depth <= 2) {
      break;
    }
    if (inside && row.depth == 3) {
      block.push_back(row.name + (row.recursive ? "*" : ""));
    }
  }
  CHECK(block == std::vector<std::string>{"layer2.0.conv1", "layer2.0.bn1", "layer2.0.relu", "layer2.0.conv2",
                                          "layer2.0.bn2", "layer2.0.downsample", "layer2.0.relu*"});
  const std::string text = summary.to_string();
  CHECK(text.find("│    │    ├─Sequential: 3-18             [2, 128, 8, 8]            8,448\n"
                  "│    │    └─ReLU: 3-19                   [2, 128, 8, 8]            --\n"
                  "│    └─BasicBlock: 2-4                   [2, 128, 8, 8]            --\n"
                  "│         ├─Conv2d: 3-20                 [2, 128, 8, 8]            147,456\n") != std::string::npos);
  CHECK(text.find("├─AdaptiveAvgPool2d: 1-7                 [2, 128, 1, 1]            --\n"
                  "└─Linear: 1-8                            [2, 10]                   1,290\n") != std::string::npos);

  // depth = 1: containers at the last depth show all their parameters.
  const std::string shallow = torchkit::summary(net, {3, 64, 64}, {.depth = 1}).to_string();
  CHECK(shallow.find("BasicBlock") == std::string::npos);
  CHECK(shallow.find("├─Sequential: 1-5                        [2, 64, 16, 16]           147,968\n") != std::string::npos);
  CHECK(shallow.find("├─Sequential: 1-6                        [2, 128, 8, 8]            525,568\n") != std::string::npos);
}

TEST_CASE("summary: trainable, frozen and partially frozen modules") {
  MixedTrainable net;
  const Summary summary = torchkit::summary(net, {10});
  check_against_golden(summary, "mixed_trainable");
  CHECK(summary.trainable_params() == 20 + 50);
  CHECK(summary.non_trainable_params() == 110 + 5);
  CHECK(row_named(summary, "fc1").trainable_params == 0);
  CHECK(row_named(summary, "fc2").trainable_params == 50);
  const std::string text = torchkit::summary(net, {10}, {.show_trainable = true}).to_string();
  CHECK(text.find("MixedTrainable                           [2, 5]                    --                        Partial\n") !=
        std::string::npos);
  CHECK(text.find("├─Linear: 1-1                            [2, 10]                   (110)                     False\n") !=
        std::string::npos);
  CHECK(text.find("├─BatchNorm1d: 1-2                       [2, 10]                   20                        True\n") !=
        std::string::npos);
  CHECK(text.find("└─Linear: 1-3                            [2, 5]                    55                        Partial\n") !=
        std::string::npos);
  CHECK(text.find("Non-trainable params: 115\n") != std::string::npos);
}

TEST_CASE("summary: tied parameters count once") {
  TiedNet net;
  const Summary summary = torchkit::summary(net, {4});
  check_against_golden(summary, "tied_net");
  CHECK(summary.total_params() == 16 + 4 + 4);
  CHECK(row_named(summary, "decoder").params == 20);
  CHECK(row_named(summary, "decoder").output_shape == std::vector<int64_t>{2, 4});
}

TEST_CASE("summary: several inputs") {
  MultiInputNet net;
  // Two 1-D inputs are written as a vector of vectors ({{3}, {5}} in braces reads as one shape).
  const Summary summary = torchkit::summary(net, std::vector<std::vector<int64_t>>{{3}, {5}});
  check_against_golden(summary, "multi_input_net");
  CHECK(summary.input_bytes() == (2 * 3 + 2 * 5) * 4);
  const Summary given = torchkit::summary_of(net, torch::rand({2, 3}), torch::rand({2, 5}));
  CHECK(given.to_string() == summary.to_string());

  // Per-input dtypes: an Embedding takes integer indices.
  struct TwoKindsImpl : torch::nn::Module {
    TwoKindsImpl() {
      embedding = register_module("embedding", torch::nn::Embedding(10, 3));
      fc = register_module("fc", torch::nn::Linear(3, 3));
    }
    torch::Tensor forward(const torch::Tensor& tokens, const torch::Tensor& features) {
      return embedding(tokens).sum(1) + fc(features);
    }
    torch::nn::Embedding embedding{nullptr};
    torch::nn::Linear fc{nullptr};
  };
  auto two = std::make_shared<TwoKindsImpl>();
  const Summary kinds = torchkit::summary(two, std::vector<std::vector<int64_t>>{{7}, {3}}, {.dtypes = {torch::kLong, torch::kFloat}});
  CHECK(row_named(kinds, "embedding").output_shape == std::vector<int64_t>{2, 7, 3});
  CHECK(kinds.input_bytes() == 2 * 7 * 8 + 2 * 3 * 4);
}

TEST_CASE("summary: nested containers, a ModuleDict head never called") {
  NestedContainers net;
  const Summary summary = torchkit::summary(net, {5}, {.batch_size = 1});
  // The loops over the Sequential's children call its layers without its forward: Python's
  // hooks see no Sequential call there, summary sees the same operators as a call; the leaf
  // calls and the totals agree.
  check_against_golden(summary, "nested_containers", {"Sequential"});
  const auto& list = row_named(summary, "_layers");
  CHECK(list.type == "ModuleList");
  CHECK(list.output_shape.empty());
  CHECK(list.params == 150);
  const auto& unused = row_named(summary, "heads.unused");
  CHECK(unused.output_shape.empty());
  CHECK(unused.params == 42);
  CHECK_FALSE(unused.recursive);
  CHECK(row_named(summary, "heads").type == "ModuleDict");
  // The never-called head comes after its called sibling, below "heads".
  const auto& rows = summary.rows();
  const auto position = [&](const std::string& name) {
    return std::find_if(rows.begin(), rows.end(), [&](const auto& row) { return row.name == name; }) - rows.begin();
  };
  CHECK(position("heads") < position("heads.used"));
  CHECK(position("heads.used") < position("heads.unused"));
  // Sequential calls: the call, the loop, the call again, the loop again.
  int sequential_rows = 0;
  int recursive_sequential_rows = 0;
  for (const auto& row : rows) {
    if (row.name == "_layers.1._sequential") {
      ++sequential_rows;
      recursive_sequential_rows += row.recursive ? 1 : 0;
    }
  }
  CHECK(sequential_rows == 4);
  CHECK(recursive_sequential_rows == 3);
  const std::string text = summary.to_string();
  CHECK(text.find("├─ModuleList: 1-1                        --                        --\n"
                  "│    ├─Linear: 2-1                       [1, 5]                    30\n"
                  "│    ├─Child: 2-2                        [1, 5]                    --\n"
                  "│    │    ├─Sequential: 3-1              [1, 5]                    60\n") != std::string::npos);
  CHECK(text.find("└─ModuleDict: 1-2                        --                        --\n"
                  "     ├─Linear: 2-4                       [1, 3]                    18\n"
                  "     └─Linear: 2-5                       --                        42\n") != std::string::npos);
}

TEST_CASE("summary: each Row carries what the tables are drawn from (the one row model)") {
  NestedContainers net;
  const Summary summary = torchkit::summary(net, {5}, {.batch_size = 1});
  const std::string text = summary.to_string();
  for (const auto& row : summary.rows()) {
    INFO("row ", row.name, " (", row.type, ")");
    if (row.depth >= 1 && row.depth <= summary.options().depth && !row.placeholder) {  // printed titles: depth-depth_index
      CHECK(row.depth_index >= 1);
      CHECK(text.find(fmt::format("{}: {}-{}", row.type, row.depth, row.depth_index)) != std::string::npos);
    }
    if (row.leaf) {
      CHECK(row.own_params == row.params);  // no submodules, no tied tensors in this model
    }
    CHECK(row.container == (row.type == "Sequential" || row.type == "ModuleList" || row.type == "ModuleDict"));
    if (!row.output_shape.empty()) {
      CHECK(row.output_element_size == 4);  // float outputs
    }
  }
  CHECK(row_named(summary, "heads.used").called);
  CHECK_FALSE(row_named(summary, "heads.unused").called);
  CHECK_FALSE(row_named(summary, "_layers").leaf);
  CHECK(row_named(summary, "_layers").own_params == 0);
  // {fmt} prints the table with summary.hpp alone; the earlier enumerator spellings still work.
  CHECK(fmt::format("{}", summary) == text);
  static_assert(SummaryStyle::Tree == SummaryStyle::tree && SummaryStyle::Flat == SummaryStyle::flat);
  CHECK(summary.to_string(SummaryStyle::flat) == summary.to_string(SummaryStyle::Flat));
}

TEST_CASE("summary: parameters only, no forward pass") {
  ThrowingNet net;  // its forward throws; summary(model) never calls it
  const Summary summary = torchkit::summary(net);
  CHECK_FALSE(summary.has_forward_pass());
  REQUIRE(summary.rows().size() == 3);
  CHECK(summary.rows()[1].name == "fc");
  CHECK(summary.rows()[2].name == "norm");
  for (const auto& row : summary.rows()) {
    CHECK(row.output_shape.empty());
  }
  CHECK(summary.total_params() == 12 + 6);
  CHECK(summary.total_mult_adds() == 0);
  CHECK(summary.input_bytes() == 0);
  const std::string expected =
      "=================================================================\n"
      "Layer (type:depth-idx)                   Param #\n"
      "=================================================================\n"
      "ThrowingNet                              --\n"
      "├─Linear: 1-1                            12\n"
      "└─BatchNorm1d: 1-2                       6\n"
      "=================================================================\n"
      "Total params: 18\n"
      "Trainable params: 18\n"
      "Non-trainable params: 0\n"
      "=================================================================";
  CHECK(summary.to_string() == expected);
}

TEST_CASE("summary: the model is left exactly as it was") {
  MiniResNet net;
  net->train();
  net->layer1->eval();     // mixed flags: each module's own flag comes back
  net->fc->train(true);
  const auto flags = training_flags(*net);
  const auto buffers = buffer_copies(*net);
  const bool grad_mode = torch::GradMode::is_enabled();
  std::vector<bool> requires_grad;
  for (const auto& parameter : net->parameters()) {
    requires_grad.push_back(parameter.requires_grad());
  }

  const Summary summary = torchkit::summary(net, {3, 32, 32});
  CHECK(summary.total_params() == 684362);
  CHECK(training_flags(*net) == flags);
  CHECK(buffers_equal(*net, buffers));  // BatchNorm running statistics unchanged
  CHECK(torch::GradMode::is_enabled() == grad_mode);
  CHECK_FALSE(at::hasThreadLocalCallbacks());
  std::size_t index = 0;
  for (const auto& parameter : net->parameters()) {
    CHECK_FALSE(parameter.grad().defined());
    CHECK(parameter.requires_grad() == requires_grad[index++]);
  }

  // The same when forward throws.
  ThrowingNet throwing;
  throwing->train();
  const auto throwing_flags = training_flags(*throwing);
  const auto throwing_buffers = buffer_copies(*throwing);
  const std::string message = torchkit::test::message_of<torchkit::Error>([&] { (void)torchkit::summary(throwing, {3}); });
  CHECK(message.find("[2, 3]") != std::string::npos);
  CHECK(message.find("ThrowingNet needs 4 features after fc, got 3") != std::string::npos);
  CHECK(message.find("ThrowingNet") != std::string::npos);
  CHECK(training_flags(*throwing) == throwing_flags);
  CHECK(buffers_equal(*throwing, throwing_buffers));
  CHECK(torch::GradMode::is_enabled() == grad_mode);
  CHECK_FALSE(at::hasThreadLocalCallbacks());
  // And the observer still works afterwards.
  CHECK(torchkit::summary(net, {3, 32, 32}).to_string() == summary.to_string());
}

TEST_CASE("summary: two threads summarise two models at once") {
  MiniResNet resnet;
  SingleInputNet single;
  const std::string resnet_text = torchkit::summary(resnet, {3, 32, 32}).to_string();
  const std::string single_text = torchkit::summary(single, {1, 28, 28}).to_string();
  std::vector<std::string> resnet_results(4);
  std::vector<std::string> single_results(4);
  std::thread first([&] {
    for (auto& result : resnet_results) {
      result = torchkit::summary(resnet, {3, 32, 32}).to_string();
    }
  });
  std::thread second([&] {
    for (auto& result : single_results) {
      result = torchkit::summary(single, {1, 28, 28}).to_string();
    }
  });
  first.join();
  second.join();
  for (const auto& result : resnet_results) {
    CHECK(result == resnet_text);
  }
  for (const auto& result : single_results) {
    CHECK(result == single_text);
  }
}

TEST_CASE("summary: the forms a model is held in") {
  torch::nn::Sequential reference = linear_relu_sequential();
  const std::string expected = torchkit::summary(reference, {128}).to_string();
  // A holder, a shared_ptr to the Impl, the Impl itself, a Sequential as a torch::nn::Module
  // pointer. (An AnyModule cannot hold a Sequential.)
  torch::nn::Sequential holder = linear_relu_sequential();
  std::shared_ptr<torch::nn::SequentialImpl> pointer = holder.ptr();
  std::shared_ptr<torch::nn::Module> base = holder.ptr();
  CHECK(torchkit::summary(holder, {128}).to_string() == expected);
  CHECK(torchkit::summary(pointer, {128}).to_string() == expected);
  CHECK(torchkit::summary(*pointer, {128}).to_string() == expected);
  CHECK(torchkit::summary(base, {128}).to_string() == expected);

  torch::nn::AnyModule any_linear(torch::nn::Linear(3, 2));
  const Summary linear = torchkit::summary(any_linear, {3});
  REQUIRE(linear.rows().size() == 1);
  CHECK(linear.rows()[0].type == "Linear");
  CHECK(linear.rows()[0].output_shape == std::vector<int64_t>{2, 2});
  CHECK(linear.total_mult_adds() == 8 * 2);

  // A forward that takes more than tensors, through summary_of.
  struct ScaledImpl : torch::nn::Module {
    ScaledImpl() { fc = register_module("fc", torch::nn::Linear(3, 3)); }
    torch::Tensor forward(const torch::Tensor& x, double scale) { return fc(x) * scale; }
    torch::nn::Linear fc{nullptr};
  };
  ScaledImpl scaled;
  const Summary with_scale = torchkit::summary_of(scaled, torch::rand({4, 3}), 0.5);
  CHECK(row_named(with_scale, "fc").output_shape == std::vector<int64_t>{4, 3});
  CHECK(with_scale.input_bytes() == 4 * 3 * 4);
  CHECK(torchkit::summary_of(SummaryOptions{.depth = 0}, scaled, torch::rand({4, 3}), 0.5).to_string().find("Linear") ==
        std::string::npos);
}

namespace {

// A Sequential with a forward of its own (a residual around its layers), as in torchvision's
// C++ MNASNet: summary must call that forward, not walk the children.
struct ResidualSequentialImpl : torch::nn::SequentialImpl {
  ResidualSequentialImpl() : torch::nn::SequentialImpl(torch::nn::Linear(6, 6), torch::nn::ReLU()) {}
  torch::Tensor forward(const torch::Tensor& x) { return x + torch::nn::SequentialImpl::forward(x); }
};
TORCH_MODULE(ResidualSequential);

// A parameter-free module of its own kind: it runs no operator named after it.
struct HalveImpl : torch::nn::Module {
  torch::Tensor forward(const torch::Tensor& x) { return x * 0.5; }
};
TORCH_MODULE(Halve);

struct WithUnseenImpl : torch::nn::Module {
  WithUnseenImpl() {
    fc = register_module("fc", torch::nn::Linear(6, 6));
    halve = register_module("halve", Halve());
    identity = register_module("identity", torch::nn::Identity());
  }
  torch::Tensor forward(const torch::Tensor& x) { return identity(halve(fc(x))); }
  torch::nn::Linear fc{nullptr};
  Halve halve{nullptr};
  torch::nn::Identity identity{nullptr};
};
TORCH_MODULE(WithUnseen);

// Runs a summary of its submodule inside its own forward.
struct SummarisingImpl : torch::nn::Module {
  SummarisingImpl() { fc = register_module("fc", torch::nn::Linear(2, 2)); }
  torch::Tensor forward(const torch::Tensor& x) {
    inner_total = torchkit::summary(fc, {2}).total_params();
    return fc(x);
  }
  torch::nn::Linear fc{nullptr};
  int64_t inner_total = 0;
};
TORCH_MODULE(Summarising);

}  // namespace

TEST_CASE("summary: Sequential subclasses, modules that cannot be seen, a summary inside forward") {
  ResidualSequential residual;
  const Summary own_forward = torchkit::summary(residual, {6});
  REQUIRE(own_forward.rows().size() == 3);
  CHECK(own_forward.rows()[0].type == "ResidualSequential");
  CHECK(own_forward.rows()[0].output_shape == std::vector<int64_t>{2, 6});
  CHECK(own_forward.rows()[1].output_shape == std::vector<int64_t>{2, 6});
  CHECK(own_forward.rows()[2].type == "ReLU");
  CHECK(own_forward.total_mult_adds() == 42 * 2);
  // As the child of a Sequential it runs its own forward too.
  torch::nn::Sequential outer(residual, torch::nn::Linear(6, 1));
  const Summary nested = torchkit::summary(outer, {6});
  REQUIRE(nested.rows().size() == 5);
  CHECK(nested.rows()[1].type == "ResidualSequential");
  CHECK(nested.rows()[2].name == "0.0");
  CHECK(nested.rows()[4].output_shape == std::vector<int64_t>{2, 1});

  // A custom parameter-free module and Identity run no operator of their own: no shape.
  WithUnseen unseen;
  const Summary partial = torchkit::summary(unseen, {6});
  CHECK(row_named(partial, "fc").output_shape == std::vector<int64_t>{2, 6});
  CHECK(row_named(partial, "halve").output_shape.empty());
  CHECK(row_named(partial, "identity").output_shape.empty());
  CHECK(partial.rows()[0].output_shape == std::vector<int64_t>{2, 6});

  // summary() called inside a forward that summary() runs: both work.
  Summarising summarising;
  const Summary outer_summary = torchkit::summary(summarising, {2});
  CHECK(summarising->inner_total == 6);
  CHECK(row_named(outer_summary, "fc").output_shape == std::vector<int64_t>{2, 2});
  CHECK_FALSE(at::hasThreadLocalCallbacks());
}

// --- bad input -------------------------------------------------------------------------------

TEST_CASE("summary: bad input names the value and leaves the model alone") {
  SingleInputNet net;
  net->train();
  const auto flags = training_flags(*net);
  using torchkit::test::message_of;

  CHECK(message_of<torchkit::Error>([&] { (void)torchkit::summary(net, std::vector<int64_t>{}); })
            .find("input_size 0 is empty") != std::string::npos);
  CHECK(message_of<torchkit::Error>([&] { (void)torchkit::summary(net, std::vector<std::vector<int64_t>>{}); })
            .find("input_sizes is empty") != std::string::npos);
  const std::string zero = message_of<torchkit::Error>([&] { (void)torchkit::summary(net, {1, 0, 28}); });
  CHECK(zero.find("dimension 1 of input_size 0 is 0 in [1, 0, 28]") != std::string::npos);
  const std::string negative =
      message_of<torchkit::Error>([&] { (void)torchkit::summary(net, {{1, 28, 28}, {3, -2}}); });
  CHECK(negative.find("dimension 1 of input_size 1 is -2") != std::string::npos);
  CHECK(message_of<torchkit::Error>([&] { (void)torchkit::summary(net, {1, 28, 28}, {.batch_size = 0}); })
            .find("batch_size is 0") != std::string::npos);
  CHECK(message_of<torchkit::Error>([&] { (void)torchkit::summary(net, {1, 28, 28}, {.depth = -1}); })
            .find("depth is -1") != std::string::npos);
  CHECK(message_of<torchkit::Error>([&] {
          (void)torchkit::summary(net, {1, 28, 28}, {.dtypes = {torch::kFloat, torch::kLong}});
        }).find("dtypes has 2 entries for 1 inputs") != std::string::npos);

  // A forward that does not take the inputs: two tensors for a one-tensor forward.
  const std::string arity = message_of<torchkit::Error>([&] { (void)torchkit::summary(net, {{1, 28, 28}, {4}}); });
  CHECK(arity.find("does not take 2 tensor arguments") != std::string::npos);
  CHECK(arity.find("[2, 1, 28, 28], [2, 4]") != std::string::npos);
  CHECK(message_of<torchkit::Error>([&] { (void)torchkit::summary_of(net, 3.5); })
            .find("forward does not take these arguments; inputs tried: 3.5") != std::string::npos);
  // A forward that throws for the input: three channels for a one-channel convolution.
  const std::string channels = message_of<torchkit::Error>([&] { (void)torchkit::summary(net, {3, 28, 28}); });
  CHECK(channels.find("failed for input shapes [2, 3, 28, 28]") != std::string::npos);
  CHECK(channels.find("SingleInputNet") != std::string::npos);
  // A Sequential that gets two inputs for its first layer.
  torch::nn::Sequential sequential = linear_relu_sequential();
  CHECK(message_of<torchkit::Error>([&] { (void)torchkit::summary(sequential, std::vector<std::vector<int64_t>>{{128}, {128}}); })
            .find("[2, 128], [2, 128]") != std::string::npos);
  // The inputs would be made where the model is not.
  const std::string device =
      message_of<torchkit::Error>([&] { (void)torchkit::summary(net, {1, 28, 28}, {.device = torch::kMeta}); });
  CHECK(device.find("parameter 'conv1.weight' is on cpu") != std::string::npos);
  CHECK(device.find("meta") != std::string::npos);
  // No model behind the holder or pointer; a module whose forward summary cannot see.
  SingleInputNet empty{nullptr};
  CHECK(message_of<torchkit::Error>([&] { (void)torchkit::summary(empty, {1, 28, 28}); }).find("empty") !=
        std::string::npos);
  std::shared_ptr<torch::nn::Module> opaque = net.ptr();
  CHECK(message_of<torchkit::Error>([&] { (void)torchkit::summary(opaque, {1, 28, 28}); })
            .find("has no forward()") != std::string::npos);

  CHECK(training_flags(*net) == flags);
  CHECK_FALSE(at::hasThreadLocalCallbacks());
}

// --- formatting helpers ----------------------------------------------------------------------

TEST_CASE("summary: torchinfo's number formats") {
  namespace impl = torchkit::detail::summary_impl;
  CHECK(impl::with_thousands(0) == "0");
  CHECK(impl::with_thousands(999) == "999");
  CHECK(impl::with_thousands(21840) == "21,840");
  CHECK(impl::with_thousands(3784580) == "3,784,580");
  CHECK(impl::with_thousands(-1234567) == "-1,234,567");
  CHECK(impl::with_thousands_2f(1234.5) == "1,234.50");
  CHECK(impl::mult_adds_with_unit(975200) == " (M): 0.98");
  CHECK(impl::mult_adds_with_unit(0) == " (M): 0");
  CHECK(impl::mult_adds_with_unit(2000000) == " (M): 2");
  CHECK(impl::mult_adds_with_unit(8180000000) == " (G): 8.18");
  CHECK(impl::mult_adds_with_unit(1234567000000000) == " (T): 1,234.57");
  CHECK(impl::megabytes(113600) == "0.11");
  CHECK(impl::megabytes(459100000) == "459.10");
  CHECK(impl::short_type_name("torch::nn::Conv2dImpl") == "Conv2d");
  CHECK(impl::short_type_name("(anonymous namespace)::NetImpl") == "Net");
  CHECK(impl::short_type_name("ns::Block<std::pair<int, int> >") == "Block<std::pair<int, int> >");
  CHECK(impl::short_type_name("Impl") == "Impl");
  CHECK(impl::tree_prefix({true, false}) == "│    └─");
  CHECK(impl::tree_prefix({false, false, true}) == "          ├─");
}

// --- Count::Operators: mult-adds per operator --------------------------------------------------

namespace {

using torchkit::Count;

/// The mult-adds summed per operator name, and their sum, from a summary.
std::map<std::string, std::int64_t> mult_adds_by_operator(const Summary& info) {
  std::map<std::string, std::int64_t> totals;
  for (const auto& total : info.operator_totals()) {
    totals[total.name] += total.mult_adds;
  }
  return totals;
}

/// The mult-adds of the operators a Linear layer runs and of raw matmuls. LibTorch 1.13's
/// `F::linear` runs `aten::addmm` (2-D input) or `aten::matmul`, later versions `aten::linear`,
/// so the tests add these up.
std::int64_t matrix_products(const std::map<std::string, std::int64_t>& totals) {
  std::int64_t sum = 0;
  for (const char* name : {"aten::linear", "aten::matmul", "aten::addmm"}) {
    sum += totals.contains(name) ? totals.at(name) : 0;
  }
  return sum;
}

std::int64_t sum_of(const std::map<std::string, std::int64_t>& totals) {
  std::int64_t sum = 0;
  for (const auto& [name, mult_adds] : totals) {
    sum += mult_adds;
  }
  return sum;
}

const Summary::Row& called_row(const Summary& info, const std::string& name) {
  for (const auto& row : info.rows()) {
    if (row.name == name && row.called) {
      return row;
    }
  }
  throw std::runtime_error("no called row " + name);
}

/// Multi-head self-attention written with raw matmuls in its own forward: the products of the
/// attention are no module, so torchinfo's rule never sees them.
struct RawAttentionImpl : torch::nn::Module {
  RawAttentionImpl(std::int64_t embed, std::int64_t heads) : embed(embed), heads(heads) {
    q = register_module("q", torch::nn::Linear(embed, embed));
    k = register_module("k", torch::nn::Linear(embed, embed));
    v = register_module("v", torch::nn::Linear(embed, embed));
    o = register_module("o", torch::nn::Linear(embed, embed));
  }
  torch::Tensor split(const torch::Tensor& x) const {
    return x.view({x.size(0), x.size(1), heads, embed / heads}).transpose(1, 2);  // (B, h, S, d)
  }
  torch::Tensor forward(const torch::Tensor& x) {
    const torch::Tensor query = split(q(x));
    const torch::Tensor key = split(k(x));
    const torch::Tensor value = split(v(x));
    const double scale = 1.0 / std::sqrt(static_cast<double>(embed / heads));
    const torch::Tensor weights = torch::softmax(query.matmul(key.transpose(-2, -1)) * scale, -1);
    const torch::Tensor mixed = weights.matmul(value).transpose(1, 2).reshape({x.size(0), x.size(1), embed});
    return o(mixed);
  }
  std::int64_t embed, heads;
  torch::nn::Linear q{nullptr}, k{nullptr}, v{nullptr}, o{nullptr};
};
TORCH_MODULE(RawAttention);

struct AttentionNetImpl : torch::nn::Module {
  AttentionNetImpl() {
    attention = register_module("attention", RawAttention(12, 3));
    head = register_module("head", torch::nn::Linear(12, 5));
  }
  torch::Tensor forward(const torch::Tensor& x) { return head(attention(x)); }
  RawAttention attention{nullptr};
  torch::nn::Linear head{nullptr};
};
TORCH_MODULE(AttentionNet);

struct EinsumNetImpl : torch::nn::Module {
  EinsumNetImpl() { proj = register_module("proj", torch::nn::Linear(6, 6)); }
  torch::Tensor forward(const torch::Tensor& x) {
    const torch::Tensor y = proj(x);                    // (B, S, 6)
    const torch::Tensor scores = torch::einsum("bsd,btd->bst", {y, y});
    return torch::einsum("bst,btd->bsd", {scores, y});
  }
  torch::nn::Linear proj{nullptr};
};
TORCH_MODULE(EinsumNet);

}  // namespace

TEST_CASE("summary: Count::Operators counts the matmuls of a transformer encoder layer") {
  // S = 5, N = 2, E = 16, 4 heads, feed-forward 32. LibTorch's self-attention runs one in-projection
  // linear (E -> 3E) on the S x N tokens, Q K^T and the weighted sum of V as two bmm of
  // (N * heads) x S x S x (E / heads) each, then the out-projection; linear1 and linear2 follow.
  constexpr std::int64_t S = 5, N = 2, E = 16, heads = 4, FF = 32;
  torch::manual_seed(0);
  torch::nn::TransformerEncoderLayer layer(torch::nn::TransformerEncoderLayerOptions(E, heads).dim_feedforward(FF));
  const torch::Tensor src = torch::rand({S, N, E});
  const Summary info = torchkit::summary_of({.count = Count::operators}, layer, src);

  const std::int64_t in_projection = S * N * E * 3 * E;
  const std::int64_t out_projection = S * N * E * E;
  const std::int64_t feed_forward = S * N * E * FF + S * N * FF * E;
  const std::int64_t attention_products = 2 * (N * heads) * S * S * (E / heads);
  const auto totals = mult_adds_by_operator(info);
  CHECK(matrix_products(totals) == in_projection + out_projection + feed_forward);
  CHECK(sum_of(totals) - matrix_products(totals) == attention_products);  // the bmm of the attention
  CHECK(sum_of(totals) == in_projection + out_projection + feed_forward + attention_products);
  CHECK(info.total_mult_adds() == sum_of(totals));
  CHECK(info.rows().front().mult_adds == info.total_mult_adds());
  CHECK(called_row(info, "linear1").mult_adds == S * N * E * FF);
  CHECK(called_row(info, "linear2").mult_adds == S * N * FF * E);
  CHECK(called_row(info, "self_attn.out_proj").mult_adds == out_projection);
  // torchinfo's rule sees only the modules' weights: the attention products are missing.
  const Summary modules = torchkit::summary_of(layer, src);
  CHECK(modules.total_mult_adds() < info.total_mult_adds());
  CHECK(modules.operator_totals().empty());
}

TEST_CASE("summary: Count::Operators counts raw matmuls in a custom forward for the module that ran them") {
  constexpr std::int64_t B = 2, S = 4, E = 12, heads = 3;
  torch::manual_seed(1);
  const std::int64_t projections = 4 * B * S * E * E;
  const std::int64_t products = 2 * (B * heads) * S * S * (E / heads);
  SUBCASE("the attention block as the model") {
    RawAttention block(E, heads);
    const Summary info = torchkit::summary(block, {S, E}, {.count = Count::operators});
    const auto totals = mult_adds_by_operator(info);
    CHECK(matrix_products(totals) == projections + products);
    CHECK(sum_of(totals) == projections + products);
    CHECK(info.total_mult_adds() == projections + products);
    CHECK(info.rows().front().mult_adds == projections + products);
    CHECK(called_row(info, "q").mult_adds == B * S * E * E);
    std::int64_t calls = 0;
    for (const auto& total : info.operator_totals()) {
      calls += total.calls;
    }
    CHECK(calls == 4 + 2);  // four projections, two attention products
  }
  SUBCASE("the attention block inside a custom forward") {
    AttentionNet net;
    const Summary info = torchkit::summary(net, {S, E}, {.count = Count::operators});
    CHECK(called_row(info, "attention").mult_adds == projections + products);
    CHECK(called_row(info, "head").mult_adds == B * S * E * 5);
    CHECK(info.total_mult_adds() == projections + products + B * S * E * 5);
    CHECK(info.total_mult_adds() == sum_of(mult_adds_by_operator(info)));
  }
  SUBCASE("the attention block as a Sequential child") {
    torch::nn::Sequential sequential(RawAttention(E, heads), torch::nn::ReLU());
    const Summary info = torchkit::summary(sequential, {S, E}, {.count = Count::operators});
    CHECK(called_row(info, "0").mult_adds == projections + products);
    CHECK(info.total_mult_adds() == projections + products);
  }
}

TEST_CASE("summary: Count::Operators counts grouped, dilated, strided and transposed convolutions") {
  // Input (1, 8, 10, 10).
  // conv 0: 8 -> 16, 3x3, groups 4, dilation 2, padding 1: output 8x8 (10 + 2 - 5 + 1), each
  //         output element reads 8/4 channels x 9 taps.
  // conv 2: 16 -> 32, 3x3, stride 2, groups 16: output 3x3 ((8 - 3) / 2 + 1), 16/16 x 9 taps.
  // conv 3: transposed 32 -> 8, 2x2, stride 2, groups 2: each of the 32 x 3 x 3 input elements is
  //         spread over 8/2 x 4 outputs.
  // conv1d 4 on (1, 8, 36) viewed from the (1, 8, 6, 6) output: 8 -> 4, kernel 3, dilation 3: output
  //         36 - 6 = 30, each element reads 8 x 3.
  using torch::nn::Conv2dOptions;
  torch::manual_seed(2);
  torch::nn::Sequential net(torch::nn::Conv2d(Conv2dOptions(8, 16, 3).groups(4).dilation(2).padding(1)), torch::nn::ReLU(),
                            torch::nn::Conv2d(Conv2dOptions(16, 32, 3).stride(2).groups(16)),
                            torch::nn::ConvTranspose2d(torch::nn::ConvTranspose2dOptions(32, 8, 2).stride(2).groups(2)),
                            torch::nn::Flatten(torch::nn::FlattenOptions().start_dim(2)),
                            torch::nn::Conv1d(torch::nn::Conv1dOptions(8, 4, 3).dilation(3)));
  const Summary info = torchkit::summary(net, {8, 10, 10}, {.batch_size = 1, .count = Count::operators});
  const std::int64_t conv0 = 16 * 8 * 8 * (8 / 4) * 9;
  const std::int64_t conv2 = 32 * 3 * 3 * (16 / 16) * 9;
  const std::int64_t conv3 = 32 * 3 * 3 * (8 / 2) * 4;
  const std::int64_t conv5 = 4 * 30 * 8 * 3;
  CHECK(called_row(info, "0").mult_adds == conv0);
  CHECK(called_row(info, "2").mult_adds == conv2);
  CHECK(called_row(info, "3").mult_adds == conv3);
  CHECK(called_row(info, "5").output_shape == std::vector<std::int64_t>{1, 4, 30});
  CHECK(called_row(info, "5").mult_adds == conv5);
  const auto totals = mult_adds_by_operator(info);
  CHECK(totals.at("aten::conv2d") == conv0 + conv2);
  CHECK(totals.at("aten::conv_transpose2d") == conv3);
  CHECK(totals.at("aten::conv1d") == conv5);
  CHECK(info.total_mult_adds() == conv0 + conv2 + conv3 + conv5);
}

TEST_CASE("summary: Count::Operators counts every weight matrix of an LSTM at every step") {
  // T = 7, batch 3, input 10, hidden 20, two layers, both directions: layer 0 has W_ih 80 x 10 and
  // W_hh 80 x 20 per direction, layer 1 W_ih 80 x 40 and W_hh 80 x 20; every step of every row
  // multiplies by each of them.
  torch::manual_seed(3);
  torch::nn::LSTM lstm(torch::nn::LSTMOptions(10, 20).num_layers(2).bidirectional(true));
  const Summary info = torchkit::summary_of({.count = Count::operators}, lstm, torch::rand({7, 3, 10}));
  const std::int64_t per_row_step = 2 * (80 * 10 + 80 * 20) + 2 * (80 * 40 + 80 * 20);
  CHECK(info.total_mult_adds() == 7 * 3 * per_row_step);
  CHECK(mult_adds_by_operator(info).at("aten::lstm") == 7 * 3 * per_row_step);
  CHECK(info.rows().front().mult_adds == 7 * 3 * per_row_step);

  torch::nn::LSTMCell cell(torch::nn::LSTMCellOptions(10, 20));
  const Summary cell_info = torchkit::summary_of({.count = Count::operators}, cell, torch::rand({3, 10}));
  CHECK(cell_info.total_mult_adds() == 3 * (80 * 10 + 80 * 20));
}

TEST_CASE("summary: Count::Operators counts einsum contractions the shapes determine") {
  // (B=2, S=3, d=6): proj 2*3*6*6; "bsd,btd->bst" 2*3*3*6; "bst,btd->bsd" 2*3*3*6.
  EinsumNet net;
  const Summary info = torchkit::summary(net, {3, 6}, {.count = Count::operators});
  CHECK(mult_adds_by_operator(info).at("aten::einsum") == 2 * (2 * 3 * 3 * 6));
  CHECK(info.total_mult_adds() == 2 * 3 * 6 * 6 + 2 * (2 * 3 * 3 * 6));
  CHECK(info.rows().front().mult_adds == info.total_mult_adds());
}

#if TORCHKIT_TORCH_AT_LEAST(2, 0)
TEST_CASE("summary: Count::Operators counts scaled_dot_product_attention") {
  struct SdpaImpl : torch::nn::Module {
    torch::Tensor forward(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
      return at::scaled_dot_product_attention(q, k, v);
    }
  };
  auto sdpa = std::make_shared<SdpaImpl>();
  // (B=2, h=3, L=4, E=8), keys and values (S=5, Ev=6): 2*3*4*5*8 + 2*3*4*5*6.
  const Summary info = torchkit::summary_of({.count = Count::operators}, sdpa, torch::rand({2, 3, 4, 8}),
                                            torch::rand({2, 3, 5, 8}), torch::rand({2, 3, 5, 6}));
  CHECK(info.total_mult_adds() == 2 * 3 * 4 * 5 * 8 + 2 * 3 * 4 * 5 * 6);
}
#endif

// --- columns and row settings (torchinfo's col_names and row_settings) -------------------------

TEST_CASE("summary: every torchinfo column, in the order given, with variable names") {
  // The expected table is written from torchinfo's formatting rules (formatting.py: 40-character
  // name column, 25-character columns, `Layer (type (var_name):depth-idx)`; layer_info.py: Param %
  // as `{:>7.2%}` of the total, `     --` for none, kernel_size as a list). torchinfo itself is not
  // installed here, so it is not compared with torchinfo's own output. The numbers: Conv2d(1, 2, 3)
  // has 20 parameters (20 / 96 = 20.83 %) and 18 x 2 x 9 + 2 x 18 = 360 mult-adds, Linear(18, 4)
  // 76 (79.17 %) and 72 x 2 + 4 x 2 = 152.
  using torchkit::Column;
  torch::manual_seed(0);
  torch::nn::Sequential net(torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 2, 3)), torch::nn::ReLU(), torch::nn::Flatten(),
                            torch::nn::Linear(18, 4));
  const Summary info = torchkit::summary(
      net, {1, 5, 5},
      {.columns = {Column::input_size, Column::output_size, Column::num_params, Column::params_percent, Column::kernel_size,
                   Column::mult_adds, Column::trainable},
       .show_var_names = true});
  const std::string expected = R"(=======================================================================================================================================================================================================================
Layer (type (var_name):depth-idx)        Input Shape               Output Shape              Param #                   Param %                   Kernel Shape              Mult-Adds                 Trainable
=======================================================================================================================================================================================================================
Sequential                               [2, 1, 5, 5]              [2, 4]                    --                             --                   --                        --                        True
├─Conv2d (0): 1-1                        [2, 1, 5, 5]              [2, 2, 3, 3]              20                         20.83%                   [3, 3]                    360                       True
├─ReLU (1): 1-2                          [2, 2, 3, 3]              [2, 2, 3, 3]              --                             --                   --                        --                        --
├─Flatten (2): 1-3                       [2, 2, 3, 3]              [2, 18]                   --                             --                   --                        --                        --
└─Linear (3): 1-4                        [2, 18]                   [2, 4]                    76                         79.17%                   --                        152                       True
=======================================================================================================================================================================================================================
)";
  const std::string table = info.to_string();
  CHECK(table.substr(0, expected.size()) == expected);
  CHECK(table.substr(expected.size()).starts_with("Total params: 96\n"));
  CHECK(info.rows()[1].kernel_size == std::vector<std::int64_t>{3, 3});
  CHECK(info.rows()[4].input_shape == std::vector<std::int64_t>{2, 18});

  // Any order; DESIGN.md's spellings compile too.
  const Summary reordered = torchkit::summary(net, {1, 5, 5}, {.columns = {Column::Trainable, Column::NumParams}});
  const std::string header = reordered.to_string().substr(reordered.to_string().find('\n') + 1);
  CHECK(header.starts_with(fmt::format("{:<40} {:<25} Param #\n", "Layer (type:depth-idx)", "Trainable")));
  // The default columns are unchanged.
  CHECK(torchkit::summary(net, {1, 5, 5}).to_string() ==
        torchkit::summary(net, {1, 5, 5}, {.columns = {Column::output_size, Column::num_params}}).to_string());
}

TEST_CASE("summary: ascii_only draws the tree without a byte above 127") {
  MiniResNet net;
  const Summary info = torchkit::summary(net, {3, 32, 32}, {.show_trainable = true, .ascii_only = true});
  const std::string table = info.to_string();
  CHECK(std::none_of(table.begin(), table.end(), [](char c) { return static_cast<unsigned char>(c) > 127; }));
  CHECK(table.find("|--Conv2d: 1-1") != std::string::npos);
  CHECK(table.find("|    '--") != std::string::npos);
  CHECK(torchkit::detail::summary::tree_prefix({true, false}, /*ascii_only=*/true) == "|    '--");
  CHECK(torchkit::detail::summary::tree_prefix({false, false, true}, /*ascii_only=*/true) == "          |--");
  // The same table as the box-drawing one, glyph for glyph (the names' padding aside: `|--` is one
  // character longer than `├─`).
  auto squeezed = [](std::string text) {
    text.erase(std::unique(text.begin(), text.end(), [](char a, char b) { return a == ' ' && b == ' '; }), text.end());
    return text;
  };
  std::string boxes = torchkit::summary(net, {3, 32, 32}, {.show_trainable = true}).to_string();
  for (const auto& [from, to] : std::vector<std::pair<std::string, std::string>>{{"├─", "|--"}, {"└─", "'--"}, {"│", "|"}}) {
    for (std::size_t at = boxes.find(from); at != std::string::npos; at = boxes.find(from, at + to.size())) {
      boxes.replace(at, from.size(), to);
    }
  }
  CHECK(squeezed(boxes) == squeezed(table));
}

TEST_CASE("summary: unknown and repeated columns name the value") {
  using torchkit::Column;
  using torchkit::test::message_of;
  torch::nn::Sequential net(torch::nn::Linear(3, 2));
  CHECK(message_of<torchkit::Error>([&] {
          (void)torchkit::summary(net, {3}, {.columns = {Column::num_params, Column::output_size, Column::num_params}});
        }).find("summary: SummaryOptions::columns lists num_params twice (at 0 and 2)") != std::string::npos);
  CHECK(message_of<torchkit::Error>([&] {
          (void)torchkit::summary(net, {3}, {.columns = {static_cast<Column>(42)}});
        }).find("summary: SummaryOptions::columns[0] is 42, which is no Column") != std::string::npos);
  CHECK(message_of<torchkit::Error>([&] {
          (void)torchkit::summary_of({.columns = {Column::trainable, Column::trainable}}, net, torch::rand({2, 3}));
        }).find("lists trainable twice") != std::string::npos);
}

TEST_CASE("a forward pass that fails on the input size says it is per sample and what the first layer takes") {
  torch::nn::Sequential net(torch::nn::Conv2d(3, 8, 3), torch::nn::ReLU(), torch::nn::Flatten(),
                            torch::nn::Linear(8 * 30 * 30, 10));
  // The batch dimension included, as in torchinfo's input_size with the batch.
  const auto with_batch = torchkit::test::message_of<torchkit::Error>([&] { (void)torchkit::summary(net, {1, 3, 32, 32}); });
  CHECK(with_batch.find("summary: the forward pass of") == 0);
  CHECK(with_batch.find("; input_size is per sample, without the batch dimension") != std::string::npos);
  CHECK(with_batch.find("the first layer, '0' (Conv2d), takes [3, H, W] per sample") != std::string::npos);
  // The channel dimension missing.
  const auto no_channels = torchkit::test::message_of<torchkit::Error>([&] { (void)torchkit::summary(net, {32, 32}); });
  CHECK(no_channels.find("takes [3, H, W] per sample") != std::string::npos);
  torch::nn::Linear linear(16, 4);
  CHECK(torchkit::test::message_of<torchkit::Error>([&] { (void)torchkit::summary(linear, {15}); })
            .find("the first layer, '(the model)' (Linear), takes [..., 16] per sample") != std::string::npos);
}
