"""BRIDGER core: interpolants, losses, sampler, nets, policy round trip and refusals.

Everything runs on the CPU in seconds: nets are small and training runs a few hundred steps.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from smiling_ros.methods.bridger.interpolants import KINDS, Interpolant
from smiling_ros.methods.bridger.nets import BridgerNet, NumpyForward, denoiser_loss, velocity_loss
from smiling_ros.methods.bridger.sampler import make_grid, sample_numpy, sample_torch
from smiling_ros.errors import UserError


# ----------------------------------------------------------------------------- interpolants
@pytest.mark.parametrize("kind", KINDS)
def test_interpolant_boundaries_and_derivatives(kind):
    it = Interpolant(kind, noise_scale=0.5)
    rng = np.random.default_rng(0)
    x0, x1 = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    np.testing.assert_allclose(it.mean(x0, x1, np.zeros(4)), x0, atol=1e-12)
    np.testing.assert_allclose(it.mean(x0, x1, np.ones(4)), x1, atol=1e-12)
    assert it.gamma(0.0) == 0.0 and it.gamma(1.0) == 0.0
    assert it.gamma(0.5) > 0
    # derivatives against central differences, away from the encode-decode switch at t = 1/2
    t = np.array([0.013, 0.2, 0.37, 0.61, 0.9, 0.987])
    h = 1e-6
    for f, df in ((lambda s: it.w(s)[0], lambda s: it.dw(s)[0]), (lambda s: it.w(s)[1], lambda s: it.dw(s)[1]),
                  (it.gamma, it.dgamma)):
        np.testing.assert_allclose(df(t), (f(t + h) - f(t - h)) / (2 * h), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(it.dmean(x0, x1, t[:4]), (it.mean(x0, x1, t[:4] + h) - it.mean(x0, x1, t[:4] - h)) / (2 * h),
                               rtol=1e-5, atol=1e-6)
    # torch and numpy agree
    tt = torch.tensor(t)
    np.testing.assert_allclose(it.gamma(tt).numpy(), it.gamma(t))
    np.testing.assert_allclose(it.dw(tt)[1].numpy(), it.dw(t)[1])


def test_encode_decode_passes_through_noise():
    it = Interpolant("encode_decode", noise_scale=1.0)
    w0, w1 = it.w(np.array([0.5]))
    assert w0[0] == pytest.approx(0.0, abs=1e-12) and w1[0] == pytest.approx(0.0, abs=1e-12)
    assert it.gamma(0.5) == pytest.approx(math.sqrt(0.5))


def test_interpolant_rejects_bad_options():
    with pytest.raises(UserError, match="interpolant"):
        Interpolant("cubic")
    with pytest.raises(UserError, match="eps"):
        Interpolant("linear", eps="t")
    with pytest.raises(UserError, match="noise_scale"):
        Interpolant("linear", noise_scale=0.0)


def test_eps_options_and_ode():
    t = np.array([0.25])
    d = 0.1
    assert Interpolant("linear", d, "1-t").eps_coef(t)[0] == pytest.approx(d * d * 0.75)
    assert Interpolant("linear", d, "t(1-t)").eps_coef(t)[0] == pytest.approx(d * d * 0.1875)
    assert Interpolant("linear", d, "0").eps_coef(t)[0] == 0.0
    g = make_grid(Interpolant("power3", d, "0"), 7)
    assert not g.sigma.any()  # ODE: no noise at all
    g = make_grid(Interpolant("power3", d, "1-t"), 7)
    assert (g.sigma[:-1] > 0).all() and g.sigma[-1] == 0  # last step noise-free by default
    assert make_grid(Interpolant("power3", d, "1-t"), 7, final_noise=True).sigma[-1] > 0


# ----------------------------------------------------------------------------- losses
def test_loss_minimisers_are_conditional_expectations():
    """Minimising L_v and L_s over linear functions of x_t gives the regression of dI/dt and z on
    x_t, which for Gaussian x0, x1 is exactly E[dI/dt | x_t] and E[z | x_t] (also linear)."""
    torch.manual_seed(0)
    it = Interpolant("linear", noise_scale=1.0)
    n, t = 200_000, 0.3
    x0, x1, z = torch.randn(n, 1), 2.0 + 0.5 * torch.randn(n, 1), torch.randn(n, 1)
    tt = torch.full((n,), t)
    xt = it.interpolate(x0, x1, tt, z)
    dI = it.dmean(x0, x1, tt)
    params = torch.zeros(4, requires_grad=True)  # v = a x + b, s = c x + e
    opt = torch.optim.LBFGS([params], max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        v = params[0] * xt + params[1]
        s = params[2] * xt + params[3]
        loss = velocity_loss(v, dI).mean() + denoiser_loss(s, z).mean()
        loss.backward()
        return loss

    opt.step(closure)
    w0, w1, g = 1 - t, t, it.gamma(t)
    var = w0 ** 2 + (w1 * 0.5) ** 2 + g ** 2
    # E[z | x] = g (x - w1 mu1) / var;  E[dI | x] = E[x1 - x0 | x] = mu1 + (w1 s1^2 - w0) (x - w1 mu1) / var
    c_true, a_true = g / var, (w1 * 0.25 - w0) / var
    a, b, c, e = params.detach().tolist()
    assert c == pytest.approx(c_true, abs=0.01)
    assert e == pytest.approx(-c_true * w1 * 2.0, abs=0.01)
    assert a == pytest.approx(a_true, abs=0.01)
    assert b == pytest.approx(2.0 - a_true * w1 * 2.0, abs=0.01)


# ----------------------------------------------------------------------------- sampler
class _ExactGaussianFields:
    """Exact v and s for x0 ~ N(0, 1), x1 ~ N(mu1, s1^2) independent (all conditionals linear)."""

    def __init__(self, it: Interpolant, mu1: float, s1: float):
        self.it, self.mu1, self.s1 = it, mu1, s1

    def __call__(self, x, t, cond):
        it, t = self.it, t[:, None]
        w0, w1 = it.w(t)
        d0, d1 = it.dw(t)
        g = it.gamma(t)
        r = (x - w1 * self.mu1) / (w0 ** 2 + (w1 * self.s1) ** 2 + g ** 2)
        return d0 * (w0 * r) + d1 * (self.mu1 + w1 * self.s1 ** 2 * r), g * r


@pytest.mark.parametrize("kind,d,eps", [("linear", 1.0, "1-t"), ("linear", 1.0, "t(1-t)"), ("linear", 1.0, "0"),
                                        ("power3", 0.03, "1-t"), ("power4", 0.03, "0"),
                                        ("encode_decode", 1.0, "1-t")])
def test_sampler_with_exact_fields_transports_the_marginals(kind, d, eps):
    torch.manual_seed(1)
    it = Interpolant(kind, d, eps)
    x = sample_torch(_ExactGaussianFields(it, 1.5, 0.5), make_grid(it, 400, final_noise=True),
                     torch.randn(40_000, 1), torch.zeros(40_000, 0))
    assert float(x.mean()) == pytest.approx(1.5, abs=0.02)
    assert float(x.std()) == pytest.approx(0.5, rel=0.04)


def test_sampler_noise_scales_with_sqrt_dt():
    """With the SDE (d = 1, eps = 1-t) the right spread needs sqrt(dt) noise; the public code's
    dt-scaled noise visibly shrinks it (this test would catch that defect)."""
    torch.manual_seed(2)
    it = Interpolant("linear", 1.0, "1-t")
    grid = make_grid(it, 400, final_noise=True)
    fields = _ExactGaussianFields(it, 0.0, 1.0)
    good = sample_torch(fields, grid, torch.randn(40_000, 1), torch.zeros(40_000, 0))
    grid.sigma = grid.sigma * np.sqrt(grid.a)  # noise ~ dt instead of sqrt(dt)
    bad = sample_torch(fields, grid, torch.randn(40_000, 1), torch.zeros(40_000, 0))
    assert float(good.std()) == pytest.approx(1.0, rel=0.04)
    assert float(bad.std()) < 0.9


def test_sampler_uses_the_standard_v_to_b_identity():
    """b = v - gamma' gamma score; the public code's extra eps(t) factor on that term changes
    the transported marginals (visible with d = 1, eps = t(1-t))."""
    torch.manual_seed(3)
    it = Interpolant("linear", 1.0, "t(1-t)")
    grid = make_grid(it, 400, final_noise=True)
    fields = _ExactGaussianFields(it, 0.0, 2.0)
    good = sample_torch(fields, grid, torch.randn(40_000, 1), torch.zeros(40_000, 0))
    t = grid.t.astype(np.float64)
    grid.c = (grid.a * (it.eps_coef(t) * it.dgamma(t) - it.eps_coef(t) / it.gamma(t))).astype(np.float32)
    bad = sample_torch(fields, grid, torch.randn(40_000, 1), torch.zeros(40_000, 0))
    assert float(good.std()) == pytest.approx(2.0, rel=0.04)
    assert float(bad.std()) < 1.9


@pytest.mark.parametrize("kind", ["linear", "power3", "power4"])
@pytest.mark.parametrize("steps", [1, 2, 5])
def test_sampler_reaches_x1_from_a_paired_source(kind, steps):
    """One (x0, x1) pair per condition: exact v = dI/dt, s = (x - I)/gamma. Euler-Maruyama in the
    interpolant's clock lands on x1 even with one step."""
    it = Interpolant(kind, 0.03, "1-t")
    x0, x1 = np.array([[-1.0, 0.5]]), np.array([[0.7, -0.3]])

    def fields(x, t, cond):
        tt = t.double()
        I = it.mean(torch.tensor(x0), torch.tensor(x1), tt)
        v = it.dmean(torch.tensor(x0), torch.tensor(x1), tt)
        s = (x.double() - I) / it.gamma(tt)[:, None]
        return v.float(), s.float()

    torch.manual_seed(0)
    out = sample_torch(fields, make_grid(it, steps), torch.tensor(x0, dtype=torch.float32), torch.zeros(1, 0))
    np.testing.assert_allclose(out.numpy(), x1, atol=0.06)


