"""Feeding `fit`, `evaluate` and `predict` under a `keras.distribution`.

Under a distribution Keras splits every batch over the mesh's batch axis, so
a batch must have a multiple of that axis's device count `n` rows, and with
several processes each process feeds only the rows of its own devices
(Keras accepts nothing but a `tf.data.Dataset` there, which it shards
itself). `DistributedBatches` does both for the data a `Task` accepts
(NumPy arrays, token dicts, strings through the preprocessor, a batched
`tf.data.Dataset`):

* every process builds the same global batches (the same order, shuffled
  with a seed the processes agree on) and keeps the rows of its devices;
* a batch of `b` rows, `b` not a multiple of `n` (typically the last one),
  is padded to the next multiple with copies of its last row that weigh
  nothing: their sample weight is 0, and the real rows' weights are scaled
  by `padded / b`, so that the loss and its gradients equal the unpadded
  batch's (Keras divides a loss by the number of rows). `predict` drops the
  padding rows from its result.

Epoch averages of the loss and metrics weigh a padded batch by its padded
size, so the reported numbers of an epoch with a padded batch can differ
slightly from one device's; the weights do not.
"""

import contextlib
import math
import warnings

import keras
import numpy as np
from keras import tree

from gpt2_lib.utils import distribution as dist


def batch_shards(distribution):
    """How many shards the batch dimension is split into (the batch axis size)."""
    mesh = distribution.device_mesh
    name = distribution.batch_dim_name
    if name is None or name not in mesh.axis_names:
        return 1
    return int(mesh.shape[list(mesh.axis_names).index(name)])


def _rows(data):
    return len(tree.flatten(data)[0])


def _take(data, index):
    return tree.map_structure(lambda a: None if a is None else np.asarray(a)[index], data)


@contextlib.contextmanager
def feeding_process_rows(distribution):
    """Within: Keras takes each process's batches as they are.

    With several processes Keras refuses anything but a `tf.data.Dataset`
    (which it shards itself) while `auto_shard_dataset` is on; the batches
    of `DistributedBatches` are already this process's rows.
    """
    toggled = distribution.num_processes > 1 and distribution.auto_shard_dataset
    if toggled:
        distribution.auto_shard_dataset = False
    try:
        yield
    finally:
        if toggled:
            distribution.auto_shard_dataset = True


def shared_rng():
    """A NumPy generator seeded alike on every process (from NumPy's global seed)."""
    seed = np.random.randint(0, 2**31 - 1)
    if dist.process_count() > 1:
        from jax.experimental import multihost_utils

        seed = int(multihost_utils.broadcast_one_to_all(np.int32(seed)))
    return np.random.RandomState(seed)


class ArrayBatches(keras.utils.PyDataset):
    """Global batches `(x, y, sample_weight)` of in-memory arrays (or dicts of them)."""

    def __init__(self, x, y=None, sample_weight=None, batch_size=None, shuffle=False, rng=None):
        super().__init__()
        self.data = (x, y, sample_weight)
        self.size = _rows(x)
        self.batch_size = 32 if batch_size is None else int(batch_size)
        self.shuffle = shuffle
        self.rng = rng or np.random
        self.order = np.arange(self.size)
        if shuffle:
            self.rng.shuffle(self.order)

    @property
    def num_batches(self):
        return math.ceil(self.size / self.batch_size)

    def __getitem__(self, index):
        rows = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        if len(rows) == 0:
            raise IndexError(index)
        return _take(self.data, rows)

    def on_epoch_end(self):
        if self.shuffle:
            self.rng.shuffle(self.order)


def _unpack(batch):
    if isinstance(batch, tuple):
        return (tuple(batch) + (None, None))[:3]
    return batch, None, None


def _default_weight(x, y):
    """Ones shaped like the loss of `y` (per row, or per row and position)."""
    rows = _rows(x)
    if y is None:
        return np.ones((rows,), "float32")
    y = tree.flatten(y)[0]
    shape = np.shape(y)[: min(np.ndim(y), 2)]
    return np.ones(shape, "float32")


