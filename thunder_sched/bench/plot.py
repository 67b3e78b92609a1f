"""Throughput against the number of parallel programs (matplotlib, written to a PNG)."""

from __future__ import annotations

from pathlib import Path


def plot_sweep(points: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for mode, marker in (("direct", "o"), ("thunder", "s")):
        xs = [p["programs"] for p in points if p["mode"] == mode]
        ys = [p["steps_per_min"] for p in points if p["mode"] == mode]
        label = "vLLM direct" if mode == "direct" else "through thunder-sched"
        ax.plot(xs, ys, marker=marker, label=label)
    for p in points:  # how far the programs' total final context exceeds the KV pool
        if p["mode"] == "direct" and p.get("oversubscription"):
            ax.annotate(
                f"{p['oversubscription']:.1f}x pool",
                (p["programs"], p["steps_per_min"]),
                textcoords="offset points",
                xytext=(0, -14),
                ha="center",
                fontsize=7,
            )
    ax.set_xlabel("parallel programs")
    ax.set_ylabel("steps per minute")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.set_ylim(bottom=0)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
