"""Plots shared by the notebooks and the main job; functions only draw what they are given.

Labels follow LABKIT_LANG (labkit.lab.labels): Chinese where matplotlib finds a CJK font, else English.
"""

from __future__ import annotations

import functools

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib import ticker
from matplotlib.backend_bases import FigureCanvasBase
from matplotlib.text import Text

from labkit.lab import labels

# Fonts with the Chinese glyphs, in order of preference (Debian's fonts-noto-cjk provides the first two).
CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans CJK JP", "Source Han Sans SC", "WenQuanYi Zen Hei", "SimHei",
             "Microsoft YaHei", "PingFang SC")


@functools.lru_cache(maxsize=1)
def cjk_font() -> str | None:
    """The name of a CJK font matplotlib can use, or None (then Chinese labels would draw as empty boxes)."""
    from matplotlib import font_manager as fm

    def known() -> str | None:
        names = {f.name for f in fm.fontManager.ttflist}
        return next((name for name in CJK_FONTS if name in names), None)

    if known() is None:  # matplotlib's font cache predates a font installed later (apt-get install fonts-noto-cjk)
        for path in fm.findSystemFonts():
            if "CJK" in path or "wqy" in path.lower():
                try:
                    fm.fontManager.addfont(path)
                except (OSError, RuntimeError, ValueError):
                    pass  # a font matplotlib cannot read is simply not used
    return known()


def chinese() -> bool:
    """True when plots should be labelled in Chinese: LABKIT_LANG=zh and a CJK font; then that font is put first."""
    if labels.language() != "zh" or cjk_font() is None:
        return False
    fonts = plt.rcParams["font.sans-serif"]
    if fonts[:1] != [cjk_font()]:  # the CJK font also has Latin glyphs: it draws the whole figure
        plt.rcParams["font.sans-serif"] = [cjk_font()] + [f for f in fonts if f != cjk_font()]
        plt.rcParams["font.family"] = "sans-serif"
    return True


def tr(text: str, **fields) -> str:
    """A plot's `text` in the learner's language where the figure can show it, English otherwise."""
    return labels.t(text, "zh" if chinese() else "en", **fields)


def translate_figure(fig) -> None:
    """Every text of `fig` (titles, axis labels, legend entries, annotations) in the learner's language where the
    figure can show it: the label table's entry, or its template's for a text an f-string wrote."""
    if chinese():
        for text in fig.findobj(Text):
            shown = text.get_text()
            if shown and labels.translated(shown) != shown:
                text.set_text(labels.translated(shown))


def translate_figures() -> None:
    """Figures a notebook draws with its own matplotlib code labelled like labkit's: each figure goes through
    `translate_figure` when it is rendered (shown inline, in a widget's output or saved). Called by the notebooks'
    setup; in English, and where no CJK font is found, nothing changes."""
    if getattr(FigureCanvasBase.print_figure, "translates", False):
        return
    render = FigureCanvasBase.print_figure

    @functools.wraps(render)
    def print_figure(canvas, *args, **kwargs):
        translate_figure(canvas.figure)
        return render(canvas, *args, **kwargs)

    print_figure.translates = True
    FigureCanvasBase.print_figure = print_figure


