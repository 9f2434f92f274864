"""Tiny user-defined networks for tests, given to cnncodes as ``"tests.tiny_nets:<callable>"``."""

from __future__ import annotations

import os
import time

import torch
from torch import nn


class TinyCNN(nn.Module):
    """Two convolutions, global average pool and a linear head; traceable by torch.fx."""

    def __init__(self, num_classes=5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 2, 1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 16, 3, 2, 1)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.head(self.flatten(self.pool(x)))


class DynamicCNN(TinyCNN):
    """The same network with data-dependent Python control flow, which torch.fx cannot trace."""

    def forward(self, x):
        x = self.relu1(self.conv1(x))
        if x.abs().amax() > 1e4:  # rescale runaway activations: a branch on tensor values
            x = x / x.abs().amax()
        x = self.relu2(self.conv2(x))
        return self.head(self.flatten(self.pool(x)))


def tiny_cnn():
    """A :class:`TinyCNN` with 5 classes."""
    return TinyCNN()


def dynamic_cnn():
    """A :class:`DynamicCNN` with 5 classes."""
    return DynamicCNN()


def not_a_module():
    """A callable that builds something other than an ``nn.Module``."""
    return torch.zeros(3)


def self_declaring_cnn():
    """A :class:`TinyCNN` whose instance declares its input (not the function)."""
    net = TinyCNN()
    net.preprocessing = {"resize": 40, "crop": 32, "mean": 0.5, "std": 0.5}
    return net


def cnn_with_a_preprocessing_module():
    """A :class:`TinyCNN` with a submodule that happens to be called ``preprocessing``."""
    net = TinyCNN()
    net.preprocessing = torch.nn.Identity()
    return net


def one_conv_cnn():
    """One convolution before the pooling and the head: a single block that holds weights."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    )


def tiny_cnn_for(num_classes, relu=True):
    """A :class:`TinyCNN` with ``num_classes`` classes: a builder that needs an argument
    (``model_kwargs={"num_classes": N}``); ``relu=False`` changes no module's shape."""
    net = TinyCNN(num_classes)
    if not relu:
        net.relu1 = nn.Identity()
    return net


# For the Ray engine's fault tests (tests/test_ray.py). The environment variables are set by the
# test before Ray starts, so that every worker sees them; the test's own process (whose pid is
# CNNCODES_TEST_DRIVER_PID) runs these networks unharmed, e.g. to probe their layer shapes.


def _in_a_worker():
    return str(os.getpid()) != os.environ.get("CNNCODES_TEST_DRIVER_PID")


class ExitingCNN(DynamicCNN):
    """Ends its process (as a crash would) on the first forward pass after the test arms it by
    creating the file named by ``CNNCODES_TEST_EXIT_ARMED``; once only, whichever process
    removes the file first. Not traceable (a DynamicCNN), so its forward runs as written."""

    def forward(self, x):
        armed = os.environ.get("CNNCODES_TEST_EXIT_ARMED")
        if armed and _in_a_worker():
            try:
                os.unlink(armed)
            except FileNotFoundError:
                pass
            else:
                os._exit(1)
        return super().forward(x)


class SlowCNN(DynamicCNN):
    """Takes ``CNNCODES_TEST_SLOW_SECONDS`` per forward pass in a worker: a run long enough to be
    killed half-way."""

    def forward(self, x):
        if _in_a_worker():
            time.sleep(float(os.environ.get("CNNCODES_TEST_SLOW_SECONDS", "0")))
        return super().forward(x)


def exiting_cnn():
    """An :class:`ExitingCNN` with 5 classes."""
    return ExitingCNN()


def slow_cnn():
    """A :class:`SlowCNN` with 5 classes."""
    return SlowCNN()


class NanForBrightCNN(TinyCNN):
    """A :class:`TinyCNN` whose codes are NaN for images well brighter than the normalisation mean."""

    def forward(self, x):
        bright = x.mean(dim=(1, 2, 3)) > 0.5
        scale = torch.where(bright, torch.full_like(bright, float("nan"), dtype=x.dtype), 1.0)
        x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        x = x * scale.view(-1, 1, 1, 1)
        return self.head(self.flatten(self.pool(x)))


def nan_for_bright_cnn():
    """A :class:`NanForBrightCNN` with 5 classes."""
    return NanForBrightCNN()
