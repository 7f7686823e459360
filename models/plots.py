"""The mask search's report: pruning curves and mask overlap as PNG files, and a text summary.

The MaskSearch component writes these into its output artifact's folder, so a person can
see, without TensorBoard or a notebook, which round each task chose and how much of the
shared MLP the two tasks really share. Figures are drawn on `matplotlib.figure.Figure`
(Agg, no pyplot state) and written through `tf.io.gfile`, so gs:// paths work.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import tensorflow as tf
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from lt4rec.models import metrics
from lt4rec.models.masks import LayerOverlap
from lt4rec.models.sparse_sharing import TaskSearch

DPI = 120
CHOSEN_MARK = "*"
# LayerOverlap field -> (legend label, bar colour, colour of the percentage drawn on it).
SHARES = {
    "shared": ("shared", "#6a3d9a", "white"),
    "ctr_only": ("CTR only", "#1f78b4", "white"),
    "cvr_only": ("CVR only", "#ff7f00", "black"),
    "unused": ("unused", "#d9d9d9", "black"),
}
MIN_LABELLED_SHARE = 0.04  # narrower bar segments get no percentage: it would not fit


def _write_png(figure: Figure, path: str) -> None:
    """PNG bytes via a buffer: GFile (for gs://) is not a file matplotlib can seek in."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(buffer.getvalue())


def _direction(task: str) -> str:
    """Which way the task's selection metric improves, for axis labels and the summary."""
    return "higher is better" if metrics.SELECTION_METRIC[task][1] else "lower is better"


def pruning_curve(searches: Mapping[str, TaskSearch], path: str) -> None:
    """One panel per task: validation metric against the weights left, pruning left to right.

    The x axis is logarithmic, so rounds that each drop the same share q are evenly spaced.
    """
    figure = Figure(figsize=(5.0 * len(searches), 4.0), layout="constrained")
    axes = figure.subplots(1, len(searches), squeeze=False)[0]
    for ax, search in zip(axes, searches.values()):
        metric = search.rounds[0].metric
        left = [100.0 * r.remaining for r in search.rounds]
        values = [r.value for r in search.rounds]
        ax.plot(left, values, "o-", color="#1f78b4", zorder=2)
        for r, x, y in zip(search.rounds, left, values):
            ax.annotate(f"r{r.round}", (x, y), xytext=(0, 11), textcoords="offset points", ha="center", fontsize=8)
        best = search.best
        ax.plot(
            [100.0 * best.remaining],
            [best.value],
            linestyle="none",
            marker="*",
            markersize=16,
            color="#e31a1c",
            zorder=3,
            label=f"chosen: round {best.round} ({100 * best.remaining:.1f}% left, {best.value:.4f})",
        )
        ax.set_xscale("log")
        ax.set_xticks(left, labels=[f"{x:.0f}" if x >= 10 else f"{x:.1f}" for x in left])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.invert_xaxis()
        ax.margins(x=0.08, y=0.2)
        ax.grid(True, alpha=0.3)
        ax.set_title(f"{search.task.upper()} mask search")
        ax.set_xlabel("MLP weights left (%, log scale)")
        ax.set_ylabel(f"validation {metric} ({_direction(search.task)})")
        ax.legend(loc="best", fontsize=8)
    _write_png(figure, path)


def _with_total(overlaps: Sequence[LayerOverlap]) -> list[LayerOverlap]:
    """The layers, then one line summed over all of them."""
    fields = ("size", *SHARES)
    total = LayerOverlap("all layers", **{field: sum(getattr(o, field) for o in overlaps) for field in fields})
    return [*overlaps, total]


def mask_overlap(overlaps: Sequence[LayerOverlap], path: str) -> None:
    """Per layer (and over all layers) one bar split into shared / CTR only / CVR only / unused."""
    rows = _with_total(overlaps)
    figure = Figure(figsize=(9.0, 1.4 + 0.5 * len(rows)), layout="constrained")
    ax = figure.subplots()
    names = [f"{o.layer}\n{o.size:,} weights" for o in rows]
    starts = [0.0] * len(rows)
    for key, (label, colour, text_colour) in SHARES.items():
        shares = [o.fractions()[key] for o in rows]
        bars = ax.barh(names, [100 * s for s in shares], left=starts, color=colour, edgecolor="white", label=label)
        ax.bar_label(
            bars,
            labels=[f"{100 * s:.1f}%" if s >= MIN_LABELLED_SHARE else "" for s in shares],
            label_type="center",
            color=text_colour,
            fontsize=8,
        )
        starts = [start + 100 * s for start, s in zip(starts, shares)]
    ax.invert_yaxis()  # first layer on top, the total at the bottom
    ax.set_xlim(0, 100)
    ax.set_xlabel("share of the layer's weights (%)")
    ax.tick_params(axis="y", labelsize=8)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(SHARES), frameon=False)
    figure.suptitle("Which task keeps each weight of the shared MLP")
    _write_png(figure, path)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Lines of a plain-text table: the first column left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join([row[0].ljust(widths[0]), *(cell.rjust(width) for cell, width in zip(row[1:], widths[1:]))]).rstrip()
        for row in [header, *rows]
    ]


def summary_text(searches: Mapping[str, TaskSearch], overlaps: Sequence[LayerOverlap]) -> str:
    """Every round of every task's search, then the masks' overlap per layer and in total."""
    lines = [f"Mask search: validation metric per round ({CHOSEN_MARK} = chosen round)"]
    for search in searches.values():
        metric, best = search.rounds[0].metric, search.best
        lines += [
            "",
            f"{search.task}: {metric}, {_direction(search.task)}; chose round {best.round} "
            f"({100 * best.remaining:.2f}% of the weights left)",
        ]
        rows = [
            [
                CHOSEN_MARK if r.round == best.round else "",
                str(r.round),
                f"{100 * r.remaining:.2f}%",
                f"{r.value:.5f}",
                f"{r.seconds:.1f}",
            ]
            for r in search.rounds
        ]
        lines += _table(["", "round", "remaining", metric, "seconds"], rows)
    lines += ["", "Mask overlap: weights kept by both tasks, by one only, or by neither"]
    rows = [
        [o.layer, f"{o.size:,}", *(f"{getattr(o, key):,} ({100 * o.fractions()[key]:.1f}%)" for key in SHARES)]
        for o in _with_total(overlaps)
    ]
    lines += _table(["layer", "weights", *(label for label, _, _ in SHARES.values())], rows)
    return "\n".join(lines) + "\n"
