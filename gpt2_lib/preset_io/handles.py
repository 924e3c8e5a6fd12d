"""Resolve a preset handle to a local directory.

A preset is one of:

- a built-in name (`"gpt2_base_en"`), resolved to its Kaggle handle;
- `kaggle://{owner}/{model}/keras/{variant}[/{version}]`, fetched with
  `kagglehub` (and its cache, `KAGGLEHUB_CACHE`);
- `hf://{owner}/{repo}[@revision]`, fetched with `huggingface_hub` (and its
  cache, `HF_HUB_CACHE`, `HF_HUB_OFFLINE`, `HF_ENDPOINT`);
- an existing local directory (`~` expanded), used as is, after
  recovering what an interrupted save left beside it
  (`gpt2_lib.utils.atomic.recover_directory`).

Everything downstream works on a local directory, so each file of a preset
is read with `preset_file()`, which refuses paths that escape the directory.
"""

import os
import re

from gpt2_lib.utils import builtin_presets as builtin
from gpt2_lib.utils.atomic import recover_directory

KAGGLE_PREFIX = "kaggle://"
HF_PREFIX = "hf://"

# Only these files are fetched from the Hugging Face Hub: configs,
# vocabularies and safetensors/h5 weights. Pickle checkpoints are never
# downloaded (nor loaded).
HF_ALLOW_PATTERNS = ["*.json", "*.txt", "*.safetensors", "*.h5", "assets/**"]

_KAGGLE_RE = re.compile(
    r"^(?P<owner>[A-Za-z0-9_.-]+)/(?P<model>[A-Za-z0-9_.-]+)/"
    r"(?P<framework>[A-Za-z0-9_.-]+)/(?P<variant>[A-Za-z0-9_.-]+)"
    r"(?:/(?P<version>\d+))?/?$"
)
_HF_RE = re.compile(
    r"^(?P<repo>[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+|[A-Za-z0-9_.-]+)"
    r"(?:@(?P<revision>[A-Za-z0-9_./-]+))?/?$"
)

_OFFLINE_HINT = (
    "To load without a network, download the preset elsewhere and pass its "
    "local directory, or populate the client's cache (`KAGGLEHUB_CACHE` for "
    "kaggle://, `HF_HUB_CACHE` with `HF_HUB_OFFLINE=1` for hf://)."
)


def resolve_preset(preset):
    """Return the local directory holding `preset` (downloading if needed).

    Args:
        preset: a built-in preset name, a `kaggle://` or `hf://` handle, or
            a local directory (a string or `os.PathLike`; `~` is expanded).

    Returns:
        The path of a local directory.

    Raises:
        TypeError: `preset` is not a string or path.
        ValueError: an empty string, a malformed handle, an unknown name.
        FileNotFoundError: a local directory that does not exist.

    Example:
    >>> path = resolve_preset("gpt2_tiny_shakespeare_en")  # shipped, offline
    >>> os.path.basename(path)
    'gpt2_tiny_shakespeare_en'
    """
    if isinstance(preset, os.PathLike):
        preset = os.fspath(preset)
    if not isinstance(preset, str):
        raise TypeError(
            "`preset` must be a non-empty string: a built-in name, a "
            "'kaggle://' or 'hf://' handle, or a local directory. Received: "
            f"preset={preset!r} of type {type(preset).__name__}."
        )
    if not preset.strip():
        raise ValueError(
            "`preset` must be a non-empty string: a built-in name (e.g. "
            "'gpt2_tiny_shakespeare_en'), a 'kaggle://' or 'hf://' handle, or a "
            f"local directory. Received: preset={preset!r}."
        )
    if preset.startswith(KAGGLE_PREFIX):
        return _download_kaggle(preset)
    if preset.startswith(HF_PREFIX):
        return _download_hf(preset)
    if "://" in preset:
        scheme = preset.split("://", 1)[0]
        raise ValueError(
            f"Unsupported preset scheme {scheme + '://'!r} in preset={preset!r}. "
            "Use a built-in name, 'kaggle://owner/model/keras/variant[/version]', "
            "'hf://owner/repo' or a local directory."
        )
    local = os.path.expanduser(preset)
    looks_like_path = os.sep in preset or preset.startswith((".", "~"))
    if os.path.isdir(local) or looks_like_path or not builtin.get_preset(preset):
        # Finish or clean up an interrupted save of this directory (warns).
        recover_directory(local)
    if os.path.isdir(local):
        return local
    if os.path.exists(local):
        raise ValueError(
            f"preset={preset!r} is a file; a preset is a directory (holding "
            "config.json). Pass the directory that contains it."
        )
    metadata = builtin.get_preset(preset)
    if metadata is None:
        if looks_like_path:
            raise FileNotFoundError(f"Preset directory {preset!r} does not exist.")
        raise ValueError(builtin.unknown_name_message(preset))
    if metadata.get("path"):
        return builtin.embedded_preset_dir(preset)
    return _download_kaggle(metadata["kaggle_handle"])


