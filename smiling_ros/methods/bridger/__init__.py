"""BRIDGER: policy diffusion from an informative source (Chen et al., RSS 2024).

- interpolants.py: stochastic interpolants x_t = w0 x0 + w1 x1 + gamma z, gamma and eps(t)
- nets.py: velocity/denoiser MLP (one trunk, two heads), losses, EMA, numpy forward
- sampler.py: Euler-Maruyama / ODE sampler from source to expert action
- sources.py: gaussian, CVAE, heuristic and policy-checkpoint sources (``sample(obs)``)
- policy.py: :class:`BridgerPolicy` (checkpoint kind ``bridger``), the deployed policy
- train.py: training (CVAE and BRIDGER) and evaluation per sampling step count

Heavy imports stay in the submodules.
"""
