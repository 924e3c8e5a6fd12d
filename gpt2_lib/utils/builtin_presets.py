"""Built-in presets: metadata kept as data in `presets/*.json`.

Each file describes one preset: `name`, `class_name` (the backbone class),
`description`, `params` (parameter count), `kaggle_handle` (where KerasHub's
copy of the weights lives), `hf_handle` (the Hugging Face repository of the
same weights, or null) and `config` (the backbone config, so that
`from_preset(name, load_weights=False)` needs no download).

The folder is `presets/` at the top of the repository and is shipped inside
the wheel as `gpt2_lib/_presets`. This module is plain data access (no Keras,
no other gpt2_lib module), so that listing the presets is fast.

Example:
>>> metadata = get_preset("gpt2_tiny_shakespeare_en")
>>> metadata["class_name"], metadata["params"]
('GPT2Backbone', 2262336)
"""

import difflib
import functools
import json
import os

_HERE = os.path.dirname(os.path.abspath(__file__))
_CANDIDATE_DIRS = (
    os.path.join(_HERE, os.pardir, "_presets"),  # installed wheel
    os.path.join(_HERE, os.pardir, os.pardir, "presets"),  # source tree
)


def presets_dir():
    """The directory holding the built-in preset metadata files."""
    for path in _CANDIDATE_DIRS:
        if os.path.isdir(path):
            return os.path.normpath(path)
    raise FileNotFoundError(
        "The built-in preset metadata folder is missing (looked in "
        f"{[os.path.normpath(p) for p in _CANDIDATE_DIRS]}). Reinstall gpt2_lib."
    )


@functools.lru_cache(maxsize=None)
def all_presets():
    """`{name: metadata}` for every built-in preset, sorted by name."""
    presets = {}
    directory = presets_dir()
    for filename in sorted(os.listdir(directory)):
        if not filename.endswith(".json"):
            continue
        with open(os.path.join(directory, filename), encoding="utf-8") as f:
            metadata = json.load(f)
        presets[metadata["name"]] = metadata
    return presets


def get_preset(name):
    """The metadata of built-in preset `name`, or None."""
    metadata = all_presets().get(name)
    return dict(metadata) if metadata is not None else None


def preset_config(name):
    """The backbone config of built-in preset `name` (a new dict), e.g. GPT-2
    base's sizes for models with random weights."""
    metadata = get_preset(name)
    if metadata is None:
        raise ValueError(unknown_name_message(name))
    return dict(metadata["config"])


def embedded_preset_dir(name):
    """The directory of a built-in preset shipped inside the package.

    Such a preset's metadata has `path`, relative to `presets_dir()`; it
    loads offline.
    """
    metadata = all_presets()[name]
    directory = os.path.normpath(os.path.join(presets_dir(), metadata["path"]))
    if os.path.dirname(directory) != presets_dir() or not os.path.isfile(
        os.path.join(directory, "config.json")
    ):
        raise FileNotFoundError(
            f"The embedded preset {name!r} is missing or incomplete at {directory} "
            "(no config.json). Reinstall gpt2_lib."
        )
    return directory


def unknown_name_message(name):
    """An error message for an unknown preset name, with the nearest names."""
    names = list(all_presets())
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return (
        f"Unknown preset {name!r}: not a built-in preset name, not an existing "
        f"directory, and not a 'kaggle://' or 'hf://' handle.{hint} Built-in "
        f"presets: {', '.join(names)}."
    )
