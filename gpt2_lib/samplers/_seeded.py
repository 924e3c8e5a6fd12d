"""Shared argument checks for the random samplers."""

import numpy as np


def check_seed(seed):
    """`seed` must be None or an int."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise ValueError(f"`seed` must be None or an integer. Received: seed={seed!r}")
    return None if seed is None else int(seed)
