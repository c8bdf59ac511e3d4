"""The one randomness policy of the data: every augmented item draws from its own generator, seeded by
`(seed, epoch, index)`.

An item's crops, flips and jitter are then a pure function of those three numbers: the same in every `DataLoader`
worker and every process (a generator shared by a dataset would be copied into each worker and repeat its draws),
the same after a resume, and independent of the order items are read in. `set_epoch` (which accelerate's data
loaders call on a dataset each epoch, so `Trainer` does too) gives each epoch new draws.
"""

from __future__ import annotations

import copy

import numpy as np


def item_generator(seed: int, index: int, epoch: int = 0) -> np.random.Generator:
    """The generator of item `index` in epoch `epoch` of a dataset seeded with `seed`."""
    if index < 0:
        raise ValueError(f"index = {index} is invalid: an item's generator needs its non-negative position.")
    return np.random.default_rng([seed, epoch, index])


class SeededAugmentation:
    """Mixin of the augmented datasets: `self.seed`, `self.epoch` (0 until `set_epoch`) and `item_rng(index)`."""

    seed: int = 0
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def with_seed(self, seed: int):
        """A shallow copy (the same items) drawing from `seed`: each training seeds its own augmentation."""
        reseeded = copy.copy(self)
        reseeded.seed = seed
        return reseeded

    def item_rng(self, index: int) -> np.random.Generator:
        return item_generator(self.seed, index, self.epoch)


__all__ = ["SeededAugmentation", "item_generator"]
