"""Figures: chips with class-coloured, labelled boxes.

Functions return matplotlib Figures built without pyplot (no global figure
state, no ``plt.show()``): Jupyter shows a returned figure once, scripts save it.
"""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
import torch
from torch import Tensor

__all__ = ["resolve_rgb_bands", "plot_chips", "draw_boxes", "plot_lr_find", "plot_losses", "plot_detections",
           "plot_ground_truth_and_predictions", "plot_scene_detections", "show_figure"]


def resolve_rgb_bands(rgb_bands: Sequence[int | str] | None, band_names: Sequence[str] | None, n_bands: int) -> list[int]:
    """0-based bands to draw as red, green, blue.

    Args:
        rgb_bands: 0-based indices or band names (any case); None picks the bands named
            red/green/blue, else the first three (``[0, 0, 0]`` for 1- or 2-band chips).
        band_names: the data's band names, if known.
        n_bands: how many bands the chips have.

    Returns:
        Three (or ``len(rgb_bands)``) 0-based band indices.

    Raises:
        ValueError: a name not in ``band_names`` or an index out of range.

    Examples:
        >>> resolve_rgb_bands(None, ["nir", "Red", "Green", "Blue"], 4)
        [1, 2, 3]
        >>> resolve_rgb_bands(["nir", 1, 2], ["nir", "red", "green", "blue"], 4)
        [0, 1, 2]
        >>> resolve_rgb_bands(None, None, 1)
        [0, 0, 0]
    """
    names = [n.lower() for n in band_names] if band_names else []
    if rgb_bands is None:
        if all(c in names for c in ("red", "green", "blue")):
            return [names.index(c) for c in ("red", "green", "blue")]
        return [0, 1, 2] if n_bands >= 3 else [0, 0, 0]
    resolved = []
    for band in rgb_bands:
        if isinstance(band, str):
            if band.lower() not in names:
                raise ValueError(f"rgb_bands: band {band!r} is not among bands={list(band_names or [])}; name "
                                 "the bands with bands=[...] or give 0-based indices.")
            band = names.index(band.lower())
        if not 0 <= int(band) < n_bands:
            raise ValueError(f"rgb_bands: band index {band} is out of range for {n_bands}-band chips.")
        resolved.append(int(band))
    return resolved


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

    Examples:
        >>> import torch
        >>> ax = Figure().subplots()
        >>> chip_boxes = torch.tensor([[2.0, 2.0, 6.0, 6.0], [0.0, 0.0, 0.0, 0.0]])  # a pool, then padding
        >>> draw_boxes(ax, chip_boxes, [1, 0], ["background", "pool"], [(0, 0, 0), (0.0, 0.66, 0.52)],
        ...            scores=[0.9, 0.0])
        >>> len(ax.patches), [text.get_text() for text in ax.texts]
        (1, ['pool 0.90'])
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

    Examples:
        >>> import torch
        >>> images = [torch.rand(3, 8, 8), torch.zeros(3, 8, 8)]  # the second chip is background
        >>> chip_boxes = [torch.tensor([[1.0, 1.0, 5.0, 5.0]]), torch.zeros(1, 4)]
        >>> labels = [torch.tensor([1]), torch.tensor([0])]
        >>> figure = plot_chips(images, chip_boxes, labels, classes=["background", "pool"],
        ...                     colors=[(0, 0, 0), (0.0, 0.66, 0.52)], rows=2)
        >>> type(figure).__name__, len(figure.axes), len(figure.axes[0].patches)
        ('Figure', 4, 1)
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


