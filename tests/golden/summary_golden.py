"""Golden values for tests/test_summary.cpp (tip 2), written by Python PyTorch.

Run with the system interpreter that has torch:  /usr/bin/python3 tests/golden/summary_golden.py
It writes tests/golden/summary.json.

torchinfo is not installed here, so this script records what torchinfo records, with Python's
forward hooks (which LibTorch lacks): every module call in pre-hook order with its depth, the
shape of the first tensor of its output, and whether the module was called before; and it
computes the totals by torchinfo's rules (the same rules the design contract states):
  - parameters: every tensor of model.parameters() once (tied parameters count once);
  - mult-adds, per parameter of a leaf module: `weight`/`bias` of a Conv: numel * N * spatial
    output; of a Linear: numel * prod(output[:-1]); of anything else: numel * output[0]; other
    parameters named *weight*/*bias* (RNN): numel * prod(output[:2]); summed over leaf calls;
  - forward/backward bytes: 2 * element size * prod(output) over the calls of leaf modules
    with parameters;
  - input bytes: the inputs' nbytes; param bytes: the parameters' nbytes.
The C++ test builds the same models and compares its rows and totals with these.
"""
import json
import math
import os

import torch
import torch.nn.functional as F
from torch import nn


class SingleInputNet(nn.Module):
    """torchinfo's SingleInputNet (tests/fixtures/models.py)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.conv2_drop = nn.Dropout2d(0.3)
        self.fc1 = nn.Linear(320, 50)
        self.fc2 = nn.Linear(50, 10)

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))
        x = x.view(-1, 320)
        x = F.relu(self.fc1(x))
        x = self.fc2(x)
        return F.log_softmax(x, dim=1)


def linear_relu_sequential():
    return nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 1))


class LSTMNet(nn.Module):
    """torchinfo's LSTMNet."""

    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(20, 300)
        self.encoder = nn.LSTM(300, 512, num_layers=2, batch_first=True)
        self.decoder = nn.Linear(512, 20)

    def forward(self, x):
        embedded = self.embedding(x)
        output, hidden = self.encoder(embedded)
        return self.decoder(output), hidden


class RecursiveNet(nn.Module):
    """torchinfo's RecursiveNet: one convolution called six times."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(64, 64, 3, padding=1)

    def forward(self, x):
        for _ in range(6):
            x = self.conv1(x)
        return x


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 8)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.linear(x))


class SharedBlockNet(nn.Module):
    """A block (a module with submodules) called twice in a row, then a head."""

    def __init__(self):
        super().__init__()
        self.block = Block()
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.block(self.block(x)))


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock (the ReLU module is called twice)."""

    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class MiniResNet(nn.Module):
    """The first two stages of a ResNet-18, torchvision's layout and forward."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = nn.Sequential(BasicBlock(64, 64), BasicBlock(64, 64))
        self.layer2 = nn.Sequential(BasicBlock(64, 128, 2), BasicBlock(128, 128))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(128, 10)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


class MixedTrainable(nn.Module):
    """fc1 frozen, fc2's bias frozen, a BatchNorm1d in between."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(10, 10)
        self.norm = nn.BatchNorm1d(10)
        self.fc2 = nn.Linear(10, 5)
        for p in self.fc1.parameters():
            p.requires_grad_(False)
        self.fc2.bias.requires_grad_(False)

    def forward(self, x):
        return self.fc2(torch.relu(self.norm(self.fc1(x))))


class TiedLinear(nn.Module):
    """Holds the weight it is given (shared with another module) and a bias of its own."""

    def __init__(self, weight):
        super().__init__()
        self.weight = weight
        self.bias = nn.Parameter(torch.zeros(weight.shape[0]))

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class TiedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(4, 4)
        self.decoder = TiedLinear(self.encoder.weight)

    def forward(self, x):
        return self.decoder(torch.relu(self.encoder(x)))


class MultiInputNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc_a = nn.Linear(3, 4)
        self.fc_b = nn.Linear(5, 4)

    def forward(self, a, b):
        return self.fc_a(a) + self.fc_b(b)


class Child(nn.Module):
    """torchinfo's ContainerChildModule: a Sequential called, looped over, called again."""

    def __init__(self):
        super().__init__()
        self._sequential = nn.Sequential(nn.Linear(5, 5), nn.Linear(5, 5))
        self._between = nn.Linear(5, 5)

    def forward(self, x):
        out = self._sequential(x)
        out = self._between(out)
        for layer in self._sequential:
            out = layer(out)
        out = self._sequential(x)
        for layer in self._sequential:
            out = layer(out)
        return out


