"""The stiff benchmark's problems written in NumPy, as a scipy user would write them.

Each function returns ``(field, jacobian)`` taking ``(t, y)`` with ``y`` a NumPy
array; ``tests/test_benchmark_stiff.py`` checks them against the torch problems of
``neurode.data.stiff_problems``.
"""

from __future__ import annotations

import numpy as np
import torch

from neurode.data.stiff_problems import StiffProblem

ROBERTSON_RATES = (0.04, 3e7, 1e4)


def robertson_numpy(rates=ROBERTSON_RATES):
    """Robertson's field and Jacobian in NumPy (one system)."""
    k1, k2, k3 = (float(k) for k in rates)

    def field(t, y):
        y1, y2, y3 = y
        return np.array(
            [-k1 * y1 + k3 * y2 * y3, k1 * y1 - k2 * y2 * y2 - k3 * y2 * y3, k2 * y2 * y2]
        )

    def jacobian(t, y):
        y1, y2, y3 = y
        return np.array(
            [
                [-k1, k3 * y3, k3 * y2],
                [k1, -2 * k2 * y2 - k3 * y3, -k3 * y2],
                [0.0, 2 * k2 * y2, 0.0],
            ]
        )

    return field, jacobian


def van_der_pol_numpy(mu: float):
    def field(t, y):
        y1, y2 = y
        return np.array([y2, mu * (1 - y1 * y1) * y2 - y1])

    def jacobian(t, y):
        y1, y2 = y
        return np.array([[0.0, 1.0], [-2 * mu * y1 * y2 - 1, mu * (1 - y1 * y1)]])

    return field, jacobian


def hires_numpy(problem: StiffProblem):
    """HIRES in NumPy: the linear part and source read off the torch problem at y = 0.

    At ``y = 0`` the only nonlinear term, ``280 y6 y8`` (taken from y6 and y8,
    given to y7), vanishes, so ``J(0)`` is the linear part and ``f(0)`` the source.
    """
    zero = torch.zeros(8, dtype=torch.float64)
    linear = problem.jacobian(0.0, zero).numpy().copy()
    source = problem.func(0.0, zero).numpy().copy()
    reaction = np.array([0, 0, 0, 0, 0, -1.0, 1.0, -1.0])

    def field(t, y):
        return linear @ y + source + 280.0 * y[5] * y[7] * reaction

    def jacobian(t, y):
        matrix = linear.copy()
        matrix[:, 5] += 280.0 * y[7] * reaction
        matrix[:, 7] += 280.0 * y[5] * reaction
        return matrix

    return field, jacobian