def plot_lr_find(lrs: Sequence[float], losses: Sequence[float], chosen: float) -> Figure:
    """Loss against learning rate (log x) from an LR range test, the chosen rate marked.

    Args:
        lrs: learning rate of each step.
        losses: smoothed training loss of each step.
        chosen: the suggested learning rate.

    Returns:
        The Figure.

    Examples:
        >>> import tempfile
        >>> lrs = [1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
        >>> figure = plot_lr_find(lrs, [2.0, 1.9, 1.2, 0.9, 3.0], chosen=1e-3)
        >>> figure.axes[0].get_xscale(), figure.axes[0].get_legend().get_texts()[0].get_text()
        ('log', 'chosen: 1.00e-03')
        >>> figure.savefig(f"{tempfile.mkdtemp()}/lr_find.png")  # a script saves it; Jupyter shows it
    """
    figure = Figure(figsize=(6, 4))
    ax = figure.subplots()
    ax.plot(lrs, losses)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    chosen_loss = float(np.interp(np.log(chosen), np.log(np.asarray(lrs)), np.asarray(losses)))
    ax.plot([chosen], [chosen_loss], "o", color="tab:red", markersize=8, label=f"chosen: {chosen:.2e}")
    ax.legend()
    figure.tight_layout()
    return figure


def plot_losses(
    train_iterations: Sequence[int],
    train_losses: Sequence[float],
    valid_iterations: Sequence[int],
    valid_losses: Sequence[float],
) -> Figure:
    """Training loss per batch and validation loss per epoch against batches seen.

    Args:
        train_iterations: batches processed at each training loss.
        train_losses: training loss of each batch.
        valid_iterations: batches processed at the end of each epoch.
        valid_losses: validation loss of each epoch; empty draws the training curve only.

    Returns:
        The Figure.

    Examples:
        >>> figure = plot_losses([0, 1, 2, 3], [1.5, 1.2, 1.0, 0.9], [1, 3], [1.3, 1.1])
        >>> [line.get_label() for line in figure.axes[0].get_lines()]
        ['train', 'valid']
    """
    figure = Figure(figsize=(6, 4))
    ax = figure.subplots()
    ax.plot(train_iterations, train_losses, label="train")
    if len(valid_losses):
        ax.plot(valid_iterations, valid_losses, "o-", label="valid")
    ax.set_xlabel("batches processed")
    ax.set_ylabel("loss")
    ax.legend()
    figure.tight_layout()
    return figure


def plot_detections(
    image: Tensor,
    image_boxes: Tensor,
    labels: Sequence[int],
    scores: Sequence[float],
    classes: Sequence[str],
    colors: Sequence[tuple[float, float, float]],
) -> Figure:
    """One image with its detections (name and score on each box).

    Args:
        image: ``Tensor[3, H, W]`` in [0, 1].
        image_boxes: ``Tensor[N, 4]`` xyxy in the image's pixels.
        labels: class index per box.
        scores: score per box.
        classes: class names by index, as in :func:`draw_boxes`.
        colors: RGB in [0, 1] by class index, as in :func:`draw_boxes`.

    Returns:
        The Figure, 8 inches wide, its height following the image's aspect ratio.

    Examples:
        >>> import torch
        >>> figure = plot_detections(torch.rand(3, 32, 64), torch.tensor([[4.0, 4.0, 20.0, 12.0]]), [1], [0.87],
        ...                          ["background", "pool"], [(0, 0, 0), (0.0, 0.66, 0.52)])
        >>> figure.get_size_inches().tolist(), [text.get_text() for text in figure.axes[0].texts]
        ([8.0, 4.0], ['pool 0.87'])
    """
    height, width = image.shape[1:]
    figure = Figure(figsize=(8, 8 * height / max(width, 1)))
    ax = figure.subplots()
    ax.imshow(np.clip(image.float().permute(1, 2, 0).cpu().numpy(), 0, 1))
    ax.axis("off")
    draw_boxes(ax, image_boxes, labels, classes, colors, scores=scores)
    figure.tight_layout()
    return figure


