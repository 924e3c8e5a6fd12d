"""Skip random initialization of weights that a preset load overwrites.

Building GPT-2 base draws ~124M normal random numbers, then loading replaces
them. Inside `skip_weight_init()`, `GPT2Backbone`'s `_gpt2_initializer()`
returns a `Zeros` initializer instead (zeros are allocated, not drawn), so
only the memory, not the random draw, is paid.
"""

import contextlib
import threading

_state = threading.local()


@contextlib.contextmanager
def skip_weight_init(enabled=True):
    """Within this block, GPT-2 kernels and embeddings are initialized to zeros.

    Args:
        enabled: bool; `skip_weight_init(False)` is a no-op, handy when
            weights are loaded only sometimes.

    Example:
    ```python
    with skip_weight_init():
        backbone = GPT2Backbone(**config)  # fast, all-zero weights
    backbone.load_weights(...)
    ```
    """
    previous = getattr(_state, "active", False)
    _state.active = bool(enabled) or previous
    try:
        yield
    finally:
        _state.active = previous


def is_skipping():
    """True inside `skip_weight_init()`."""
    return getattr(_state, "active", False)
