#!/usr/bin/env python3
"""Draws marketbox.png: the dashboard's panels from the range queries that the ignored test
`dashboard_data` in tests/observability.rs wrote (same expressions as marketbox.json, run
against the test's Prometheus). Grafana is not needed; matplotlib is.

    MARKETBOX_DASHBOARD_OUT=dash.json cargo test --test observability dashboard_data -- --ignored
    python3 config/grafana/plot.py dash.json config/grafana/marketbox.png
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def legend(fmt, metric):
    out = fmt or ""
    for k, v in metric.items():
        out = out.replace("{{" + k + "}}", v)
    return out


def main(src, dst):
    panels = json.load(open(src))
    cols = 2
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(16, 3.2 * rows), squeeze=False)
    t0 = None
    for p in panels:
        for t in p["targets"]:
            for s in t["result"]:
                first = float(s["values"][0][0])
                t0 = first if t0 is None else min(t0, first)
    for ax, p in zip(axes.flat, panels):
        for t in p["targets"]:
            for s in t["result"]:
                xs = [float(v[0]) - t0 for v in s["values"]]
                ys = [float(v[1]) for v in s["values"]]
                ax.plot(xs, ys, linewidth=1, label=legend(t["legend"], s["metric"]))
        unit = p.get("unit") or ""
        ax.set_title(p["title"] + (f"  [{unit}]" if unit not in ("", "short") else ""), fontsize=10)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=6, loc="upper left", ncol=2)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("seconds", fontsize=8)
    fig.suptitle(
        "marketbox dashboard (config/grafana/marketbox.json) from a 3-minute simulator run "
        "pushed to Prometheus: gaps at 30 s, ETH-USDT spot silent 50-65 s, "
        "churn 80-100 s, upstream stopped 120-140 s",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(dst, dpi=72)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
