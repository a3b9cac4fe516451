"""Pictures of a model: text coloured by a value per piece (surprisal heatmaps, neuron views) on a
terminal or as a self-contained HTML page, and training curves as a terminal plot or a PNG.

Nothing here computes model quantities; `evaluation` and `inspection` do. Rich is imported by
the functions that draw on a terminal, matplotlib only by `plot_curves_png` (the `plot` extra).
"""

from __future__ import annotations

import html
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import LstmgenError

RGB = tuple[int, int, int]


# -- colour scales -----------------------------------------------------------------------------------


def _mix(stops: Sequence[tuple[float, RGB]], t: float) -> RGB:
    t = min(1.0, max(0.0, t))
    for (t0, c0), (t1, c1) in zip(stops, stops[1:]):
        if t <= t1:
            u = 0.0 if t1 == t0 else (t - t0) / (t1 - t0)
            return tuple(round(a + (b - a) * u) for a, b in zip(c0, c1))  # type: ignore[return-value]
    return stops[-1][1]


def hex_color(rgb: RGB) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def text_color(rgb: RGB) -> RGB:
    """Black or white, whichever reads better on `rgb`."""
    luminance = 0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]
    return (0, 0, 0) if luminance > 140 else (255, 255, 255)


@dataclass
class Scale:
    """Maps a value to a background colour, and to a marker where there is no colour.

    `levels` are (comparison, threshold, open, close, meaning): a value ≥ threshold (comparison
    ">=") or ≤ threshold ("<=") is wrapped in open…close in plain text; the last level that
    matches wins, so list levels from weak to strong.
    """

    low: float
    high: float
    stops: list[tuple[float, RGB]]
    title: str
    unit: str
    levels: list[tuple[str, float, str, str, str]] = field(default_factory=list)
    diverging: bool = False
    ticks: list[float] = field(default_factory=list)
    #: Values shown without a background (surprisal near 0): the text stays as the terminal draws it.
    blank_below: float | None = None

    def fraction(self, value: float) -> float:
        if not math.isfinite(value):
            return 1.0 if value > 0 else 0.0
        return (value - self.low) / (self.high - self.low) if self.high > self.low else 0.5

    def color(self, value: float) -> RGB:
        return _mix(self.stops, self.fraction(value))

    def blank(self, value: float) -> bool:
        return self.blank_below is not None and value < self.blank_below

    def marker(self, value: float) -> tuple[str, str]:
        """(open, close) marks for plain-text output ("" when the value needs none)."""
        chosen = ("", "")
        for comparison, threshold, opener, closer, _ in self.levels:
            if (value >= threshold) if comparison == ">=" else (value <= threshold):
                chosen = (opener, closer)
        return chosen

    def strong(self, value: float) -> bool:
        return bool(self.marker(value)[0])


#: Surprisal scale: 0 bits white → yellow → orange → red at 12 bits and above.
SURPRISAL_STOPS: list[tuple[float, RGB]] = [
    (0.0, (255, 255, 255)),
    (1 / 12, (255, 247, 188)),
    (2 / 12, (254, 227, 145)),
    (4 / 12, (254, 196, 79)),
    (6 / 12, (254, 153, 41)),
    (8 / 12, (236, 112, 20)),
    (10 / 12, (204, 76, 2)),
    (1.0, (153, 52, 4)),
]


def surprisal_scale(high: float = 12.0) -> Scale:
    return Scale(
        0.0,
        high,
        SURPRISAL_STOPS,
        "surprisal",
        "bits",
        levels=[
            (">=", 4.0, "‹", "›", "surprising: 4–8 bits (p < 1/16)"),
            (">=", 8.0, "«", "»", "very surprising: ≥ 8 bits (p < 1/256)"),
        ],
        ticks=[0, 2, 4, 6, 8, 10, 12],
        blank_below=0.5,
    )


#: Diverging scale for activations: blue (negative) → white (0) → red (positive).
DIVERGING_STOPS: list[tuple[float, RGB]] = [
    (0.0, (33, 102, 172)),
    (0.25, (103, 169, 207)),
    (0.5, (247, 247, 247)),
    (0.75, (239, 138, 98)),
    (1.0, (178, 24, 43)),
]


