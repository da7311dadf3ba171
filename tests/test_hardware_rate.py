"""benchmarks/hardware_rate.py: the FLOPs the benchmarks divide by, against hand counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import benchmark_module


@pytest.fixture(scope="module")
def rate():
    return benchmark_module("hardware_rate")


def test_a_convolution_counts_two_flops_per_multiply_add(rate):
    # 2 images x 8 output channels x 16 x 16 positions, each a sum of 3 channels x 3 x 3 products.
    network = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert rate.network_flops(network, torch.zeros(2, 3, 16, 16)) == 2 * (2 * 8 * 16 * 16) * (3 * 3 * 3)


def test_a_linear_layer_and_a_matmul_rate(rate):
    assert rate.network_flops(nn.Linear(5, 7, bias=False), torch.zeros(4, 5)) == 2 * 4 * 5 * 7
    assert rate.matmul_rate(torch.float32, size=64, repeats=2) > 1e6  # a FLOP/s figure, not seconds
