"""Callbacks for `gpt2-lib finetune`: throughput in the progress bar, resumable checkpoints."""

import os
import shutil
import time

import keras
import numpy as np


class TokensPerSecond(keras.callbacks.Callback):
    """Adds `tokens_per_second` to the logs the progress bar prints.

    Args:
        tokens_per_batch: int, tokens in one training batch.
    """

    def __init__(self, tokens_per_batch):
        super().__init__()
        self.tokens_per_batch = tokens_per_batch

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self._batches += 1
        elapsed = time.perf_counter() - self._start
        if logs is not None and elapsed > 0:
            logs["tokens_per_second"] = self._batches * self.tokens_per_batch / elapsed


class TrainingCheckpoint(keras.callbacks.Callback):
    """Saves model and optimizer state after every epoch, atomically.

    The state goes to `directory/state.npz` (NumPy arrays only, never
    pickle) through a temporary file and a rename, so an interruption at any
    moment leaves either the previous checkpoint or the new one.

    Args:
        directory: where the checkpoint lives (`OUTPUT.checkpoint`).
        model: the model being trained.
    """

    def __init__(self, directory, model):
        super().__init__()
        self.directory = directory
        self._model = model

    @property
    def path(self):
        return os.path.join(self.directory, "state.npz")

    def exists(self):
        return os.path.exists(self.path)

    def on_epoch_end(self, epoch, logs=None):
        os.makedirs(self.directory, exist_ok=True)
        arrays = {f"model_{i}": w for i, w in enumerate(self._model.get_weights())}
        for i, variable in enumerate(self._model.optimizer.variables):
            arrays[f"optimizer_{i}"] = keras.ops.convert_to_numpy(variable)
        arrays["epoch"] = np.asarray(epoch + 1)
        tmp = self.path + ".tmp.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, self.path)

    def restore(self):
        """Load the checkpoint into the model and optimizer; returns the epochs done."""
        if not self.exists():
            raise FileNotFoundError(
                f"--resume: no checkpoint at {self.path}; run without --resume to start."
            )
        with np.load(self.path, allow_pickle=False) as state:
            weights = [state[f"model_{i}"] for i in range(len(self._model.get_weights()))]
            optimizer = self._model.optimizer
            optimizer.build(self._model.trainable_variables)
            names = [k for k in state.files if k.startswith("optimizer_")]
            if len(names) != len(optimizer.variables):
                raise ValueError(
                    f"the checkpoint at {self.path} has {len(names)} optimizer variables, "
                    f"this run has {len(optimizer.variables)}: resume with the same "
                    "options (--preset, --lora-rank) as the interrupted run."
                )
            self._model.set_weights(weights)
            for i, variable in enumerate(optimizer.variables):
                variable.assign(state[f"optimizer_{i}"])
            return int(state["epoch"])

    def remove(self):
        shutil.rmtree(self.directory, ignore_errors=True)
