"""CIFAR ResNet-20 (He et al. 2016, "option A" shortcuts), for loading a user's own checkpoint.

Given to cnncodes as ``"tests.resnet_cifar:resnet20"``. The state_dict keys are ``conv1, bn1,
layer{1,2,3}.{0,1,2}.{conv1,bn1,conv2,bn2}, linear``, those of the classic CIFAR ResNet checkpoints.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn


class PadShortcut(nn.Module):
    """Option A: subsample by 2 and zero-pad the new channels (no parameters)."""

    def __init__(self, extra):
        super().__init__()
        self.extra = extra

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity (or padded) shortcut."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = PadShortcut(cout - cin) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs: 16/32/64 channels in three stages, global average pool, linear."""

    def __init__(self, blocks=(3, 3, 3), num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        cin = 16
        for i, (cout, n) in enumerate(zip((16, 32, 64), blocks), start=1):
            stride = 1 if i == 1 else 2
            layers = []
            for j in range(n):
                layers.append(BasicBlock(cin, cout, stride if j == 0 else 1))
                cin = cout
            setattr(self, f"layer{i}", nn.Sequential(*layers))
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.linear(x)


def resnet20():
    """ResNet-20 for CIFAR-10 (0.27 M parameters)."""
    return CifarResNet((3, 3, 3))
