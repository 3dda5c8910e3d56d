"""Loss-curve PNG from a training ``log.jsonl``."""

from __future__ import annotations

import json
import os
from pathlib import Path


def plot_log(log_path: str | os.PathLike, png_path: str | os.PathLike) -> None:
    """Plot every numeric column of ``log.jsonl`` except step/lr/seconds against the step (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log_path = Path(log_path)
    if not log_path.is_file():
        return
    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    if not rows:
        return
    keys = [k for k in rows[-1] if k not in ("step", "lr", "seconds") and isinstance(rows[-1][k], (int, float))]
    fig, ax = plt.subplots(figsize=(6, 4))
    for k in keys:
        pts = [(r["step"], r[k]) for r in rows if k in r and r[k] > 0]
        if pts:
            ax.plot(*zip(*pts), label=k)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = Path(png_path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, png_path)
