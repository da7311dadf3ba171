"""The learning rate ``lr_find`` chooses: fastai's valley, or a fraction of where the loss takes off."""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["suggest_lr", "TAKEOFF_DIVISOR"]

# How far below the take-off of the loss suggest_lr stays (see its docstring).
TAKEOFF_DIVISOR = 15


def suggest_lr(lrs: Sequence[float], losses: Sequence[float], valley_lr: float) -> float:
    """The learning rate to train with, from a whole LR range test.

    From random weights the loss of a detector stays flat for most of the range test
    and then shoots up; fastai's ``valley`` then lands anywhere on the flat stretch
    (1e-5 to 1e-4 on the sample scene, far too slow to learn in a few epochs). The
    classic rule of thumb for such curves is a tenth of the rate where the loss takes
    off (first exceeds 1.5x its running minimum). We take a fifteenth: on the sample
    scene the take-off of a from-scratch RetinaNet moved between 1.3e-2 and 1.9e-2 from
    run to run, and one-cycle training at 1.9e-3 and 2.6e-3 blew up where 1.3e-3 did not.
    On a curve with a real valley (pretrained backbones) the valley is usually higher
    and wins.

    Args:
        lrs: every rate tried, in order (fastai trims the take-off from what it gives its
            own suggestion functions, so pass the recorder's full lists).
        losses: the smoothed loss at each rate.
        valley_lr: fastai's valley suggestion.

    Returns:
        The learning rate: ``valley_lr`` or a fifteenth of the take-off rate, whichever is higher.

    Examples:
        A curve flat until 1e-2, where it doubles: a fifteenth of 1e-2 beats a valley at 1e-5.

        >>> lrs = [1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
        >>> round(suggest_lr(lrs, [4.0, 4.0, 3.9, 8.0, 50.0], valley_lr=1e-5), 6)
        0.000667
        >>> suggest_lr(lrs, [4.0, 3.0, 2.0, 1.9, 1.8], valley_lr=1e-3)  # no take-off: the valley
        0.001
    """
    losses = torch.as_tensor([float(v) for v in losses], dtype=torch.float64)
    running_min = torch.cummin(losses, dim=0).values
    above = torch.nonzero(losses > 1.5 * running_min).flatten()
    if len(above) == 0:
        return valley_lr
    return max(valley_lr, float(lrs[int(above[0])]) / TAKEOFF_DIVISOR)
