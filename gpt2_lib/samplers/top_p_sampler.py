"""Nucleus (top-p) sampling."""

import keras
from keras import ops
from keras import random

from gpt2_lib.samplers._seeded import check_seed
from gpt2_lib.samplers.sampler import Sampler


@keras.saving.register_keras_serializable(package="gpt2_lib")
class TopPSampler(Sampler):
    """Top-p (nucleus) sampling.

    Keeps the smallest set of most probable tokens whose total probability
    reaches `p` (always at least the most probable token), and draws the
    next token from it.

    Args:
        p: float in (0, 1], the probability mass to keep.
        k: optional int. Consider only the `k` most probable tokens before
            applying `p` (faster: sorts `k` values instead of the vocabulary).
        seed: int or None, for reproducible sampling.
        temperature: float, see `Sampler`.

    Example:
    ```python
    causal_lm.compile(sampler=gpt2_lib.samplers.TopPSampler(p=0.9, seed=0))
    causal_lm.generate("Keras is a")
    ```
    """

    def __init__(self, p=0.1, k=None, seed=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
            raise ValueError(f"`p` must be a float in (0, 1]. Received: p={p!r}")
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"`k` must be None or a positive integer. Received: k={k!r}")
        self.p = float(p)
        self.k = k
        self.seed = check_seed(seed)
        self.seed_generator = random.SeedGenerator(self.seed)

    def get_next_token(self, probabilities):
        vocabulary_size = ops.shape(probabilities)[-1]
        k = vocabulary_size if self.k is None else min(self.k, vocabulary_size)
        sorted_probabilities, sorted_indices = ops.top_k(probabilities, k=k, sorted=True)
        # Keep a token if the mass before it is still below `p`: this keeps
        # the first token that reaches `p`, and always the most probable one.
        mass_before = ops.cumsum(sorted_probabilities, axis=-1) - sorted_probabilities
        keep = mass_before < self.p
        filtered = ops.where(keep, sorted_probabilities, ops.zeros_like(sorted_probabilities))
        choice = random.categorical(
            ops.log(filtered), 1, seed=self.seed_generator, dtype="int32"
        )
        return ops.squeeze(ops.take_along_axis(sorted_indices, choice, axis=-1), axis=-1)

    def get_config(self):
        return {**super().get_config(), "p": self.p, "k": self.k, "seed": self.seed}
