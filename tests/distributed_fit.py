"""A user's training script, as test_distributed.py launches it under ``torchrun``.

``python -m torch.distributed.run --standalone --nproc_per_node 2 distributed_fit.py CHIPS OUT [--mismatch | --missing]``

Each rank writes ``OUT/rank<r>.json``: the rate its ``lr_find`` returned, the chip indices it trained on per epoch, digests of the generators its first epoch's augmentations draw from, a digest of its
weights after ``fit`` (and after one more epoch without a checkpoint, and after a fit cut by a
time budget, with its epoch count), the epoch table's rows, the folder ``save`` returned, and the
classes of the network's BatchNorm layers after a fit that raised an error. With
``--mismatch`` rank 1 reads the chips with another split seed, as a node with other data would,
and each rank writes the error it raised to ``OUT/rank<r>.error``; with ``--missing`` rank 1 is
given a data folder that does not exist.
"""

import hashlib
import json
import os
import random
import sys
from pathlib import Path

import torch
from fastai.callback.core import Callback

from geolearn import RetinaNet, prepare_data
from geolearn.errors import DistributedSetupError
from geolearn.learn.callbacks import ShardedDL


class RecordShards(Callback):
    """Keeps the dataset indices of the training chips this rank was handed each epoch."""

    order = 6  # after DistributedTraining (5) has handed the loader over

    def __init__(self):
        self.epochs = []
        self.draws = None

    def before_train(self):
        """What the first epoch's augmentations will draw from: torch's, Python's and the crops' generators."""
        if self.draws is None and isinstance(self.learn.dl, ShardedDL):
            states = [torch.get_rng_state().numpy().tobytes(), repr(random.getstate()).encode(),
                      self.learn.dl.dataset._generator.get_state().numpy().tobytes()]
            self.draws = [hashlib.sha256(state).hexdigest() for state in states]

    def after_train(self):
        if isinstance(self.learn.dl, ShardedDL):  # fit's epochs, not lr_find's batches
            self.epochs.append([index for step in self.learn.dl._steps for index in step])


class FailAfterOneBatch(Callback):
    """Raises after the first training step, on every rank alike: an error in the middle of a fit."""

    def after_step(self):
        raise RuntimeError("stopped by the test")


def _digest(model) -> str:
    """A digest of the network's parameters and buffers (BatchNorm statistics included)."""
    state = model.model.state_dict().values()
    return hashlib.sha256(b"".join(t.detach().cpu().numpy().tobytes() for t in state)).hexdigest()


def main(chips: str, out: str, mismatch: bool, missing: bool) -> None:
    rank = int(os.environ["RANK"])
    Path(out).mkdir(parents=True, exist_ok=True)
    torch.manual_seed(rank)  # different initial weights: DDP must make them rank 0's
    seed = 7 if (mismatch and rank == 1) else 42
    if missing and rank == 1:
        chips = chips + "-not-on-this-node"
    data = prepare_data(chips, chip_size=64, batch_size=4, val_split_pct=0.34, seed=seed)
    model = RetinaNet(data, backbone="resnet18", pretrained=False, mixed_precision=False)
    torch.manual_seed(0)  # then every generator alike, as a script seeding for reproducibility leaves them:
    random.seed(0)  # each rank must still draw its own augmentations
    shards = RecordShards()
    model.learn.add_cb(shards)
    try:
        found = model.lr_find(allow_plot=False, num_it=20)  # each rank tests; rank 0's choice holds
        model.fit(2, lr=1e-3)
    except DistributedSetupError as err:  # the test checks that every rank raised it
        (Path(out) / f"rank{rank}.error").write_text(str(err))
        raise
    weights = _digest(model)
    folder = model.save(str(Path(out) / "model"))
    rows = [[float(v) for v in row] for row in model.learn.recorder.values]
    model.fit(1, lr=1e-4, checkpoint=False)  # no checkpoint to reload: the ranks' own weights at the end
    without_checkpoint = _digest(model)
    model.fit(50, lr=1e-4, checkpoint=False, time_budget=4)  # each rank's clock: they must stop alike
    record = {"shards": shards.epochs, "draws": shards.draws, "weights": weights, "rows": rows, "folder": str(folder),
              "train_chips": len(data.train_ds), "weights_without_checkpoint": without_checkpoint, "lr_find": found,
              "timed_epochs": len(model.learn.recorder.values), "weights_after_time_budget": _digest(model)}
    model.learn.add_cb(FailAfterOneBatch())
    try:
        model.fit(1, lr=1e-4, checkpoint=False)
    except RuntimeError as err:
        assert "stopped by the test" in str(err), err
    else:
        raise AssertionError("the fit did not stop")
    norms = sorted({type(m).__name__ for m in model.model.modules() if isinstance(m, torch.nn.BatchNorm2d)})
    record["batch_norms_after_error"] = norms
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], "--mismatch" in sys.argv, "--missing" in sys.argv)
