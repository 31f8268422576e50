"""The training loop, checkpoints, early stopping, and the trajectory-fitting pieces."""

from __future__ import annotations

import math
import os
import random

import numpy as np
import pytest
import torch
from torch import nn

from neurode.errors import InvalidTimesError, NeurodeInputError, NonFiniteInputError
from neurode.models.hybrid import PendulumPhysics
from neurode.train import (
    CheckpointError,
    EarlyStopping,
    StepOutput,
    TrainConfig,
    Trajectories,
    TrajectoryModel,
    TrajectoryObjective,
    capture_rng_state,
    estimate_unobserved,
    finite_difference_slope,
    fit,
    learning_rate,
    load_checkpoint,
    restore_rng_state,
    rollout_mse,
    save_checkpoint,
    squared_error,
)
from neurode.train import checkpoint as checkpoint_module

# ----------------------------------------------------------------------------- helpers


class _LinearField(nn.Module):
    """dy/dt = A y with a learnable 2x2 matrix A."""

    def __init__(self):
        super().__init__()
        self.matrix = nn.Parameter(torch.tensor([[0.0, 0.8], [-0.8, 0.0]], dtype=torch.float64))

    def forward(self, t, y):
        return y @ self.matrix.T


def _rotation_data(n: int = 6, points: int = 16) -> Trajectories:
    """Exact trajectories of dy/dt = [[-0.1, 1], [-1, -0.1]] y: damped rotations."""
    times = torch.linspace(0.0, 3.0, points, dtype=torch.float64)
    angle0 = torch.linspace(0.0, 2 * math.pi, n + 1, dtype=torch.float64)[:-1]
    decay = torch.exp(-0.1 * times)
    theta = angle0[:, None] - times[None, :]
    values = torch.stack([decay * torch.cos(theta), decay * torch.sin(theta)], dim=-1)
    return Trajectories.from_tensors(times, values)


class _NoisyObjective:
    """A trajectory objective whose loss also draws from torch, numpy and Python RNGs.

    If any global random state were not restored on resume, the resumed
    parameters would differ from the uninterrupted ones.
    """

    def __init__(self, model, data, *, fail_at_call: int | None = None):
        self.inner = TrajectoryObjective(
            model, data, segment_points=5, segments_per_step=2, autonomous=True
        )
        self.calls = 0
        self.fail_at_call = fail_at_call

    def __call__(self, indices, generator):
        self.calls += 1
        if self.fail_at_call is not None and self.calls == self.fail_at_call:
            raise KeyboardInterrupt("simulated crash")
        output = self.inner(indices, generator)
        jitter = (
            1.0
            + 0.01 * float(torch.rand(()))
            + 0.01 * float(np.random.rand())
            + 0.01 * random.random()
        )
        return StepOutput(loss=output.loss * jitter, stats=output.stats)


def _train_rotation(tmp_path, epochs, *, resume=False, fail_at_call=None, name="run.pt"):
    data = _rotation_data()
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    model = TrajectoryModel(_LinearField(), data, rtol=1e-6, atol=1e-8)
    objective = _NoisyObjective(model, data, fail_at_call=fail_at_call)
    config = TrainConfig(
        epochs=epochs, lr=0.05, batch_size=4, seed=3, checkpoint_path=tmp_path / name
    )
    result = fit(model, objective, len(data), config, resume=resume)
    return model, result


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_keeps_tensors_and_plain_values(tmp_path):
    payload = {"weights": torch.arange(5.0), "epoch": 3, "history": {"loss": [1.0, 0.5]}}
    path = save_checkpoint(tmp_path / "sub" / "c.pt", payload)
    record = load_checkpoint(path)
    assert torch.equal(record["weights"], payload["weights"])
    assert record["epoch"] == 3 and record["history"] == {"loss": [1.0, 0.5]}
    assert os.listdir(tmp_path / "sub") == ["c.pt"]


def test_crash_while_writing_a_checkpoint_leaves_the_previous_one_intact(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"epoch": 1, "weights": torch.ones(3)})
    before = path.read_bytes()
    real_save = torch.save

    def save_half_then_crash(obj, handle, *args, **kwargs):
        real_save(obj, handle, *args, **kwargs)
        handle.seek(0)
        handle.truncate(10)  # a torn write
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.torch, "save", save_half_then_crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"epoch": 2, "weights": torch.zeros(3)})
    assert path.read_bytes() == before
    assert load_checkpoint(path)["epoch"] == 1
    assert os.listdir(tmp_path) == ["c.pt"], "the temporary file must be removed"


def test_crash_before_the_rename_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"epoch": 1})

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"epoch": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert os.listdir(tmp_path) == ["c.pt"]


