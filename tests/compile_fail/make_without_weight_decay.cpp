// ParamGroupBuilder::make needs options with lr and weight_decay (SGD, Adam, AdamW, RMSprop,
// Adagrad); LBFGS has no weight decay. The constraint that fails is named.
// expect: OptimizerOptions
#include <torchkit/param_groups.hpp>

void build(torch::nn::Linear& model) {
  auto optimizer = torchkit::ParamGroupBuilder(model).rest().make<torch::optim::LBFGS>(torch::optim::LBFGSOptions(1));
}
