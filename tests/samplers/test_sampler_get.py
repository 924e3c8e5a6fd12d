"""`samplers.get` accepts KerasHub's sampler names, configs and instances (#17)."""

import pytest

from gpt2_lib import samplers

KERAS_HUB_CONFIGS = [
    ("TopKSampler", {"k": 10, "seed": 3, "temperature": 0.7}),
    ("TopPSampler", {"p": 0.9, "k": 40, "seed": None, "temperature": 1.0}),
    ("GreedySampler", {"temperature": 1.0}),
    ("RandomSampler", {"seed": 1, "temperature": 1.2}),
    ("BeamSampler", {"num_beams": 3, "return_all_beams": False, "temperature": 1.0}),
]


def keras_hub_serialized(class_name, config, package="keras_hub"):
    """What `keras_hub.samplers.serialize(sampler)` returns."""
    module = "".join("_" + c.lower() if c.isupper() else c for c in class_name).lstrip("_")
    return {
        "module": f"{package}.src.samplers.{module}",
        "class_name": class_name,
        "config": dict(config),
        "registered_name": f"{package}>{class_name}",
    }


@pytest.mark.parametrize("class_name, config", KERAS_HUB_CONFIGS)
@pytest.mark.parametrize("package", ["keras_hub", "keras_nlp"])
def test_keras_hub_configs_map_one_to_one(class_name, config, package):
    sampler = samplers.get(keras_hub_serialized(class_name, config, package))
    assert type(sampler).__name__ == class_name
    assert sampler.get_config() == {**sampler.get_config(), **config}


def test_keras_hub_instances_are_converted():
    # A stand-in for `keras_hub.samplers.TopKSampler(k=10)`: same module and config.
    TopKSampler = type("TopKSampler", (), {
        "__module__": "keras_hub.src.samplers.top_k_sampler",
        "get_config": lambda self: {"k": 10, "seed": None, "temperature": 0.5},
    })
    sampler = samplers.get(TopKSampler())
    assert isinstance(sampler, samplers.TopKSampler)
    assert (sampler.k, sampler.temperature) == (10, 0.5)


@pytest.mark.parametrize(
    "identifier",
    ["contrastive", keras_hub_serialized("ContrastiveSampler", {"k": 5, "alpha": 0.6})],
)
def test_contrastive_search_says_what_to_use_instead(identifier):
    with pytest.raises(ValueError, match="Contrastive search.*Use 'top_k'"):
        samplers.get(identifier)


def test_foreign_config_with_unknown_arguments_is_a_clear_error():
    with pytest.raises(ValueError, match="TopKSampler.*keras_hub.samplers.TopKSampler"):
        samplers.get(keras_hub_serialized("TopKSampler", {"k": 5, "top": 1}))
    with pytest.raises(ValueError, match="unknown class 'FancySampler'"):
        samplers.get(keras_hub_serialized("FancySampler", {}))
