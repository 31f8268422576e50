"""ODE-RNN, the time-gap GRU and the latent ODE: reductions to known networks, exact ODE
evolution between observations, masks, the ELBO against independent formulas, training
on a tiny problem, and the ``neurode latent`` command."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from neurode import odeint
from neurode.cli import main
from neurode.errors import InvalidTimesError, NeurodeInputError, ShapeMismatchError
from neurode.models.latent_ode import LatentODE
from neurode.models.ode_rnn import ODERNN
from neurode.models.rnn_baseline import TimeGapGRU
from neurode.models.sequence_predictor import SequencePredictor


@pytest.fixture(autouse=True)
def _float64_default():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


class _Zero(nn.Module):
    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(h)


class _Linear(nn.Module):
    """dh/dt = A h."""

    def __init__(self, matrix: torch.Tensor):
        super().__init__()
        self.matrix = nn.Parameter(matrix.clone())

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return h @ self.matrix.T


def _series(batch: int = 3, steps: int = 6, dim: int = 2, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    gaps = 0.1 + torch.rand(steps - 1, generator=generator)
    times = torch.cat([torch.zeros(1), gaps.cumsum(0)])
    values = torch.randn(batch, steps, dim, generator=generator)
    return times, values


def test_ode_rnn_with_zero_dynamics_is_a_gru_fed_values_and_ones():
    torch.manual_seed(0)
    times = torch.linspace(0, 2, 7)
    _, values = _series(batch=4, steps=7, dim=3)
    model = ODERNN(3, 5, dynamics=_Zero())
    states = model(times, values)
    cell = nn.GRUCell(6, 5)
    cell.load_state_dict(model.cell.state_dict())
    h = torch.zeros(4, 5)
    expected = []
    for i in range(7):
        h = cell(torch.cat([values[:, i], torch.ones(4, 3)], -1), h)
        expected.append(h)
    torch.testing.assert_close(states.after, torch.stack(expected, 1), rtol=0, atol=1e-12)
    torch.testing.assert_close(states.before[:, 1:], states.after[:, :-1], rtol=0, atol=1e-12)
    torch.testing.assert_close(states.final, expected[-1])


def test_ode_rnn_state_between_observations_follows_the_ode_exactly():
    torch.manual_seed(0)
    matrix = torch.tensor([[-0.2, 1.0, 0.0], [-1.0, -0.1, 0.3], [0.0, -0.3, -0.5]])
    times, values = _series(batch=2, steps=5, dim=2)
    model = ODERNN(2, 3, dynamics=_Linear(matrix), method="dopri5", rtol=1e-10, atol=1e-12)
    mask = torch.ones_like(values)
    mask[:, 2:4] = 0  # nothing observed at t_2, t_3: pure evolution from t_1 to t_4
    states = model(times, values, mask)
    for i in range(1, 5):
        propagator = torch.linalg.matrix_exp(matrix * (times[i] - times[i - 1]))
        torch.testing.assert_close(
            states.before[:, i], states.after[:, i - 1] @ propagator.T, rtol=0, atol=1e-9
        )
    torch.testing.assert_close(states.after[:, 2:4], states.before[:, 2:4])


def test_ode_rnn_reverse_processes_from_last_time_backwards():
    torch.manual_seed(0)
    matrix = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    times, values = _series(batch=2, steps=4, dim=1)
    model = ODERNN(1, 2, dynamics=_Linear(matrix), rtol=1e-10, atol=1e-12)
    states = model(times, values, reverse=True)
    torch.testing.assert_close(states.before[:, -1], torch.zeros(2, 2))
    # Evolving backwards from t_{i+1} to t_i applies exp(-A (t_{i+1} - t_i)).
    for i in range(3):
        propagator = torch.linalg.matrix_exp(-matrix * (times[i + 1] - times[i]))
        torch.testing.assert_close(
            states.before[:, i], states.after[:, i + 1] @ propagator.T, rtol=0, atol=1e-9
        )
    torch.testing.assert_close(states.final, states.after[:, 0])


def test_time_gap_gru_matches_a_gru_fed_values_mask_and_gaps():
    torch.manual_seed(0)
    times, values = _series(batch=3, steps=5, dim=2)
    mask = (torch.rand_like(values) > 0.3).double()
    mask[0, 2] = 0  # a series with nothing observed at one time
    model = TimeGapGRU(2, 4)
    states = model(times, values, mask)
    cell = model.cell
    h = torch.zeros(3, 4)
    for i in range(5):
        gap = (times[i] - times[i - 1] if i else torch.tensor(0.0)).expand(3, 1)
        blank = cell(torch.cat([torch.zeros(3, 4), gap], -1), h) if i else h
        update = cell(torch.cat([values[:, i] * mask[:, i], mask[:, i], gap], -1), h)
        observed = mask[:, i].sum(-1, keepdim=True) > 0
        h = torch.where(observed, update, blank)
        torch.testing.assert_close(states.before[:, i], blank)
        torch.testing.assert_close(states.after[:, i], h)


@pytest.mark.parametrize("make_model", [lambda: ODERNN(2, 4), lambda: TimeGapGRU(2, 4)])
def test_recurrent_models_ignore_masked_values(make_model):
    torch.manual_seed(0)
    model = make_model()
    times, values = _series(batch=3, steps=6, dim=2)
    mask = (torch.rand_like(values) > 0.4).double()
    changed = torch.where(mask > 0, values, torch.full_like(values, float("nan")))
    reference = model(times, values, mask)
    other = model(times, changed, mask)
    torch.testing.assert_close(other.after, reference.after, rtol=0, atol=0)
    # ...while an observed value does matter.
    flipped = values.clone()
    index = tuple(mask.nonzero()[0])
    flipped[index] += 1.0
    assert not torch.allclose(model(times, flipped, mask).after, reference.after)


def _latent_model(**kwargs) -> LatentODE:
    torch.manual_seed(0)
    defaults = dict(latent_dim=3, encoder_hidden=6, dynamics_width=8, decoder_width=8)
    defaults.update(kwargs)
    return LatentODE(2, **defaults)


def test_latent_ode_elbo_ignores_masked_values():
    model = _latent_model()
    times, values = _series(batch=3, steps=6, dim=2)
    mask = (torch.rand(values.shape, generator=torch.Generator().manual_seed(1)) > 0.4).double()
    scrambled = torch.where(mask > 0, values, 100 * torch.randn_like(values))
    first = model.elbo(times, values, mask, generator=torch.Generator().manual_seed(2))
    second = model.elbo(times, scrambled, mask, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(second.elbo, first.elbo, rtol=0, atol=0)


def test_latent_ode_elbo_terms_equal_independent_gaussian_formulas():
    model = _latent_model(obs_std=0.3)
    times, values = _series(batch=4, steps=5, dim=2)
    mask = (torch.rand(values.shape, generator=torch.Generator().manual_seed(3)) > 0.3).double()
    elbo = model.elbo(times, values, mask, n_samples=2, generator=torch.Generator().manual_seed(4))
    output = model(times, values, mask, n_samples=2, generator=torch.Generator().manual_seed(4))
    likelihood = torch.distributions.Normal(output.predictions, 0.3).log_prob(values)
    expected_log_likelihood = (likelihood * mask).sum((-1, -2)).mean()
    posterior = torch.distributions.Normal(output.mean, output.std)
    prior = torch.distributions.Normal(torch.zeros(3), torch.ones(3))
    expected_kl = torch.distributions.kl_divergence(posterior, prior).sum(-1).mean()
    torch.testing.assert_close(elbo.log_likelihood, expected_log_likelihood)
    torch.testing.assert_close(elbo.kl, expected_kl)
    torch.testing.assert_close(elbo.elbo, expected_log_likelihood - expected_kl)


def test_latent_trajectory_is_the_solution_of_the_latent_ode_beyond_the_observations():
    model = _latent_model(rtol=1e-10, atol=1e-12)
    times, values = _series(batch=2, steps=4, dim=2)
    query = torch.tensor([0.5, 1.0, 4.0, 7.5])  # past times[-1]: extrapolation
    output = model(times, values, query_times=query, n_samples=0)
    z0 = output.mean
    grid = torch.cat([times[:1], query])
    reference = odeint(model.dynamics, z0, grid, rtol=1e-10, atol=1e-12)[1:].transpose(0, 1)
    torch.testing.assert_close(output.latents[0], reference, rtol=0, atol=1e-8)
    torch.testing.assert_close(output.predictions[0], model.decoder(reference), atol=1e-8, rtol=0)


def test_union_grid_batch_gives_each_series_its_own_posterior():
    # Series observed at different times, batched on the union grid with a mask: each
    # series' posterior equals the one computed from that series alone.
    model = _latent_model(rtol=1e-10, atol=1e-12)
    times_a = torch.tensor([0.0, 0.4, 1.1, 1.5])
    times_b = torch.tensor([0.0, 0.7, 1.1, 1.9, 2.2])
    _, values_a = _series(batch=1, steps=4, seed=1)
    _, values_b = _series(batch=1, steps=5, seed=2)
    union = torch.unique(torch.cat([times_a, times_b]))
    values = torch.zeros(2, len(union), 2)
    mask = torch.zeros(2, len(union))
    for row, (t, v) in enumerate([(times_a, values_a[0]), (times_b, values_b[0])]):
        index = torch.searchsorted(union, t)
        values[row, index] = v
        mask[row, index] = 1
    mean, std = model.posterior(union, values, mask)
    for row, (t, v) in enumerate([(times_a, values_a), (times_b, values_b)]):
        mean_alone, std_alone = model.posterior(t, v)
        torch.testing.assert_close(mean[row], mean_alone[0], rtol=0, atol=1e-7)
        torch.testing.assert_close(std[row], std_alone[0], rtol=0, atol=1e-7)


def test_elbo_improves_within_a_few_iterations_on_a_tiny_problem():
    torch.manual_seed(0)
    times = torch.linspace(0, 2, 12)
    phase = torch.rand(8, 1) * math.pi
    values = torch.stack([torch.sin(times + phase), torch.cos(times + phase)], -1)
    model = _latent_model(obs_std=0.2, encoder=ODERNN(2, 6, method="euler"))
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)

    def evaluate() -> float:
        with torch.no_grad():
            elbo = model.elbo(
                times, values, n_samples=64, generator=torch.Generator().manual_seed(0)
            )
        return float(elbo.elbo)

    before = evaluate()
    for _ in range(15):
        loss = -model.elbo(times, values).objective
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = evaluate()
    # The bound is evaluated with fixed noise, so the change is the training's doing;
    # it must be a clear gain per observed value (about 0.36 nats here).
    assert (after - before) / values.numel() > 0.25


def test_sequence_predictor_predicts_from_state_before_each_observation():
    torch.manual_seed(0)
    times, values = _series(batch=2, steps=5, dim=2)
    predictor = SequencePredictor(ODERNN(2, 4), 2)
    predictions = predictor(times, values)
    states = predictor.recurrent(times, values)
    torch.testing.assert_close(predictions, predictor.decoder(states.before))
    # Changing the last observation cannot change any prediction (all are causal).
    changed = values.clone()
    changed[:, -1] += 5
    torch.testing.assert_close(predictor(times, changed), predictions)
    expected_loss = ((predictions - values) ** 2).mean()
    torch.testing.assert_close(predictor.loss(times, values), expected_loss)


def test_bad_series_raise_typed_errors():
    model = _latent_model()
    times, values = _series(batch=2, steps=4, dim=2)
    with pytest.raises(InvalidTimesError):
        model.elbo(times.flip(0), values)
    with pytest.raises(InvalidTimesError):
        model.elbo(torch.tensor([0.0, 1.0, 1.0, 2.0]), values)
    with pytest.raises(ShapeMismatchError):
        model.elbo(times[:3], values)
    with pytest.raises(ShapeMismatchError):
        model.elbo(times, values, torch.ones(2, 4, 3))
    with pytest.raises(ShapeMismatchError):
        model.elbo(times, values[..., :1])
    with pytest.raises(InvalidTimesError):
        model(times + 1.0, values, query_times=torch.tensor([0.5, 2.0]))
    with pytest.raises(NeurodeInputError):
        values_with_nan = values.clone()
        values_with_nan[0, 0, 0] = float("nan")
        model.elbo(times, values_with_nan)
    with pytest.raises(NeurodeInputError):
        LatentODE(2, obs_std=0.0)
    with pytest.raises(ShapeMismatchError):
        ODERNN(2, 4)(times, values, h0=torch.zeros(3, 4))
    with pytest.raises(ShapeMismatchError):
        TimeGapGRU(2, 4)(times, values, h0=torch.zeros(2, 5))


def test_cli_rejects_bad_arguments(capsys, tmp_path):
    out = str(tmp_path)
    assert main(["latent", "--dataset", "spirals", "--n-obs", "500", "--out", out]) == 2
    assert "--n-obs" in capsys.readouterr().err
    assert main(["latent", "--dataset", "pendulum", "--missing", "1.5", "--out", out]) == 2
    assert main(["latent", "--epochs", "0", "--out", out]) == 2
    assert main(["latent", "--method", "rk45", "--out", out]) == 2
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize("dataset", ["spirals", "pendulum"])
def test_cli_smoke_run_writes_finite_metrics(dataset, tmp_path):
    arguments = ["latent", "--dataset", dataset, "--epochs", "1", "--train-size", "8"]
    arguments += ["--test-size", "4", "--batch-size", "8", "--n-obs", "10", "--hidden", "6"]
    arguments += ["--width", "6", "--no-progress", "--out", str(tmp_path)]
    assert main(arguments) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    expected_models = {
        "spirals": {"latent_ode", "rnn"},
        "pendulum": {"latent_ode", "ode_rnn", "rnn"},
    }
    assert {row["model"] for row in metrics["results"]} == expected_models[dataset]
    for row in metrics["results"]:
        for key in ("interpolation_mse", "extrapolation_mse", "rmse"):
            assert math.isfinite(row[key]) and row[key] > 0
        assert all(math.isfinite(loss) for loss in row["loss_history"])
    assert (tmp_path / f"{dataset}_n10.png").stat().st_size > 0
