"""Hand-written SVG charts (no dependencies): grouped bars and lines, with titles, axes and units.

Every file a browser opens as is; `<title>` elements give hover tooltips on each bar and point.
"""

import math
from html import escape
from pathlib import Path

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


def nice_ticks(vmax, count=5):
    """Round tick values 0..>=vmax."""
    if vmax <= 0:
        return [0, 1]
    raw = vmax / count
    mag = 10 ** math.floor(math.log10(raw))
    step = mag
    for m in (1, 2, 2.5, 5, 10):
        if mag * m >= raw:
            step = mag * m
            break
    ticks = []
    v = 0.0
    while v < vmax + step * 0.999:
        ticks.append(round(v, 10))
        v += step
    return ticks


def fmt_tick(v):
    if v == int(v):
        return f"{int(v):,}"
    return f"{v:g}"


def _svg_open(w, h, title):
    return [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
            f'font-family="Helvetica, Arial, sans-serif" font-size="12">',
            f'<title>{escape(title)}</title>',
            f'<rect x="0" y="0" width="{w}" height="{h}" fill="#ffffff"/>',
            f'<text x="{w / 2}" y="24" text-anchor="middle" font-size="16" font-weight="bold">{escape(title)}</text>']


def _y_axis(parts, left, top, pw, ph, ticks, y_title):
    ymax = ticks[-1]
    for t in ticks:
        y = top + ph - ph * t / ymax
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" stroke="#e0e0e0"/>')
        parts.append(f'<line x1="{left - 5}" y1="{y:.1f}" x2="{left}" y2="{y:.1f}" stroke="#333"/>')
        parts.append(f'<text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end">{fmt_tick(t)}</text>')
    cy = top + ph / 2
    parts.append(f'<text x="18" y="{cy}" text-anchor="middle" transform="rotate(-90 18 {cy})" '
                 f'font-size="13">{escape(y_title)}</text>')
    parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="#333" stroke-width="1.5"/>')
    parts.append(f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="#333" stroke-width="1.5"/>')


def _legend(parts, x, y, names, colors, marker="rect"):
    for i, (name, col) in enumerate(zip(names, colors)):
        yy = y + i * 20
        if marker == "rect":
            parts.append(f'<rect x="{x}" y="{yy - 10}" width="14" height="12" fill="{col}"/>')
        else:
            parts.append(f'<line x1="{x - 2}" y1="{yy - 4}" x2="{x + 16}" y2="{yy - 4}" stroke="{col}" stroke-width="2.5"/>')
            parts.append(f'<circle cx="{x + 7}" cy="{yy - 4}" r="3.5" fill="{col}"/>')
        parts.append(f'<text x="{x + 22}" y="{yy}">{escape(name)}</text>')


def bar_chart(path, title, categories, series, values, x_title, y_title, ref_line=None, ref_label=None,
              width=980, height=520):
    """Grouped bars: values[s][c] for series s (legend) at category c (x axis)."""
    left, right, top, bottom = 78, 130, 44, 115
    pw, ph = width - left - right, height - top - bottom
    vmax = max([max(v) for v in values] + [ref_line or 0])
    ticks = nice_ticks(vmax * 1.05)
    ymax = ticks[-1]
    parts = _svg_open(width, height, title)
    _y_axis(parts, left, top, pw, ph, ticks, y_title)
    gw = pw / len(categories)
    bw = gw * 0.8 / len(series)
    colors = [PALETTE[i % len(PALETTE)] for i in range(len(series))]
    for ci, cat in enumerate(categories):
        gx = left + ci * gw + gw * 0.1
        for si in range(len(series)):
            v = values[si][ci]
            bh = ph * v / ymax
            x = gx + si * bw
            parts.append(f'<rect x="{x:.1f}" y="{top + ph - bh:.1f}" width="{bw - 1:.1f}" height="{bh:.1f}" '
                         f'fill="{colors[si]}"><title>{escape(cat)} {escape(series[si])}: {v:,}</title></rect>')
            if v == 0:
                parts.append(f'<text x="{x + bw / 2:.1f}" y="{top + ph - 4:.1f}" text-anchor="middle" '
                             f'font-size="10" fill="{colors[si]}">0</text>')
        cx = left + ci * gw + gw / 2
        parts.append(f'<line x1="{cx:.1f}" y1="{top + ph}" x2="{cx:.1f}" y2="{top + ph + 5}" stroke="#333"/>')
        ly = top + ph + 16
        parts.append(f'<text x="{cx:.1f}" y="{ly}" text-anchor="end" font-size="12" '
                     f'transform="rotate(-25 {cx:.1f} {ly})">{escape(cat)}</text>')
    if ref_line is not None:
        y = top + ph - ph * ref_line / ymax
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" stroke="#555" '
                     f'stroke-dasharray="6 4"/>')
        if ref_label:
            parts.append(f'<text x="{left + pw + 6}" y="{y + 4:.1f}" font-size="11" fill="#555">{escape(ref_label)}</text>')
    parts.append(f'<text x="{left + pw / 2}" y="{height - 14}" text-anchor="middle" font-size="13">{escape(x_title)}</text>')
    _legend(parts, left + pw + 16, top + 14, series, colors)
    parts.append("</svg>")
    Path(path).write_text("\n".join(parts) + "\n")