def results_bars(df: pd.DataFrame, path=None):
    """Accuracy, b32 latency and size side by side for each row of a `measure.table`."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 0.45 * len(df) + 1.8), sharey=True)
    for ax, col, text in zip(axes, ["accuracy", "latency_b32_ms", "size_mb"],
                             ["test accuracy", "batch-32 latency (ms, median)", "serialized size (MB)"]):
        ax.barh(df["name"], df[col], color="#4c72b0")
        ax.set_xlabel(tr(text))
        for y, v in enumerate(df[col]):
            if pd.notna(v):
                ax.text(v, y, f" {v:.3f}" if col == "accuracy" else f" {v:.1f}", va="center", fontsize=8)
    axes[0].invert_yaxis()
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


# Where a point's number may go: its box's lower-left corner, in points from the point, for a box w wide and h high;
# tried in this order, then twice and three times as far.
NUMBER_PLACES = (lambda w, h: (4, 3), lambda w, h: (4, -3 - h), lambda w, h: (-4 - w, 3),
                 lambda w, h: (-4 - w, -3 - h), lambda w, h: (6, -h / 2), lambda w, h: (-6 - w, -h / 2),
                 lambda w, h: (-w / 2, 5), lambda w, h: (-w / 2, -5 - h))


def _number_offsets(ax, xs, ys, texts, fontsize: float = 8) -> list[tuple[float, float]]:
    """Each number's offset in points (its box's lower-left corner): the first place around its point where the box
    overlaps no number placed before it and no other point, else the place with the fewest overlaps. Call it once
    the axes have their final size and limits (after tight_layout)."""
    ax.autoscale_view()
    pts = ax.transData.transform(np.column_stack([xs, ys])) / (ax.figure.dpi / 72)  # display points
    height, placed, out = fontsize, [], []
    for i, text in enumerate(texts):
        width = 0.65 * fontsize * len(text) + 1  # a bold digit is about 0.6 of the font size wide
        best, best_cost = None, None
        for ring in (1, 2, 3):
            for place in NUMBER_PLACES:
                dx, dy = (ring * v for v in place(width, height))
                x0, y0 = pts[i, 0] + dx, pts[i, 1] + dy
                box = (x0, y0, x0 + width, y0 + height)
                cost = 10 * sum(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed)
                cost += sum(box[0] - 3 < px < box[2] + 3 and box[1] - 3 < py < box[3] + 3
                            for k, (px, py) in enumerate(pts) if k != i)
                if best_cost is None or cost < best_cost:
                    best, best_cost = (dx, dy, box), cost
                if cost == 0:
                    break
            if best_cost == 0:
                break
        placed.append(best[2])
        out.append((best[0], best[1]))
    return out


def pareto(df: pd.DataFrame, x: str = "latency_b32_ms", y: str = "accuracy", front: pd.Series | None = None,
           path=None):
    """Accuracy against latency (or size), one numbered point per measured model, its name in the list beside.

    Where the table has them, `{y}_lo` and `{y}_hi` are drawn as the interval's bar and `size_mb` as the marker's
    area. `front` (True for the rows on the two-dimensional front of `x` and `y`, e.g.
    `pipelines.pareto.pareto_front(df, minimize=(x,))`) is drawn as a dashed staircase and starred in the list."""
    shown = df[df[x].notna() & df[y].notna()]
    on_front = (front.reindex(shown.index).fillna(False).astype(bool) if front is not None
                else pd.Series(False, index=shown.index))
    fig, (ax, side) = plt.subplots(1, 2, figsize=(12, max(4.5, 0.2 * len(shown) + 1.5)),
                                   gridspec_kw={"width_ratios": [3, 2]})
    xs, ys = shown[x].to_numpy(float), shown[y].to_numpy(float)
    if {f"{y}_lo", f"{y}_hi"} <= set(shown):
        lo, hi = shown[f"{y}_lo"].to_numpy(float), shown[f"{y}_hi"].to_numpy(float)
        ax.errorbar(xs, ys, yerr=[np.nan_to_num(ys - lo), np.nan_to_num(hi - ys)], fmt="none", ecolor="#999999",
                    elinewidth=1, capsize=2, zorder=1, label=tr("95% interval"))
    sizes = shown["size_mb"].to_numpy(float) if "size_mb" in shown else np.ones(len(shown))
    area = 20 + 280 * np.nan_to_num(sizes) / max(np.nanmax(sizes, initial=0), 1e-9)
    colors = np.where(on_front.to_numpy(), "#dd8452", "#4c72b0")
    ax.scatter(xs, ys, s=area, c=colors, alpha=0.6, edgecolors="white", zorder=2)
    if on_front.any():
        line = shown[on_front.to_numpy()].sort_values(x)
        ax.plot(line[x], line[y], "--", color="gray", drawstyle="steps-post", zorder=1, label=tr("Pareto front"),
                gid="pareto-front")
    names = [f"{k:>2}{' *' if best else '  '} {name}" for k, (name, best) in
             enumerate(zip(shown["name"], on_front), start=1)]
    if len(xs) and xs.min() > 0 and xs.max() / xs.min() >= 8:  # on a log axis equal speed-ups are equal distances
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5)))  # 100, 200, 500, 1000: plain numbers
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel(tr(x))
    ax.set_ylabel(tr(y))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    side.axis("off")
    side.set_title(tr("marker area: size (MB); * on the front"), fontsize=8, loc="left")
    side.text(0, 1, "\n".join(names), va="top", ha="left", family="monospace", fontsize=7,
              transform=side.transAxes, gid="point-names")
    fig.tight_layout()
    numbers = [str(k) for k in range(1, len(xs) + 1)]
    for k, (px, py, offset) in enumerate(zip(xs, ys, _number_offsets(ax, xs, ys, numbers)), start=1):
        ax.annotate(str(k), (px, py), xytext=offset, textcoords="offset points", ha="left", va="bottom",
                    fontsize=8, fontweight="bold", gid=f"point-{k}")
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def curves(df: pd.DataFrame, x: str, y: str, by: str, title: str = "", path=None):
    """One line of `y` against `x` per value of column `by` (e.g. accuracy vs sparsity per pruning method)."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for key, part in df.groupby(by, sort=False):
        ax.plot(part[x], part[y], marker="o", label=tr(str(key)))
    ax.set_xlabel(tr(x))
    ax.set_ylabel(tr(y))
    ax.set_title(tr(title))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def heatmap(df: pd.DataFrame, label: str = "", path=None):
    """A labelled heat map of a DataFrame (rows x columns), values printed in the cells."""
    fig, ax = plt.subplots(figsize=(1.2 * len(df.columns) + 4, 0.4 * len(df) + 1.5))
    im = ax.imshow(df.to_numpy(dtype=float), cmap="Reds", aspect="auto")
    ax.set_xticks(range(len(df.columns)), [str(c) for c in df.columns])
    ax.set_yticks(range(len(df)), [str(i) for i in df.index], fontsize=8)
    for (i, j), v in pd.DataFrame(df.to_numpy(dtype=float)).stack().items():
        ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, label=tr(label))
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def dashboard(history: pd.DataFrame, current, path=None):
    """The capstone view: every point tried so far (accuracy vs latency, size as dot area), the current one ringed.

    `history` is a `points.table` whose points carry `name` and `simulated` extras (and optionally a `pareto`
    column); `current` is the Point just measured."""
    now = current.row()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [2, 1]})
    colors = history["simulated"].map({True: "#bbbbbb", False: "#4c72b0"})
    ax.scatter(history["latency_ms"], history["accuracy"], s=history["size_bytes"] / 250e3, c=colors, alpha=0.7)
    if "pareto" in history:
        front = history[history["pareto"]].sort_values("latency_ms")
        ax.plot(front["latency_ms"], front["accuracy"], "--", color="#dd8452", label=tr("Pareto front"))
    ax.scatter([now["latency_ms"]], [now["accuracy"]], s=now["size_bytes"] / 250e3 + 60, facecolors="none",
               edgecolors="red", linewidths=2, label=tr("current"))
    for _, row in history.iterrows():
        ax.annotate(row["name"], (row["latency_ms"], row["accuracy"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    ax.set_xlabel(tr("batch-32 latency, ms (grey: simulated, runs at float speed)"))
    ax.set_ylabel(tr("accuracy (quick validation subset)"))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    bars = {tr("accuracy %"): 100 * now["accuracy"], tr("agreement %"): 100 * now["agreement"],
            tr("latency ms"): now["latency_ms"], tr("size MB"): now["size_bytes"] / 1e6}
    bx.barh(list(bars), list(bars.values()), color="#55a868")
    for y, v in enumerate(bars.values()):
        bx.text(v, y, f" {v:.1f}", va="center", fontsize=9)
    bx.invert_yaxis()
    bx.set_title(tr("{name} (simulated)", name=now["name"]) if now["simulated"] else now["name"], fontsize=10)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


FIELD_COLOURS = {"sign": "#c44e52", "exponent": "#4c72b0", "mantissa": "#55a868"}


def float_formats(formats, path=None):
    """One bar per float format (`precision.Format`s), a cell per bit: sign, exponent (range), mantissa (precision)."""
    formats = list(formats)
    fig, ax = plt.subplots(figsize=(11, 0.55 * len(formats) + 1.2))
    for y, f in enumerate(formats):
        start = 0
        for field, width in (("sign", f.sign), ("exponent", f.exponent), ("mantissa", f.mantissa)):
            ax.barh([y] * width, 1, left=range(start, start + width), color=FIELD_COLOURS[field], edgecolor="white",
                    linewidth=0.5, label=tr(field) if y == 0 else None)  # one cell per bit
            if width >= 2:  # the field's width written inside it, where it fits
                ax.text(start + width / 2, y, str(width), ha="center", va="center", color="white", fontsize=8)
            start += width
        ax.text(start + 0.5, y, tr("{bits} bits, max {max}, eps {eps}", bits=f.bits, max=f"{f.max:.3g}",
                                   eps=f"{f.eps:.2g}"), va="center", fontsize=8)
    ax.set_yticks(range(len(formats)), [f.name for f in formats])
    ax.invert_yaxis()
    ax.set_xlim(0, max(f.bits for f in formats) * 1.3)
    ax.set_xlabel(tr("bits (sign | exponent: the range | mantissa: the precision)"))
    ax.legend(ncol=3, fontsize=8, loc="lower right")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
