"""Golden values for tests/test_freeze.cpp (tip 8), written by Python PyTorch.

Run with the system interpreter that has torch:  /usr/bin/python3 tests/golden/freeze_golden.py
It writes tests/golden/freeze.json: the tip's listing before and after freezing the tip's
no_grad list, and the parameters after one Adam step on the trainable parameters only.
"""
import json
import math
import os

import torch
from torch import nn


class VGG16(nn.Module):
    """The first two blocks of a (narrow) VGG-16, named as in the tip."""

    def __init__(self):
        super().__init__()
        self.convolution1_1 = nn.Conv2d(3, 4, 3, padding=1)
        self.convolution1_2 = nn.Conv2d(4, 4, 3, padding=1)
        self.convolution2_1 = nn.Conv2d(4, 6, 3, padding=1)
        self.convolution2_2 = nn.Conv2d(6, 6, 3, padding=1)

    def forward(self, x):
        x = torch.tanh(self.convolution1_1(x))
        x = torch.tanh(self.convolution1_2(x))
        x = nn.functional.avg_pool2d(x, 2)
        x = torch.tanh(self.convolution2_1(x))
        return torch.tanh(self.convolution2_2(x))


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.VGG_16 = VGG16()

    def forward(self, x):
        return self.VGG_16(x)


class Network(nn.Module):
    def __init__(self):
        super().__init__()
        self.cnn = CNN()

    def forward(self, x):
        return self.cnn(x)


def deterministic_network():
    """Parameters p_k = 0.1 * sin(0.37 * i + k) for the k-th parameter (i its flat index), in double."""
    net = Network().double()
    with torch.no_grad():
        for k, p in enumerate(net.parameters()):
            i = torch.arange(p.numel(), dtype=torch.float64)
            p.copy_((0.1 * torch.sin(0.37 * i + k)).reshape(p.shape))
    return net


def deterministic_input():
    i = torch.arange(2 * 3 * 8 * 8, dtype=torch.float64)
    return torch.sin(0.11 * i).reshape(2, 3, 8, 8)


def listing(net):
    lines = []
    for name, value in net.named_parameters():
        lines.append('name: {0},\t grad: {1}'.format(name, value.requires_grad) + '\n')
    return ''.join(lines)


def main():
    net = deterministic_network()
    before = listing(net)

    no_grad = [
        'cnn.VGG_16.convolution1_1.weight',
        'cnn.VGG_16.convolution1_1.bias',
        'cnn.VGG_16.convolution1_2.weight',
        'cnn.VGG_16.convolution1_2.bias',
    ]
    for name, value in net.named_parameters():
        if name in no_grad:
            value.requires_grad = False
        else:
            value.requires_grad = True
    after = listing(net)

    optimizer = torch.optim.Adam(filter(lambda p: p.requires_grad, net.parameters()), lr=0.01)
    optimizer.zero_grad()
    loss = net(deterministic_input()).pow(2).mean()
    loss.backward()
    optimizer.step()

    golden = {
        'listing_before': before,
        'listing_after': after,
        'no_grad': no_grad,
        'loss': loss.item(),
        'after_adam_step': {name: p.detach().flatten().tolist() for name, p in net.named_parameters()},
    }
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'freeze.json')
    with open(path, 'w') as out:
        json.dump(golden, out, indent=1)
        out.write('\n')
    print('wrote', path)


if __name__ == '__main__':
    main()
