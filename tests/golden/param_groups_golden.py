"""Golden values for tests/test_param_groups.cpp (tip 9), written by Python PyTorch.

Run with the system interpreter that has torch:  /usr/bin/python3 tests/golden/param_groups_golden.py
It writes tests/golden/param_groups.json: the tip's two groups (lr 0.01 for convolution1,
0.001 for convolution2, weight_decay=1e-3 outside the list) stepped twice with Adam, and the
same model with biases in their own no-weight-decay groups stepped twice with AdamW.
"""
import json
import os

import torch

from freeze_golden import deterministic_input, deterministic_network


def two_steps(net, optimizer):
    x = deterministic_input()
    for _ in range(2):
        optimizer.zero_grad()
        net(x).pow(2).mean().backward()
        optimizer.step()
    return {name: p.detach().flatten().tolist() for name, p in net.named_parameters()}


def main():
    # Tip 9 as written: the parameters whose name contains "convolution1", and the others.
    net = deterministic_network()
    conv1_params = []
    conv2_params = []
    for name, parms in net.named_parameters():
        if 'convolution1' in name:
            conv1_params += [parms]
        else:
            conv2_params += [parms]
    optimizer = torch.optim.Adam(
        [
            {'params': conv1_params, 'lr': 0.01},
            {'params': conv2_params, 'lr': 0.001},
        ],
        weight_decay=1e-3,
    )
    tip9_adam = two_steps(net, optimizer)

    # The common Python recipe behind no_weight_decay: each group split into decay / no-decay.
    net = deterministic_network()
    groups = []
    for key, lr in (('convolution1', 0.01), ('convolution2', 0.001)):
        decay = [p for n, p in net.named_parameters() if key in n and not n.endswith('.bias')]
        no_decay = [p for n, p in net.named_parameters() if key in n and n.endswith('.bias')]
        groups.append({'params': decay, 'lr': lr})
        groups.append({'params': no_decay, 'lr': lr, 'weight_decay': 0.0})
    optimizer = torch.optim.AdamW(groups, lr=1e-3, weight_decay=0.05)
    split_adamw = two_steps(net, optimizer)

    golden = {'tip9_adam_two_steps': tip9_adam, 'no_weight_decay_adamw_two_steps': split_adamw}
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'param_groups.json')
    with open(path, 'w') as out:
        json.dump(golden, out, indent=1)
        out.write('\n')
    print('wrote', path)


if __name__ == '__main__':
    main()
