"""Atomic writes: a file or a directory appears complete, or not at all.

Every write gpt2_lib makes (presets, Transformers exports, LoRA files,
training checkpoints, metrics) goes through one of these helpers:

* `atomic_file(path)` yields a temporary path beside `path`; when the block
  succeeds the file is flushed to disk and renamed over `path`, otherwise it
  is deleted and `path` is untouched.
* `atomic_directory(path)` does the same for a whole directory. The block
  writes into an empty temporary directory `.NAME.tmp-<pid>-<id>`; on
  success the entries of the previous `path` that the block neither wrote
  nor `supersede()`d are carried over as hard links (symbolic links stay
  symbolic links), and the result replaces `path`. The previous files are
  never opened for writing, so a failed or killed write, or a model still
  reading (or memory-mapping) them, never sees them change.

New files and folders get the permissions an ordinary `open(path, "w")` or
`os.makedirs` would give (0666/0777 minus the process umask), whatever
mode the writing library chose (`tempfile`, `safetensors` use 0600).

A directory is replaced by an atomic exchange where the system has one
(Linux `renameat2(RENAME_EXCHANGE)`); elsewhere by two renames through
`.NAME.old-<pid>-<id>`. A process killed in between, or while writing,
leaves these siblings behind: `recover_directory(path)`, called by the next
`atomic_directory(path)` and by preset loads, finishes or rolls back the
interrupted commit and deletes what dead processes left, with a warning
naming each path.
"""

import contextlib
import ctypes
import errno
import fnmatch
import os
import secrets
import shutil
import stat
import sys
import tempfile
import threading
import warnings

_TMP, _NEW, _OLD = "tmp", "new", "old"

# Tokens (`<pid>-<id>`) of the atomic directories this process is writing,
# and the patterns each block superseded (keyed by the real temporary path).
_lock = threading.Lock()
_active_tokens = set()
_superseded = {}


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
    _fsync_file(path)


