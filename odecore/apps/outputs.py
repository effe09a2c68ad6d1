"""The files a run writes besides its checkpoint: JSON, Markdown and PNG figures (matplotlib
on its display-free Agg backend; every line plot with markers)."""

import json
import os


def write_json(path: str, content) -> None:
    with open(path, "w") as handle:
        json.dump(content, handle, indent=2)


def write_text(path: str, text: str) -> None:
    """`text` and a final newline."""
    with open(path, "w") as handle:
        handle.write(text + "\n")


def pyplot():
    """matplotlib.pyplot on the Agg backend (runs have no display); imported on first use,
    matplotlib being an optional dependency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_line(ax, x, y, fmt: str = "-", **kwargs) -> list:
    """`ax.plot` with markers: a line of one point (a one-epoch run) is otherwise invisible.
    Long lines get about 20 markers, not one per point."""
    kwargs.setdefault("marker", "o")
    kwargs.setdefault("markersize", 4)
    kwargs.setdefault("markevery", max(1, len(x) // 20))
    return ax.plot(x, y, fmt, **kwargs)


def save_figure(fig, path: str) -> str:
    """Lays out, writes (folders created) and closes `fig`; returns `path`."""
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=100)
    pyplot().close(fig)
    return path