def line_chart(path, title, xs, series, x_title, y_title, width=820, height=460, note=None):
    """One line per series: series = {name: [y per x]} (None = no point)."""
    left, right, top, bottom = 78, 190, 44, 70
    pw, ph = width - left - right, height - top - bottom
    vmax = max(v for ys in series.values() for v in ys if v is not None)
    ticks = nice_ticks(vmax * 1.05)
    ymax = ticks[-1]
    parts = _svg_open(width, height, title)
    _y_axis(parts, left, top, pw, ph, ticks, y_title)
    xmin, xmax = min(xs), max(xs)
    pad = 0.04 * pw

    def px(x):
        return left + pad + (pw - 2 * pad) * (x - xmin) / ((xmax - xmin) or 1)

    def py(y):
        return top + ph - ph * y / ymax

    for x in xs:
        parts.append(f'<line x1="{px(x):.1f}" y1="{top + ph}" x2="{px(x):.1f}" y2="{top + ph + 5}" stroke="#333"/>')
        parts.append(f'<text x="{px(x):.1f}" y="{top + ph + 20}" text-anchor="middle">{fmt_tick(x)}</text>')
    names = list(series)
    colors = [PALETTE[i % len(PALETTE)] for i in range(len(names))]
    dashes = ["", "6 3", "2 3", "8 3 2 3"]
    for i, name in enumerate(names):
        pts = [(px(x), py(y)) for x, y in zip(xs, series[name]) if y is not None]
        d = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
        dash = f' stroke-dasharray="{dashes[i % len(dashes)]}"' if dashes[i % len(dashes)] else ""
        # Later series are drawn thinner and with smaller markers, so coinciding lines stay visible.
        sw = max(1.5, 5.0 - 1.1 * i)
        r = max(2.5, 6.0 - 1.1 * i)
        parts.append(f'<polyline points="{d}" fill="none" stroke="{colors[i]}" stroke-width="{sw:.1f}"{dash}/>')
        for (x, y), xv, yv in zip(pts, [x for x, y in zip(xs, series[name]) if y is not None],
                                  [y for y in series[name] if y is not None]):
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r:.1f}" fill="{colors[i]}">'
                         f'<title>{escape(name)} N={xv}: {yv:.3g}</title></circle>')
    parts.append(f'<text x="{left + pw / 2}" y="{height - 28}" text-anchor="middle" font-size="13">{escape(x_title)}</text>')
    _legend(parts, left + pw + 16, top + 14, names, colors, marker="line")
    if note:
        for j, line in enumerate(note.split("\n")):
            parts.append(f'<text x="{left + pw + 16}" y="{top + 14 + 20 * len(names) + 14 + 15 * j}" '
                         f'font-size="10.5" fill="#555">{escape(line)}</text>')
    parts.append("</svg>")
    Path(path).write_text("\n".join(parts) + "\n")


def timeline_chart(path, title, xs, series, x_title, y_title, events=(), width=900, height=440, note=None):
    """Lines over a continuous time axis (no point markers), with labelled vertical event lines.

    series = {name: [y per x]}; events = [(x, label)] drawn as dashed verticals, labels staggered
    so that events close in time stay readable."""
    left, right, top, bottom = 78, 200, 44, 70
    pw, ph = width - left - right, height - top - bottom
    vmax = max([v for ys in series.values() for v in ys if v is not None] + [1])
    ticks = nice_ticks(vmax * 1.08)
    ymax = ticks[-1]
    parts = _svg_open(width, height, title)
    _y_axis(parts, left, top, pw, ph, ticks, y_title)
    xmin, xmax = min(xs), max(xs)

    def px(x):
        return left + pw * (x - xmin) / ((xmax - xmin) or 1)

    def py(y):
        return top + ph - ph * y / ymax

    span = nice_ticks(xmax - xmin, count=8)
    step = span[1] - span[0]
    first = math.ceil(xmin / step - 1e-9) * step
    for i in range(len(span) + 1):
        x = round(first + i * step, 10)
        if x > xmax + 1e-9:
            break
        parts.append(f'<line x1="{px(x):.1f}" y1="{top + ph}" x2="{px(x):.1f}" y2="{top + ph + 5}" stroke="#333"/>')
        parts.append(f'<text x="{px(x):.1f}" y="{top + ph + 20}" text-anchor="middle">{fmt_tick(x)}</text>')
    names = list(series)
    colors = [PALETTE[i % len(PALETTE)] for i in range(len(names))]
    for i, name in enumerate(names):
        d = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, series[name]) if y is not None)
        parts.append(f'<polyline points="{d}" fill="none" stroke="{colors[i]}" stroke-width="1.8">'
                     f'<title>{escape(name)}</title></polyline>')
    for j, (x, label) in enumerate(sorted(events)):
        if x is None or not (xmin <= x <= xmax):
            continue
        parts.append(f'<line x1="{px(x):.1f}" y1="{top}" x2="{px(x):.1f}" y2="{top + ph}" stroke="#444" '
                     f'stroke-dasharray="5 4"><title>{escape(label)} at {x:.2f}</title></line>')
        ly = top + 14 + 14 * (j % 4)
        parts.append(f'<text x="{px(x) + 4:.1f}" y="{ly}" font-size="10.5" fill="#222">{escape(label)}</text>')
    parts.append(f'<text x="{left + pw / 2}" y="{height - 28}" text-anchor="middle" font-size="13">{escape(x_title)}</text>')
    _legend(parts, left + pw + 16, top + 14, names, colors, marker="line")
    if note:
        for j, line in enumerate(note.split("\n")):
            parts.append(f'<text x="{left + pw + 16}" y="{top + 14 + 20 * len(names) + 14 + 15 * j}" '
                         f'font-size="10.5" fill="#555">{escape(line)}</text>')
    parts.append("</svg>")
    Path(path).write_text("\n".join(parts) + "\n")
