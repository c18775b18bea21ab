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


def _y_axis(parts, left, top, pw, ph, ticks, y_title, py=None):
    """Grid lines, ticks and title of the y axis; `py` maps a value to its y (default: linear from 0)."""
    ymax = ticks[-1]
    if py is None:
        def py(t):
            return top + ph - ph * t / ymax
    for t in ticks:
        y = py(t)
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


def _finish_line_chart(parts, path, left, top, pw, height, x_title, names, colors, note):
    """x-axis title, line legend and note at the right, then the file."""
    parts.append(f'<text x="{left + pw / 2}" y="{height - 28}" text-anchor="middle" font-size="13">{escape(x_title)}</text>')
    _legend(parts, left + pw + 16, top + 14, names, colors, marker="line")
    if note:
        for j, line in enumerate(note.split("\n")):
            parts.append(f'<text x="{left + pw + 16}" y="{top + 14 + 20 * len(names) + 14 + 15 * j}" '
                         f'font-size="10.5" fill="#555">{escape(line)}</text>')
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
    _finish_line_chart(parts, path, left, top, pw, height, x_title, names, colors, note)


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
    _finish_line_chart(parts, path, left, top, pw, height, x_title, names, colors, note)


# ---------------------------------------------------------------------------------------------
# Charts with spread whiskers (median with min-max), log axes and explicit styles
# ---------------------------------------------------------------------------------------------

DASHES = ["", "6 3", "2 3", "8 3 2 3"]


def _whisker(parts, at, lo, hi, cap, vertical, style='stroke="#222" stroke-width="1.2"'):
    """A min-max whisker in pixels: the span lo..hi at `at` across the axis, capped at both ends
    with ticks `cap` pixels to each side; vertical for column charts, horizontal for bar rows."""
    def line(a1, b1, a2, b2):
        x1, y1, x2, y2 = (a1, b1, a2, b2) if vertical else (b1, a1, b2, a2)
        parts.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" {style}/>')
    line(at, lo, at, hi)
    for v in (lo, hi):
        line(at - cap, v, at + cap, v)


def log_ticks(vmin, vmax):
    """1-2-5 ticks per decade covering vmin..vmax (both > 0); returns (ticks, lo, hi) with lo/hi the
    axis limits (the nearest 1-2-5 values outside the data)."""
    steps = (1, 2, 5)
    cand = []
    for e in range(math.floor(math.log10(vmin)) - 1, math.ceil(math.log10(vmax)) + 2):
        cand.extend(m * 10.0 ** e for m in steps)
    lo = max(c for c in cand if c <= vmin * 1.0001)
    hi = min(c for c in cand if c >= vmax * 0.9999)
    ticks = [round(c, 12) for c in cand if lo <= c <= hi]
    return ticks, lo, hi


def _fmt_num(v):
    if v >= 100 or v == int(v):
        return f"{v:,.0f}"
    return f"{v:.3g}"


