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


# KerasHub's (and KerasNLP's) sampler classes whose arguments are ours, one to one.
_FOREIGN_PACKAGES = ("keras_hub", "keras_nlp")
_CLASS_NAMES = {cls.__name__: cls for cls in SAMPLERS.values()}
_NOT_IMPLEMENTED = {
    "contrastive": "ContrastiveSampler",
}
_NOT_IMPLEMENTED_HINT = (
    "Contrastive search (KerasHub's `ContrastiveSampler`, name 'contrastive') is not "
    "implemented in gpt2_lib. Use 'top_k' (`gpt2_lib.samplers.TopKSampler(k=...)`), "
    "'top_p' or 'beam' instead."
)


def _is_foreign(name):
    return isinstance(name, str) and name.split(".")[0].split(">")[0] in _FOREIGN_PACKAGES


def _from_class_name(class_name, config, origin):
    """One of our samplers from a class name and its constructor arguments."""
    if class_name == "ContrastiveSampler":
        raise ValueError(_NOT_IMPLEMENTED_HINT)
    cls = _CLASS_NAMES.get(class_name)
    if cls is None:
        raise ValueError(
            f"Could not interpret sampler {origin}: unknown class {class_name!r}. "
            f"gpt2_lib has {sorted(_CLASS_NAMES)} (the same arguments as KerasHub's)."
        )
    config = dict(config or {})
    config.pop("name", None)
    try:
        return cls(**config)
    except TypeError as error:
        raise ValueError(
            f"Could not build {cls.__name__} from {origin} with config {config!r}: {error}. "
            f"`gpt2_lib.samplers.{cls.__name__}` takes the arguments of "
            f"`keras_hub.samplers.{cls.__name__}`."
        ) from None


def _from_foreign_config(identifier):
    """A KerasHub/KerasNLP `serialize()` dict, as one of our samplers."""
    class_name = identifier.get("class_name")
    registered = identifier.get("registered_name") or ""
    if ">" in registered:
        class_name = registered.split(">", 1)[1]
    origin = f"config of {identifier.get('module') or registered}.{class_name}"
    return _from_class_name(class_name, identifier.get("config"), origin)


def get(identifier):
    """A `Sampler` from a name, a config dict, a class or an instance.

    KerasHub's samplers map one to one onto these: their names, their
    `keras_hub.samplers.serialize()` configs and their instances are
    accepted and give the gpt2_lib sampler of the same class and
    arguments (`keras_hub.samplers.TopKSampler(k=10)` gives
    `TopKSampler(k=10)`). KerasHub's contrastive search has no equivalent
    here and is refused with a hint.

    Args:
        identifier: one of `"greedy"`, `"top_k"`, `"top_p"`, `"random"`,
            `"beam"` (a new sampler with default arguments: `"top_k"` is
            `TopKSampler(k=5)`, as in KerasHub), a config dict from
            `serialize` (ours, KerasHub's or KerasNLP's), a `Sampler`
            subclass, a `Sampler` instance (returned as is), a KerasHub
            sampler instance, or None.

    Example:
    >>> import gpt2_lib
    >>> gpt2_lib.samplers.get("greedy")
    <gpt2_lib.samplers.greedy_sampler.GreedySampler object at ...>
    >>> gpt2_lib.samplers.get({
    ...     "module": "keras_hub.src.samplers.top_k_sampler",
    ...     "class_name": "TopKSampler",
    ...     "config": {"k": 10, "seed": None, "temperature": 0.7},
    ...     "registered_name": "keras_hub>TopKSampler",
    ... }).k
    10
    """
    if identifier is None or isinstance(identifier, Sampler):
        return identifier
    if isinstance(identifier, str):
        if identifier in _NOT_IMPLEMENTED:
            raise ValueError(_NOT_IMPLEMENTED_HINT)
        if identifier not in SAMPLERS:
            raise ValueError(
                f"Unknown sampler {identifier!r}. Use one of {sorted(SAMPLERS)}, "
                "or pass a `gpt2_lib.samplers.Sampler` instance."
            )
        return SAMPLERS[identifier]()
    if isinstance(identifier, dict):
        if _is_foreign(identifier.get("module")) or _is_foreign(identifier.get("registered_name")):
            return _from_foreign_config(identifier)
        return deserialize(identifier)
    if isinstance(identifier, type) and issubclass(identifier, Sampler):
        return identifier()
    if _is_foreign(type(identifier).__module__) and hasattr(identifier, "get_config"):
        return _from_class_name(
            type(identifier).__name__,
            identifier.get_config(),
            f"{type(identifier).__module__}.{type(identifier).__name__}",
        )
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
