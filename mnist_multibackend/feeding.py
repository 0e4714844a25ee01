"""How training batches reach the model: a fresh, repeatable order every epoch, augmented when the recipe says.

Import this module only after ``runtime.start()`` has chosen the backend.
"""

from __future__ import annotations

import keras
import numpy as np

from .recipes import random_affine, steps_per_epoch


class EpochBatches(keras.utils.PyDataset):
    """Training batches in a fresh order each epoch, drawn from ``seed`` and the epoch number, and
    randomly distorted when the recipe augments. Every single-device run is fed by it.

    Why not Keras's own shuffling of arrays: on TensorFlow, with a seed, it
    repeats one order every epoch, and these batches with 32 steps per execution
    trained 1.41x faster than it on this 2-core CPU (docs/performance.md).
    The order depends on the epoch number alone (not on how many epochs this
    object has served), so a resumed run draws what the interrupted one would
    have; ``fit`` tells the epoch through the ``follow_epochs`` callback.
    """

    def __init__(self, x, y, batch_size: int, seed: int | None, augmentation=None):
        super().__init__()
        self.x, self.y, self.batch_size, self.augmentation = x, y, batch_size, augmentation
        self.seed = seed if seed is not None else int(np.random.SeedSequence().entropy % 2**63)
        self.epoch = 0
        self._order = None

    def __len__(self):
        return steps_per_epoch(len(self.x), self.batch_size)

    def _epoch_order(self):
        if self._order is None or self._order[0] != self.epoch:
            self._order = (self.epoch, np.random.default_rng([self.seed, self.epoch]).permutation(len(self.x)))
        return self._order[1]

    def __getitem__(self, index):
        chosen = np.sort(self._epoch_order()[index * self.batch_size:(index + 1) * self.batch_size])
        images = self.x[chosen]
        if self.augmentation is not None:  # one generator per batch: any fetching order draws the same images
            images = random_affine(images, np.random.default_rng([self.seed, self.epoch, index]), self.augmentation)
        return images, self.y[chosen]

    def follow_epochs(self) -> keras.callbacks.Callback:
        batches = self

        class FollowEpochs(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                batches.epoch = epoch

        return FollowEpochs()
