"""The figures: the learning curves' step axis stays readable from a few steps to a million."""

import matplotlib.pyplot as plt
import pytest

from metarun.plots import _step_axis


@pytest.mark.parametrize(
    ("last", "labels"),
    [
        (20, ["10", "15", "20"]),
        (60_000, ["0", "20k", "40k", "60k"]),
        (1_200_000, ["0", "500k", "1M"]),
    ],
)
def test_step_ticks_are_few_round_and_short(last, labels):
    fig, ax = plt.subplots()
    ax.plot([10, last], [1.0, 2.0])
    _step_axis(ax)
    fig.canvas.draw()
    low, high = ax.get_xlim()
    shown = [t.get_text() for t in ax.get_xticklabels() if low <= t.get_position()[0] <= high]
    plt.close(fig)
    assert shown == labels
    assert ax.xaxis.get_offset_text().get_text() == ""  # no ×1e6 beside the axis