def xy_chart(path, title, xs, series, x_title, y_title, spreads=None, styles=None, log2_x=False,
             log_y=False, note=None, width=860, height=480, legend_width=210):
    """Lines over a shared x axis with optional min-max whiskers.

    series = {name: [y per x or None]}; spreads = {name: [(lo, hi) or None per x]};
    styles = {name: {"color": "#...", "dash": "6 3", "width": 2.5}} (defaults: palette, solid).
    log2_x puts the x values on a log2 scale (labels as given); log_y a 1-2-5 log scale on y."""
    spreads = spreads or {}
    styles = styles or {}
    left, right, top, bottom = 78, legend_width, 44, 70
    pw, ph = width - left - right, height - top - bottom
    vals = [v for ys in series.values() for v in ys if v is not None]
    vals += [b for sp in spreads.values() for p in sp if p for b in p]
    parts = _svg_open(width, height, title)
    if log_y:
        ticks, ylo, yhi = log_ticks(min(v for v in vals if v > 0), max(vals))

        def py(y):
            y = max(y, ylo)
            return top + ph - ph * (math.log10(y) - math.log10(ylo)) / (math.log10(yhi) - math.log10(ylo))
        _y_axis(parts, left, top, pw, ph, ticks, y_title, py=py)
    else:
        ticks = nice_ticks(max(vals) * 1.05)
        ymax = ticks[-1]
        _y_axis(parts, left, top, pw, ph, ticks, y_title)

        def py(y):
            return top + ph - ph * y / ymax

    fx = (lambda x: math.log2(x)) if log2_x else (lambda x: x)
    xmin, xmax = fx(min(xs)), fx(max(xs))
    pad = 0.05 * pw

    def px(x):
        return left + pad + (pw - 2 * pad) * (fx(x) - xmin) / ((xmax - xmin) or 1)

    for x in xs:
        parts.append(f'<line x1="{px(x):.1f}" y1="{top + ph}" x2="{px(x):.1f}" y2="{top + ph + 5}" stroke="#333"/>')
        parts.append(f'<text x="{px(x):.1f}" y="{top + ph + 20}" text-anchor="middle">{fmt_tick(x)}</text>')
    names = list(series)
    colors, dashes, widths = [], [], []
    for i, name in enumerate(names):
        st = styles.get(name, {})
        colors.append(st.get("color", PALETTE[i % len(PALETTE)]))
        dashes.append(st.get("dash", ""))
        widths.append(st.get("width", 2.5))
    for i, name in enumerate(names):
        col, dash, sw = colors[i], dashes[i], widths[i]
        sp = spreads.get(name) or [None] * len(xs)
        # Whiskers first, offset a little per series so that coinciding ones stay visible.
        off = (i - (len(names) - 1) / 2) * 2.0
        for x, rng in zip(xs, sp):
            if rng is None:
                continue
            lo, hi = rng
            x0 = px(x) + off
            _whisker(parts, x0, py(lo), py(hi), 3, True, f'stroke="{col}" stroke-width="1.2" opacity="0.7"')
        pts = [(x, y) for x, y in zip(xs, series[name]) if y is not None]
        d = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        da = f' stroke-dasharray="{dash}"' if dash else ""
        parts.append(f'<polyline points="{d}" fill="none" stroke="{col}" stroke-width="{sw:.1f}"{da}/>')
        for x, y in pts:
            rng = dict(zip(xs, sp)).get(x)
            extra = f" (min {_fmt_num(rng[0])}, max {_fmt_num(rng[1])})" if rng else ""
            parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3.5" fill="{col}">'
                         f'<title>{escape(name)} at {fmt_tick(x)}: {_fmt_num(y)}{escape(extra)}</title></circle>')
    parts.append(f'<text x="{left + pw / 2}" y="{height - 28}" text-anchor="middle" font-size="13">{escape(x_title)}</text>')
    lx, ly = left + pw + 16, top + 14
    for i, name in enumerate(names):
        yy = ly + i * 20
        da = f' stroke-dasharray="{dashes[i]}"' if dashes[i] else ""
        parts.append(f'<line x1="{lx - 2}" y1="{yy - 4}" x2="{lx + 22}" y2="{yy - 4}" stroke="{colors[i]}" '
                     f'stroke-width="2.5"{da}/>')
        parts.append(f'<text x="{lx + 28}" y="{yy}">{escape(name)}</text>')
    if note:
        for j, line in enumerate(note.split("\n")):
            parts.append(f'<text x="{lx}" y="{ly + 20 * len(names) + 14 + 15 * j}" '
                         f'font-size="10.5" fill="#555">{escape(line)}</text>')
    parts.append("</svg>")
    Path(path).write_text("\n".join(parts) + "\n")


def bar_chart_err(path, title, categories, series, values, x_title, y_title, spreads=None, colors=None,
                  labels=True, ref_line=None, ref_label=None, note=None, width=900, height=480, fmt=None,
                  bar_colors=None, legend=True, right=190):
    """Grouped bars with min-max whiskers: values[s][c] (None = no bar), spreads[s][c] = (lo, hi) or None.
    Each bar carries its value as a label above it (labels=True); fmt formats those labels.
    bar_colors (one per category) colours a single series bar by bar; legend=False drops the legend."""
    fmt = fmt or _fmt_num
    left, top, bottom = 78, 44, 80
    pw, ph = width - left - right, height - top - bottom
    spreads = spreads or [[None] * len(categories) for _ in series]
    vmax = max([v for row in values for v in row if v is not None] +
               [p[1] for row in spreads for p in row if p] + [ref_line or 0])
    ticks = nice_ticks(vmax * 1.08)
    ymax = ticks[-1]
    parts = _svg_open(width, height, title)
    _y_axis(parts, left, top, pw, ph, ticks, y_title)
    gw = pw / len(categories)
    bw = gw * 0.8 / len(series)
    colors = colors or [PALETTE[i % len(PALETTE)] for i in range(len(series))]

    def py(v):
        return top + ph - ph * v / ymax

    for ci, cat in enumerate(categories):
        gx = left + ci * gw + gw * 0.1
        for si in range(len(series)):
            v = values[si][ci]
            if v is None:
                continue
            x = gx + si * bw
            rng = spreads[si][ci]
            tip = f"{cat} {series[si]}: {fmt(v)}" + (f" (min {fmt(rng[0])}, max {fmt(rng[1])})" if rng else "")
            fill = bar_colors[ci] if bar_colors else colors[si]
            parts.append(f'<rect x="{x:.1f}" y="{py(v):.1f}" width="{bw - 2:.1f}" height="{ph * v / ymax:.1f}" '
                         f'fill="{fill}"><title>{escape(tip)}</title></rect>')
            cx = x + (bw - 2) / 2
            top_y = py(v)
            if rng:
                _whisker(parts, cx, py(rng[0]), py(rng[1]), 4, True)
                top_y = min(top_y, py(rng[1]))
            if labels:
                parts.append(f'<text x="{cx:.1f}" y="{top_y - 4:.1f}" text-anchor="middle" font-size="10.5">'
                             f'{escape(fmt(v))}</text>')
        cx = left + ci * gw + gw / 2
        parts.append(f'<text x="{cx:.1f}" y="{top + ph + 20}" text-anchor="middle" font-size="12">{escape(cat)}</text>')
    if ref_line is not None:
        y = py(ref_line)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" stroke="#555" stroke-dasharray="6 4"/>')
        if ref_label:
            parts.append(f'<text x="{left + pw + 6}" y="{y + 4:.1f}" font-size="11" fill="#555">{escape(ref_label)}</text>')
    parts.append(f'<text x="{left + pw / 2}" y="{height - 30}" text-anchor="middle" font-size="13">{escape(x_title)}</text>')
    if legend:
        _legend(parts, left + pw + 16, top + 14, series, colors)
    if note:
        y0 = top + 14 + (20 * len(series) + 14 if legend else 0)
        for j, line in enumerate(note.split("\n")):
            parts.append(f'<text x="{left + pw + 16}" y="{y0 + 15 * j}" '
                         f'font-size="10.5" fill="#555">{escape(line)}</text>')
    parts.append("</svg>")
    Path(path).write_text("\n".join(parts) + "\n")


