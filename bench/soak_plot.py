#!/usr/bin/env python3
"""Plot a bench/soak.sh CSV as an SVG (python3 stdlib only).

Usage: python3 bench/soak_plot.py results/soak-DATE.csv [out.svg]   (default: the CSV's name, .svg)

Three charts sharing the time axis: the sidecar's RSS (MiB), its open fds, and requests per second
in each sampling interval (successful ones; intervals with unexpected failures get a red marker and
their count). Dashed orange lines mark the broken (key_mismatch) updates.
"""
import csv
import math
import sys
from xml.sax.saxutils import escape

W, CHART_H, LEFT, RIGHT, TOP, GAP, BOTTOM = 900, 170, 70, 20, 75, 40, 45


def nice_ticks(hi, n=4):
    """Round tick values from 0 to at least hi."""
    if hi <= 0:
        return [0, 1]
    raw = hi / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    return [i * step for i in range(int(math.ceil(hi / step - 1e-9)) + 1)]


def fmt(v):
    return f"{v:.0f}" if v == int(v) else f"{v:g}"


def duration(s):
    m, s = divmod(int(s), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def main():
    src = sys.argv[1]
    out = sys.argv[2] if len(sys.argv) > 2 else src.rsplit(".", 1)[0] + ".svg"
    with open(src, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["rss_kib"]]
    if len(rows) < 2:
        sys.exit(f"{src}: fewer than 2 samples")
    t = [float(r["elapsed_s"]) for r in rows]
    rss = [int(r["rss_kib"]) / 1024 for r in rows]
    fds = [int(r["fds"]) for r in rows]
    ok = [int(r["ok"]) for r in rows]
    failed = [int(r["failed"]) for r in rows]
    broken = [int(r["broken"]) for r in rows]
    # per interval: value at the interval's end
    rate = [0.0] + [(ok[i] - ok[i - 1]) / max(t[i] - t[i - 1], 1e-9) for i in range(1, len(t))]
    fails = [0] + [failed[i] - failed[i - 1] for i in range(1, len(t))]
    broken_at = [t[i] for i in range(1, len(t)) if broken[i] > broken[i - 1]]

    t_max = max(t[-1], 1.0)
    minutes = t_max > 300
    x_ticks = nice_ticks(t_max / 60 if minutes else t_max, 8)
    x_unit = 60 if minutes else 1
    plot_w = W - LEFT - RIGHT
    sx = lambda v: LEFT + plot_w * v / (x_ticks[-1] * x_unit)

    charts = [("RSS (MiB)", rss, "#1f77b4"), ("open fds", fds, "#2ca02c"),
              ("requests/s (ok)", rate, "#555555")]
    height = TOP + len(charts) * (CHART_H + GAP) - GAP + BOTTOM
    total_fail = failed[-1]
    title = f"mtls-sidecar soak, {rows[0]['time'].replace('T', ' ')[:16]}, {duration(t[-1])}"
    subtitle = (f"{rows[-1]['rotations']} good rotations (generation {rows[0]['generation']} to "
                f"{rows[-1]['generation']}), {broken[-1]} broken updates, {ok[-1]:,} requests ok, "
                f"{total_fail} unexpected failures")
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="{W}" height="{height}" fill="white"/>',
           f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{escape(title)}</text>',
           f'<text x="{W / 2}" y="41" text-anchor="middle" font-size="12">{escape(subtitle)}</text>',
           f'<text x="{W / 2}" y="58" text-anchor="middle" fill="#666">sampled every {fmt(t[1] - t[0])} s; '
           f'dashed orange: a broken update (key_mismatch, must be refused), at the sample after it</text>']

    for k, (label, ys, color) in enumerate(charts):
        top = TOP + k * (CHART_H + GAP)
        bottom = top + CHART_H
        y_ticks = nice_ticks(max(ys) * 1.25)  # headroom for the labels at the top
        sy = lambda v: bottom - CHART_H * v / y_ticks[-1]
        # grid, y ticks, frame
        for v in y_ticks:
            svg.append(f'<line x1="{LEFT}" y1="{sy(v):.1f}" x2="{W - RIGHT}" y2="{sy(v):.1f}" stroke="#e5e5e5"/>')
            svg.append(f'<text x="{LEFT - 6}" y="{sy(v) + 4:.1f}" text-anchor="end">{fmt(v)}</text>')
        for v in x_ticks:
            x = sx(v * x_unit)
            svg.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{bottom}" stroke="#f0f0f0"/>')
            if k == len(charts) - 1:
                svg.append(f'<text x="{x:.1f}" y="{bottom + 15}" text-anchor="middle">{fmt(v)}</text>')
        svg.append(f'<rect x="{LEFT}" y="{top}" width="{plot_w}" height="{CHART_H}" fill="none" stroke="#999"/>')
        svg.append(f'<text x="16" y="{(top + bottom) / 2:.1f}" text-anchor="middle" '
                   f'transform="rotate(-90 16 {(top + bottom) / 2:.1f})">{escape(label)}</text>')
        for b in broken_at:
            svg.append(f'<line x1="{sx(b):.1f}" y1="{top}" x2="{sx(b):.1f}" y2="{bottom}" '
                       f'stroke="#ff7f0e" stroke-dasharray="3,3" stroke-width="0.8"/>')
        # the series (rate: skip the first point, which has no interval)
        first = 1 if ys is rate else 0
        pts = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(t[first:], ys[first:]))
        svg.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="1.5"/>')
        num = lambda v: f"{v:.1f}" if isinstance(v, float) else str(v)
        svg.append(f'<text x="{W - RIGHT - 4}" y="{top + 14}" text-anchor="end" fill="{color}">'
                   f'min {num(min(ys[first:]))}, max {num(max(ys[first:]))}, last {num(ys[-1])}</text>')
        if ys is rate:
            for x, y, n in zip(t, rate, fails):
                if n > 0:
                    svg.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="4" fill="#d62728"/>')
                    anchor = "end" if sx(x) > W - RIGHT - 60 else "middle"
                    svg.append(f'<text x="{sx(x):.1f}" y="{top + 30}" text-anchor="{anchor}" '
                               f'fill="#d62728">{n} failed</text>')
            if total_fail == 0:
                svg.append(f'<text x="{LEFT + 6}" y="{top + 14}" fill="#2ca02c">no unexpected failures</text>')
    svg.append(f'<text x="{LEFT + plot_w / 2}" y="{height - 10}" text-anchor="middle">'
               f'elapsed ({"minutes" if minutes else "seconds"})</text>')
    svg.append("</svg>")
    with open(out, "w") as f:
        f.write("\n".join(svg) + "\n")


if __name__ == "__main__":
    main()
