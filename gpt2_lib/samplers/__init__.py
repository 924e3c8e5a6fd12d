"""Decoding strategies for `CausalLM.generate()`, mirroring `keras_hub.samplers`."""

import keras

from gpt2_lib.samplers.beam_sampler import BeamSampler
from gpt2_lib.samplers.greedy_sampler import GreedySampler
from gpt2_lib.samplers.random_sampler import RandomSampler
from gpt2_lib.samplers.sampler import Sampler
from gpt2_lib.samplers.top_k_sampler import TopKSampler
from gpt2_lib.samplers.top_p_sampler import TopPSampler

SAMPLERS = {
    "beam": BeamSampler,
    "greedy": GreedySampler,
    "random": RandomSampler,
    "top_k": TopKSampler,
    "top_p": TopPSampler,
}


def serialize(sampler):
    """A sampler's config dict, for `deserialize`."""
    return keras.saving.serialize_keras_object(sampler)


def deserialize(config, custom_objects=None):
    """A `Sampler` from a name or a config dict written by `serialize`."""
    if isinstance(config, str):
        return get(config)
    return keras.saving.deserialize_keras_object(
        config, module_objects=dict(SAMPLERS), custom_objects=custom_objects
    )


def get(identifier):
    """A `Sampler` from a name, a config dict, a class or an instance.

    Args:
        identifier: one of `"greedy"`, `"top_k"`, `"top_p"`, `"random"`,
            `"beam"` (a new sampler with default arguments), a config dict
            from `serialize`, a `Sampler` subclass, a `Sampler` instance
            (returned as is), or None.

    Example:
    >>> gpt2_lib.samplers.get("greedy")
    <gpt2_lib.samplers.greedy_sampler.GreedySampler object at ...>
    """
    if identifier is None or isinstance(identifier, Sampler):
        return identifier
    if isinstance(identifier, str):
        if identifier not in SAMPLERS:
            raise ValueError(
                f"Unknown sampler {identifier!r}. Use one of {sorted(SAMPLERS)}, "
                "or pass a `gpt2_lib.samplers.Sampler` instance."
            )
        return SAMPLERS[identifier]()
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if isinstance(identifier, type) and issubclass(identifier, Sampler):
        return identifier()
    raise ValueError(
        f"Could not interpret sampler {identifier!r} (type {type(identifier).__name__}). "
        f"Pass a name from {sorted(SAMPLERS)} or a `gpt2_lib.samplers.Sampler`."
    )


__all__ = [
    "BeamSampler",
    "GreedySampler",
    "RandomSampler",
    "Sampler",
    "TopKSampler",
    "TopPSampler",
    "deserialize",
    "get",
    "serialize",
]
