"""The loss plot: a smoothed line over the raw (zigzagging) training loss."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.trainer


def test_smooth_is_a_centred_moving_average() -> None:
    from finetune_trainer.evaluation import smooth

    assert smooth([1.0, 2.0, 3.0, 4.0, 5.0], 3) == [1.5, 2.0, 3.0, 4.0, 4.5]
    zigzag = [1.0, 0.0] * 10  # the length-grouped batches' period
    flat = smooth(zigzag, 4)
    assert max(flat[2:-2]) - min(flat[2:-2]) < 0.25  # the period is averaged out


def test_plot_loss_draws_raw_and_smoothed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib.axes

    from finetune_trainer.evaluation import plot_loss

    labels: list[str] = []
    original = matplotlib.axes.Axes.plot

    def spy(self: matplotlib.axes.Axes, *args: object, **kwargs: object) -> object:
        labels.append(str(kwargs.get("label")))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", spy)
    history = [{"step": s, "loss": 1.0 + (s % 5) / 10} for s in range(1, 61)]
    history += [{"step": 60, "eval_loss": 0.9}]
    assert plot_loss(history, tmp_path / "loss.png")
    assert labels == ["train loss (raw)", "train loss (smoothed)", "eval loss"]
    assert (tmp_path / "loss.png").stat().st_size > 1000
