"""Saving presets in KerasHub's layout, atomically.

A save writes into the temporary directory of
`gpt2_lib.utils.atomic.atomic_directory()`, which replaces the preset only
when everything is written. Each writer `supersede()`s the files it owns, so
that re-saving drops what they replace (a sharded save's
`model_00001.weights.h5`, a Transformers `model.safetensors` beside a
KerasHub `config.json`), while other files of an existing preset (a
tokenizer saved earlier, a README, a symlinked folder) are kept. Several
writers in one `atomic_preset_dir()` block make one atomic save:

```python
with atomic_preset_dir("./my_preset") as tmp:
    write_backbone(backbone, tmp)
    write_tokenizer(tokenizer, tmp)
```

Example:
>>> import os, tempfile, gpt2_lib
>>> backbone = gpt2_lib.models.GPT2Backbone(
...     vocabulary_size=10, num_layers=1, num_heads=2, hidden_dim=4,
...     intermediate_dim=8, max_sequence_length=6,
... )
>>> path = os.path.join(tempfile.mkdtemp(), "preset")
>>> save_backbone(backbone, path)
>>> sorted(os.listdir(path))
['config.json', 'metadata.json', 'model.weights.h5']
"""

import contextlib
import os
import tempfile

from gpt2_lib.preset_io import keras_hub_config as config_files
from gpt2_lib.preset_io import keras_hub_weights
from gpt2_lib.preset_io import transformers_format
from gpt2_lib.utils import distribution
from gpt2_lib.utils.atomic import atomic_directory
from gpt2_lib.utils.atomic import supersede

# A KerasHub `config.json` replaces a Transformers checkpoint's: its weights go too.
_BACKBONE_FILES = (
    config_files.CONFIG_FILE,
    config_files.METADATA_FILE,
    *keras_hub_weights.WEIGHT_FILES,
    transformers_format.SAFETENSORS_FILE,
    transformers_format.SAFETENSORS_INDEX_FILE,
    "model-*.safetensors",
)


@contextlib.contextmanager
def atomic_preset_dir(preset_dir, keep_existing=True):
    """Yield a temporary directory that becomes `preset_dir` on success.

    Files of an existing `preset_dir` that the block does not write (or
    supersede) are kept, as successive KerasHub saves add up; on failure
    `preset_dir` is untouched. See `gpt2_lib.utils.atomic.atomic_directory`.

    With several processes (`keras.distribution.initialize()`) every process
    runs the block (the weights of a sharded model are gathered by all of
    them), but only process 0 writes `preset_dir`; the others get a private
    scratch directory, deleted afterwards. The preset is committed only if
    the block succeeded on every process, and every process returns once it
    is complete (or raises if any process failed).

    Args:
        preset_dir: the preset directory to create or update.
        keep_existing: bool, see `atomic_directory`.
    """
    if distribution.process_count() == 1:
        with atomic_directory(preset_dir, keep_existing=keep_existing) as tmp:
            yield tmp
        return
    if not distribution.is_writer():
        with tempfile.TemporaryDirectory(prefix="gpt2_lib-save-") as tmp:
            try:
                yield tmp
            except BaseException:
                distribution.all_agree(False)
                distribution.all_agree(False)
                raise
            ok = distribution.all_agree(True)
        if not ok:
            distribution.all_agree(False)
            raise RuntimeError(
                f"Saving {preset_dir!r} failed on another process (see its error); "
                "nothing was written."
            )
        if not distribution.all_agree(True):
            raise RuntimeError(
                f"Process 0 could not write {preset_dir!r} (see its error); the "
                "previous content, if any, is unchanged."
            )
        return
    committed = False
    try:
        with atomic_directory(preset_dir, keep_existing=keep_existing) as tmp:
            try:
                yield tmp
            except BaseException:
                distribution.all_agree(False)
                raise
            if not distribution.all_agree(True):
                raise RuntimeError(
                    f"Saving {preset_dir!r} failed on another process (see its "
                    "error); nothing was written."
                )
        committed = True
    finally:
        distribution.all_agree(committed)


def write_backbone(backbone, directory, max_shard_size=10):
    """Write `config.json`, `metadata.json` and the weights into `directory`."""
    supersede(directory, _BACKBONE_FILES)
    config_files.write_json(directory, config_files.CONFIG_FILE, config_files.serialize(backbone))
    config_files.write_json(
        directory, config_files.METADATA_FILE, config_files.metadata_for(backbone)
    )
    keras_hub_weights.save_backbone_weights(backbone, directory, max_shard_size=max_shard_size)


def write_tokenizer(tokenizer, directory):
    """Write the tokenizer config (`tokenizer.json`) and assets into `directory`."""
    config_file = getattr(tokenizer, "config_file", config_files.TOKENIZER_CONFIG_FILE)
    asset_dir = config_files.tokenizer_asset_dir(tokenizer)
    supersede(directory, [config_file, asset_dir])
    config_files.write_json(directory, config_file, config_files.serialize(tokenizer))
    path = os.path.join(directory, asset_dir)
    os.makedirs(path)
    tokenizer.save_assets(path)


def write_preprocessor(preprocessor, directory):
    """Write `preprocessor.json` and the tokenizer's files into `directory`."""
    config_file = getattr(preprocessor, "config_file", config_files.PREPROCESSOR_CONFIG_FILE)
    supersede(directory, [config_file])
    config_files.write_json(directory, config_file, config_files.serialize(preprocessor))
    tokenizer = getattr(preprocessor, "tokenizer", None)
    if tokenizer is not None:
        write_tokenizer(tokenizer, directory)


def write_task(task, directory, max_shard_size=10):
    """Write `task.json` (+ `task.weights.h5`), the backbone and the preprocessor."""
    supersede(directory, [config_files.TASK_CONFIG_FILE, keras_hub_weights.TASK_WEIGHTS_FILE])
    config_files.write_json(directory, config_files.TASK_CONFIG_FILE, config_files.serialize(task))
    keras_hub_weights.save_task_weights(task, directory)
    write_backbone(task.backbone, directory, max_shard_size=max_shard_size)
    preprocessor = getattr(task, "preprocessor", None)
    if preprocessor is not None:
        write_preprocessor(preprocessor, directory)


def save_backbone(backbone, preset_dir, max_shard_size=10):
    """Save `backbone` to `preset_dir` in KerasHub's format, atomically.

    Args:
        backbone: the backbone (without LoRA adapters).
        preset_dir: the directory to create or update.
        max_shard_size: int/float in GB (None: never shard).
    """
    with atomic_preset_dir(preset_dir) as tmp:
        write_backbone(backbone, tmp, max_shard_size=max_shard_size)


def save_tokenizer(tokenizer, preset_dir):
    """Save a tokenizer's config and assets to `preset_dir`, atomically."""
    with atomic_preset_dir(preset_dir) as tmp:
        write_tokenizer(tokenizer, tmp)


def save_preprocessor(preprocessor, preset_dir):
    """Save a preprocessor (and its tokenizer) to `preset_dir`, atomically."""
    with atomic_preset_dir(preset_dir) as tmp:
        write_preprocessor(preprocessor, tmp)


def save_task(task, preset_dir, max_shard_size=10):
    """Save a task with its backbone and preprocessor in one atomic step."""
    with atomic_preset_dir(preset_dir) as tmp:
        write_task(task, tmp, max_shard_size=max_shard_size)
