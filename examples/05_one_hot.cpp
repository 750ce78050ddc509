// Tip 5: one-hot labels, for losses such as MSE (cross-entropy takes class indices as they are).
//
// Python:
//
//     import torch
//     class_num = 8
//     batch_size = 4
//
//     def one_hot(label):
//         """Turns a list of labels into one-hot rows."""
//         label = label.resize_(batch_size, 1)
//         m_zeros = torch.zeros(batch_size, class_num)
//         # takes the value, and writes it where dim and index say
//         onehot = m_zeros.scatter_(1, label, 1)  # (dim, index, value)
//         return onehot.numpy()  # Tensor -> Numpy
//
//     label = torch.LongTensor(batch_size).random_() % class_num
//     print(one_hot(label))
//     # [[0. 0. 0. 1. 0. 0. 0. 0.]
//     #  [0. 0. 0. 0. 1. 0. 0. 0.]
//     #  [0. 0. 1. 0. 0. 0. 0. 0.]
//     #  [0. 1. 0. 0. 0. 0. 0. 0.]]
//
// torchkit::one_hot writes the float rows directly (no int64 intermediate, no .float()), checks
// every label, and smooths labels as CrossEntropyLoss(label_smoothing=...) does.
#include <torchkit/one_hot.hpp>

#include <torch/torch.h>

#include <iostream>

int main() {
  torch::manual_seed(0);
  const int64_t class_num = 8;
  const int64_t batch_size = 4;

  // label = torch.LongTensor(batch_size).random_() % class_num
  const auto label = torch::randint(0, 1 << 20, {batch_size}, torch::kLong) % class_num;
  std::cout << "label: " << label.view({1, batch_size}) << "\n";

  // print(one_hot(label))
  const auto targets = torchkit::one_hot(label, class_num);  // [4, 8] float
  std::cout << "one_hot(label, " << class_num << "):\n" << targets << "\n";

  // The tip's scatter_ gives the same rows.
  const auto tip = torch::zeros({batch_size, class_num}).scatter_(1, label.view({batch_size, 1}), 1);
  std::cout << "same as zeros().scatter_(1, label, 1): " << std::boolalpha << torch::equal(targets, tip) << "\n";

  // MSE needs the one-hot targets.
  torch::nn::Linear model(16, class_num);
  const auto features = torch::randn({batch_size, 16});
  const auto outputs = torch::softmax(model->forward(features), 1);
  const auto loss = torch::mse_loss(outputs, targets);
  loss.backward();
  std::cout << "mse_loss(softmax(model(x)), one_hot(label)) = " << loss.item<double>() << "\n";

  // Label smoothing 0.1 (CrossEntropyLoss(label_smoothing=0.1)'s targets) and a reusable encoder
  // that skips padding labels (255).
  const torchkit::OneHot encode(class_num, {.smoothing = 0.1, .ignore_index = 255});
  auto padded = label.clone();
  padded[3] = 255;
  std::cout << encode << ":\n" << encode(padded) << "\n";

  // A bad label is an error that says which one and where.
  try {
    (void)torchkit::one_hot(torch::tensor({1, 9, 3}), class_num);
    return 1;
  } catch (const torchkit::Error& error) {
    std::cout << "error: " << error.what() << "\n";
  }
  return torch::equal(targets, tip) && model->weight.grad().defined() ? 0 : 1;
}
