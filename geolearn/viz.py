"""Figures: chips with class-coloured, labelled boxes.

Functions return matplotlib Figures built without pyplot (no global figure
state, no ``plt.show()``): Jupyter shows a returned figure once, scripts save it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor

__all__ = ["plot_chips", "draw_boxes"]


def draw_boxes(
    ax,
    chip_boxes: Tensor,
    labels: Sequence[int],
    classes: Sequence[str],
    colors: Sequence[tuple[float, float, float]],
    scores: Sequence[float] | None = None,
    alpha: float = 1.0,
) -> None:
    """Draws xyxy pixel boxes on an axes, skipping label 0 (background / padding).

    Args:
        ax: a matplotlib Axes showing the chip (pixel coordinates).
        chip_boxes: ``Tensor[N, 4]`` xyxy in the chip's pixels.
        labels: class index per box (index into ``classes``).
        classes: class names, ``classes[0] == 'background'``.
        colors: RGB in [0, 1] per entry of ``classes``.
        scores: optional confidence per box, shown after the name.
        alpha: line opacity.
    """
    for i, ((xmin, ymin, xmax, ymax), label) in enumerate(zip(chip_boxes.tolist(), [int(v) for v in labels])):
        if label == 0:
            continue
        color = colors[label]
        ax.add_patch(
            Rectangle((xmin, ymin), xmax - xmin, ymax - ymin, fill=False, edgecolor=color, linewidth=1.5, alpha=alpha)
        )
        text = classes[label] if scores is None else f"{classes[label]} {float(scores[i]):.2f}"
        ax.text(
            xmin, ymin, text, fontsize=7, color="white", va="bottom",
            bbox=dict(facecolor=color, edgecolor="none", alpha=0.8 * alpha, pad=1),
        )


def plot_chips(
    images: Sequence[Tensor],
    chip_boxes: Sequence[Tensor],
    labels: Sequence[Tensor],
    *,
    classes: Sequence[str],
    colors: Sequence[tuple[float, float, float]],
    rows: int,
    alpha: float = 1.0,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """A ``rows`` × ``rows`` grid of chips with their boxes.

    Args:
        images: ``Tensor[3, H, W]`` per chip, values in [0, 1] (clipped for display).
        chip_boxes: ``Tensor[N, 4]`` xyxy pixels per chip.
        labels: ``Tensor[N]`` class indices per chip (0 = padding, not drawn).
        classes: class names, ``classes[0] == 'background'``.
        colors: RGB in [0, 1] per entry of ``classes``.
        rows: chips per side.
        alpha: box line opacity.
        figsize: inches; default 3 per chip.

    Returns:
        The Figure.
    """
    figure = Figure(figsize=figsize or (3 * rows, 3 * rows))
    axes = figure.subplots(rows, rows, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, boxes, lbls in zip(axes.flat, images, chip_boxes, labels):
        ax.imshow(np.clip(image.float().permute(1, 2, 0).cpu().numpy(), 0, 1))
        draw_boxes(ax, boxes, lbls, classes, colors, alpha=alpha)
    figure.tight_layout()
    return figure