def activation_scale(limit: float, label: str, low_mark: float, high_mark: float) -> Scale:
    """Colours on a symmetric scale −limit … +limit (limit: the |value| shown at full colour);
    plain text marks values ≤ low_mark with ‹…› and ≥ high_mark with «…» (for a cell's view: its
    mean ∓ one standard deviation, so a cell that is never negative still shows its structure)."""
    limit = limit if limit > 0 and math.isfinite(limit) else 1.0
    half = limit / 2
    return Scale(
        -limit,
        limit,
        DIVERGING_STOPS,
        label,
        "",
        levels=[
            ("<=", low_mark, "‹", "›", f"low: ≤ {low_mark:.3g}"),
            (">=", high_mark, "«", "»", f"high: ≥ {high_mark:.3g}"),
        ],
        diverging=True,
        ticks=[-limit, -half, 0.0, half, limit],
    )


# -- what is drawn -----------------------------------------------------------------------------------


@dataclass
class Span:
    """One coloured piece of text: its value and what hovering over it shows (HTML)."""

    text: str
    value: float
    info: dict[str, Any] = field(default_factory=dict)


NEWLINE_GLYPH = "↵"


def _split_newlines(text: str) -> tuple[str, str]:
    """(visible part, trailing line breaks): 'foo\\n' → ('foo', '\\n')."""
    stripped = text.rstrip("\r\n")
    return stripped, text[len(stripped) :]


def plain_text(spans: Sequence[Span], scale: Scale) -> str:
    """The text with strong values marked (‹…›, «…»); a line break that is marked shows as ↵."""
    out = []
    for span in spans:
        opener, closer = scale.marker(span.value)
        if not opener:
            out.append(span.text)
            continue
        visible, breaks = _split_newlines(span.text)
        if not visible.strip() and breaks:
            visible = visible + NEWLINE_GLYPH
        out.append(f"{opener}{visible}{closer}{breaks}")
    return "".join(out)


def legend_plain(scale: Scale) -> str:
    marks = "; ".join(f"{opener}text{closer} {meaning}" for _, _, opener, closer, meaning in scale.levels)
    glyph = f"; {NEWLINE_GLYPH} a marked line break"
    return f"legend: {marks}{glyph}"


def rich_text(spans: Sequence[Span], scale: Scale) -> Any:
    """A rich Text with every span's background coloured by its value."""
    from rich.text import Text

    text = Text()
    for span in spans:
        if scale.blank(span.value):
            text.append(span.text)
            continue
        rgb = scale.color(span.value)
        style = f"{hex_color(text_color(rgb))} on {hex_color(rgb)}"
        visible, breaks = _split_newlines(span.text)
        if not visible.strip() and breaks and scale.strong(span.value):
            visible += NEWLINE_GLYPH
        if visible:
            text.append(visible, style=style)
        if breaks:
            text.append(breaks)
    return text


