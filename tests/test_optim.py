"""§5's update rule against a float64 transcription, and the learning-rate schedules."""
import math

import pytest
import torch

from alexnet import config
from alexnet.optim import PaperSGD, Schedule, scaled_lr


def test_paper_sgd_is_the_formula_of_section_5():
    torch.manual_seed(0)
    w = torch.randn(5, dtype=torch.float64, requires_grad=True)
    opt = PaperSGD([w], lr=0.1, momentum=0.9, weight_decay=5e-4)
    ref_w, ref_v = w.detach().clone(), torch.zeros(5, dtype=torch.float64)
    for step, lr in enumerate([0.1, 0.1, 0.1, 0.01, 0.01]):
        for group in opt.param_groups:
            group["lr"] = lr
        grad = torch.randn(5, dtype=torch.float64)
        w.grad = grad.clone()
        opt.step()
        ref_v = 0.9 * ref_v - 0.0005 * lr * ref_w - lr * grad  # v <- 0.9 v - 0.0005 e w - e grad
        ref_w = ref_w + ref_v  # w <- w + v
        torch.testing.assert_close(w.detach(), ref_w, rtol=1e-12, atol=1e-12)


def test_paper_sgd_equals_torch_sgd_while_the_rate_is_constant_only():
    torch.manual_seed(1)
    a = torch.randn(4, dtype=torch.float64, requires_grad=True)
    b = a.detach().clone().requires_grad_(True)
    paper = PaperSGD([a], lr=0.05, momentum=0.9, weight_decay=5e-4)
    ours = torch.optim.SGD([b], lr=0.05, momentum=0.9, weight_decay=5e-4)
    grads = [torch.randn(4, dtype=torch.float64) for _ in range(6)]
    for i, g in enumerate(grads):
        if i == 3:  # divide the rate by 10, as §5 does on a plateau
            for opt in (paper, ours):
                opt.param_groups[0]["lr"] = 0.005
        a.grad, b.grad = g.clone(), g.clone()
        paper.step()
        ours.step()
        if i < 3:
            torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(a.detach(), b.detach(), rtol=1e-9, atol=0)


def schedule(**overrides):
    sets = [f"{k}={v}" for k, v in overrides.items()]
    cfg = config.resolve("paper", sets=sets)
    return Schedule(cfg, 0.1, steps_per_epoch=10)


def test_plateau_divides_by_ten_at_most_three_times():
    s = schedule(**{"schedule.patience": 1, "train.epochs": 30})
    errors = [0.9, 0.8, 0.8, 0.8] + [0.8] * 20  # stops improving after epoch 2
    decays = [s.on_epoch_end(e) for e in errors]
    assert sum(decays) == 3 and decays[3]  # two bad epochs (> patience 1) trigger the first decay
    assert math.isclose(s.lr(20, 0), 0.1 * 0.1 ** 3)
    state = s.state_dict()
    t = schedule(**{"schedule.patience": 1, "train.epochs": 30})
    t.load_state_dict(state)
    assert t.lr(20, 0) == s.lr(20, 0)


def test_step_linear_cosine_onecycle_and_warmup():
    s = schedule(**{"schedule.name": "step", "schedule.step_epochs": 3, "train.epochs": 9})
    assert [round(s.lr(e, 0), 6) for e in (0, 2, 3, 6, 8)] == [0.1, 0.1, 0.01, 0.001, 0.001]
    s = schedule(**{"schedule.name": "linear", "train.epochs": 4, "schedule.warmup_epochs": 1})
    assert s.lr(0, 0) == pytest.approx(0.01) and s.lr(0, 9) == pytest.approx(0.1)  # warm-up over 10 steps
    assert s.lr(2, 5) == pytest.approx(0.1 * (1 - 15 / 30)) and s.lr(3, 9) < 0.004
    s = schedule(**{"schedule.name": "cosine", "train.epochs": 2})
    assert s.lr(0, 0) == pytest.approx(0.1) and s.lr(1, 0) == pytest.approx(0.05 * (1 + math.cos(math.pi * 10 / 20)))
    s = schedule(**{"schedule.name": "onecycle", "train.epochs": 10})
    peak = max(range(100), key=lambda t: s.lr(t // 10, t % 10))
    assert 25 <= peak <= 31 and s.lr(9, 9) < 0.002


def test_linear_scaling_rule():
    cfg = config.resolve("fast")
    assert scaled_lr(cfg, 1024) == pytest.approx(cfg.optim.lr * 1024 / 256)