@contextlib.contextmanager
def atomic_file(path, suffix=""):
    """Yield a temporary path; on success it replaces `path` in one rename.

    Args:
        path: the file to create or replace. Its folder must exist.
        suffix: ending of the temporary name (some writers check it, e.g.
            `.lora.h5` or `.h5`).

    Example:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "metrics.json")
    >>> with atomic_file(path) as tmp:
    ...     with open(tmp, "w") as f:
    ...         _ = f.write("{}")
    >>> open(path).read()
    '{}'
    """
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
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
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "notes.txt")
    >>> write_text_atomic(path, "hello")
    >>> open(path).read()
    'hello'
    """
    with atomic_file(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


# ---------------------------------------------------------------------------
# Directories.


def _matches(relative, patterns):
    """Whether the `/`-separated `relative` path matches one of `patterns`.

    A pattern is matched component by component with `fnmatch`
    (`"model_*.weights.h5"` matches top-level files only,
    `"assets/tokenizer"` that folder).
    """
    parts = relative.split("/")
    for pattern in patterns:
        pattern_parts = pattern.strip("/").split("/")
        if len(pattern_parts) == len(parts) and all(
            fnmatch.fnmatchcase(part, p) for part, p in zip(parts, pattern_parts)
        ):
            return True
    return False


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def supersede(directory, patterns):
    """Declare that `patterns` of the previous directory content are replaced.

    Inside `atomic_directory()`, entries of the previous directory matching
    `patterns` (relative paths with `fnmatch` wildcards, `/`-separated; a
    folder pattern covers everything under it) are not carried over. On a
    plain directory, the matching entries are deleted now.

    Args:
        directory: the temporary directory an `atomic_directory()` block
            yielded, or any directory.
        patterns: list of relative path patterns, e.g.
            `["model.weights.h5", "model_*.weights.h5", "assets/tokenizer"]`.
    """
    key = os.path.realpath(directory)
    with _lock:
        if key in _superseded:
            _superseded[key].extend(patterns)
            return

    def visit(relative):
        base = os.path.join(directory, relative) if relative else directory
        for name in sorted(os.listdir(base)):
            child = f"{relative}/{name}" if relative else name
            path = os.path.join(base, name)
            if _matches(child, patterns):
                _remove(path)
            elif os.path.isdir(path) and not os.path.islink(path):
                visit(child)

    if os.path.isdir(directory):
        visit("")


def _target(path):
    """Absolute `path` with `~` expanded; a symlink to a folder is followed."""
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if os.path.islink(path) and os.path.isdir(path):
        path = os.path.realpath(path)
    return path


def _sibling(path, kind, token):
    parent, name = os.path.split(path)
    return os.path.join(parent, f".{name}.{kind}-{token}")


def _owner_alive(token):
    """Whether the process that named a sibling `<pid>-<id>` may still use it."""
    with _lock:
        if token in _active_tokens:
            return True
    pid = token.split("-", 1)[0]
    if not pid.isdigit():
        return False  # Not our naming (an older gpt2_lib): nobody owns it.
    pid = int(pid)
    if pid == os.getpid() or pid <= 0:
        return False  # Ours, but no block of this process is using it.
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # Exists, owned by someone else.
    return True


def _leftovers(path):
    """`{kind: [sibling paths]}` left by dead writers of `path`."""
    parent, name = os.path.split(path)
    prefix = f".{name}."
    found = {_TMP: [], _NEW: [], _OLD: []}
    try:
        entries = os.listdir(parent)
    except OSError:
        return found
    for entry in sorted(entries):
        if not entry.startswith(prefix):
            continue
        kind, dash, token = entry[len(prefix):].partition("-")
        if kind in found and dash and not _owner_alive(token):
            found[kind].append(os.path.join(parent, entry))
    return found


def recover_directory(path):
    """Finish or undo interrupted `atomic_directory(path)` writes.

    A writer killed between the two renames of a commit leaves `path`
    missing and the new content in `.NAME.new-*` (or, from older versions,
    only the previous content in `.NAME.old-*`): the newest such folder is
    moved back to `path`. Temporary folders of dead writers
    (`.NAME.tmp-*`, and `.NAME.new-*`/`.NAME.old-*` once `path` exists) are
    deleted. Folders of writers still running are left alone.

    Args:
        path: the directory.

    Returns:
        A list of messages, one per action (also issued as one warning).

    Example:
    >>> import os, tempfile
    >>> root = tempfile.mkdtemp()
    >>> os.mkdir(os.path.join(root, ".preset.old-1a2b"))  # a killed save
    >>> with warnings.catch_warnings(record=True):
    ...     messages = recover_directory(os.path.join(root, "preset"))
    >>> os.listdir(root), messages[0].startswith("restored")
    (['preset'], True)
    """
    path = _target(path)
    found = _leftovers(path)
    actions = []
    if not os.path.lexists(path):
        candidates = found[_NEW] or found[_OLD]
        if candidates:
            source = max(candidates, key=lambda p: os.lstat(p).st_mtime)
            state = "new" if found[_NEW] else "previous"
            try:
                os.rename(source, path)
            except OSError as e:
                actions.append(f"could not restore {path!r} from {source!r} ({e})")
            else:
                candidates.remove(source)
                actions.append(
                    f"restored {path!r} from {source!r} (the {state} content of a "
                    "save that was interrupted between its two renames)"
                )
    for kind in (_TMP, _NEW, _OLD):
        for leftover in found[kind]:
            if not os.path.lexists(leftover):
                continue
            try:
                _remove(leftover)
            except OSError as e:
                actions.append(f"could not remove {leftover!r} ({e})")
            else:
                actions.append(f"removed {leftover!r}, left by an interrupted save")
    if actions:
        warnings.warn(
            f"Recovered the directory {path!r}: " + "; ".join(actions) + ".",
            stacklevel=3,
        )
    return actions


def _normalize_modes(root):
    """Give what a writer created the modes of the umask (not e.g. 0600)."""
    file_mode, dir_mode = default_file_mode(), default_dir_mode()
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, dir_mode)
        for name in files:
            path = os.path.join(folder, name)
            info = os.lstat(path)
            if stat.S_ISREG(info.st_mode):
                executable = dir_mode & 0o111 if info.st_mode & 0o111 else 0
                os.chmod(path, file_mode | executable)


def _carry_over(previous, new, patterns, relative=""):
    """Link the entries of `previous` that `new` lacks into `new`."""
    source_dir = os.path.join(previous, relative) if relative else previous
    for name in sorted(os.listdir(source_dir)):
        child = f"{relative}/{name}" if relative else name
        if _matches(child, patterns):
            continue
        source = os.path.join(source_dir, name)
        target = os.path.join(new, child)
        if os.path.islink(source):
            if not os.path.lexists(target):
                os.symlink(os.readlink(source), target)
        elif os.path.isdir(source):
            if not os.path.lexists(target):
                os.mkdir(target)
                shutil.copymode(source, target)
            if os.path.isdir(target) and not os.path.islink(target):
                _carry_over(previous, new, patterns, child)
        elif not os.path.lexists(target):
            try:
                os.link(source, target, follow_symlinks=False)
            except OSError:
                shutil.copy2(source, target, follow_symlinks=False)


def _fsync_tree(root):
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                _fsync_file(path)
        fsync_directory(folder)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(first, second):
    """Swap two paths atomically (Linux `renameat2`); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), second)


