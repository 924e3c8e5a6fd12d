"""Exporting a backbone (and tokenizer) as a Hugging Face Transformers checkpoint.

The checkpoint (`config.json`, `model.safetensors`, and with a tokenizer
`vocab.json` + `merges.txt`) is written into the temporary directory of
`gpt2_lib.utils.atomic.atomic_directory()` and replaces the target only
when complete. The files of the previous content are never opened for
writing, so a failed or killed export leaves it as it was, and exporting
onto the folder the model was loaded from (`gpt2-lib convert SRC SRC`) is
safe even while the model still maps that folder's files. The files that
describe a model in either format are replaced; other files (a README, a
symlinked folder) are kept.

Example:
>>> import os, tempfile, gpt2_lib
>>> backbone = gpt2_lib.models.GPT2Backbone(
...     vocabulary_size=10, num_layers=1, num_heads=2, hidden_dim=4,
...     intermediate_dim=8, max_sequence_length=6,
... )
>>> path = os.path.join(tempfile.mkdtemp(), "hf")
>>> export_to_transformers(backbone, path)
>>> sorted(os.listdir(path))
['config.json', 'model.safetensors']
"""

import os

from gpt2_lib.preset_io import keras_hub_config as config_files
from gpt2_lib.preset_io import keras_hub_weights
from gpt2_lib.preset_io import transformers_format
from gpt2_lib.preset_io.saver import atomic_preset_dir
from gpt2_lib.utils.atomic import supersede

# What an export replaces: a Transformers checkpoint's files and a KerasHub
# preset's (whose `config.json` the export overwrites).
REPLACED_FILES = (
    *transformers_format.CHECKPOINT_FILES,
    config_files.METADATA_FILE,
    config_files.PREPROCESSOR_CONFIG_FILE,
    config_files.TASK_CONFIG_FILE,
    config_files.ASSET_DIR,
    keras_hub_weights.TASK_WEIGHTS_FILE,
    *keras_hub_weights.WEIGHT_FILES,
)
# A GPT-2 tokenizer's assets -> Transformers' file names.
TOKENIZER_FILES = {"vocabulary.json": "vocab.json", "merges.txt": "merges.txt"}


def write_transformers_tokenizer(tokenizer, directory):
    """Write a byte-pair tokenizer's files as Transformers' `vocab.json` + `merges.txt`."""
    assets = getattr(tokenizer, "file_assets", None)
    if sorted(assets or []) != sorted(TOKENIZER_FILES):
        raise ValueError(
            f"{type(tokenizer).__name__} has assets {assets}; a Transformers GPT-2 "
            f"tokenizer needs a byte-pair vocabulary and merges ({sorted(TOKENIZER_FILES)}). "
            "Export the backbone alone, or use a GPT2Tokenizer."
        )
    staging = os.path.join(directory, ".tokenizer-assets")
    os.makedirs(staging)
    tokenizer.save_assets(staging)
    for name, target in TOKENIZER_FILES.items():
        os.replace(os.path.join(staging, name), os.path.join(directory, target))
    os.rmdir(staging)


def export_to_transformers(backbone, path, tokenizer=None):
    """Write a Transformers GPT-2 checkpoint directory, atomically.

    Args:
        backbone: the `GPT2Backbone` (float, without LoRA adapters).
        path: the directory to write: `config.json`, `model.safetensors`
            and, with a tokenizer, `vocab.json` and `merges.txt`.
        tokenizer: optional `GPT2Tokenizer` whose files to include.
    """
    # With several processes, process 0 writes (`atomic_preset_dir`).
    with atomic_preset_dir(path, keep_existing=True) as tmp:
        supersede(tmp, REPLACED_FILES)
        transformers_format.write_transformers_checkpoint(backbone, tmp)
        if tokenizer is not None:
            write_transformers_tokenizer(tokenizer, tmp)
