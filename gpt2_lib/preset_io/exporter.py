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

A quantized backbone is exported dequantized, with a warning: each integer
kernel becomes the float32 kernel the quantized layer computes with
(`gpt2_lib.utils.quantization.dequantized_weights`), written from a float
copy of the backbone. Integer kernels are never written as if they were
floats.

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
import warnings

import keras

from gpt2_lib.preset_io import keras_hub_config as config_files
from gpt2_lib.preset_io import keras_hub_weights
from gpt2_lib.preset_io import transformers_format
from gpt2_lib.preset_io.fast_init import build_and_load
from gpt2_lib.preset_io.fast_init import initialize_variable
from gpt2_lib.preset_io.saver import atomic_preset_dir
from gpt2_lib.preset_io.weight_table import table_entries
from gpt2_lib.utils import quantization
from gpt2_lib.utils.atomic import supersede
from gpt2_lib.utils.layer_variables import layer_variables

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


def dequantized_copy(backbone):
    """A float32 copy of a quantized `backbone`: each kernel dequantized.

    The copy has the same config with `dtype="float32"`; quantized layers
    get `dequantized_weights()` of the original layer, the others a copy of
    its weights. Each variable is allocated once, from its value.
    """
    config = backbone.get_config()
    config["dtype"] = "float32"
    sources = table_entries(backbone)

    def load(copy):
        targets = table_entries(copy)
        if [entry.path for entry in targets] != [entry.path for entry in sources]:
            raise ValueError(
                f"Cannot dequantize {type(backbone).__name__}: its float copy has "
                "different weight table paths."
            )
        for source, target in zip(sources, targets):
            if source.layer.quantization_mode is None:
                values = {
                    name: keras.ops.convert_to_numpy(variable.value)
                    for name, variable in layer_variables(source.layer)
                }
            else:
                values = quantization.dequantized_weights(source.layer)
            for name, variable in layer_variables(target.layer):
                initialize_variable(variable, values[name])

    return build_and_load(lambda: type(backbone).from_config(config), load)


def export_to_transformers(backbone, path, tokenizer=None):
    """Write a Transformers GPT-2 checkpoint directory, atomically.

    A quantized backbone is written dequantized to float32, with a warning
    (see the module docstring).

    Args:
        backbone: the `GPT2Backbone` (without LoRA adapters).
        path: the directory to write: `config.json`, `model.safetensors`
            and, with a tokenizer, `vocab.json` and `merges.txt`.
        tokenizer: optional `GPT2Tokenizer` whose files to include.
    """
    modes = quantization.quantization_modes(backbone)
    if modes:
        warnings.warn(
            f"{type(backbone).__name__} '{backbone.name}' is quantized "
            f"({', '.join(modes)}); a Transformers checkpoint holds float weights, "
            "so it is exported dequantized to float32 (each kernel as the quantized "
            "layer computes with it). Its outputs match the quantized model's "
            "within the quantization error; the file is full float32 size.",
            stacklevel=3,
        )
        backbone = dequantized_copy(backbone)
    # With several processes, process 0 writes (`atomic_preset_dir`).
    with atomic_preset_dir(path, keep_existing=True) as tmp:
        supersede(tmp, REPLACED_FILES)
        transformers_format.write_transformers_checkpoint(backbone, tmp)
        if tokenizer is not None:
            write_transformers_tokenizer(tokenizer, tmp)