def test_loading_a_missing_corrupt_or_foreign_file_raises_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "absent.pt")
    (tmp_path / "corrupt.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "corrupt.pt")
    torch.save({"weights": torch.ones(1)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a neurode"):
        load_checkpoint(tmp_path / "foreign.pt")
    assert issubclass(CheckpointError, ValueError)


def test_restored_random_states_replay_the_same_draws():
    state = capture_rng_state()
    first = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    restore_rng_state(state)
    second = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    assert torch.equal(first[0], second[0])
    assert np.array_equal(first[1], second[1])
    assert first[2] == second[2]


# ----------------------------------------------------------------------------- resume


def test_resume_after_a_crash_reproduces_the_uninterrupted_run_bitwise(tmp_path):
    reference, reference_result = _train_rotation(tmp_path, epochs=6, name="reference.pt")
    # 6 trajectories in batches of 4: two steps per epoch. Crash in epoch 4's
    # second step, after the checkpoint of epoch 3.
    with pytest.raises(KeyboardInterrupt):
        _train_rotation(tmp_path, epochs=6, fail_at_call=8, name="crashed.pt")
    assert load_checkpoint(tmp_path / "crashed.pt")["epoch"] == 3
    resumed, resumed_result = _train_rotation(tmp_path, epochs=6, resume=True, name="crashed.pt")
    for (name, a), (_, b) in zip(
        reference.named_parameters(), resumed.named_parameters(), strict=True
    ):
        assert torch.equal(a, b), name
    assert resumed_result.history.state_dict() == reference_result.history.state_dict()


def test_resume_continues_a_finished_run_to_more_epochs_identically(tmp_path):
    reference, _ = _train_rotation(tmp_path, epochs=5, name="reference.pt")
    _train_rotation(tmp_path, epochs=2, name="short.pt")
    extended, result = _train_rotation(tmp_path, epochs=5, resume=True, name="short.pt")
    assert result.history.epochs == 5
    assert torch.equal(reference.ode.dynamics.matrix, extended.ode.dynamics.matrix)


def test_resume_with_different_settings_is_refused(tmp_path):
    _train_rotation(tmp_path, epochs=1)
    data = _rotation_data()
    model = TrajectoryModel(_LinearField(), data)
    objective = TrajectoryObjective(model, data)
    config = TrainConfig(
        epochs=2, lr=0.01, batch_size=4, seed=3, checkpoint_path=tmp_path / "run.pt"
    )
    with pytest.raises(CheckpointError, match="lr=0.05"):
        fit(model, objective, len(data), config, resume=True)


def test_resume_without_a_checkpoint_is_a_typed_error(tmp_path):
    data = _rotation_data()
    model = TrajectoryModel(_LinearField(), data)
    config = TrainConfig(epochs=1, checkpoint_path=tmp_path / "none.pt")
    with pytest.raises(CheckpointError):
        fit(model, TrajectoryObjective(model, data), len(data), config, resume=True)


# ----------------------------------------------------------------------------- loop


@pytest.mark.slow
def test_training_a_linear_field_approaches_the_matrix_and_logs_nfe():
    data = _rotation_data()
    model = TrajectoryModel(_LinearField(), data, rtol=1e-7, atol=1e-9)
    objective = TrajectoryObjective(model, data, segment_points=8, segments_per_step=3)
    config = TrainConfig(epochs=60, lr=0.03, lr_final=0.001)
    result = fit(model, objective, len(data), config)
    exact = torch.tensor([[-0.1, 1.0], [-1.0, -0.1]], dtype=torch.float64)
    history = result.history
    assert history.loss[-1] < 1e-3 * history.loss[0]
    assert torch.allclose(model.ode.dynamics.matrix, exact, atol=1e-2)
    assert history.epochs == 60 and len(history.step_loss) == 60
    assert all(nfe > 0 for nfe in history.nfe_forward)
    assert history.nfe_forward == history.step_nfe_forward  # one step per epoch
    assert all(nfe == 0 for nfe in history.nfe_backward)  # direct backprop re-evaluates nothing


def test_backward_nfe_of_an_adjoint_is_logged_from_the_solver_statistics():
    data = _rotation_data(n=2, points=6)
    model = TrajectoryModel(_LinearField(), data, gradient="backsolve")
    objective = TrajectoryObjective(model, data)
    result = fit(model, objective, len(data), TrainConfig(epochs=2, lr=0.01))
    assert all(nfe > 0 for nfe in result.history.nfe_backward)
    assert result.history.nfe_backward[-1] == model.stats["nfe_backward"]
    assert result.history.nfe_forward[-1] == model.stats["nfe"]


def test_cosine_learning_rate_runs_from_lr_to_lr_final():
    config = TrainConfig(epochs=11, lr=0.1, lr_final=0.001)
    rates = [learning_rate(config, epoch) for epoch in range(11)]
    assert rates[0] == pytest.approx(0.1) and rates[-1] == pytest.approx(0.001)
    assert rates[5] == pytest.approx((0.1 + 0.001) / 2)
    assert all(a > b for a, b in zip(rates, rates[1:], strict=False))
    assert learning_rate(TrainConfig(epochs=11, lr=0.1), 7) == 0.1


def test_lr_scales_multiply_the_rate_of_the_named_parameters():
    data = _rotation_data(n=2, points=6)
    model = TrajectoryModel(PendulumPhysics(2.0, 0.2), data)
    objective = TrajectoryObjective(model, data)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    fit(
        model,
        objective,
        len(data),
        TrainConfig(epochs=1, lr=1e-3),
        lr_scales={"ode.dynamics.log_g_over_l": 10.0},
    )
    # Adam's first step moves every parameter by lr (times its scale) exactly.
    step = {n: float((p.detach() - before[n]).abs()) for n, p in model.named_parameters()}
    assert step["ode.dynamics.log_g_over_l"] == pytest.approx(1e-2, rel=1e-6)
    assert step["ode.dynamics.raw_mu"] == pytest.approx(1e-3, rel=1e-6)
    with pytest.raises(NeurodeInputError, match="unknown parameters"):
        fit(model, objective, 1, TrainConfig(epochs=1), lr_scales={"nope": 2.0})


def test_early_stopping_counts_epochs_without_improvement():
    stopper = EarlyStopping(patience=2, min_delta=0.1)
    module = nn.Linear(1, 1)
    decisions = [stopper.update(e, loss, module) for e, loss in enumerate([1.0, 0.95, 0.8, 0.75])]
    # 0.95 and 0.75 are not better than the best by more than 0.1.
    assert decisions == [False, False, False, False]
    assert stopper.best_epoch == 2 and stopper.epochs_without_improvement == 1
    assert stopper.update(4, 0.71, module) is True
    with pytest.raises(NeurodeInputError):
        EarlyStopping(patience=0)


def test_restore_best_with_validation_never_returns_a_worse_model():
    data = _rotation_data(n=3, points=8)
    exact = torch.tensor([[-0.1, 1.0], [-1.0, -0.1]], dtype=torch.float64)
    field = _LinearField()
    with torch.no_grad():
        field.matrix.copy_(exact)
    model = TrajectoryModel(field, data, rtol=1e-9, atol=1e-11)
    objective = TrajectoryObjective(model, data)
    # A huge learning rate can only make the exact model worse.
    config = TrainConfig(epochs=3, lr=0.5, patience=2, restore_best=True)
    result = fit(model, objective, len(data), config, validation=lambda m: rollout_mse(m, data))
    assert result.best_epoch == -1 and result.stopped_early
    assert torch.equal(model.ode.dynamics.matrix, exact)
    assert result.history.initial_validation_loss[0] < 1e-12


def test_a_diverging_loss_raises_with_the_epoch():
    def objective(indices, generator):
        return StepOutput(loss=torch.tensor(float("nan"), requires_grad=True))

    with pytest.raises(RuntimeError, match="epoch 1, step 1"):
        fit(nn.Linear(1, 1), objective, 1, TrainConfig(epochs=1))


def test_bad_configurations_are_rejected_before_training():
    for bad in (
        {"epochs": 0},
        {"lr": -1.0},
        {"lr": float("nan")},
        {"batch_size": 0},
        {"patience": 0},
        {"lr_final": 0.0},
        {"checkpoint_every": 0},
    ):
        with pytest.raises(NeurodeInputError):
            TrainConfig(**bad)


# ----------------------------------------------------------------------------- trajectories


def test_finite_difference_slope_is_exact_for_parabolas_on_uneven_grids():
    t = torch.tensor([0.3, 0.45, 0.9, 2.0], dtype=torch.float64)
    y = 2.0 - 3.0 * t + 1.5 * t**2
    assert float(finite_difference_slope(t, y)) == pytest.approx(-3.0 + 3.0 * 0.3, abs=1e-12)


def test_finite_difference_slope_converges_at_second_order():
    errors = []
    for h in (0.1, 0.05, 0.025):
        t = torch.arange(3, dtype=torch.float64) * h
        errors.append(abs(float(finite_difference_slope(t, torch.sin(t + 1.0))) - math.cos(1.0)))
    orders = [math.log2(a / b) for a, b in zip(errors, errors[1:], strict=False)]
    assert all(1.9 < order < 2.1 for order in orders)


def test_objective_on_exact_dynamics_and_clean_data_is_zero_to_solver_accuracy():
    data = _rotation_data()
    field = _LinearField()
    with torch.no_grad():
        field.matrix.copy_(torch.tensor([[-0.1, 1.0], [-1.0, -0.1]], dtype=torch.float64))
    model = TrajectoryModel(field, data, rtol=1e-10, atol=1e-12)
    for segment_points in (None, 4):
        objective = TrajectoryObjective(model, data, segment_points=segment_points)
        loss = objective(torch.arange(len(data)), torch.Generator().manual_seed(0)).loss
        assert float(loss.detach()) < 1e-16


def test_batched_autonomous_segments_equal_one_solve_per_segment():
    data = _rotation_data()
    model = TrajectoryModel(_LinearField(), data, method="rk4", options={"step_size": 0.05})
    losses = []
    for autonomous in (True, False):
        objective = TrajectoryObjective(
            model, data, segment_points=5, segments_per_step=3, autonomous=autonomous
        )
        output = objective(torch.arange(len(data)), torch.Generator().manual_seed(1))
        losses.append(float(output.loss.detach()))
        assert len(output.stats) == (1 if autonomous else 3)
    assert losses[0] == pytest.approx(losses[1], rel=1e-12)


def test_stratified_segment_starts_cover_the_whole_trajectory():
    data = _rotation_data(points=16)
    model = TrajectoryModel(_LinearField(), data)
    objective = TrajectoryObjective(model, data, segment_points=4, segments_per_step=4)
    generator = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(50):
        starts = objective._segment_starts(13, generator)  # 16 points, segments of 4
        assert len(starts) == 4 and starts == sorted(set(starts))
        assert starts[0] <= 3 and starts[-1] >= 9 and starts[-1] <= 12
        seen.update(starts)
    assert seen == set(range(13))


def test_learned_initial_velocity_of_angle_only_data_converges_to_the_truth():
    """theta-only data: with the exact physics frozen, only omega0 is learned."""
    from neurode.data import PendulumParams, simulate_pendulum

    params = PendulumParams(mu=0.15, g_over_l=4.0)
    t = torch.linspace(0.0, 3.0, 16, dtype=torch.float64)
    omega0 = torch.tensor([0.7, -0.4], dtype=torch.float64)
    states = simulate_pendulum(params, torch.tensor([0.5, 1.0]), omega0, t).transpose(0, 1)
    data = Trajectories.from_tensors(t, states[..., :1], observed=(0,), state_dim=2)
    assert data.unobserved == (1,)
    # The finite-difference start is close but not exact (O(h^2) error).
    start = estimate_unobserved(data)[:, 0]
    assert torch.allclose(start, omega0, atol=0.1) and not torch.allclose(start, omega0, atol=1e-2)

    physics = PendulumPhysics(params.g_over_l, params.mu).requires_grad_(False)
    model = TrajectoryModel(physics, data, rtol=1e-6, atol=1e-8)
    objective = TrajectoryObjective(model, data)
    start_loss = rollout_mse(model, data)
    fit(model, objective, len(data), TrainConfig(epochs=40, lr=0.02, lr_final=2e-4))
    learned_error = (model.initial_unobserved[:, 0] - omega0).abs().max()
    start_error = (start - omega0).abs().max()
    assert learned_error < start_error / 10
    assert rollout_mse(model, data) < start_loss / 50


def test_trajectories_reject_bad_times_and_values_with_typed_errors():
    t = torch.tensor([0.0, 1.0, 1.0])
    with pytest.raises(InvalidTimesError):
        Trajectories.from_tensors(t, torch.zeros(1, 3, 2))
    with pytest.raises(NonFiniteInputError):
        Trajectories.from_tensors(torch.arange(3.0), torch.full((1, 3, 2), float("nan")))
    with pytest.raises(NeurodeInputError):
        Trajectories.from_tensors(torch.arange(3.0), torch.zeros(1, 3, 1), observed=(2,))
    data = _rotation_data(points=8)
    with pytest.raises(NeurodeInputError, match="at least 2"):
        data.window(end=0.1)
    with pytest.raises(NeurodeInputError, match="every component"):
        TrajectoryObjective(
            TrajectoryModel(_LinearField(), data),
            Trajectories.from_tensors(
                data.times[0], torch.zeros(1, 8, 1), observed=(0,), state_dim=2
            ),
            segment_points=3,
        )


def test_window_with_per_trajectory_bounds_and_error_restrictions():
    data = _rotation_data(n=2, points=7)  # times 0, 0.5, ..., 3
    window = data.window(end=[1.2, 2.2])
    assert [t.numel() for t in window.times] == [3, 5]
    zeros = [torch.zeros(7, 2, dtype=torch.float64)] * 2
    total, count = squared_error(zeros, data, component=1, start=[0.0, 2.9])
    expected = float(data.values[0][:, 1].pow(2).sum() + data.values[1][6:, 1].pow(2).sum())
    assert count == 8 and total == pytest.approx(expected)
