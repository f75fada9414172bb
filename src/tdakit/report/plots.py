"""Images for the HTML report: PNG bytes rendered with matplotlib's Agg canvas.

Nothing here touches ``matplotlib.pyplot`` or the global backend: figures are plain
``matplotlib.figure.Figure`` objects drawn on a ``FigureCanvasAgg``, so rendering works
headless, in threads and in processes that use another backend interactively.
"""

from __future__ import annotations

import base64
import io
import math
import sys
from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tdakit.errors import require

__all__ = [
    "data_uri",
    "example_png",
    "feature_bar_figure",
    "figure_png",
    "heatmap_figure",
    "line_figure",
    "new_figure",
]


def new_figure(width: float, height: float) -> Figure:
    """A figure (inches) on an Agg canvas, independent of pyplot."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """PNG bytes of ``fig``; a pyplot-managed figure is closed afterwards to free it."""
    require(isinstance(fig, Figure), f"Expected a matplotlib Figure, got {type(fig).__name__}.")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close(fig)
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    """``data:`` URI embedding PNG bytes (no external file or URL)."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _pixels_png(array: np.ndarray, cmap: str | None, vmin: float, vmax: float) -> bytes:
    from matplotlib.image import imsave

    buf = io.BytesIO()
    imsave(buf, array, cmap=cmap, vmin=vmin, vmax=vmax, format="png")
    return buf.getvalue()


def example_png(
    x: torch.Tensor,
    image_shape: Sequence[int] | None,
    value_range: tuple[float, float],
) -> bytes:
    """One example as a pixel-exact PNG (the browser scales it up).

    Images ``(C, H, W)`` with 1 channel are drawn in inverted grey (ink dark on white), with
    3 channels in colour; anything else (tabular rows) as a one-pixel-high strip of feature
    values in a diverging colour map. ``value_range`` fixes the colour scale across examples.
    """
    lo, hi = value_range
    hi = hi if hi > lo else lo + 1.0
    flat = x.detach().to("cpu", torch.float64).reshape(-1).numpy()
    if image_shape is not None and len(image_shape) == 3 and image_shape[0] in (1, 3):
        c, h, w = image_shape
        require(
            flat.size == c * h * w,
            f"An example has {flat.size} values but image_shape={tuple(image_shape)} "
            f"needs {c * h * w}; pass the image_shape the data was loaded with.",
        )
        img = flat.reshape(c, h, w)
        if c == 1:
            return _pixels_png(img[0], "gray_r", lo, hi)
        rgb = np.clip((img.transpose(1, 2, 0) - lo) / (hi - lo), 0.0, 1.0)
        return _pixels_png(rgb, None, 0.0, 1.0)
    bound = max(abs(lo), abs(hi))
    return _pixels_png(flat[None, :], "coolwarm", -bound, bound)


def feature_bar_figure(x: torch.Tensor, names: Sequence[str] | None = None) -> Figure:
    """Bar plot of one tabular example's feature values."""
    values = x.detach().to("cpu", torch.float64).reshape(-1).numpy()
    fig = new_figure(min(6.0, 1.2 + 0.18 * len(values)), 1.6)
    ax = fig.add_subplot()
    ax.bar(np.arange(len(values)), values, color=np.where(values >= 0, "#b2182b", "#2166ac"))
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_xticks(np.arange(len(values)))
    ax.set_xticklabels(names if names is not None else [str(i) for i in range(len(values))])
    ax.tick_params(labelsize=6)
    ax.set_ylabel("value", fontsize=7)
    return fig


def heatmap_figure(
    matrix: torch.Tensor,
    labels: Sequence[str],
    title: str = "",
    vmin: float = -1.0,
    vmax: float = 1.0,
) -> Figure:
    """Annotated square heatmap (e.g. method agreement); NaN cells are left blank."""
    m = matrix.detach().to("cpu", torch.float64).numpy()
    n = len(labels)
    require(m.shape == (n, n), f"heatmap needs a {n}x{n} matrix, got {m.shape}.")
    side = 1.6 + 0.62 * n
    fig = new_figure(side + 1.0, side)
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(m), cmap="RdBu_r", vmin=vmin, vmax=vmax)
    ax.set_xticks(range(n))
    ax.set_xticklabels(labels, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(n))
    ax.set_yticklabels(labels, fontsize=8)
    for i in range(n):
        for j in range(n):
            if math.isfinite(m[i, j]):
                dark = abs(m[i, j]) > 0.6 * max(abs(vmin), abs(vmax))
                ax.text(
                    j,
                    i,
                    f"{m[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if dark else "black",
                )
    fig.colorbar(im, ax=ax, shrink=0.8)
    if title:
        ax.set_title(title, fontsize=9)
    return fig


def line_figure(
    values: Sequence[float], xlabel: str, ylabel: str, title: str = "", log: bool = False
) -> Figure:
    """A small line plot, e.g. the training loss per epoch."""
    fig = new_figure(4.2, 2.4)
    ax = fig.add_subplot()
    ax.plot(np.arange(1, len(values) + 1), list(values), marker="o", markersize=3)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    if log:
        ax.set_yscale("log")
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    return fig
