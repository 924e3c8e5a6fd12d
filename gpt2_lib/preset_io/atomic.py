"""Atomic writes of a preset directory.

`atomic_preset_dir(preset_dir)` yields a temporary directory next to
`preset_dir`, pre-filled with (hard links to) the files the preset already
has, so that successive saves (backbone, then tokenizer) add up as in
KerasHub. When the block succeeds the temporary directory replaces
`preset_dir` with two renames; when it raises, it is deleted and
`preset_dir` is untouched. Writers must `unlink()` a file before writing it
(see `fresh_path()`), so a hard-linked original is never modified.
"""

import contextlib
import fnmatch
import os
import shutil
import tempfile


def fresh_path(directory, relative_path):
    """`directory/relative_path`, with any existing file removed first."""
    path = os.path.join(directory, relative_path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.lexists(path):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    return path


def remove_matching(directory, patterns):
    """Delete top-level files of `directory` matching any glob in `patterns`."""
    for name in os.listdir(directory):
        if any(fnmatch.fnmatch(name, pattern) for pattern in patterns):
            fresh_path(directory, name)


def _link_tree(source, destination):
    for root, dirs, files in os.walk(source):
        relative = os.path.relpath(root, source)
        target_root = os.path.join(destination, relative)
        os.makedirs(target_root, exist_ok=True)
        for name in files:
            src = os.path.join(root, name)
            dst = os.path.join(target_root, name)
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)


@contextlib.contextmanager
def atomic_preset_dir(preset_dir):
    """Yield a temporary directory that becomes `preset_dir` on success.

    Args:
        preset_dir: the preset directory to create or update.

    Example:
    ```python
    with atomic_preset_dir("./my_preset") as tmp:
        write_backbone(backbone, tmp)
        write_tokenizer(tokenizer, tmp)
    ```
    """
    preset_dir = os.path.abspath(os.fspath(preset_dir))
    if os.path.exists(preset_dir) and not os.path.isdir(preset_dir):
        raise FileExistsError(
            f"Cannot save a preset to {preset_dir!r}: it exists and is not a directory."
        )
    parent = os.path.dirname(preset_dir)
    os.makedirs(parent, exist_ok=True)
    name = os.path.basename(preset_dir)
    tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
    try:
        if os.path.isdir(preset_dir):
            _link_tree(preset_dir, tmp)
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.chmod(tmp, 0o755)
    if os.path.isdir(preset_dir):
        old = tempfile.mkdtemp(prefix=f".{name}.old-", dir=parent)
        os.rmdir(old)
        os.rename(preset_dir, old)
        try:
            os.rename(tmp, preset_dir)
        except BaseException:
            os.rename(old, preset_dir)
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, preset_dir)
