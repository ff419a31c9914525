#!/usr/bin/env python3
"""Chart a bench/vs_nginx.sh summary as an SVG (python3 stdlib only).

Usage: python3 bench/vs_nginx_plot.py summary.tsv out.svg "title"

summary.tsv (written by vs_nginx.sh): one line per measurement,
    label <TAB> cpu_ratio <TAB> p99_ratio
where cpu_ratio is the sidecar's CPU per unit (handshake, request, MiB) divided by nginx's in the
same run, and p99_ratio its p99 latency divided by nginx's. One horizontal bar pair per line; the
dashed line at 1.0 is nginx. Shorter is better for both.
"""
import sys
from xml.sax.saxutils import escape

W, LEFT, RIGHT, TOP, ROW, BOTTOM = 860, 300, 60, 70, 46, 50
COLORS = {"cpu": "#2b6cb0", "p99": "#dd6b20"}


def main():
    src, out, title = sys.argv[1], sys.argv[2], sys.argv[3]
    rows = []
    with open(src) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) == 3:
                rows.append((parts[0], float(parts[1]), float(parts[2])))
    hi = max([1.2] + [max(c, p) for _, c, p in rows])
    hi = round(hi + 0.1, 1)
    plot_w = W - LEFT - RIGHT
    height = TOP + ROW * len(rows) + BOTTOM
    x = lambda v: LEFT + plot_w * v / hi  # noqa: E731
    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" '
        f'font-family="sans-serif" font-size="13">',
        f'<rect width="{W}" height="{height}" fill="white"/>',
        f'<text x="{W / 2}" y="24" text-anchor="middle" font-size="15">{escape(title)}</text>',
        f'<rect x="{LEFT}" y="36" width="12" height="12" fill="{COLORS["cpu"]}"/>',
        f'<text x="{LEFT + 18}" y="47">CPU per unit, sidecar / nginx</text>',
        f'<rect x="{LEFT + 250}" y="36" width="12" height="12" fill="{COLORS["p99"]}"/>',
        f'<text x="{LEFT + 268}" y="47">p99 latency, sidecar / nginx</text>',
    ]
    tick = 0.0
    while tick <= hi + 1e-9:
        svg.append(f'<line x1="{x(tick):.1f}" y1="{TOP - 6}" x2="{x(tick):.1f}" '
                   f'y2="{height - BOTTOM}" stroke="#e2e8f0"/>')
        svg.append(f'<text x="{x(tick):.1f}" y="{height - BOTTOM + 18}" '
                   f'text-anchor="middle">{tick:.1f}</text>')
        tick = round(tick + 0.2, 1)
    for i, (label, cpu, p99) in enumerate(rows):
        y = TOP + i * ROW
        svg.append(f'<text x="{LEFT - 8}" y="{y + 20}" text-anchor="end">{escape(label)}</text>')
        for j, (key, v) in enumerate((("cpu", cpu), ("p99", p99))):
            yy = y + 4 + j * 17
            svg.append(f'<rect x="{LEFT}" y="{yy}" width="{x(v) - LEFT:.1f}" height="14" '
                       f'fill="{COLORS[key]}"/>')
            svg.append(f'<text x="{x(v) + 4:.1f}" y="{yy + 12}">{v:.2f}</text>')
    svg.append(f'<line x1="{x(1):.1f}" y1="{TOP - 6}" x2="{x(1):.1f}" y2="{height - BOTTOM}" '
               'stroke="black" stroke-dasharray="5,4"/>')
    svg.append(f'<text x="{x(1):.1f}" y="{height - 12}" text-anchor="middle">'
               'nginx = 1.0 (shorter is better)</text>')
    svg.append("</svg>")
    with open(out, "w") as f:
        f.write("\n".join(svg) + "\n")


if __name__ == "__main__":
    main()