def rich_legend(scale: Scale, width: int = 48) -> Any:
    """A colour bar with tick labels under it, e.g. `surprisal (bits): ████████` / `0 2 4 … 12+`."""
    from rich.text import Text

    prefix = f"{scale.title}{f' ({scale.unit})' if scale.unit else ''}: "
    legend = Text(prefix)
    for column in range(width):
        value = scale.low + (scale.high - scale.low) * (column + 0.5) / width
        legend.append(" ", style=f"on {hex_color(scale.color(value))}")
    line = [" "] * (width + 4)
    for tick in scale.ticks:
        label = _tick_label(tick) + ("+" if tick == scale.high and not scale.diverging else "")
        column = round(scale.fraction(tick) * (width - 1))
        start = max(0, min(column - len(label) // 2, len(line) - len(label)))
        if all(ch == " " for ch in line[max(0, start - 1) : start + len(label) + 1]):
            line[start : start + len(label)] = list(label)
    legend.append("\n" + " " * len(prefix) + "".join(line).rstrip())
    legend.append(f"\n{NEWLINE_GLYPH} marks a line break whose value stands out")
    return legend


def _tick_label(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.2f}"


def print_spans(
    spans: Sequence[Span], scale: Scale, write: Callable[[str], None], color_console: Any | None, header: str = ""
) -> None:
    """Print coloured text and its legend: with `color_console` (a rich Console) in colour, else plain."""
    if color_console is not None:
        if header:
            color_console.print(header, highlight=False, markup=False)
        color_console.print(rich_text(spans, scale), end="", soft_wrap=True, highlight=False)
        if spans and not spans[-1].text.endswith("\n"):
            color_console.print()
        color_console.print()
        color_console.print(rich_legend(scale), soft_wrap=True, highlight=False)
        return
    body = plain_text(spans, scale)
    write(
        (header + "\n" if header else "")
        + body
        + ("" if body.endswith("\n") or not body else "\n")
        + "\n"
        + legend_plain(scale)
        + "\n"
    )


# -- the HTML page -----------------------------------------------------------------------------------

_PAGE_CSS = """
:root { color-scheme: light; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d1d1f; background: #fafafa; }
header { padding: 16px 24px 10px; background: #fff; border-bottom: 1px solid #ddd; }
h1 { font-size: 18px; margin: 0 0 4px; }
.summary { color: #555; margin: 0 0 10px; font-size: 13px; }
.legend { display: flex; align-items: center; gap: 10px; font-size: 12px; color: #444; flex-wrap: wrap; }
.bar { position: relative; width: 320px; height: 14px; border: 1px solid #bbb; }
.ticks { position: relative; width: 320px; height: 14px; font-size: 11px; color: #555; }
.ticks span { position: absolute; transform: translateX(-50%); }
main { padding: 18px 24px 60px; }
.text { white-space: pre-wrap; word-wrap: break-word; font: 14px/1.6 ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; background: #fff;
        border: 1px solid #ddd; border-radius: 6px; padding: 14px 16px; }
.t { border-radius: 2px; cursor: default; }
.t:hover, .t.pinned { outline: 2px solid #111; outline-offset: 0; }
.nl { color: #999; }
#tip { position: fixed; z-index: 10; max-width: 360px; background: #222; color: #f5f5f5; border-radius: 6px; padding: 8px 10px;
       font: 12px/1.4 system-ui, sans-serif; box-shadow: 0 4px 14px rgba(0,0,0,.25); pointer-events: none; }
#tip[hidden] { display: none; }
#tip .tok { font: 13px ui-monospace, Menlo, Consolas, monospace; background: #444; padding: 0 4px; border-radius: 3px; white-space: pre; }
#tip table { border-collapse: collapse; margin-top: 6px; width: 100%; }
#tip td { padding: 1px 6px 1px 0; font-variant-numeric: tabular-nums; }
#tip td.p { text-align: right; }
#tip .pbar { display: inline-block; height: 8px; background: #f90; vertical-align: middle; }
#tip .hit td { color: #ffd27f; }
.hint { color: #777; font-size: 12px; margin-top: 8px; }
"""

_PAGE_JS = r"""
(function () {
  var DATA = JSON.parse(document.getElementById("lstmgen-data").textContent);
  var tip = document.getElementById("tip");
  var pinned = null;
  function show(el, x, y) {
    var d = DATA.spans[+el.dataset.i];
    if (!d) return;
    var h = '<div><span class="tok">' + esc(vis(d.text)) + '</span></div>';
    for (var k = 0; k < DATA.fields.length; k++) {
      var f = DATA.fields[k];
      if (d[f.key] !== undefined && d[f.key] !== null) h += '<div>' + esc(f.label) + ': <b>' + esc(fmt(d[f.key], f.digits)) + '</b>' + (f.unit ? ' ' + esc(f.unit) : '') + '</div>';
    }
    if (d.alternatives && d.alternatives.length) {
      h += '<table><tr><td colspan="2">the model expected</td></tr>';
      for (var a = 0; a < d.alternatives.length; a++) {
        var alt = d.alternatives[a];
        h += '<tr' + (alt[2] ? ' class="hit"' : '') + '><td><span class="tok">' + esc(vis(alt[0])) + '</span></td><td class="p">' +
             (100 * alt[1]).toFixed(1) + '%</td><td><span class="pbar" style="width:' + Math.max(1, Math.round(60 * alt[1])) + 'px"></span></td></tr>';
      }
      h += '</table>';
    }
    tip.innerHTML = h;
    tip.hidden = false;
    var r = el.getBoundingClientRect();
    var left = Math.min(window.innerWidth - tip.offsetWidth - 8, Math.max(8, x !== undefined ? x + 12 : r.left));
    var top = (y !== undefined ? y + 16 : r.bottom + 6);
    if (top + tip.offsetHeight > window.innerHeight - 8) top = Math.max(8, r.top - tip.offsetHeight - 6);
    tip.style.left = left + "px";
    tip.style.top = top + "px";
  }
  function esc(s) { return String(s).replace(/[&<>"]/g, function (c) { return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]; }); }
  function vis(s) { return s.replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5").replace(/ /g, "\u00b7"); }
  function fmt(v, digits) {
    if (typeof v !== "number") return String(v);
    if (digits !== "pct") return v.toFixed(digits);
    return v >= 1e-4 || v <= 0 ? (100 * v).toFixed(2) + "%" : "1 in " + Math.round(1 / v).toLocaleString("en-US");
  }
  var text = document.getElementById("text");
  text.addEventListener("mouseover", function (e) { var el = e.target.closest(".t"); if (el && !pinned) show(el, e.clientX, e.clientY); });
  text.addEventListener("mouseout", function (e) { if (!pinned && !(e.relatedTarget && e.relatedTarget.closest && e.relatedTarget.closest(".t"))) tip.hidden = true; });
  text.addEventListener("click", function (e) {
    var el = e.target.closest(".t");
    if (pinned) pinned.classList.remove("pinned");
    if (!el || el === pinned) { pinned = null; tip.hidden = true; return; }
    pinned = el; el.classList.add("pinned"); show(el);
  });
  // #span=N pins the tooltip of span N (for links and screenshots).
  var m = /span=(\d+)/.exec(location.hash);
  if (m) {
    var el = text.querySelector('.t[data-i="' + m[1] + '"]');
    if (el) {
      var box = el.getBoundingClientRect();
      if (box.top < 0 || box.bottom > window.innerHeight - 24) el.scrollIntoView({block: "center"});
      pinned = el; el.classList.add("pinned"); show(el);
    }
  }
  document.body.setAttribute("data-ready", String(text.querySelectorAll(".t").length));
})();
"""


def html_page(
    title: str, spans: Sequence[Span], scale: Scale, summary: str = "", fields: Sequence[dict[str, Any]] = ()
) -> str:
    """A self-contained page (inline CSS and JS, no network): coloured spans, a legend, and a
    tooltip on hover (click pins it) showing each span's text, `fields` of its info and its
    alternatives. `fields`: [{"key", "label", "unit", "digits" (int or "pct")}]."""
    body = []
    data = []
    for index, span in enumerate(spans):
        rgb = scale.color(span.value)
        visible, breaks = _split_newlines(span.text)
        glyph = f'<span class="nl">{NEWLINE_GLYPH}</span>' if breaks and not visible.strip() else ""
        style = (
            ""
            if scale.blank(span.value)
            else f' style="background:{hex_color(rgb)};color:{hex_color(text_color(rgb))}"'
        )
        body.append(
            f'<span class="t" data-i="{index}"{style}>{html.escape(visible)}{glyph}</span>{html.escape(breaks)}'
        )
        data.append({"text": span.text, **span.info})
    ticks = []
    for tick in scale.ticks:
        left = 100 * scale.fraction(tick)
        label = _tick_label(tick) + ("+" if tick == scale.high and not scale.diverging else "")
        ticks.append(f'<span style="left:{left:.1f}%">{html.escape(label)}</span>')
    gradient = ", ".join(f"{hex_color(color)} {100 * t:.1f}%" for t, color in scale.stops)
    payload = json.dumps(
        {"spans": data, "fields": list(fields)}, ensure_ascii=False, allow_nan=False, separators=(",", ":")
    )
    payload = payload.replace("</", "<\\/").replace("<!--", "<\\!--")
    unit = f" ({scale.unit})" if scale.unit else ""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_PAGE_CSS}</style>\n</head>\n<body>\n"
        f"<header><h1>{html.escape(title)}</h1>"
        + (f'<p class="summary">{html.escape(summary)}</p>' if summary else "")
        + f'<div class="legend"><span>{html.escape(scale.title + unit)}</span>'
        f'<div><div class="bar" style="background:linear-gradient(to right, {gradient})"></div><div class="ticks">{"".join(ticks)}</div></div>'
        f"<span>hover a piece of text for details; click to pin</span></div></header>\n"
        f'<main><div id="text" class="text">{"".join(body)}</div>'
        f'<p class="hint">{NEWLINE_GLYPH} marks a line break. Made by lstmgen.</p></main>\n'
        '<div id="tip" hidden></div>\n'
        f'<script type="application/json" id="lstmgen-data">{payload}</script>\n'
        f"<script>{_PAGE_JS}</script>\n</body>\n</html>\n"
    )