def test_make_grid_rejects_bad_steps():
    it = Interpolant()
    for bad in (0, -1, 2.5):
        with pytest.raises(UserError, match="steps"):
            make_grid(it, bad)
    with pytest.raises(UserError, match="clock"):
        make_grid(Interpolant("encode_decode"), 3, clock="w1")


def test_numpy_forward_matches_torch():
    torch.manual_seed(0)
    net = BridgerNet(4, 6, [32, 32], "silu").eval()
    fwd = NumpyForward(net)
    it = Interpolant()
    grid = make_grid(it, 5, final_noise=True)
    x0 = np.random.default_rng(0).normal(size=4).astype(np.float32)
    cond = np.random.default_rng(1).normal(size=6).astype(np.float32)
    # same noise in both: ODE grid
    grid_ode = make_grid(Interpolant(eps="0"), 5)
    a = sample_numpy(fwd, fwd.time_bias(grid_ode.t), grid_ode, x0, fwd.cond_bias(cond), np.random.default_rng(0))
    b = sample_torch(net, grid_ode, torch.tensor(x0)[None], torch.tensor(cond)[None])[0].numpy()
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    v_t, s_t = net(torch.tensor(x0)[None], torch.tensor([grid.t[2]]), torch.tensor(cond)[None])
    v_n, s_n = fwd.step(x0, fwd.cond_bias(cond) + fwd.time_bias(grid.t)[2])
    np.testing.assert_allclose(v_n, v_t[0].detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(s_n, s_t[0].detach().numpy(), rtol=1e-4, atol=1e-5)
