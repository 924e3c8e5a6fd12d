"""A persistent compilation cache, so a new process skips XLA compilation.

JAX compiles `generate()` (and training steps) with XLA on the first call of
every process: ~3-5 s for GPT-2 base on a 2-core CPU. With JAX's persistent
compilation cache the compiled programs are stored on disk, and the first
call of the next process with the same shapes loads them instead. It is
opt-in for the library (it writes to your disk) and on by default in the
`gpt2-lib` command (`--no-compilation-cache` turns it off). It covers JAX
only: torch compiles nothing, and TensorFlow's XLA programs (its
`generate()`) are compiled again in each process.
"""

import os

import keras


def default_cache_directory():
    """`$GPT2_LIB_CACHE`, else `$XDG_CACHE_HOME/gpt2_lib`, else `~/.cache/gpt2_lib`."""
    root = os.environ.get("GPT2_LIB_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "gpt2_lib"
    )
    return os.path.join(root, "jax_compilation_cache")


def enable_compilation_cache(directory=None, min_compile_seconds=0.5):
    """Keep compiled XLA programs on disk for later processes (JAX).

    Args:
        directory: where to keep them; `default_cache_directory()` if None.
        min_compile_seconds: programs that compiled faster are not stored.

    Returns:
        The directory used, or None on backends with nothing to cache.

    Example:
    ```python
    import gpt2_lib
    gpt2_lib.enable_compilation_cache()  # before the first generate()
    lm = gpt2_lib.models.GPT2CausalLM.from_preset("gpt2_tiny_shakespeare_en")
    lm.generate("ROMEO:")  # compiled once; later processes load the program
    ```
    """
    if keras.config.backend() != "jax":
        return None
    import jax

    directory = os.path.abspath(os.path.expanduser(directory or default_cache_directory()))
    os.makedirs(directory, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_seconds))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory
