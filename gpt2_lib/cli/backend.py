"""Choosing the Keras backend before Keras is imported, and importing it quietly.

Keras reads `KERAS_BACKEND` once, when it is first imported, so the command
sets it from `--backend` (else `$KERAS_BACKEND`, else the first installed of
JAX, PyTorch, TensorFlow) before anything imports Keras. TensorFlow's C++
runtime prints log lines to the process's stderr while it is imported
(absl's "All log messages before absl::InitializeLog()" and oneDNN notices)
whatever `TF_CPP_MIN_LOG_LEVEL` says; `import_quietly` hides exactly those
lines and passes anything else through.
"""

import contextlib
import importlib
import importlib.util
import os
import re
import sys
import tempfile

from gpt2_lib.cli.errors import CLIError

BACKENDS = ("jax", "torch", "tensorflow")

# Lines TensorFlow's native code prints on import; nothing else is hidden.
_NATIVE_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|[IW]\d{4} [\d:. ]+\d+ (port|cpu_feature_guard|cuda_\w+)\.cc:\d+\]"
    r"|To enable the following instructions:.*rebuild TensorFlow"
    r"|E\d{4} [\d:. ]+\d+ cuda_\w+\.cc:\d+\] Unable to register"
    r")"
)


def installed_backends():
    """The Keras backends importable here, in the order JAX, PyTorch, TensorFlow."""
    return [name for name in BACKENDS if importlib.util.find_spec(name) is not None]


def choose_backend(requested):
    """--backend, else $KERAS_BACKEND, else the first installed (JAX first).

    Args:
        requested: the `--backend` value, or None.

    Example:
    >>> choose_backend("torch")
    'torch'
    """
    installed = installed_backends()
    backend = requested or os.environ.get("KERAS_BACKEND") or (installed[0] if installed else None)
    if backend is None:
        raise CLIError(
            "no Keras backend is installed; install one, e.g. `pip install -e \".[jax]\"` "
            "in a clone of gpt2_lib, or `pip install jax`."
        )
    if backend not in BACKENDS:
        source = "--backend" if requested else "$KERAS_BACKEND"
        raise CLIError(f"{source}: unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    if backend not in installed:
        raise CLIError(
            f"backend {backend!r} is not installed (installed: {', '.join(installed) or 'none'}); "
            f"install it (`pip install -e \".[{backend}]\"` in a clone of gpt2_lib) or pick "
            "another with --backend."
        )
    return backend


@contextlib.contextmanager
def quiet_native_stderr():
    """Hide TensorFlow's native import-time log lines; pass other stderr output through.

    The C++ runtime writes to file descriptor 2 directly, so the descriptor
    itself is pointed at a temporary file for the duration of the block.
    """
    try:
        stderr_fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # e.g. pytest's capture
        yield
        return
    sys.stderr.flush()
    saved = os.dup(stderr_fd)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), stderr_fd)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, stderr_fd)
            os.close(saved)
            captured.seek(0)
            kept = [
                line
                for line in captured.read().decode("utf-8", "replace").splitlines(keepends=True)
                if not _NATIVE_NOISE.match(line)
            ]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def import_quietly(module):
    """`importlib.import_module(module)` without TensorFlow's native log lines."""
    if module in sys.modules:
        return sys.modules[module]
    with quiet_native_stderr():
        return importlib.import_module(module)


def activate_backend(requested):
    """Set `KERAS_BACKEND` and import Keras on it; returns the backend's name.

    In a process that has already imported Keras (the Python API, tests),
    the backend cannot change any more: asking for another one is an error.
    """
    backend = choose_backend(requested)
    if "keras" in sys.modules:
        current = sys.modules["keras"].config.backend()
        if current != backend:
            raise CLIError(
                f"Keras is already imported in this process with the {current!r} backend; "
                f"it cannot switch to {backend!r}. Run the command in a new process."
            )
        return backend
    os.environ["KERAS_BACKEND"] = backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if backend == "tensorflow":
        import_quietly("tensorflow")
    import_quietly("keras")
    return backend
