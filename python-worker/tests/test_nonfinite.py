"""train.on_nonfinite: a NaN/inf loss or gradient norm stops (naming op and step) or skips the optimizer step."""
from __future__ import annotations

import math

import pytest
import torch

from dmd2_worker.optim import NonFiniteError, guarded_step, nonfinite_guard


def _optimizer() -> tuple[torch.nn.Parameter, torch.optim.Optimizer]:
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([p], lr=0.1)
    p.grad = torch.full((3,), 0.5)
    return p, opt


def test_finite_values_step():
    p, opt = _optimizer()
    assert guarded_step(opt, 0.1, {"loss": 1.0, "norm": 2.0}, "stop", "generator.update", 5) == 0.0
    assert not torch.equal(p.detach(), torch.ones(3))
    assert opt.param_groups[0]["lr"] == 0.1


def test_stop_raises_with_op_step_and_fix():
    with pytest.raises(NonFiniteError, match=r"non-finite loss_dmd = nan in generator.update at step 7 .*"
                                             r"train.on_nonfinite: skip"):
        nonfinite_guard({"loss_dmd": math.nan, "norm": 1.0}, "stop", "generator.update", 7)


def test_skip_leaves_weights_and_drops_grads():
    p, opt = _optimizer()
    assert guarded_step(opt, 0.1, {"loss": math.inf}, "skip", "fake_score.update", 3) == 1.0
    assert torch.equal(p.detach(), torch.ones(3))
    assert p.grad is None
    assert opt.state == {} or all(len(s) == 0 for s in opt.state.values())
