"""Report plots drawn with matplotlib and returned as inline SVG text (no files, no network: an HTML
report that embeds them opens anywhere). Figures are built with :class:`matplotlib.figure.Figure`
directly, so no pyplot state or GUI backend is involved. Text stays text in the SVG (selectable,
searchable, small), and each figure's element ids get their own prefix so several figures can share
one page."""

from __future__ import annotations

import io
import re
from itertools import count

BASE_COLOR = "#7f7f7f"
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
    "#393b79",
)
_ids = count(1)
_STYLE = {
    "svg.fonttype": "none",
    "svg.hashsalt": "deltatune",
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "font.family": ["DejaVu Sans"],
}


def colors(names: list[str]) -> dict[str, str]:
    """One colour per method, the same in every plot of a report."""
    return {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}


def new_figure(width: float, height: float, ncols: int = 1):
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context(_STYLE):
        fig = Figure(figsize=(width, height), layout="constrained")
        axes = fig.subplots(1, ncols)
    return fig, axes


def to_svg(fig, title: str) -> str:
    """The figure as an ``<svg>`` element with a ``<title>`` (for screen readers) and unique ids."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context(_STYLE):
        fig.savefig(buf, format="svg")
    svg = buf.getvalue()
    svg = svg[svg.index("<svg") :]
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.S)  # RDF creator info, not needed inline
    prefix = f"f{next(_ids)}-"
    svg = re.sub(r'id="([^"]+)"', rf'id="{prefix}\1"', svg)
    svg = re.sub(r'(href="#|url\(#)([^")]+)', rf"\g<1>{prefix}\2", svg)
    svg = re.sub(r"<svg ", f'<svg role="img" aria-label="{_escape(title)}" class="plot" ', svg, count=1)
    return svg


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")


def _label_places(points: list[dict]) -> list[tuple[tuple[int, int], str]]:
    """Where each point's label goes (offset in points, alignment) so that labels of nearby points do
    not print on each other: right of the point; if an earlier label is near (within half a decade,
    about a label's width, and 6% of the y range) on that side, left of it; else a line lower."""
    import math

    ys = [p["mean"] for p in points]
    span = (max(ys) - min(ys)) or 1.0
    placed, out = [], []
    for p in points:
        x, y = math.log10(p["params"]), (p["mean"] - min(ys)) / span
        for side, k in [(s, k) for k in range(4) for s in (1, -1)]:
            if not any(
                abs(x - px) < 0.5 and abs(y - py) < 0.06 and ps == side and pk == k
                for px, py, ps, pk in placed
            ):
                break
        placed.append((x, y, side, k))
        out.append(((8 * side, 6 - 13 * k), "left" if side > 0 else "right"))
    return out


def quality_vs_params(
    points: list[dict], metric: str, base: float | None, greater_is_better: bool, palette: dict[str, str]
) -> str:
    """Scatter of the metric (mean, std bars) against trainable parameters (log scale), one labelled
    point per method, the untuned base as a dashed line. ``points``: {name, params, mean, std}."""
    fig, ax = new_figure(7.2, 4.4)
    for p, (offset, align) in zip(points, _label_places(points)):
        ax.errorbar(
            [p["params"]],
            [p["mean"]],
            yerr=[p["std"] or 0],
            fmt="o",
            ms=8,
            capsize=4,
            color=palette.get(p["name"], BASE_COLOR),
        )
        ax.annotate(
            p["name"],
            (p["params"], p["mean"]),
            textcoords="offset points",
            xytext=offset,
            ha=align,
            fontsize=10,
            color=palette.get(p["name"], BASE_COLOR),
        )
    if base is not None:
        ax.axhline(base, color=BASE_COLOR, ls="--", lw=1.2)
        ax.annotate(
            "untuned base",
            (0.01, base),
            xycoords=("axes fraction", "data"),
            xytext=(0, 4),
            textcoords="offset points",
            color=BASE_COLOR,
            fontsize=9,
        )
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel(f"{metric} ({'higher' if greater_is_better else 'lower'} is better)")
    ax.set_title(f"Quality vs trainable parameters: validation {metric}")
    ax.margins(x=0.3, y=0.25)
    return to_svg(fig, f"validation {metric} against trainable parameters")


def hbars(
    ax,
    names: list[str],
    values: list[float | None],
    palette: dict[str, str],
    fmt: str,
    xlabel: str,
    title: str,
) -> None:
    """Horizontal bars, first name on top, each bar labelled with its value ("failed" when None)."""
    ys = list(range(len(names)))[::-1]
    shown = [v or 0 for v in values]
    ax.barh(ys, shown, color=[palette.get(n, BASE_COLOR) for n in names], height=0.6)
    top = max(shown, default=0) or 1
    for y, v in zip(ys, values):
        ax.text((v or 0) + top * 0.01, y, fmt.format(v) if v is not None else "n/a", va="center", fontsize=9)
    ax.set_yticks(ys, names)
    ax.set_xlim(0, top * 1.25)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(axis="y", visible=False)


def resources(
    names: list[str], memory: list[float | None], tokens_per_s: list[float | None], palette: dict[str, str]
) -> str:
    """Peak training memory and training throughput, side by side, one bar per method."""
    fig, (left, right) = new_figure(12, 0.42 * len(names) + 1.3, ncols=2)
    hbars(
        left,
        names,
        memory,
        palette,
        "{:,.0f} MB",
        "MB (peak during training)",
        "Training memory (less is better)",
    )
    hbars(
        right,
        names,
        tokens_per_s,
        palette,
        "{:,.0f}",
        "tokens per second",
        "Training throughput (more is better)",
    )
    right.set_yticks(right.get_yticks(), [""] * len(names))
    return to_svg(fig, "peak training memory and training throughput per method")


def latency(names: list[str], series: dict[str, list[float | None]], palette: dict[str, str]) -> str:
    """Median inference latency per method: one panel per series (e.g. batch 1 / batch 16, merged)."""
    fig, axes = new_figure(12, 0.42 * len(names) + 1.3, ncols=len(series))
    axes = axes if len(series) > 1 else [axes]
    for ax, (title, values) in zip(axes, series.items()):
        hbars(ax, names, values, palette, "{:.1f} ms", "milliseconds (median)", title)
    for ax in axes[1:]:
        ax.set_yticks(ax.get_yticks(), [""] * len(names))
    return to_svg(fig, "inference latency per method")


def loss_curves(curves: dict[str, dict[str, list]], palette: dict[str, str]) -> str:
    """Training loss against optimizer step, every method on one chart; the first seed solid, other
    seeds faint. ``curves``: {method: {seed: [[step, loss], ...]}}."""
    fig, ax = new_figure(7.2, 4.2)
    for name, seeds in curves.items():
        for i, (seed, points) in enumerate(seeds.items()):
            if points:
                xs, ys = zip(*points)
                ax.plot(
                    xs,
                    ys,
                    color=palette.get(name, BASE_COLOR),
                    lw=1.8 if i == 0 else 1,
                    alpha=1 if i == 0 else 0.35,
                    label=name if i == 0 else None,
                    marker="o" if len(xs) <= 20 else None,
                    ms=4,
                )
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss of every method")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(frameon=False, fontsize=10, ncols=2, loc="best")
    return to_svg(fig, "training loss curves of every method")


def run_curves(loss: list, evals: list, metric: str) -> str:
    """One run: training loss per logged step and the validation metric per evaluation (right axis)."""
    fig, ax = new_figure(7.2, 3.8)
    if loss:
        xs, ys = zip(*loss)
        ax.plot(
            xs,
            ys,
            color=PALETTE[0],
            lw=1.8,
            label="training loss",
            marker="o" if len(xs) <= 20 else None,
            ms=4,
        )
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss", color=PALETTE[0])
    if evals:  # the validation loss shares the training loss's axis; another metric gets its own
        right = ax if metric == "loss" else ax.twinx()
        xs, ys = zip(*evals)
        right.plot(xs, ys, "o-", color=PALETTE[1], lw=1.4, label=f"validation {metric}")
        if right is ax:
            ax.set_ylabel("loss")
            ax.legend(frameon=False)
        else:
            right.set_ylabel(f"validation {metric}", color=PALETTE[1])
            right.grid(False)
    ax.set_title("Training loss" + (f" and validation {metric}" if evals else ""))
    return to_svg(fig, "training loss curve")


def score_and_kl(points: list) -> str:
    """An RL run: the rollouts' mean score (left axis) and KL to the reference (right axis) per logged
    step. ``points``: [[step, score, kl], ...]."""
    fig, ax = new_figure(7.2, 3.8)
    xs, scores, kls = zip(*points)
    marker = "o" if len(xs) <= 20 else None
    ax.plot(xs, scores, color=PALETTE[0], lw=1.8, marker=marker, ms=4)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mean score of the rollout", color=PALETTE[0])
    right = ax.twinx()
    right.plot(xs, kls, color=PALETTE[1], lw=1.4, marker=marker, ms=3)
    right.set_ylabel("KL to the reference", color=PALETTE[1])
    right.grid(False)
    ax.set_title("Score and KL of the rollouts")
    return to_svg(fig, "rollout score and KL curves")


def confusion_matrix(labels: list[str], matrix: list[list[int]], title: str) -> str:
    """Heat map of a confusion matrix (rows true, columns predicted), counts written in the cells."""
    n = len(labels)
    fig, ax = new_figure(min(2.2 + 0.7 * n, 9), min(1.8 + 0.6 * n, 8))
    ax.imshow(matrix, cmap="Blues")
    top = max((max(r) for r in matrix), default=0) or 1
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v}", ha="center", va="center", color="white" if v > top / 2 else "black")
    ax.set_xticks(range(n), labels, rotation=30 if n > 4 else 0)
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.grid(False)
    ax.set_title(title)
    return to_svg(fig, title)