def parse_kaggle_handle(handle):
    """Split `kaggle://owner/model/keras/variant[/version]` into its parts.

    Returns:
        dict with `owner`, `model`, `framework`, `variant`, `version`
        (an int, or None for the latest).
    """
    body = handle[len(KAGGLE_PREFIX):] if handle.startswith(KAGGLE_PREFIX) else handle
    match = _KAGGLE_RE.match(body)
    if not match:
        raise ValueError(
            f"Malformed Kaggle handle {handle!r}. Expected "
            "'kaggle://{owner}/{model}/keras/{variant}[/{version}]', e.g. "
            "'kaggle://keras/gpt2/keras/gpt2_base_en/3'."
        )
    parts = match.groupdict()
    if parts["framework"] != "keras":
        raise ValueError(
            f"Kaggle handle {handle!r} has framework {parts['framework']!r}; "
            "only KerasHub-format ('keras') model variations can be loaded."
        )
    parts["version"] = int(parts["version"]) if parts["version"] else None
    return parts


def parse_hf_handle(handle):
    """Split `hf://owner/repo[@revision]` into `(repo_id, revision)`."""
    body = handle[len(HF_PREFIX):]
    match = _HF_RE.match(body)
    if not match:
        raise ValueError(
            f"Malformed Hugging Face handle {handle!r}. Expected "
            "'hf://{owner}/{repo}' (optionally '@revision'), e.g. "
            "'hf://openai-community/gpt2'."
        )
    return match.group("repo"), match.group("revision")


def _download_kaggle(handle):
    parts = parse_kaggle_handle(handle)
    kaggle_id = "/".join(
        [parts["owner"], parts["model"], parts["framework"], parts["variant"]]
    )
    if parts["version"] is not None:
        kaggle_id += f"/{parts['version']}"
    import kagglehub

    try:
        return kagglehub.model_download(kaggle_id)
    except Exception as e:  # kagglehub raises many types; re-raise with the fix.
        if _is_network_error(e):
            raise ConnectionError(
                f"Could not download {handle!r} from Kaggle: network error "
                f"({type(e).__name__}: {e}). {_OFFLINE_HINT}"
            ) from e
        raise ValueError(
            f"Could not fetch {handle!r} with kagglehub ({type(e).__name__}: "
            f"{e}). Check the handle, your Kaggle credentials, or "
            f"{_OFFLINE_HINT[0].lower() + _OFFLINE_HINT[1:]}"
        ) from e


def _download_hf(handle):
    repo_id, revision = parse_hf_handle(handle)
    import huggingface_hub
    from huggingface_hub import errors

    try:
        return huggingface_hub.snapshot_download(
            repo_id, revision=revision, allow_patterns=HF_ALLOW_PATTERNS
        )
    except errors.LocalEntryNotFoundError as e:
        raise FileNotFoundError(
            f"{handle!r} is not in the Hugging Face cache and the Hub cannot be "
            f"reached (offline mode or no connection). {_OFFLINE_HINT}"
        ) from e
    except (errors.RepositoryNotFoundError, errors.RevisionNotFoundError) as e:
        raise ValueError(
            f"Hugging Face repository {handle!r} was not found ({e}). Check the "
            "name (e.g. 'hf://openai-community/gpt2') and your access token."
        ) from e
    except Exception as e:
        if _is_network_error(e):
            raise ConnectionError(
                f"Could not download {handle!r} from the Hugging Face Hub: "
                f"network error ({type(e).__name__}: {e}). {_OFFLINE_HINT}"
            ) from e
        raise


def _is_network_error(error):
    """True if `error` (or its cause chain) is a connection/timeout error."""
    names = ("ConnectionError", "ConnectError", "Timeout", "TimeoutException",
             "ReadTimeout", "ConnectTimeout", "NetworkError", "ProtocolError")
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (ConnectionError, TimeoutError, OSError)) and not isinstance(
            error, (FileNotFoundError, PermissionError, IsADirectoryError)
        ):
            return True
        if any(name in type(error).__name__ for name in names):
            return True
        error = error.__cause__ or error.__context__
    return False


def preset_file(preset_dir, relative_path, required=True):
    """The path of `relative_path` inside `preset_dir`, safely.

    Paths that are absolute or that escape the directory (`..`, symlinks
    pointing outside) are refused: loading never reads outside the preset.

    Args:
        preset_dir: the local preset directory.
        relative_path: a path relative to it, e.g. `"assets/tokenizer/merges.txt"`.
        required: if True, a missing file is a `FileNotFoundError`.

    Returns:
        The path, or None if it does not exist and `required` is False.
    """
    if not isinstance(relative_path, str) or os.path.isabs(relative_path):
        raise ValueError(
            f"Preset file path {relative_path!r} must be relative to the preset "
            f"directory {preset_dir!r}."
        )
    root = os.path.realpath(preset_dir)
    path = os.path.realpath(os.path.join(root, relative_path))
    if os.path.commonpath([root, path]) != root:
        raise ValueError(
            f"Preset file path {relative_path!r} escapes the preset directory "
            f"{preset_dir!r}; refusing to read it."
        )
    if not os.path.isfile(path):
        if required:
            raise FileNotFoundError(
                f"`{relative_path}` is missing from the preset directory "
                f"{preset_dir!r}."
            )
        return None
    return path
