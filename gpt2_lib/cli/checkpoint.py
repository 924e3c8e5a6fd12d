"""`finetune`'s resumable checkpoint: one `.npz` file, written atomically.

`OUTPUT.checkpoint/state.npz` holds the trainable variables, the dropout
seed states (on torch also its global generator, from which Keras' torch
dropout draws), the optimizer's variables (moments, iteration count) and a
JSON record: the step reached, the metrics so far, and the run's
signature (preset, data checksum, sequence length, batch size, seed, LoRA
rank, ...). A resumed run must have the same signature, so that the batch
of each step is the same as in the interrupted run (see `training_data`).
NumPy arrays only: it loads with `allow_pickle=False`.

Under a `keras.distribution` every process gathers the sharded variables
(a collective), process 0 writes the file, and a resume loads each value
straight into its variable's shards; with several hosts the checkpoint must
be on a filesystem every process reads.

Why not `keras.callbacks.BackupAndRestore`: it restores at the start of the
interrupted epoch (not at the step), writes its files in place (an
interruption during a write leaves a broken checkpoint), and does not
check that the data and options are the same.
"""

import json
import os
import shutil

import keras
import numpy as np

from gpt2_lib.cli.distributed import run_on_writer
from gpt2_lib.cli.errors import CLIError
from gpt2_lib.utils import distribution as dist
from gpt2_lib.utils.atomic import atomic_file
from gpt2_lib.utils.atomic import write_text_atomic

FORMAT_VERSION = 1
# Signature fields that decide which batch each step sees, or the variables.
MUST_MATCH = {
    "preset": "--preset",
    "data_sha256": "--data (its content)",
    "text_field": "--text-field",
    "validation": "--validation-data/--validation-split",
    "sequence_length": "--sequence-length",
    "batch_size": "--batch-size",
    "seed": "--seed",
    "lora_rank": "--lora-rank",
}


def _saved_variables(model):
    """Trainable variables and dropout seed states, in a stable order."""
    seeds = [v for v in model.non_trainable_variables if "seed_generator" in v.path]
    return list(model.trainable_variables) + seeds


def _torch_rng_state():
    """torch's global generator state, or None off torch.

    Keras' torch dropout draws from it when the layer has no seed (ours do
    not), so a resumed run needs it to drop what the interrupted one would.
    """
    if keras.config.backend() != "torch":
        return None
    import torch

    return torch.get_rng_state().numpy()


def _assign(variable, value):
    """`variable.assign(value)`, sharded like the variable under a distribution."""
    sharding = dist.variable_sharding(variable)
    if sharding is not None:
        value = dist.sharded_array(np.asarray(value), sharding, dtype=np.dtype(variable.dtype))
    variable.assign(value)


class Checkpoint:
    """The checkpoint of one `finetune --output OUTPUT` run.

    Args:
        directory: `OUTPUT.checkpoint`.
        signature: dict describing the run (see `MUST_MATCH`).
    """

    def __init__(self, directory, signature):
        self.directory = directory
        self.signature = signature
        self._torch_rng_state = None  # restored, set before the first step

    @property
    def path(self):
        return os.path.join(self.directory, "state.npz")

    def exists(self):
        return os.path.exists(self.path)

    def save(self, model, step, record):
        """Write the state after `step` steps, with `record` (JSON-able) beside it."""
        variables = _saved_variables(model)
        # Sharded values are gathered by every process, in the same order.
        arrays = {f"variable_{i}": dist.gather(v) for i, v in enumerate(variables)}
        for i, variable in enumerate(model.optimizer.variables):
            arrays[f"optimizer_{i}"] = dist.gather(variable)
        meta = {
            "format": FORMAT_VERSION,
            "step": int(step),
            "signature": self.signature,
            "variable_paths": [v.path for v in variables],
            "record": record,
        }
        arrays["meta"] = np.asarray(json.dumps(meta))
        rng_state = _torch_rng_state()
        if rng_state is not None:
            arrays["torch_rng_state"] = rng_state

        def write():
            os.makedirs(self.directory, exist_ok=True)
            with atomic_file(self.path, suffix=".npz") as tmp:
                np.savez(tmp, **arrays)

        run_on_writer(write, self.path)

    def write_file(self, name, text):
        """Write a side file (e.g. the metrics so far) into the checkpoint folder."""

        def write():
            os.makedirs(self.directory, exist_ok=True)
            write_text_atomic(os.path.join(self.directory, name), text)

        run_on_writer(write, os.path.join(self.directory, name))

    def restore(self, model):
        """Load the state into `model` and its optimizer; returns `(step, record)`."""
        if not self.exists():
            raise CLIError(
                f"--resume: no checkpoint at {self.path}; run without --resume to start."
            )
        with np.load(self.path, allow_pickle=False) as state:
            meta = json.loads(str(state["meta"]))
            self._check_signature(meta)
            variables = _saved_variables(model)
            if meta["variable_paths"] != [v.path for v in variables]:
                raise CLIError(
                    f"--resume: the checkpoint at {self.path} holds other variables than this "
                    "run's model; resume with the options of the interrupted run."
                )
            optimizer = model.optimizer
            optimizer.build(model.trainable_variables)
            names = [k for k in state.files if k.startswith("optimizer_")]
            if len(names) != len(optimizer.variables):
                raise CLIError(
                    f"--resume: the checkpoint at {self.path} has {len(names)} optimizer "
                    f"variables, this run has {len(optimizer.variables)}."
                )
            for i, variable in enumerate(variables):
                _assign(variable, state[f"variable_{i}"])
            for i, variable in enumerate(optimizer.variables):
                _assign(variable, state[f"optimizer_{i}"])
            if keras.config.backend() == "torch" and "torch_rng_state" in state.files:
                self._torch_rng_state = state["torch_rng_state"].copy()
        return meta["step"], meta["record"]

    def resume_generator(self):
        """Set torch's global generator as it was at the checkpoint (once).

        Called just before the first resumed step: `fit()` draws from the
        generator when it starts (torch's data loader seeds its workers), as
        it did once in the interrupted run, before the state was saved.
        """
        state, self._torch_rng_state = self._torch_rng_state, None
        if state is not None:
            import torch

            torch.set_rng_state(torch.from_numpy(state))

    def _check_signature(self, meta):
        if meta.get("format") != FORMAT_VERSION:
            raise CLIError(f"--resume: {self.path} is not a checkpoint this version can read.")
        saved = meta["signature"]
        differences = [
            f"{option}: {saved.get(key)!r} then, {self.signature.get(key)!r} now"
            for key, option in MUST_MATCH.items()
            if saved.get(key) != self.signature.get(key)
        ]
        if differences:
            raise CLIError(
                "--resume: this run differs from the interrupted one ("
                + "; ".join(differences)
                + "). Resume with the same options, or delete "
                f"{self.directory} to start over."
            )

    def remove(self):
        """Delete the checkpoint (process 0; every process returns once it is gone)."""
        if dist.is_writer():
            shutil.rmtree(self.directory, ignore_errors=True)
        dist.barrier("gpt2_lib finetune checkpoint removed")
