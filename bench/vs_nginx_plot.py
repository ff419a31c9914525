#!/usr/bin/env python3
"""Chart a bench/vs_nginx.sh summary as an SVG (python3 stdlib only).

Usage: python3 bench/vs_nginx_plot.py summary.tsv out.svg "title"

summary.tsv (written by vs_nginx.sh): one line per measurement and proxy,
    label <TAB> proxy <TAB> cpu_ratio <TAB> p99_ratio
where cpu_ratio is that proxy's CPU per unit (handshake, request, MiB) divided by nginx's in the
same run, and p99_ratio its p99 latency divided by nginx's. Lines with three fields (label,
cpu_ratio, p99_ratio: older summaries) are the sidecar's. Two panels, CPU per unit on the left and
p99 latency on the right; in each, one group of bars per measurement with one bar per proxy. The
dashed line at 1.0 is nginx. Shorter is better for both.
"""
import sys
from xml.sax.saxutils import escape

W, LEFT, MID, RIGHT, TOP, BAR, GAP, PAD, BOTTOM = 1000, 230, 60, 50, 96, 14, 3, 14, 50
COLORS = {"sidecar": "#2b6cb0", "haproxy": "#2f855a", "stunnel": "#805ad5"}
SPARE = ["#dd6b20", "#c53030", "#718096"]
PANELS = (("cpu", "CPU per unit / nginx's"), ("p99", "p99 latency / nginx's"))


def color(proxy, order):
    if proxy in COLORS:
        return COLORS[proxy]
    others = [p for p in order if p not in COLORS]
    return SPARE[others.index(proxy) % len(SPARE)]


def scale_max(values):
    hi = max([1.2] + values)
    return round(hi + 0.1, 1)


def tick_step(hi):
    for step in (0.2, 0.5, 1.0, 2.0, 5.0):
        if hi / step <= 8:
            return step
    return 10.0


def main():
    src, out, title = sys.argv[1], sys.argv[2], sys.argv[3]
    labels, proxies, data = [], [], {}
    with open(src) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) == 3:
                parts = [parts[0], "sidecar", parts[1], parts[2]]
            if len(parts) != 4:
                continue
            label, proxy, cpu, p99 = parts[0], parts[1], float(parts[2]), float(parts[3])
            if label not in labels:
                labels.append(label)
            if proxy not in proxies:
                proxies.append(proxy)
            data[(label, proxy)] = {"cpu": cpu, "p99": p99}
    panel_w = (W - LEFT - MID - RIGHT) / 2
    group_h = len(proxies) * (BAR + GAP) - GAP + PAD
    height = TOP + group_h * len(labels) + BOTTOM
    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height:.0f}" '
        f'font-family="sans-serif" font-size="13">',
        f'<rect width="{W}" height="{height:.0f}" fill="white"/>',
        f'<text x="{W / 2}" y="24" text-anchor="middle" font-size="15">{escape(title)}</text>',
    ]
    lx = LEFT
    for proxy in proxies:
        svg.append(f'<rect x="{lx}" y="38" width="12" height="12" fill="{color(proxy, proxies)}"/>')
        svg.append(f'<text x="{lx + 18}" y="49">{escape(proxy)}</text>')
        lx += 40 + 8 * len(proxy)
    svg.append(f'<text x="{lx + 10}" y="49" fill="#4a5568">(nginx = 1.0)</text>')
    for pi, (key, ptitle) in enumerate(PANELS):
        x0 = LEFT + pi * (panel_w + MID)
        hi = scale_max([v[key] for v in data.values()])
        x = lambda v, x0=x0, hi=hi: x0 + panel_w * v / hi  # noqa: E731
        svg.append(f'<text x="{x0 + panel_w / 2:.1f}" y="{TOP - 18}" text-anchor="middle" '
                   f'font-weight="bold">{escape(ptitle)}</text>')
        step = tick_step(hi)
        tick = 0.0
        while tick <= hi + 1e-9:
            svg.append(f'<line x1="{x(tick):.1f}" y1="{TOP - 6}" x2="{x(tick):.1f}" '
                       f'y2="{height - BOTTOM}" stroke="#e2e8f0"/>')
            svg.append(f'<text x="{x(tick):.1f}" y="{height - BOTTOM + 18}" '
                       f'text-anchor="middle">{tick:g}</text>')
            tick = round(tick + step, 1)
        for i, label in enumerate(labels):
            y = TOP + i * group_h
            for j, proxy in enumerate(proxies):
                v = data.get((label, proxy))
                if v is None:
                    continue
                yy = y + j * (BAR + GAP)
                svg.append(f'<rect x="{x0}" y="{yy}" width="{x(v[key]) - x0:.1f}" height="{BAR}" '
                           f'fill="{color(proxy, proxies)}"/>')
                svg.append(f'<text x="{x(v[key]) + 4:.1f}" y="{yy + BAR - 2}" '
                           f'font-size="12">{v[key]:.2f}</text>')
        svg.append(f'<line x1="{x(1):.1f}" y1="{TOP - 6}" x2="{x(1):.1f}" y2="{height - BOTTOM}" '
                   'stroke="black" stroke-dasharray="5,4"/>')
    for i, label in enumerate(labels):
        y = TOP + i * group_h + (group_h - PAD) / 2 + 5
        svg.append(f'<text x="{LEFT - 10}" y="{y:.1f}" text-anchor="end">{escape(label)}</text>')
    svg.append(f'<text x="{W / 2}" y="{height - 10:.0f}" text-anchor="middle">'
               'ratio to nginx in the same run: nginx = 1.0 (dashed), shorter is better</text>')
    svg.append("</svg>")
    with open(out, "w") as f:
        f.write("\n".join(svg) + "\n")


if __name__ == "__main__":
    main()
