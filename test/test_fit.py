"""The shared fit loop: a resumed fit reaches the weights of an uninterrupted one, the LR follows
torch's schedulers, the EMA lags the weights, a non-finite loss is one line, and the run logger keeps
the rows up to the step a run resumes from."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from smiling_ros.errors import UserError
from smiling_ros.learn.fit import Fit, Optim
from smiling_ros.learn.logger import RunLogger, read_rows
from smiling_ros.learn.nets import mlp


def _problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 3, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.1
    torch.manual_seed(seed)
    net = mlp([3, 16, 1], "tanh")
    return net, (lambda b: ((net(b[0]) - b[1]) ** 2).mean()), (x, y)


OPTIM = Optim(1e-2, "adamw", weight_decay=1e-3, schedule="warmup_cosine", warmup=5, min_lr=0.1, ema_decay=0.9)


def test_resumed_fit_matches_an_uninterrupted_one(tmp_path):
    net_a, loss_a, batch = _problem()
    whole = Fit(net_a, loss_a, OPTIM, 40, name="a", progress=False)
    whole.run(lambda: batch)

    net_b, loss_b, _ = _problem()
    state = tmp_path / "fit.safetensors"
    first = Fit(net_b, loss_b, OPTIM, 40, name="b", progress=False, checkpoint=state, checkpoint_every=20)
    first.steps = 20  # stop half-way: the checkpoint at step 20 is what a crash leaves
    first.run(lambda: batch)
    net_c, loss_c, _ = _problem(seed=1)  # other initial weights: everything must come from the checkpoint
    resumed = Fit(net_c, loss_c, OPTIM, 40, name="c", progress=False, checkpoint=state, resume=True)
    assert resumed.step_count == 20
    resumed.run(lambda: batch)
    for p, q in zip(net_a.parameters(), net_c.parameters()):
        torch.testing.assert_close(p, q)
    for p, q in zip(whole.averaged.parameters(), resumed.averaged.parameters()):
        torch.testing.assert_close(p, q)
    assert whole.lr == pytest.approx(resumed.lr)


def test_lr_schedule_and_ema():
    net, loss, batch = _problem()
    fit = Fit(net, loss, OPTIM, 30, name="x", progress=False, log_every=1)
    rows = fit.run(lambda: batch)
    lrs = [r["lr"] for r in rows]
    assert lrs[0] == pytest.approx(1e-2 * 2 / 5)  # after the first step of the linear warm-up
    assert max(lrs) == pytest.approx(1e-2) and lrs[-1] == pytest.approx(1e-3, rel=1e-3)  # cosine to min_lr
    assert rows[-1]["loss"] < 0.5 * rows[0]["loss"]
    diff = sum(float((p - q).detach().abs().sum()) for p, q in zip(fit.averaged.parameters(), net.parameters()))
    assert diff > 0 and all(not p.requires_grad for p in fit.averaged.parameters())


def test_non_finite_loss_is_one_line():
    net = nn.Linear(2, 1)
    fit = Fit(net, lambda b: net(b).sum() * math.inf, Optim(1e-3), 5, name="broken", progress=False)
    with pytest.raises(UserError, match="broken: non-finite loss at step 1"):
        fit.run(lambda: torch.ones(4, 2))


def test_run_logger_truncates_on_resume(tmp_path):
    path = tmp_path / "train.csv"
    log = RunLogger(path, ["step", "loss"])
    for s in (100, 200, 300):
        log.log(s, loss=1.0 / s, ignored=5)
    log.close()
    again = RunLogger(path, ["step", "loss"], resume_step=200)
    again.log(300, loss=0.5)
    assert [r["step"] for r in read_rows(path)] == ["100", "200", "300"]
    assert read_rows(path)[-1]["loss"] == "0.5" and "ignored" not in read_rows(path)[0]
    RunLogger(path, ["step", "loss"])  # a fresh run starts a fresh file
    assert read_rows(path) == []
