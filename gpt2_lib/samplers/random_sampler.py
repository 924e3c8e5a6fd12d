"""Sampling from the whole distribution."""

import keras
from keras import ops
from keras import random

from gpt2_lib.samplers._seeded import check_seed
from gpt2_lib.samplers.sampler import Sampler


@keras.saving.register_keras_serializable(package="gpt2_lib")
class RandomSampler(Sampler):
    """Random sampling: the next token is drawn from the full distribution.

    Args:
        seed: int or None. With an int, `generate()` is reproducible: a model
            compiled with the same sampler seed gives the same samples.
        temperature: float, see `Sampler`.

    Example:
    ```python
    causal_lm.compile(sampler=gpt2_lib.samplers.RandomSampler(temperature=0.7, seed=1))
    causal_lm.generate("Keras is a")
    ```
    """

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.seed = check_seed(seed)
        self.seed_generator = random.SeedGenerator(self.seed)

    def get_next_token(self, probabilities):
        token = random.categorical(
            ops.log(probabilities), 1, seed=self.seed_generator, dtype="int32"
        )
        return ops.squeeze(token, axis=-1)

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}
