"""The test suite's shared ONNX exports (conftest, issue 39) never hand one network another's file."""

from __future__ import annotations

import torch
import torch.nn as nn

from tests.conftest import _export_key

OPTIONS = {"dynamo": True, "opset_version": 18}


class Scaled(nn.Module):
    def __init__(self, factor: float):
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.factor = factor  # a plain setting the exported graph bakes in as a constant

    def forward(self, x):
        return self.linear(x) * self.factor


def test_the_key_follows_weights_buffers_settings_sample_and_options():
    torch.manual_seed(0)
    model, sample = Scaled(2.0), torch.zeros(1, 4)
    key = _export_key(model, (sample,), OPTIONS)
    twin = Scaled(2.0)
    twin.load_state_dict(model.state_dict())
    assert _export_key(twin, (sample,), OPTIONS) == key  # the same network exported again: a hit

    changed = Scaled(2.0)
    changed.load_state_dict(model.state_dict())
    with torch.no_grad():
        changed.linear.bias[0] += 1e-6
    other_setting = Scaled(3.0)
    other_setting.load_state_dict(model.state_dict())
    with_buffer = Scaled(2.0)
    with_buffer.load_state_dict(model.state_dict())
    with_buffer.register_buffer("shift", torch.ones(1), persistent=False)  # not in the state dict
    misses = [
        _export_key(changed, (sample,), OPTIONS),
        _export_key(other_setting, (sample,), OPTIONS),
        _export_key(with_buffer, (sample,), OPTIONS),
        _export_key(model, (torch.zeros(2, 4),), OPTIONS),
        _export_key(model, (sample,), {**OPTIONS, "opset_version": 17}),
    ]
    assert len({key, *misses}) == 1 + len(misses)