def write_html(path: Path, page: str) -> None:
    """Write a page atomically; the guard refuses to put it over anything but an HTML page (fsutil)."""
    from .fsutil import HTML, atomic_write_text, check_output

    check_output(Path(path), HTML, "HTML page", "--html")
    atomic_write_text(Path(path), page, HTML, "HTML page")


# -- training curves -----------------------------------------------------------------------------------


@dataclass
class Curve:
    steps: list[int]
    train: list[tuple[int, float]]
    val: list[tuple[int, float]]
    best_step: int | None
    best_loss: float | None


def read_curve(training: dict[str, Any]) -> Curve | None:
    """The bundle's training.curve as train/validation points and the best validation; None when absent."""
    raw = training.get("curve") if isinstance(training, dict) else None
    if not isinstance(raw, list) or not raw:
        return None

    def number(value: Any) -> float | None:
        return (
            float(value)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            else None
        )

    train, val = [], []
    for point in raw:
        if not isinstance(point, dict) or not isinstance(point.get("step"), int):
            continue
        step = point["step"]
        if number(point.get("train_loss")) is not None:
            train.append((step, number(point["train_loss"])))
        if number(point.get("val_loss")) is not None:
            val.append((step, number(point["val_loss"])))
    if not val and not train:
        return None
    best_step, best_loss = None, None
    if val:
        best_step, best_loss = min(val, key=lambda p: (p[1], p[0]))
    steps = sorted({s for s, _ in train} | {s for s, _ in val})
    return Curve(steps, train, val, best_step, best_loss)  # type: ignore[arg-type]