def plot_ground_truth_and_predictions(
    images: Sequence[Tensor],
    targets: Sequence[tuple[Tensor, Tensor]],
    predictions: Sequence[tuple[Tensor, Tensor, Tensor]],
    classes: Sequence[str],
    colors: Sequence[tuple[float, float, float]],
) -> Figure:
    """One row per chip: ground truth on the left, predictions with scores on the right.

    Args:
        images: ``Tensor[3, S, S]`` in [0, 1] per chip.
        targets: per chip ``(chip_boxes xyxy pixels, labels)``.
        predictions: per chip ``(chip_boxes, labels, scores)``.
        classes: class names by index, as in :func:`draw_boxes`.
        colors: RGB in [0, 1] by class index, as in :func:`draw_boxes`.

    Returns:
        The Figure: ``len(images)`` rows of two axes.

    Examples:
        >>> import torch
        >>> images = [torch.rand(3, 16, 16), torch.rand(3, 16, 16)]
        >>> targets = [(torch.tensor([[2.0, 2.0, 8.0, 8.0]]), torch.tensor([1])), (torch.zeros(0, 4), torch.zeros(0))]
        >>> predictions = [(torch.tensor([[3.0, 2.0, 8.0, 9.0]]), torch.tensor([1]), torch.tensor([0.8])),
        ...                (torch.zeros(0, 4), torch.zeros(0), torch.zeros(0))]  # nothing found in the second chip
        >>> figure = plot_ground_truth_and_predictions(images, targets, predictions, ["background", "pool"],
        ...                                            [(0, 0, 0), (0.0, 0.66, 0.52)])
        >>> len(figure.axes), [text.get_text() for text in figure.axes[1].texts]
        (4, ['pool 0.80'])
    """
    rows = max(len(images), 1)
    figure = Figure(figsize=(8, 4 * rows))
    axes = figure.subplots(rows, 2, squeeze=False)
    axes[0][0].set_title("ground truth")
    axes[0][1].set_title("predictions")
    for (left, right), image, (truth_boxes, truth_labels), (boxes, labels, scores) in zip(
        axes, images, targets, predictions
    ):
        shown = np.clip(image.float().permute(1, 2, 0).cpu().numpy(), 0, 1)
        for ax in (left, right):
            ax.imshow(shown)
            ax.axis("off")
        draw_boxes(left, truth_boxes, truth_labels, classes, colors)
        draw_boxes(right, boxes, labels, classes, colors, scores=scores)
    figure.tight_layout()
    return figure


def _display_stretch(pixels: np.ndarray) -> np.ndarray:
    """``[C, H, W]`` masked pixels → ``[H, W, C]`` floats in [0, 1]: 8-bit as is, else a 2–98 % stretch per band."""
    data = np.ma.masked_invalid(np.ma.asarray(pixels, dtype=np.float64))
    if np.asarray(pixels).dtype == np.uint8:
        shown = data / 255.0
    else:
        bands = []
        for band in data:
            valid = band.compressed()
            low, high = (np.percentile(valid, [2, 98]) if valid.size else (0.0, 1.0))
            bands.append((band - low) / max(high - low, 1e-12))
        shown = np.ma.stack(bands)
    image = np.clip(shown.filled(0.0), 0, 1).transpose(1, 2, 0)
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image


