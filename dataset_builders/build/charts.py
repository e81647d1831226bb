"""Chart panels for the synthetic compound figures: line-art plots drawn by matplotlib (Agg).

Real pathology figures mix micrographs with charts (survival curves, bar charts with error bars,
scatter and box plots); a detector trained on micrograph tiles alone finds nothing on a plot panel.
This module plans and draws such a chart at the size of its panel, so the compound-figure
generator (:mod:`.compound`) can put one in any cell.

The box rule is the one of the real-figure annotations (``benchmarks/data/subfig_real.yaml``): a
chart panel is its plotting area's frame. Tick labels, axis titles and the chart title sit outside
the frame and are not in the box; a legend inside the axes is. In pixels the ``subfigure`` box is
the frame's ink: the rectangle the spines are drawn on, their whole line width included (the same
convention as a micrograph's border). Charts drawn with only the left and bottom spines have the
same box as if the frame were closed.

How the box is exact: the axes are placed at whole pixels of a canvas the size of the panel's cell
(the tick-label widths are measured with the renderer first, so every label fits inside the
canvas), the chart is drawn once at 100 dpi and pasted without resizing. Agg snaps the spines: a
line of ``L`` pixels centred on the axes edge ``x`` covers columns ``x - L//2 .. x + (L-1)//2``
(right and bottom edges: one further, as the edge pixel is the last one inside). The tests check
this against the pixels.

matplotlib is imported lazily; one ``Figure`` per process is reused (a new one costs more than the
drawing).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
from typing import Any

import numpy as np

CHART_KINDS = ("line", "survival", "bar", "scatter", "box", "histogram")
_KIND_WEIGHTS = {"line": 0.2, "survival": 0.18, "bar": 0.2, "scatter": 0.16, "box": 0.14, "histogram": 0.12}
DPI = 100.0
MIN_AXES = (36, 28)  # px: the smallest plotting area drawn (narrower cells keep a micrograph)
_FAMILIES = ("DejaVu Sans", "DejaVu Serif", "STIXGeneral", "DejaVu Sans Mono")
_FAMILY_WEIGHTS = (0.6, 0.15, 0.17, 0.08)
_PALETTES = (
    ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"],  # matplotlib's tab10
    ["#000000", "#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#ff7f00"],
    ["#222222", "#777777", "#aaaaaa", "#444444", "#999999", "#cccccc"],  # greyscale, as many journals print
    ["#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9"],  # Okabe-Ito
)
_GROUPS = ("Control", "Tumor", "Normal", "WT", "KO", "Vehicle", "Treated", "Low", "High", "Stage I", "Stage II",
           "Stage III", "Grade 1", "Grade 2", "Grade 3", "CD8+", "CD4+", "Ki-67+", "HER2+", "ER-", "PD-L1", "Sham",
           "siCtrl", "siRNA", "Day 0", "Day 7", "Benign", "Malignant")
_XLABELS = ("Time (months)", "Days", "Dose (mg/kg)", "Age (years)", "Weeks after treatment", "Concentration (μM)",
            "Tumor size (mm)", "Expression (log2)", "Score", "Follow-up (years)", "Distance (μm)", "Passage")
_YLABELS = ("Survival probability", "Relative expression", "Cell count", "Density", "Fold change", "Frequency",
            "Positive cells (%)", "Intensity (a.u.)", "Area (μm²)", "Proportion", "Overall survival", "Counts",
            "Viability (%)", "Mean ± SD")
_TITLES = ("Overall survival", "Disease-free survival", "Ki-67 index", "Cohort A", "Validation set", "TMA cores",
           "Immunostaining score", "Tumor volume", "Proliferation", "Apoptosis", "Training cohort", "Expression")


def matplotlib_available() -> bool:
    """True when matplotlib can be imported (it is found without importing it)."""
    return importlib.util.find_spec("matplotlib") is not None


@dataclasses.dataclass
class ChartPlan:
    """One chart, decided before it is drawn: everything :func:`render_chart` needs.

    Pixel values are canvas pixels (the panel's chart canvas), ``y`` down; ``axes`` is the
    plotting area ``(x0, y0, x1, y1)``, edges at whole pixels; ``frame`` is the frame's ink
    rectangle (``x1``/``y1`` exclusive): the panel's ``subfigure`` box, less the canvas offset.
    """

    kind: str
    width: int
    height: int
    axes: tuple[int, int, int, int]
    frame: tuple[int, int, int, int]
    full_frame: bool
    line_px: int
    spine_color: str
    axes_color: str
    family: str
    font_px: float  # tick labels; axis labels and the title are scaled from it
    label_px: float
    title_px: float
    title: str | None
    xlabel: str | None
    ylabel: str | None
    xlim: tuple[float, float]
    ylim: tuple[float, float]
    xticks: list[float]
    xticklabels: list[str]
    yticks: list[float]
    yticklabels: list[str]
    tick_px: int  # tick length, drawn outward (0: inward ticks)
    grid: bool
    legend: str | None  # legend location inside the axes, or None
    colors: list[str]
    data: dict[str, Any]


# --- the shared figure ------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _figure():
    """The process's one Figure and its Agg canvas (created on first use)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 3), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


@functools.lru_cache(maxsize=4096)
def _text_size(text: str, family: str, px: float) -> tuple[float, float]:
    """Width and height (pixels) of ``text`` as the renderer sets it."""
    from matplotlib.font_manager import FontProperties

    renderer = _figure().canvas.get_renderer()
    w, h, _d = renderer.get_text_width_height_descent(text, FontProperties(family=family, size=px * 72 / DPI),
                                                      ismath=False)
    return float(w), float(h)


def _pick(rng: np.random.Generator, weights: dict[str, float]) -> str:
    names = list(weights)
    p = np.asarray([weights[n] for n in names], dtype=float)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def _nice_ticks(lo: float, hi: float, n: int) -> tuple[list[float], list[str]]:
    """About ``n`` round tick values within ``[lo, hi]`` and their labels (same decimals for all)."""
    from matplotlib.ticker import MaxNLocator

    values = [float(v) for v in MaxNLocator(nbins=max(2, n), steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi)]
    values = [v for v in values if lo - 1e-9 * abs(hi - lo) <= v <= hi + 1e-9 * abs(hi - lo)]
    if len(values) < 2:
        values = [lo, hi]
    scale = max(abs(v) for v in values) or 1.0
    # the fewest decimals that write every value exactly (0.25 needs two, 2.5 one)
    decimals = next((d for d in range(6) if all(abs(round(v, d) - v) <= 1e-9 * scale for v in values)), 6)
    return values, [f"{v:.{decimals}f}".replace("-", "\u2212") for v in values]


# --- planning ---------------------------------------------------------------------------------


def _data(rng: np.random.Generator, kind: str, colors: list[str]) -> tuple[dict[str, Any], tuple, tuple, list | None]:
    """The chart's data, x/y limits and (for categorical x) the category names."""
    if kind == "line":
        k = int(rng.integers(1, 4))
        n = int(rng.integers(5, 30))
        x = np.linspace(0, float(rng.choice([1, 10, 24, 48, 100])), n)
        series = []
        for _ in range(k):
            shape = rng.integers(0, 3)
            t = x / x[-1]
            if shape == 0:
                y = np.cumsum(rng.normal(0, 1, n))
            elif shape == 1:
                y = rng.uniform(1, 5) / (1 + np.exp(-rng.uniform(4, 12) * (t - rng.uniform(0.2, 0.8))))
            else:
                y = rng.uniform(0.5, 3) * np.exp(rng.uniform(-2, 2) * t)
            y = y + rng.normal(0, 0.05 * (np.ptp(y) + 1e-3), n)
            err = np.abs(rng.normal(0, 0.08 * (np.ptp(y) + 1e-3), n)) if rng.random() < 0.35 else None
            series.append({"y": y, "err": err})
        ys = np.concatenate([s["y"] for s in series])
        pad = 0.08 * (np.ptp(ys) + 1e-3)
        return ({"x": x, "series": series, "marker": rng.random() < 0.5},
                (float(x[0]), float(x[-1])), (float(ys.min() - pad), float(ys.max() + pad)), None)
    if kind == "survival":
        k = int(rng.integers(1, 4))
        horizon = float(rng.choice([5, 10, 60, 120, 36]))
        curves = []
        for _ in range(k):
            n = int(rng.integers(15, 80))
            times = np.sort(rng.exponential(horizon * rng.uniform(0.4, 2.0), n))
            times = times[times < horizon]
            surv = np.cumprod(1 - 1 / np.arange(n, 0, -1))[: len(times)] if len(times) else np.array([])
            censored = rng.random(len(times)) < 0.25
            curves.append({"t": times, "s": surv, "censored": censored})
        return ({"curves": curves, "ticks": rng.random() < 0.6, "horizon": horizon},
                (0.0, horizon), (0.0, 1.05), None)
    if kind == "bar":
        k = int(rng.integers(2, 7))
        groups = int(rng.integers(1, 3))
        start = int(rng.integers(0, len(_GROUPS) - k))
        names = list(_GROUPS[start:start + k])
        heights = rng.uniform(0.5, 10, (groups, k)) * float(rng.choice([1, 10, 100]))
        errors = heights * rng.uniform(0.03, 0.25, (groups, k))
        top = float((heights + errors).max()) * 1.1
        return ({"heights": heights, "errors": errors, "hatch": rng.random() < 0.15},
                (-0.6, k - 0.4), (0.0, top), names)
    if kind == "scatter":
        n = int(rng.integers(20, 200))
        x = rng.normal(0, 1, n) * float(rng.choice([1, 5, 50]))
        r = float(rng.uniform(-0.9, 0.9))
        y = r * x / (x.std() + 1e-9) + math.sqrt(1 - r * r) * rng.normal(0, 1, n)
        y = y * float(rng.choice([1, 2, 10])) + float(rng.uniform(-5, 5))
        px, py = 0.06 * (np.ptp(x) + 1e-3), 0.08 * (np.ptp(y) + 1e-3)
        return ({"x": x, "y": y, "fit": rng.random() < 0.5, "size": float(rng.uniform(4, 30)),
                 "filled": rng.random() < 0.7},
                (float(x.min() - px), float(x.max() + px)), (float(y.min() - py), float(y.max() + py)), None)
    if kind == "box":
        k = int(rng.integers(2, 6))
        start = int(rng.integers(0, len(_GROUPS) - k))
        names = list(_GROUPS[start:start + k])
        samples = [rng.normal(rng.uniform(2, 10), rng.uniform(0.5, 2.5), int(rng.integers(10, 60))) for _ in range(k)]
        values = np.concatenate(samples)
        pad = 0.08 * np.ptp(values)
        return ({"samples": samples, "points": rng.random() < 0.3, "notch": rng.random() < 0.15},
                (0.4, k + 0.6), (float(values.min() - pad), float(values.max() + pad)), names)
    if kind == "histogram":
        k = int(rng.integers(1, 3))
        samples = [rng.normal(rng.uniform(0, 10), rng.uniform(0.8, 3), int(rng.integers(80, 600))) for _ in range(k)]
        values = np.concatenate(samples)
        bins = np.linspace(values.min(), values.max(), int(rng.integers(10, 31)))
        counts = max(int(np.histogram(s, bins)[0].max()) for s in samples)
        return ({"samples": samples, "bins": bins, "alpha": 0.6 if k > 1 else 1.0, "edge": rng.random() < 0.6},
                (float(bins[0]), float(bins[-1])), (0.0, counts * 1.1), None)
    raise ValueError(f"unknown chart kind {kind!r}; choose from {', '.join(CHART_KINDS)}")


def plan_chart(rng: np.random.Generator, width: int, height: int, kind: str | None = None) -> ChartPlan | None:
    """A chart for a ``width`` x ``height`` canvas, or None when the canvas cannot hold one.

    Args:
        rng: decides every choice (kind, data, fonts, labels, frame).
        width: canvas width, pixels.
        height: canvas height, pixels.
        kind: one of :data:`CHART_KINDS` (default: drawn by weight).
    """
    kind = kind or _pick(rng, _KIND_WEIGHTS)
    family = _FAMILIES[int(rng.choice(len(_FAMILIES), p=np.asarray(_FAMILY_WEIGHTS)))]
    font_px = float(np.clip(min(width, height * 1.3) * rng.uniform(0.035, 0.07), 7.0, 17.0))
    colors = list(_PALETTES[int(rng.integers(0, len(_PALETTES)))])
    data, xlim, ylim, categories = _data(rng, kind, colors)
    title = _TITLES[int(rng.integers(0, len(_TITLES)))] if rng.random() < 0.35 else None
    xlabel = _XLABELS[int(rng.integers(0, len(_XLABELS)))] if rng.random() < 0.75 and categories is None else None
    if kind in ("bar", "box") and rng.random() < 0.25:
        xlabel = "Group"
    ylabel = _YLABELS[int(rng.integers(0, len(_YLABELS)))] if rng.random() < 0.8 else None
    if kind == "survival":
        ylabel = ylabel and str(rng.choice(["Survival probability", "Overall survival", "Proportion surviving"]))
    full_frame = bool(rng.random() < 0.5)
    line_px = 1 if rng.random() < 0.7 else 2
    tick_px = int(rng.integers(2, 6)) if rng.random() < 0.8 else 0
    gap = max(2.0, 0.35 * font_px)

    # ticks first: the left margin is the widest y tick label
    ny = max(2, min(7, int(height / (font_px * 3.2))))
    yticks, yticklabels = _nice_ticks(ylim[0], ylim[1], ny)
    if categories is not None:
        xticks, xticklabels = [float(i) for i in range(len(categories))], list(categories)
        if kind == "box":
            xticks = [float(i + 1) for i in range(len(categories))]
    else:
        nx = max(2, min(7, int(width / (font_px * 4.5))))
        xticks, xticklabels = _nice_ticks(xlim[0], xlim[1], nx)

    text_h = _text_size("Ag", family, font_px)[1]
    label_px = font_px * float(rng.uniform(1.0, 1.2))
    title_px = font_px * float(rng.uniform(1.0, 1.3))
    ytick_w = max(_text_size(t, family, font_px)[0] for t in yticklabels)
    left = 2 + ytick_w + gap + tick_px + line_px
    if ylabel:
        # matplotlib sets a label's line at more than the measured glyph height: a third of a font size more
        left += _text_size(ylabel, family, label_px)[1] + gap + 0.35 * label_px
    bottom = 2 + text_h + gap + tick_px + line_px
    if xlabel:
        bottom += _text_size(xlabel, family, label_px)[1] + gap + 0.35 * label_px
    top = 2 + text_h / 2 + line_px  # the top y tick label reaches half a line above the frame
    if title:
        # the title sits on its baseline: its descenders need room above the frame
        top = max(top, 2 + _text_size(title, family, title_px)[1] + 2 * gap + 0.3 * title_px)
    right = 2 + line_px + _text_size(xticklabels[-1], family, font_px)[0] / 2
    x0, y0 = math.ceil(left), math.ceil(top)
    x1, y1 = width - math.ceil(right), height - math.ceil(bottom)
    if x1 - x0 < MIN_AXES[0] or y1 - y0 < MIN_AXES[1]:
        return None
    # texts wider than what holds them are dropped, not clipped; they are centred on the axes
    room_x = 2 * min((x0 + x1) / 2, width - (x0 + x1) / 2) - 4
    room_y = 2 * min((y0 + y1) / 2, height - (y0 + y1) / 2) - 4
    if title and _text_size(title, family, title_px)[0] > room_x:
        title = None
    if xlabel and _text_size(xlabel, family, label_px)[0] > room_x:
        xlabel = None
    if ylabel and _text_size(ylabel, family, label_px)[0] > room_y:
        ylabel = None
    if categories is not None:
        slot = (x1 - x0) / (xlim[1] - xlim[0])
        if max(_text_size(t, family, font_px)[0] for t in xticklabels) > slot * 0.95:
            xticklabels = [str(i + 1) for i in range(len(categories))]  # too narrow for names: numbers
        if max(_text_size(t, family, font_px)[0] for t in xticklabels) > slot * 1.2:
            return None
    half, rest = line_px // 2, (line_px - 1) // 2
    frame = (x0 - half, y0 - half, x1 + 1 + rest, y1 + 1 + rest)
    legend = None
    if kind in ("line", "survival", "histogram", "bar") and rng.random() < 0.3 and x1 - x0 >= 150 and y1 - y0 >= 110:
        legend = ["upper right", "lower left", "upper left", "lower right"][int(rng.integers(0, 4))]
    return ChartPlan(
        kind=kind, width=width, height=height, axes=(x0, y0, x1, y1), frame=frame, full_frame=full_frame,
        line_px=line_px, spine_color=["#000000", "#262626", "#555555"][int(rng.integers(0, 3))],
        axes_color="#ebebeb" if rng.random() < 0.08 else "#ffffff", family=family, font_px=font_px,
        label_px=label_px, title_px=title_px,
        title=title, xlabel=xlabel, ylabel=ylabel, xlim=xlim, ylim=ylim, xticks=xticks,
        xticklabels=xticklabels, yticks=yticks, yticklabels=yticklabels, tick_px=tick_px,
        grid=bool(rng.random() < 0.2), legend=legend, colors=colors, data=data,
    )


# --- drawing ----------------------------------------------------------------------------------


def _draw_data(ax, plan: ChartPlan) -> None:
    d, colors, kind = plan.data, plan.colors, plan.kind
    lw = max(0.6, plan.font_px / 10)
    if kind == "line":
        for i, s in enumerate(d["series"]):
            c = colors[i % len(colors)]
            if s["err"] is not None:
                ax.errorbar(d["x"], s["y"], yerr=s["err"], color=c, lw=lw, capsize=2, marker="o" if d["marker"] else None,
                            ms=3, label=f"Group {i + 1}")
            else:
                ax.plot(d["x"], s["y"], color=c, lw=lw, marker="o" if d["marker"] else None, ms=3, label=f"Group {i + 1}")
    elif kind == "survival":
        for i, c_ in enumerate(d["curves"]):
            c = colors[i % len(colors)]
            t = np.concatenate([[0.0], c_["t"], [d["horizon"]]])
            s = np.concatenate([[1.0], c_["s"], [c_["s"][-1] if len(c_["s"]) else 1.0]])
            ax.step(t, s, where="post", color=c, lw=lw, label=_GROUPS[(i * 5) % len(_GROUPS)])
            if d["ticks"] and len(c_["t"]):
                m = c_["censored"]
                ax.plot(c_["t"][m], c_["s"][m], "|", color=c, ms=4, mew=max(0.5, lw * 0.8))
    elif kind == "bar":
        heights, errors = d["heights"], d["errors"]
        groups, k = heights.shape
        width = 0.8 / groups
        for g in range(groups):
            x = np.arange(k) - 0.4 + width * (g + 0.5)
            ax.bar(x, heights[g], width * 0.9, yerr=errors[g], capsize=2, color=colors[g % len(colors)],
                   edgecolor="black", linewidth=0.5, hatch="//" if d["hatch"] and g else None,
                   error_kw={"elinewidth": 0.8}, label=f"Series {g + 1}")
    elif kind == "scatter":
        c = colors[0]
        ax.scatter(d["x"], d["y"], s=d["size"], c=c if d["filled"] else "none", edgecolors=c, linewidths=0.6)
        if d["fit"]:
            a, b = np.polyfit(d["x"], d["y"], 1)
            xs = np.asarray(plan.xlim)
            ax.plot(xs, a * xs + b, color=colors[1], lw=lw)
    elif kind == "box":
        ax.boxplot(d["samples"], notch=d["notch"], widths=0.55, medianprops={"color": colors[1]},
                   flierprops={"markersize": 3})
        if d["points"]:
            rng = np.random.default_rng(len(d["samples"]))
            for i, s in enumerate(d["samples"]):
                ax.plot(i + 1 + rng.uniform(-0.12, 0.12, len(s)), s, ".", color=colors[0], ms=2, alpha=0.6)
    elif kind == "histogram":
        for i, s in enumerate(d["samples"]):
            ax.hist(s, d["bins"], color=colors[i % len(colors)], alpha=d["alpha"],
                    edgecolor="black" if d["edge"] else None, linewidth=0.4, label=f"Group {i + 1}")


def render_chart(plan: ChartPlan):
    """Draw the chart on the process's Figure; return it as an RGB PIL image of the canvas size."""
    from PIL import Image

    fig = _figure()
    fig.set_size_inches(plan.width / DPI, plan.height / DPI)
    fig.set_facecolor("white")
    w, h = plan.width, plan.height
    x0, y0, x1, y1 = plan.axes
    position = (x0 / w, (h - y1) / h, (x1 - x0) / w, (y1 - y0) / h)
    if fig.axes:
        # one Axes, cleared: a new one costs twice as much (fig.clf clears the old one first). Every
        # setting a chart makes is set below for each chart, so nothing leaks from the previous one.
        ax = fig.axes[0]
        ax.clear()
        ax.set_position(position)
    else:
        ax = fig.add_axes(position)
    ax.set_facecolor(plan.axes_color)
    size_pt = plan.font_px * 72 / DPI
    font = {"family": plan.family, "size": size_pt}
    _draw_data(ax, plan)
    ax.set_xlim(*plan.xlim)
    ax.set_ylim(*plan.ylim)
    ax.set_xticks(plan.xticks, plan.xticklabels, fontfamily=plan.family, fontsize=size_pt)
    ax.set_yticks(plan.yticks, plan.yticklabels, fontfamily=plan.family, fontsize=size_pt)
    ax.tick_params(direction="out" if plan.tick_px else "in", length=plan.tick_px * 72 / DPI or 3.0,
                   width=plan.line_px * 72 / DPI, color=plan.spine_color, pad=max(2.0, 0.35 * plan.font_px) * 72 / DPI)
    ax.minorticks_off()
    if plan.grid:
        ax.grid(True, color="#d0d0d0", lw=0.5)
    else:
        ax.grid(False)
    ax.set_axisbelow(True)
    for side, spine in ax.spines.items():
        spine.set_linewidth(plan.line_px * 72 / DPI)
        spine.set_color(plan.spine_color)
        spine.set_visible(plan.full_frame or side in ("left", "bottom"))
    gap_pt = max(2.0, 0.35 * plan.font_px) * 72 / DPI
    if plan.title:
        ax.set_title(plan.title, fontdict=dict(font, size=plan.title_px * 72 / DPI),
                     pad=gap_pt + 0.3 * plan.title_px * 72 / DPI)
    label_font = dict(font, size=plan.label_px * 72 / DPI)
    if plan.xlabel:
        ax.set_xlabel(plan.xlabel, fontdict=label_font, labelpad=gap_pt)
    if plan.ylabel:
        ax.set_ylabel(plan.ylabel, fontdict=label_font, labelpad=gap_pt)
    if plan.legend and ax.get_legend_handles_labels()[0]:
        ax.legend(loc=plan.legend, frameon=plan.full_frame, prop={"family": plan.family, "size": size_pt * 0.85})
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    return Image.fromarray(np.ascontiguousarray(rgba[..., :3]))


def chart_texts_extent() -> tuple[float, float, float, float]:
    """The ink extent of the last drawn chart, every text included, as canvas pixels ``(x0, y0, x1, y1)``
    (``y`` down): tests use it to check that nothing was drawn past the canvas."""
    fig = _figure()
    renderer = fig.canvas.get_renderer()
    bb = fig.axes[0].get_tightbbox(renderer)
    height = fig.bbox.height
    return bb.x0, height - bb.y1, bb.x1, height - bb.y0


__all__ = ["CHART_KINDS", "ChartPlan", "matplotlib_available", "plan_chart", "render_chart"]