TRAIN_MARK, VAL_MARK, BEST_MARK = "·", "●", "◆"


def terminal_plot(curve: Curve, width: int = 64, height: int = 14) -> list[list[tuple[str, str | None]]]:
    """Rows of (text, style) segments: loss (nats/token) against step, train · and validation ●,
    the best validation ◆. Each curve is interpolated between its points, one value per column."""
    import numpy as np

    values = [v for _, v in curve.train] + [v for _, v in curve.val]
    low, high = min(values), max(values)
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    first, last = curve.steps[0], curve.steps[-1]
    grid: list[list[tuple[str, str | None]]] = [[(" ", None)] * width for _ in range(height)]

    def row_of(value: float) -> int:
        return round((high - value) / (high - low) * (height - 1))

    def column_of(step: float) -> int:
        return 0 if last == first else round((step - first) / (last - first) * (width - 1))

    for points, mark, style in ((curve.train, TRAIN_MARK, "cyan"), (curve.val, VAL_MARK, "yellow")):
        if not points:
            continue
        xs = np.array([p[0] for p in points], dtype=float)
        ys = np.array([p[1] for p in points], dtype=float)
        columns = range(column_of(xs[0]), column_of(xs[-1]) + 1)
        for column in columns:
            step = first + (last - first) * column / (width - 1) if width > 1 else first
            grid[row_of(float(np.interp(step, xs, ys)))][column] = (mark, style)
    if curve.best_step is not None and curve.best_loss is not None:
        grid[row_of(curve.best_loss)][column_of(curve.best_step)] = (BEST_MARK, "bold red")
    label_width = max(len(f"{high:.3f}"), len(f"{low:.3f}"))
    rows = []
    for index, row in enumerate(grid):
        value = high - (high - low) * index / (height - 1)
        label = f"{value:.3f}" if index in (0, height // 2, height - 1) else ""
        rows.append([(f"{label:>{label_width}} ┤" if label else " " * label_width + " │", "dim"), *row])
    rows.append([(" " * label_width + " └" + "─" * width, "dim")])
    left, right = str(first), str(last)
    rows.append([(" " * (label_width + 2) + left + " " * max(1, width - len(left) - len(right)) + right, "dim")])
    return rows


def print_curve(curve: Curve, console: Any, width: int = 64) -> None:
    """The training curves on a rich console (colour when it has colour), with axis labels and legend."""
    from rich.text import Text

    console.print("loss (nats/token) by step", highlight=False)
    for row in terminal_plot(curve, width=width):
        text = Text()
        for segment, style in row:
            text.append(segment, style=style or "")
        console.print(text, highlight=False, soft_wrap=True)
    legend = Text(" " * (8 + max(0, width // 2 - 2)) + "step\n")
    legend.append(TRAIN_MARK, style="cyan")
    legend.append(" train   ")
    legend.append(VAL_MARK, style="yellow")
    legend.append(" validation")
    if curve.best_step is not None:
        legend.append("   ")
        legend.append(BEST_MARK, style="bold red")
        legend.append(f" best validation {curve.best_loss:.4f} at step {curve.best_step}")
    console.print(legend, highlight=False, soft_wrap=True)


def plot_curves_png(curve: Curve, path: Path, title: str) -> None:
    """Write the curves as a PNG (matplotlib, the `plot` extra), atomically."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure
    except ImportError:
        raise LstmgenError("--plot needs matplotlib; install it with: pip install 'lstmgen[plot]'") from None
    from .fsutil import PNG, atomic_write_bytes, check_output

    check_output(Path(path), PNG, "plot", "--plot")
    figure = Figure(figsize=(8, 4.5), dpi=100)
    axes = figure.add_subplot()
    few = max(len(curve.train), len(curve.val)) <= 30
    if curve.train:
        axes.plot(
            [p[0] for p in curve.train],
            [p[1] for p in curve.train],
            color="#1f77b4",
            linewidth=1.8,
            marker="o" if few else None,
            markersize=3,
            label="train loss (mean since the previous log line)",
        )
    if curve.val:
        axes.plot(
            [p[0] for p in curve.val],
            [p[1] for p in curve.val],
            color="#ff7f0e",
            linewidth=1.8,
            marker="o" if few else None,
            markersize=4,
            label="validation loss",
        )
    if curve.best_step is not None and curve.best_loss is not None:
        axes.plot(
            [curve.best_step],
            [curve.best_loss],
            linestyle="none",
            marker="*",
            markersize=16,
            color="#d62728",
            markeredgecolor="#7f0000",
            label=f"best validation {curve.best_loss:.4f} (step {curve.best_step})",
            zorder=5,
        )
        axes.annotate(
            f"best {curve.best_loss:.3f}\nstep {curve.best_step}",
            (curve.best_step, curve.best_loss),
            textcoords="offset points",
            xytext=(-10, 18),
            ha="right",
            fontsize=9,
            color="#7f0000",
        )
    from matplotlib.ticker import MaxNLocator

    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("step (optimizer updates)")
    axes.set_ylabel("loss (nats/token)")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="upper right")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    atomic_write_bytes(Path(path), buffer.getvalue(), PNG, "plot")
