"""The latent ODE: a variational autoencoder whose latent trajectory solves an ODE.

Chen et al. (2018, §5); Rubanova, Chen & Duvenaud (2019). Generative model,
for query times ``t_0 <= s_1 < ... < s_K``:

    z_0 ~ N(0, I),    z(s) = ODESolve(f_θ, z_0, t_0 -> s),    x(s) ~ N(g_θ(z(s)), σ² I)

with a fixed observation noise ``σ``. The approximate posterior
``q(z_0 | x) = N(μ, diag(s²))`` is read off an encoder (by default an ODE-RNN)
that runs over the observations *backwards* in time, so its final state lives
at ``t_0``. Training maximises the evidence lower bound

    ELBO = E_q[ Σ_{observed (k, d)} log N(x_kd; g(z(s_k))_d, σ²) ] - KL(q(z_0 | x) || N(0, I)),

estimated with reparameterised samples ``z_0 = μ + s ⊙ ε``. The KL of diagonal
Gaussians is ``½ Σ_j (s_j² + μ_j² - 1 - log s_j²)``. Query times may run past
the observed window (extrapolation).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import InvalidTimesError, NeurodeInputError, ShapeMismatchError
from ._layers import _AutonomousField, _mlp, _solve_states
from .ode_rnn import ODERNN
from .time_series import check_series, check_sizes, check_times, masked_values


class LatentODEOutput(NamedTuple):
    """Decoded trajectories for ``S`` samples of ``z_0``.

    ``predictions`` ``(S, B, K, D)``, ``latents`` ``(S, B, K, L)`` at the query
    times; ``mean`` and ``std`` ``(B, L)`` of the posterior over ``z_0``.
    """

    predictions: torch.Tensor
    latents: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor


class ELBO(NamedTuple):
    """Terms of the evidence lower bound, each averaged over the batch.

    ``elbo = log_likelihood - kl``; ``objective = log_likelihood - kl_weight * kl``
    is what training maximises (``kl_weight`` below 1 anneals the KL term).
    """

    elbo: torch.Tensor
    log_likelihood: torch.Tensor
    kl: torch.Tensor
    objective: torch.Tensor


class LatentODE(nn.Module):
    """Latent ODE with an ODE-RNN encoder, an MLP latent vector field and an MLP decoder.

    Args:
        data_dim: number of observed features ``D``.
        latent_dim: size ``L`` of ``z``.
        encoder: a recurrent model with ``hidden_dim`` and the call signature of
            :class:`ODERNN` (``TimeGapGRU`` gives the RNN-VAE); default
            ``ODERNN(data_dim, encoder_hidden)``.
        encoder_hidden: hidden size of the default encoder.
        dynamics_width, decoder_width: widths of the latent field and decoder MLPs.
        obs_std: the fixed observation noise ``σ`` of the likelihood.
        method, rtol, atol, options, gradient, gradient_options: how the latent
            ODE is solved (see :func:`neurode.solve`); the default encoder uses the same.
    """

    def __init__(
        self,
        data_dim: int,
        latent_dim: int = 4,
        *,
        encoder: nn.Module | None = None,
        encoder_hidden: int = 25,
        dynamics_width: int = 20,
        decoder_width: int = 20,
        obs_std: float = 0.1,
        method: str = "dopri5",
        rtol: float = 1e-3,
        atol: float = 1e-4,
        options: dict | None = None,
        gradient: str = "direct",
        gradient_options: dict | None = None,
    ):
        super().__init__()
        check_sizes(data_dim=data_dim, latent_dim=latent_dim)
        if not obs_std > 0:
            raise NeurodeInputError(f"obs_std must be positive, got {obs_std}")
        self.data_dim = data_dim
        self.latent_dim = latent_dim
        self.obs_std = float(obs_std)
        if encoder is None:
            encoder = ODERNN(
                data_dim,
                encoder_hidden,
                method=method,
                rtol=rtol,
                atol=atol,
                options=options,
                gradient=gradient,
                gradient_options=gradient_options,
            )
        self.encoder = encoder
        self.to_posterior = nn.Linear(encoder.hidden_dim, 2 * latent_dim)
        self.dynamics = _AutonomousField(
            _mlp([latent_dim, dynamics_width, dynamics_width, latent_dim], "elu")
        )
        self.decoder = _mlp([latent_dim, decoder_width, data_dim], "relu")
        self.method = method
        self.rtol = rtol
        self.atol = atol
        self.options = options
        self.gradient = gradient
        self.gradient_options = gradient_options

    def posterior(
        self, times: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation ``(B, L)`` of ``q(z_0 | x)``, ``z_0`` at ``times[0]``."""
        if values.ndim == 3 and values.shape[-1] != self.data_dim:
            raise ShapeMismatchError(
                f"values have {values.shape[-1]} features, the model expects {self.data_dim}"
            )
        states = self.encoder(times, values, mask, reverse=True)
        mean, raw_std = self.to_posterior(states.final).chunk(2, dim=-1)
        return mean, F.softplus(raw_std) + 1e-5

    def decode(
        self, z0: torch.Tensor, t0: torch.Tensor, query_times: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Solve the latent ODE from ``z0`` (``(..., L)``) at ``t0`` and decode.

        Returns ``(predictions (..., K, D), latents (..., K, L))`` at the ``K``
        ``query_times`` (increasing, none before ``t0``).
        """
        check_times(query_times, name="query_times", increasing=True)
        if query_times[0] < t0:
            raise InvalidTimesError(
                f"query_times start at {float(query_times[0])}, before t0 = {float(t0)}"
            )
        prepend = bool(query_times[0] > t0)
        grid = torch.cat([t0.reshape(1), query_times]) if prepend else query_times
        flat = z0.reshape(-1, self.latent_dim)
        latents = _solve_states(self, self.dynamics, flat, grid.to(flat.dtype))
        if prepend:
            latents = latents[1:]
        latents = latents.transpose(0, 1).reshape(*z0.shape[:-1], len(query_times), self.latent_dim)
        return self.decoder(latents), latents

    def forward(
        self,
        times: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor | None = None,
        query_times: torch.Tensor | None = None,
        *,
        n_samples: int = 1,
        generator: torch.Generator | None = None,
    ) -> LatentODEOutput:
        """Encode the series, draw ``n_samples`` of ``z_0`` and decode at ``query_times``.

        ``n_samples=0`` decodes the posterior mean once (a leading axis of size 1).
        ``query_times`` defaults to ``times``.
        """
        if n_samples < 0:
            raise NeurodeInputError(f"n_samples must be >= 0, got {n_samples}")
        mean, std = self.posterior(times, values, mask)
        if n_samples == 0:
            z0 = mean.unsqueeze(0)
        else:
            noise = torch.randn(
                (n_samples, *mean.shape), generator=generator, dtype=mean.dtype, device=mean.device
            )
            z0 = mean + std * noise
        query_times = times if query_times is None else query_times
        predictions, latents = self.decode(z0, times[0], query_times)
        return LatentODEOutput(predictions, latents, mean, std)

    def predict(
        self,
        times: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor | None = None,
        query_times: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Decoded trajectory of the posterior mean, ``(B, K, D)``."""
        return self(times, values, mask, query_times, n_samples=0).predictions[0]

    def elbo(
        self,
        times: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        target_times: torch.Tensor | None = None,
        target_values: torch.Tensor | None = None,
        target_mask: torch.Tensor | None = None,
        n_samples: int = 1,
        kl_weight: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> ELBO:
        """Evidence lower bound of the targets given the observed series.

        The posterior is read from ``(times, values, mask)``; the likelihood is
        scored on ``(target_times, target_values, target_mask)``, by default the
        same series (reconstruction). Targets past ``times[-1]`` train extrapolation.
        """
        if n_samples < 1:
            raise NeurodeInputError(f"n_samples must be >= 1, got {n_samples}")
        mask = check_series(times, values, mask)
        if target_times is None:
            target_times = times
        if target_values is None:
            target_values = values
            if target_mask is None:
                target_mask = mask
        target_mask = check_series(target_times, target_values, target_mask)
        if target_values.shape[0] != values.shape[0]:
            raise ShapeMismatchError("target_values must have the batch size of values")
        output = self(times, values, mask, target_times, n_samples=n_samples, generator=generator)
        log_likelihood = _gaussian_log_likelihood(
            output.predictions, target_values, target_mask, self.obs_std
        ).mean(0)
        kl = _kl_to_standard_normal(output.mean, output.std)
        return ELBO(
            elbo=(log_likelihood - kl).mean(),
            log_likelihood=log_likelihood.mean(),
            kl=kl.mean(),
            objective=(log_likelihood - kl_weight * kl).mean(),
        )


def _gaussian_log_likelihood(
    predictions: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, std: float
) -> torch.Tensor:
    """``Σ`` over observed entries of ``log N(x; prediction, std²)``; shape ``(S, B)``."""
    residual = (predictions - masked_values(targets, mask)) / std
    log_density = -0.5 * residual**2 - math.log(std) - 0.5 * math.log(2 * math.pi)
    return (log_density * mask).sum(dim=(-1, -2))


def _kl_to_standard_normal(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``KL(N(mean, diag std²) || N(0, I))`` per series, shape ``(B,)``."""
    return 0.5 * (std**2 + mean**2 - 1 - 2 * torch.log(std)).sum(-1)