def plot_scene_detections(
    raster,
    detections,
    *,
    class_field: str = "Class",
    bands: Sequence[int] | None = None,
    colors: dict[str, tuple[float, float, float]] | None = None,
    max_size: int = 1600,
    linewidth: float = 0.8,
    title: str | None = None,
) -> Figure:
    """An overview of a whole raster with detected objects outlined, coloured by class.

    The raster is read downsampled (rasterio's ``out_shape``, averaging), so memory follows
    ``max_size``, not the scene. Detections in another CRS are reprojected to the raster's.

    Args:
        raster: path of the raster (anything rasterio opens).
        detections: GeoDataFrame of polygons with a class column (``detect_objects`` output).
        class_field: the class column.
        bands: 0-based bands shown as red, green, blue (one band: grey); default the first
            three (or the first one).
        colors: RGB in [0, 1] per class name; default matplotlib's tab10 in sorted name order.
        max_size: longest side of the overview in pixels.
        linewidth: outline width in points.
        title: figure title; default the raster's name and the number of detections.

    Returns:
        The Figure (map coordinates on the axes, a legend with counts per class).

    Examples:
        >>> import tempfile
        >>> import geopandas as gpd, numpy as np, rasterio
        >>> from rasterio.transform import from_origin
        >>> from shapely.geometry import box
        >>> path = f"{tempfile.mkdtemp()}/scene.tif"  # 64 x 64 px at 0.5 m in UTM 33N
        >>> with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8",
        ...                    crs="EPSG:32633", transform=from_origin(500000, 4650032, 0.5, 0.5)) as dst:
        ...     dst.write(np.random.default_rng(0).integers(0, 255, (3, 64, 64), dtype="uint8"))
        >>> detections = gpd.GeoDataFrame(
        ...     {"Class": ["pool", "tree", "tree"], "Confidence": [91.0, 80.0, 75.0]},
        ...     geometry=[box(500002, 4650020, 500006, 4650024), box(500010, 4650010, 500013, 4650013),
        ...               box(500020, 4650002, 500024, 4650006)], crs="EPSG:32633")
        >>> figure = plot_scene_detections(path, detections, max_size=32)
        >>> ax = figure.axes[0]
        >>> ax.get_title(), [text.get_text() for text in ax.get_legend().get_texts()]
        ('scene.tif: 3 detections', ['pool (1)', 'tree (2)'])
        >>> ax.get_images()[0].get_array().shape  # read downsampled to max_size
        (32, 32, 3)
    """
    from pathlib import Path

    import rasterio
    from matplotlib import colormaps
    from matplotlib.collections import PolyCollection
    from matplotlib.lines import Line2D
    from rasterio.enums import Resampling

    with rasterio.open(raster) as src:
        scale = min(1.0, max_size / max(src.width, src.height))
        shape = (max(1, round(src.height * scale)), max(1, round(src.width * scale)))
        chosen = list(bands) if bands is not None else list(range(min(3, src.count))) if src.count >= 3 else [0]
        pixels = src.read([b + 1 for b in chosen], out_shape=(len(chosen), *shape), masked=True,
                          resampling=Resampling.average)
        left, bottom, right, top = src.bounds
        crs = src.crs
    frame = detections
    if crs is not None and frame.crs is not None and frame.crs != crs:
        frame = frame.to_crs(crs)

    height, width = shape
    figure = Figure(figsize=(10, max(10 * height / width, 2) + 0.6))
    ax = figure.subplots()
    ax.imshow(_display_stretch(pixels), extent=(left, right, bottom, top), interpolation="nearest")
    names = sorted(str(c) for c in frame[class_field].unique()) if len(frame) else []
    palette = colormaps["tab10"]
    handles = []
    for i, name in enumerate(names):
        color = (colors or {}).get(name, palette(i % 10)[:3])
        rings = [np.asarray(part.exterior.coords)[:, :2]
                 for geom in frame.geometry[frame[class_field].astype(str) == name] if geom is not None
                 for part in getattr(geom, "geoms", [geom]) if hasattr(part, "exterior")]
        ax.add_collection(PolyCollection(rings, facecolors="none", edgecolors=[color], linewidths=linewidth))
        handles.append(Line2D([], [], color=color, linewidth=2, label=f"{name} ({len(rings)})"))
    if handles:
        ax.legend(handles=handles, loc="upper right", fontsize=8, framealpha=0.8)
    ax.set_xlim(left, right)
    ax.set_ylim(bottom, top)
    ax.set_aspect("equal")
    ax.ticklabel_format(useOffset=False, style="plain")
    ax.tick_params(labelsize=7)
    ax.set_title(title if title is not None else f"{Path(str(raster)).name}: {len(frame)} detections", fontsize=10)
    figure.tight_layout()
    return figure


def show_figure(figure: Figure) -> None:
    """Displays a figure in Jupyter; elsewhere the caller keeps it (no global pyplot state).

    Examples:
        >>> show_figure(Figure())  # outside Jupyter: nothing is shown, nothing fails
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank() > 0:
        return  # under a launcher rank 0 alone shows figures (geolearn.learn.distributed)
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return
    # Without matplotlib's inline backend (IPython 9 no longer loads it until pyplot is
    # imported) Jupyter shows a Figure as "<Figure size ...>" text: register a PNG formatter.
    png = shell.display_formatter.formatters["image/png"]
    try:
        png.lookup_by_type(Figure)
    except KeyError:
        png.for_type(Figure, _figure_png)
    display(figure)


def _figure_png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()
