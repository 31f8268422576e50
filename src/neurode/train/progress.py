"""A progress bar over optimisation steps, showing loss and NFE.

tqdm (the ``train`` extra) is imported only when a bar is asked for; without
it, or when disabled, the bar does nothing.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["ProgressBar"]


class ProgressBar:
    """Counts optimisation steps and shows the latest loss and NFE.

    ``postfix`` values are shown as ``name=value``; floats are printed with
    four significant digits.
    """

    def __init__(
        self, total: int, *, initial: int = 0, description: str = "", enabled: bool = True
    ):
        self._bar: Any = None
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return
        self._bar = tqdm(
            total=total,
            initial=initial,
            desc=description,
            unit="step",
            dynamic_ncols=True,
            leave=False,
            file=sys.stderr,
        )

    @property
    def active(self) -> bool:
        return self._bar is not None

    def update(self, steps: int = 1, **postfix: float | int | str) -> None:
        if self._bar is None:
            return
        self._bar.set_postfix(
            {
                name: f"{value:.4g}" if isinstance(value, float) else value
                for name, value in postfix.items()
            },
            refresh=False,
        )
        self._bar.update(steps)

    def close(self) -> None:
        if self._bar is not None:
            # tqdm skips redraws within its minimum interval: draw the final count once.
            self._bar.refresh()
            self._bar.close()
            self._bar = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
