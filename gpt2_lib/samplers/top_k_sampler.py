"""Sampling among the `k` most likely tokens."""

import keras
from keras import ops
from keras import random

from gpt2_lib.samplers._seeded import check_seed
from gpt2_lib.samplers.sampler import Sampler


@keras.saving.register_keras_serializable(package="gpt2_lib")
class TopKSampler(Sampler):
    """Top-k sampling: draw the next token among the `k` most probable ones.

    Args:
        k: int, how many tokens to keep. `k=1` is greedy search.
        seed: int or None, for reproducible sampling.
        temperature: float, see `Sampler`.

    Example:
    ```python
    causal_lm.compile(sampler="top_k")  # k=5
    causal_lm.compile(sampler=gpt2_lib.samplers.TopKSampler(k=50, temperature=0.7, seed=0))
    causal_lm.generate("Keras is a")
    ```
    """

    def __init__(self, k=5, seed=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"`k` must be a positive integer. Received: k={k!r}")
        self.k = k
        self.seed = check_seed(seed)
        self.seed_generator = random.SeedGenerator(self.seed)

    def get_next_token(self, probabilities):
        k = min(self.k, ops.shape(probabilities)[-1])
        top_probabilities, top_indices = ops.top_k(probabilities, k=k, sorted=True)
        choice = random.categorical(
            ops.log(top_probabilities), 1, seed=self.seed_generator, dtype="int32"
        )
        return ops.squeeze(ops.take_along_axis(top_indices, choice, axis=-1), axis=-1)

    def get_config(self):
        return {**super().get_config(), "k": self.k, "seed": self.seed}