def _commit(new, path, token):
    """Put the complete folder `new` at `path`, replacing what is there."""
    parent = os.path.dirname(path)
    if not os.path.lexists(path):
        os.rename(new, path)
        fsync_directory(parent)
        return
    if _exchange(new, path):
        # `new` now holds the previous content.
        fsync_directory(parent)
        shutil.rmtree(new, ignore_errors=True)
        return
    old = _sibling(path, _OLD, token)
    os.rename(path, old)
    try:
        os.rename(new, path)
    except BaseException:
        os.rename(old, path)
        raise
    fsync_directory(parent)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(path, keep_existing=True):
    """Yield an empty temporary directory that replaces `path` on success.

    Args:
        path: the directory to create or replace (`~` is expanded; a
            symlink to a directory is followed).
        keep_existing: bool. If True, entries of the previous `path` that
            the block did not write and did not `supersede()` are kept
            (hard links; symlinks are recreated). If False, `path` ends up
            holding exactly what the block wrote.

    Raises:
        FileExistsError: `path` exists and is not a directory.

    Example:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "out")
    >>> with atomic_directory(path) as tmp:
    ...     _ = open(os.path.join(tmp, "a.txt"), "w").write("a")
    >>> with atomic_directory(path) as tmp:  # adds b.txt, keeps a.txt
    ...     _ = open(os.path.join(tmp, "b.txt"), "w").write("b")
    >>> sorted(os.listdir(path))
    ['a.txt', 'b.txt']
    """
    path = _target(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise FileExistsError(
            f"Cannot write the directory {path!r}: a file of that name exists. "
            "Remove it or choose another path."
        )
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    recover_directory(path)
    token = f"{os.getpid()}-{secrets.token_hex(6)}"
    tmp = _sibling(path, _TMP, token)
    with _lock:
        _active_tokens.add(token)
    os.mkdir(tmp)
    key = os.path.realpath(tmp)
    with _lock:
        _superseded[key] = []
    new = _sibling(path, _NEW, token)
    try:
        yield tmp
        with _lock:
            patterns = list(_superseded[key])
        _normalize_modes(tmp)
        if keep_existing and os.path.isdir(path):
            _carry_over(path, tmp, patterns)
            os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
        else:
            os.chmod(tmp, default_dir_mode())
        _fsync_tree(tmp)
        os.rename(tmp, new)  # complete: recoverable from here on
        _commit(new, path, token)
    except BaseException:
        for leftover in (tmp, new):
            if os.path.lexists(leftover):
                shutil.rmtree(leftover, ignore_errors=True)
        raise
    finally:
        with _lock:
            _superseded.pop(key, None)
            _active_tokens.discard(token)
