"""Unit occupancy over time: one row per functional unit, one bar per instruction (matplotlib).

Taught in chapter 13 (``chapters/13-fpga-where-the-cycles-go.md``).
"""
from __future__ import annotations

from .isa import UNITS

COLORS = {"ldv": "#4c72b0", "sv": "#55a868", "lds": "#8172b2", "sts": "#8172b2", "tmatmul": "#c44e52",
          "norm": "#dd8452", "sqacc": "#dd8452", "rstd": "#dd8452", "amax": "#dd8452", "quant": "#937860"}


def plot_occupancy(stats, path, start: int = 0, end: int | None = None, title: str = "") -> None:
    """Save a Gantt chart of the units' busy intervals in cycles [start, end) to ``path``."""
    import matplotlib.pyplot as plt
    fig = occupancy_figure(stats, start, end, title)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def occupancy_figure(stats, start: int = 0, end: int | None = None, title: str = "", units=UNITS):
    """A matplotlib Figure: one row per unit, one bar per instruction, over cycles [start, end)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    end = stats.cycles if end is None else end
    fig, ax = plt.subplots(figsize=(11, 3.6))
    for row, unit in enumerate(units):
        bars, colors = [], []
        for r in stats.records:
            if r.unit == unit and r.end >= start and r.start < end:
                s, e = max(r.start, start), min(r.end + 1, end)
                bars.append((s, e - s))
                colors.append(COLORS.get(r.name, "#999999"))
        ax.broken_barh(bars, (row - 0.4, 0.8), facecolors=colors, linewidth=0)
    ax.set_yticks(range(len(units)), units)
    ax.set_xlim(start, end)
    ax.invert_yaxis()
    ax.set_xlabel("cycle")
    ax.set_title(title or "unit occupancy")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in COLORS.values()]
    ax.legend(handles, list(COLORS), ncol=10, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.28))
    fig.tight_layout()
    return fig