def hbar_chart(path, title, rows, series, values, x_title, spreads=None, colors=None, refs=(), note=None,
               width=900, row_height=None, fmt=None):
    """Horizontal grouped bars, one group per row label (top to bottom): values[s][r] (None = none),
    spreads[s][r] = (lo, hi) or None as whiskers, refs = [(x, label)] vertical reference lines."""
    fmt = fmt or (lambda v: f"{v:.2f}x")
    spreads = spreads or [[None] * len(rows) for _ in series]
    colors = colors or [PALETTE[i % len(PALETTE)] for i in range(len(series))]
    bh = 18
    gh = row_height or (bh * len(series) + 16)
    left, right, top = 330, 40, 60 + 20 * len(series)
    note_lines = note.split("\n") if note else []
    height = top + gh * len(rows) + 52 + 15 * len(note_lines)
    pw = width - left - right
    ph = gh * len(rows)
    vmax = max([v for row in values for v in row if v is not None] +
               [p[1] for row in spreads for p in row if p] + [x for x, _ in refs])
    ticks = nice_ticks(vmax * 1.12)
    xmax = ticks[-1]

    def px(v):
        return left + pw * v / xmax

    parts = _svg_open(width, height, title)
    for t in ticks:
        x = px(t)
        parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + ph}" stroke="#e0e0e0"/>')
        parts.append(f'<text x="{x:.1f}" y="{top + ph + 16}" text-anchor="middle">{fmt_tick(t)}</text>')
    parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="#333" stroke-width="1.5"/>')
    parts.append(f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="#333" stroke-width="1.5"/>')
    for ri, row in enumerate(rows):
        gy = top + ri * gh + 8
        lines = row.split("\n")
        cy = top + ri * gh + gh / 2
        for j, line in enumerate(lines):
            yy = cy + 4 + (j - (len(lines) - 1) / 2) * 14
            parts.append(f'<text x="{left - 10}" y="{yy:.1f}" text-anchor="end" font-size="12">{escape(line)}</text>')
        for si in range(len(series)):
            v = values[si][ri]
            if v is None:
                continue
            y = gy + si * bh
            rng = spreads[si][ri]
            tip = f"{row.replace(chr(10), ' ')}, {series[si]}: {fmt(v)}"
            if rng:
                tip += f" (min {fmt(rng[0])}, max {fmt(rng[1])})"
            parts.append(f'<rect x="{left}" y="{y:.1f}" width="{px(v) - left:.1f}" height="{bh - 3}" '
                         f'fill="{colors[si]}"><title>{escape(tip)}</title></rect>')
            end = px(v)
            my = y + (bh - 3) / 2
            if rng:
                _whisker(parts, my, px(rng[0]), px(rng[1]), 4, False)
                end = max(end, px(rng[1]))
            parts.append(f'<text x="{end + 5:.1f}" y="{my + 4:.1f}" font-size="11">{escape(fmt(v))}</text>')
    for x, label in refs:
        parts.append(f'<line x1="{px(x):.1f}" y1="{top - 6}" x2="{px(x):.1f}" y2="{top + ph}" stroke="#555" '
                     f'stroke-dasharray="6 4"/>')
        parts.append(f'<text x="{px(x):.1f}" y="{top - 10}" text-anchor="middle" font-size="11" fill="#555">'
                     f'{escape(label)}</text>')
    parts.append(f'<text x="{left + pw / 2}" y="{top + ph + 36}" text-anchor="middle" font-size="13">{escape(x_title)}</text>')
    for i, (name, col) in enumerate(zip(series, colors)):
        yy = 46 + i * 20
        parts.append(f'<rect x="{left}" y="{yy - 10}" width="14" height="12" fill="{col}"/>')
        parts.append(f'<text x="{left + 22}" y="{yy}">{escape(name)}</text>')
    for j, line in enumerate(note_lines):
        parts.append(f'<text x="16" y="{top + ph + 60 + 15 * j}" font-size="10.5" fill="#555">{escape(line)}</text>')
    parts.append("</svg>")
    Path(path).write_text("\n".join(parts) + "\n")
