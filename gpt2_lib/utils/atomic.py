"""Atomic writes: a file or a directory appears complete, or not at all.

Every write gpt2_lib makes (presets, Transformers exports, LoRA files,
training checkpoints, metrics) goes through one of these two helpers:

* `atomic_file(path)` yields a temporary path beside `path`; when the block
  succeeds the file is flushed to disk and renamed over `path`, otherwise it
  is deleted and `path` is untouched.
* `atomic_directory(path)` does the same for a whole directory (see
  `gpt2_lib.preset_io` for the preset layout built on it).

New files get the permissions an ordinary `open(path, "w")` would give
(0666 minus the process umask), not the 0600 of `tempfile`.
"""

import contextlib
import os
import tempfile


def current_umask():
    """The process umask (read without changing it for other threads long)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_file_mode():
    """The mode `open(path, "w")` gives a new file: 0o666 minus the umask."""
    return 0o666 & ~current_umask()


def default_dir_mode():
    """The mode `os.makedirs` gives a new directory: 0o777 minus the umask."""
    return 0o777 & ~current_umask()


def _fsync_file(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_directory(path):
    """Flush a directory entry (a rename into it) to disk, where supported."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path, suffix=""):
    """Yield a temporary path; on success it replaces `path` in one rename.

    Args:
        path: the file to create or replace. Its folder must exist.
        suffix: ending of the temporary name (some writers check it, e.g.
            `.lora.h5` or `.h5`).

    Example:
    ```python
    with atomic_file("metrics.json") as tmp:
        with open(tmp, "w") as f:
            f.write("{}")
    ```
    """
    path = os.path.abspath(os.fspath(path))
    directory, name = os.path.split(path)
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"Folder {directory!r} does not exist; create it before writing {name!r}."
        )
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path!r} is a directory; cannot write a file there.")
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.tmp-", suffix=suffix, dir=directory)
    os.close(fd)
    try:
        yield tmp
        if os.path.exists(tmp):
            os.chmod(tmp, default_file_mode())
            _fsync_file(tmp)
            os.replace(tmp, path)
            fsync_directory(directory)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text_atomic(path, text):
    """Write `text` (UTF-8) to `path` atomically.

    Example:
    ```python
    write_text_atomic("notes.txt", "hello")
    ```
    """
    with atomic_file(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