class DistributedBatches(keras.utils.PyDataset):
    """A source of global batches, padded to the mesh and cut to this process's rows.

    Args:
        source: a `PyDataset` (or anything with `num_batches`, `__getitem__`
            and `on_epoch_end`) yielding global batches: `x` or
            `(x, y, sample_weight)`.
        distribution: the active distribution.
        mode: `"fit"`/`"evaluate"` (padding rows weigh 0) or `"predict"`
            (batches are `x` only; padding is dropped by `trim`).
        local: bool; each process already feeds its own rows
            (`auto_shard_dataset=False`): pad only, cut nothing.
    """

    def __init__(self, source, distribution, mode, local=False):
        super().__init__()
        self.source = source
        self.distribution = distribution
        self.mode = mode
        self.local = local
        self.shards = batch_shards(distribution)
        if local:
            self.shards = max(1, self.shards // max(1, distribution.num_processes))
        self.real_rows = {}  # predict: batch index -> (real rows, padded rows)
        self._warned = False

    @property
    def num_batches(self):
        return self.source.num_batches

    def on_epoch_end(self):
        self.source.on_epoch_end()

    def _local_rows(self, rows):
        """Indices of the rows of a global batch of `rows` that this process feeds."""
        if self.local or dist.process_count() == 1:
            return None
        layout = self.distribution.get_data_layout((rows,))
        sharding = dist.layout_sharding(layout)
        ranges = sorted({
            (index[0].start or 0, rows if index[0].stop is None else index[0].stop)
            for index in sharding.addressable_devices_indices_map((rows,)).values()
        })
        return np.concatenate([np.arange(start, stop) for start, stop in ranges])

    def __getitem__(self, index):
        batch = self.source[index]
        x, y, sample_weight = (batch, None, None) if self.mode == "predict" else _unpack(batch)
        if self.mode == "predict" and isinstance(x, tuple):
            x = x[0]
        rows = _rows(x)
        padded = -(-rows // self.shards) * self.shards
        if padded != rows:
            self._warn_batch_size(rows)
            fill = np.concatenate([np.arange(rows), np.full(padded - rows, rows - 1)])
            if self.mode != "predict":
                if sample_weight is None:
                    sample_weight = _default_weight(x, y)
                weight = np.asarray(sample_weight, "float32")[fill] * np.float32(padded / rows)
                weight[rows:] = 0
                sample_weight = weight
            x, y = _take(x, fill), _take(y, fill)
        if self.mode == "predict":
            self.real_rows[index] = (rows, padded)
        local = self._local_rows(padded)
        if local is not None:
            x, y, sample_weight = _take(x, local), _take(y, local), _take(sample_weight, local)
        if self.mode == "predict":
            return (x,)
        return keras.utils.pack_x_y_sample_weight(x, y, sample_weight)

    def _warn_batch_size(self, rows):
        batch_size = getattr(self.source, "batch_size", None)
        if self._warned or not batch_size or batch_size % self.shards == 0:
            return
        self._warned = True
        warnings.warn(
            f"batch_size={batch_size} is not a multiple of the {self.shards} devices "
            "the batch is split over: every batch is padded with rows that carry no "
            f"weight. Use a batch_size that is a multiple of {self.shards} to not waste "
            "compute.",
            stacklevel=2,
        )

    def trim(self, outputs):
        """`predict` outputs without the padding rows."""
        keep, start = [], 0
        for index in sorted(self.real_rows):
            rows, padded = self.real_rows[index]
            keep.append(np.arange(start, start + rows))
            start += padded
        if not keep or start != _rows(outputs):
            return outputs
        keep = np.concatenate(keep)
        return tree.map_structure(lambda a: np.asarray(a)[keep], outputs)
