"""`finetune`'s data: documents packed into fixed windows, batched by global step.

Like Transformers' `run_clm.py` ("group_texts"), the documents are
tokenized, joined with the end token and cut into windows of
`sequence_length + 1` tokens (inputs and next-token labels), so almost no
position is padding. Batch `step` of the run is a pure function of
`(seed, step)`: epoch `step // steps_per_epoch` visits the windows in a
permutation seeded by `(seed, epoch)`. That is what lets an interrupted run
resume at exactly the batch it stopped at.
"""

import math

import keras
import numpy as np


class PackedWindows:
    """Token windows `(count, sequence_length + 1)` and their real-token mask.

    Args:
        tokenizer: the model's tokenizer (`tokenize`, `end_token_id`).
        documents: list of strings; each is followed by the end token.
        sequence_length: model inputs per window.
    """

    def __init__(self, tokenizer, documents, sequence_length):
        ids = []
        for document in documents:
            ids.extend(tokenizer.tokenize(document))
            ids.append(tokenizer.end_token_id)
        self.tokens = len(ids)
        self.sequence_length = sequence_length
        count = max(1, math.ceil((len(ids) - 1) / sequence_length))
        width = sequence_length + 1
        self.ids = np.full((count, width), tokenizer.end_token_id, dtype="int32")
        self.mask = np.zeros((count, width), dtype=bool)
        for i in range(count):
            window = ids[i * sequence_length : i * sequence_length + width]
            self.ids[i, : len(window)] = window
            self.mask[i, : len(window)] = True
        # Real (input, label) pairs per window: both tokens must be real.
        self.targets = (self.mask[:, 1:] & self.mask[:, :-1]).sum(axis=1)

    def __len__(self):
        return len(self.ids)

    def split(self, fraction):
        """`(train, held_out)`: the last `fraction` of the windows held out."""
        held = max(1, int(round(len(self) * fraction)))
        if held >= len(self):
            return None, None
        return self.subset(slice(0, len(self) - held)), self.subset(slice(len(self) - held, None))

    def subset(self, index):
        other = object.__new__(PackedWindows)
        other.sequence_length = self.sequence_length
        other.ids, other.mask, other.targets = self.ids[index], self.mask[index], self.targets[index]
        other.tokens = int(other.mask.sum())
        return other

    def scoring_windows(self):
        """The windows as 1-D arrays of their real tokens (for perplexity)."""
        return [ids[mask] for ids, mask in zip(self.ids, self.mask) if mask.sum() >= 2]


class TrainingBatches(keras.utils.PyDataset):
    """Batches `start_step .. total_steps - 1` of a run over `windows`.

    Args:
        windows: a `PackedWindows`.
        batch_size: windows per batch (the last batch of an epoch may be smaller).
        seed: int, seeds each epoch's permutation.
        start_step: the first global step to yield (after a resume).
        total_steps: the step at which the run ends.
        row_multiple: under a distribution, the data-parallel replicas: a
            batch is padded to a multiple of it with rows that weigh nothing
            (`gpt2_lib.models.distributed_data`), and Keras' running loss
            average weighs each batch by its padded rows (`batch_rows`).
    """

    def __init__(self, windows, batch_size, seed, start_step, total_steps, row_multiple=1):
        super().__init__()
        self.windows = windows
        self.batch_size = batch_size
        self.seed = seed
        self.start_step = start_step
        self.total_steps = total_steps
        self.row_multiple = row_multiple
        self.steps_per_epoch = math.ceil(len(windows) / batch_size)
        self._permutations = {}

    def __len__(self):
        return self.total_steps - self.start_step

    def rows(self, step):
        """Window indices of global step `step`."""
        epoch, batch = divmod(step, self.steps_per_epoch)
        if epoch not in self._permutations:
            rng = np.random.default_rng([self.seed, epoch])
            self._permutations = {epoch: rng.permutation(len(self.windows))}
        return self._permutations[epoch][batch * self.batch_size : (batch + 1) * self.batch_size]

    def real_tokens(self, step):
        return int(self.windows.targets[self.rows(step)].sum())

    def batch_rows(self, step):
        """The rows Keras weighs batch `step` by (padded to `row_multiple`)."""
        return -(-len(self.rows(step)) // self.row_multiple) * self.row_multiple

    def __getitem__(self, index):
        rows = self.rows(self.start_step + index)
        ids, mask = self.windows.ids[rows], self.windows.mask[rows]
        x = {"token_ids": ids[:, :-1], "padding_mask": mask[:, :-1]}
        sample_weight = (mask[:, 1:] & mask[:, :-1]).astype("float32")
        return x, ids[:, 1:], sample_weight