class NestedContainers(nn.Module):
    """torchinfo's ContainerModule plus a ModuleDict with one head never called."""

    def __init__(self):
        super().__init__()
        self._layers = nn.ModuleList([nn.Linear(5, 5), Child(), nn.Linear(5, 5)])
        self.heads = nn.ModuleDict({"used": nn.Linear(5, 3), "unused": nn.Linear(5, 7)})

    def forward(self, x):
        for layer in self._layers:
            x = layer(x)
        return self.heads["used"](x)


def first_tensor(value):
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (list, tuple)):
        for item in value:
            found = first_tensor(item)
            if found is not None:
                return found
    return None


def leaf_mult_adds(module, shape):
    if not shape:
        return 0
    name_of_class = type(module).__name__
    total = 0
    for name, param in module.named_parameters(recurse=False):
        count = param.numel()
        if name in ("weight", "bias"):
            if "Conv" in name_of_class:
                total += count * shape[0] * math.prod(shape[2:])
            elif "Linear" in name_of_class:
                total += count * math.prod(shape[:-1])
            else:
                total += count * shape[0]
        elif "weight" in name or "bias" in name:
            total += count * math.prod(shape[:2])
    return total


def record(model, inputs):
    calls = []
    seen = set()
    depth_of = {}

    def walk(module, depth):
        depth_of.setdefault(id(module), depth)
        for child in module.children():
            walk(child, depth + 1)

    walk(model, 0)
    handles = []
    stack = []

    def pre_hook(module, _):
        calls.append({
            "type": type(module).__name__,
            "depth": depth_of[id(module)],
            "recursive": id(module) in seen,
            "leaf": not any(True for _ in module.children()),
            "params": sum(p.numel() for p in module.parameters()),
            "module": module,
        })
        seen.add(id(module))
        stack.append(calls[-1])

    def post_hook(module, _inputs, output):
        entry = stack.pop()
        tensor = first_tensor(output)
        entry["shape"] = list(tensor.shape) if tensor is not None else []
        entry["element_size"] = tensor.element_size() if tensor is not None else 0

    for module in model.modules():
        handles.append(module.register_forward_pre_hook(pre_hook))
        handles.append(module.register_forward_hook(post_hook))
    model.eval()
    with torch.no_grad():
        model(*inputs)
    for handle in handles:
        handle.remove()

    mult_adds = 0
    forward_backward = 0
    for call in calls:
        module = call.pop("module")
        if call["leaf"]:
            call["mult_adds"] = leaf_mult_adds(module, call["shape"])
            mult_adds += call["mult_adds"]
            if call["params"] > 0:
                forward_backward += 2 * call["element_size"] * math.prod(call["shape"])
        else:
            call["mult_adds"] = None
    params = list(model.parameters())
    return {
        "input_shapes": [list(x.shape) for x in inputs],
        "calls": calls,
        "total_params": sum(p.numel() for p in params),
        "trainable_params": sum(p.numel() for p in params if p.requires_grad),
        "total_mult_adds": mult_adds,
        "input_bytes": sum(x.numel() * x.element_size() for x in inputs),
        "forward_backward_bytes": forward_backward,
        "param_bytes": sum(p.numel() * p.element_size() for p in params),
    }


def main():
    torch.manual_seed(0)
    cases = {
        "single_input_net": (SingleInputNet(), [torch.rand(2, 1, 28, 28)]),
        "linear_relu_sequential": (linear_relu_sequential(), [torch.rand(64, 128)]),
        "lstm_net": (LSTMNet(), [torch.zeros(1, 100, dtype=torch.long)]),
        "recursive_net": (RecursiveNet(), [torch.rand(1, 64, 28, 28)]),
        "shared_block_net": (SharedBlockNet(), [torch.rand(2, 8)]),
        "mini_resnet": (MiniResNet(), [torch.rand(2, 3, 64, 64)]),
        "mixed_trainable": (MixedTrainable(), [torch.rand(2, 10)]),
        "tied_net": (TiedNet(), [torch.rand(2, 4)]),
        "multi_input_net": (MultiInputNet(), [torch.rand(2, 3), torch.rand(2, 5)]),
        "nested_containers": (NestedContainers(), [torch.rand(1, 5)]),
    }
    golden = {name: record(model, inputs) for name, (model, inputs) in cases.items()}
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "summary.json")
    with open(path, "w") as out:
        json.dump(golden, out, indent=1)
        out.write("\n")


if __name__ == "__main__":
    main()
