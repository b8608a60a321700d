"""``benchmarks/growth.png``: the growth curves behind the table (continuation cost by call number, added
time by number of tools), one panel per ``Plot`` a row carries. Needs matplotlib (the bench extra)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from benchmarks.common import Plot


def write_growth(plots: Sequence[Plot], path: Path) -> bool:
    """Draw ``plots`` side by side into ``path``; False (and nothing written) without matplotlib or plots."""
    if not plots:
        return False
    try:
        import matplotlib  # pyright: ignore[reportMissingImports] -- the optional bench extra

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # pyright: ignore[reportMissingImports]
    except ImportError:
        return False
    figure, axes = plt.subplots(1, len(plots), figsize=(6.4 * len(plots), 4.4), squeeze=False)
    for ax, plot in zip(axes[0], plots, strict=True):
        for label, points in plot.series.items():
            xs = [p[0] for p in points]
            ax.plot(xs, [p[1] for p in points], marker="o" if len(points) < 20 else None, label=label)
            ax.fill_between(xs, [p[2] for p in points], [p[3] for p in points], alpha=0.2)
        if plot.logx:
            ax.set_xscale("log")
        ax.set_title(plot.title, fontsize=10)
        ax.set_xlabel(plot.xlabel)
        ax.set_ylabel(plot.ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    figure.suptitle("Medians, with the interquartile range shaded", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True
