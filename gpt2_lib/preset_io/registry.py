"""The classes a preset names, found only through Keras' registry.

Every gpt2_lib class is registered under the package `gpt2_lib`
(`@keras.saving.register_keras_serializable(package="gpt2_lib")`). A preset
names a class as `gpt2_lib>X` (saved here) or `keras_hub>X` (saved by
KerasHub); both resolve to the registered `gpt2_lib>X`. Anything else is
refused: a preset never makes gpt2_lib import a module or run code.

The registry is filled by importing the model classes, which whoever calls
`from_preset()` has done.

Example:
>>> import gpt2_lib
>>> class_for("keras_hub>GPT2Backbone").__name__
'GPT2Backbone'
"""

import inspect

import keras

from gpt2_lib.utils import builtin_presets as builtin

PACKAGE = "gpt2_lib"
KERAS_HUB = "keras_hub"
ALLOWED_PACKAGES = (KERAS_HUB, PACKAGE)

# Keyword arguments every Keras model/layer accepts, and so every config may hold.
LAYER_KEYS = ("name", "trainable", "dtype")


def registered_class(name):
    """The class registered as `gpt2_lib>{name}`, or None."""
    return keras.saving.get_registered_object(f"{PACKAGE}>{name}")


def require_class(name, where):
    """The class registered as `gpt2_lib>{name}`, or a ValueError naming `where`."""
    cls = registered_class(name)
    if cls is None:
        raise ValueError(
            f"{where} needs the class 'gpt2_lib>{name}', which is not registered. "
            "Import gpt2_lib's models first (`import gpt2_lib.models`)."
        )
    return cls


def class_for(registered_name, class_name=None, module=None, where="config"):
    """The gpt2_lib class for a serialized object's names.

    Args:
        registered_name: `"keras_hub>X"` or `"gpt2_lib>X"`.
        class_name: the serialized `class_name`; must be `X` if given.
        module: the serialized `module`; must be in the same package if given.
        where: the file (and preset) the names come from, for errors.

    Returns:
        The class registered as `gpt2_lib>X`.
    """
    if not isinstance(registered_name, str) or ">" not in registered_name:
        raise ValueError(
            f"The {where} names class {class_name!r} with registered_name="
            f"{registered_name!r}; expected 'keras_hub>ClassName' or "
            "'gpt2_lib>ClassName'. Is this a KerasHub preset?"
        )
    package, name = registered_name.split(">", 1)
    if package not in ALLOWED_PACKAGES:
        raise ValueError(
            f"The {where} names class {registered_name!r} from package "
            f"{package!r}; gpt2_lib only loads its own classes and KerasHub's "
            f"equivalents ({', '.join(p + '>...' for p in ALLOWED_PACKAGES)})."
        )
    if class_name is not None and class_name != name:
        raise ValueError(
            f"The {where} is contradictory: class_name={class_name!r} but "
            f"registered_name={registered_name!r}. The file was edited or is "
            f"corrupt; make both name the same class (e.g. {name!r})."
        )
    if module is not None and (
        not isinstance(module, str) or module.split(".")[0] != package
    ):
        raise ValueError(
            f"The {where} is contradictory: module={module!r} is not in package "
            f"{package!r} of registered_name={registered_name!r}. The file was "
            f"edited or is corrupt; set module to a {package!r} module."
        )
    cls = registered_class(name)
    if cls is None:
        raise ValueError(
            f"The {where} names class {registered_name!r}, which gpt2_lib does "
            f"not provide. Load it with {package}, or pick a gpt2_lib class "
            "(e.g. GPT2Backbone, GPT2CausalLM)."
        )
    return cls


def check_subclass(found, cls, preset, what):
    """Raise a ValueError unless `found` is `cls` or a subclass of it."""
    if not (isinstance(cls, type) and issubclass(found, cls)):
        raise ValueError(
            f"Preset {preset!r} holds a {found.__name__} {what}, which is not a "
            f"{cls.__name__}. Call `{found.__name__}.from_preset()` (or a base "
            f"class such as `{found.__mro__[1].__name__}`) instead."
        )


def constructor_parameters(cls):
    """`{name: inspect.Parameter}` that `cls(...)` accepts by keyword.

    Follows `**kwargs` up the class hierarchy through gpt2_lib's classes (a
    Keras base class accepts only `LAYER_KEYS` that matter).
    """
    parameters = {}
    for klass in cls.__mro__:
        if klass is object or klass.__module__.split(".")[0] == "keras":
            break
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        more = False
        for name, parameter in inspect.signature(init).parameters.items():
            if parameter.kind is parameter.VAR_KEYWORD:
                more = True
            elif name != "self" and parameter.kind is not parameter.VAR_POSITIONAL:
                parameters.setdefault(name, parameter)
        if not more:
            break
    return parameters


def accepted_keys(cls):
    """The config keys `cls(**config)` uses."""
    return set(constructor_parameters(cls)) | set(LAYER_KEYS)


def check_overrides(cls, kwargs):
    """Raise a TypeError for overrides `cls` does not accept.

    A functional `keras.Model` silently drops unknown keyword arguments, so
    a misspelled override (`dropuot=0.2`) would be ignored without this.
    """
    unknown = sorted(set(kwargs) - accepted_keys(cls))
    if unknown:
        raise TypeError(
            f"{cls.__name__}.from_preset() got unexpected keyword argument(s) "
            f"{unknown}. Accepted overrides: {sorted(accepted_keys(cls))}."
        )


def presets_for_class(cls):
    """`{name: metadata}` of built-in presets that `cls` can load.

    A preset matches when its backbone class is `cls` or a subclass of it
    (so `Backbone.presets` lists every preset), or when `cls` is a task or
    preprocessor whose `backbone_cls` is that class.

    Example:
    >>> import gpt2_lib
    >>> "gpt2_base_en" in presets_for_class(gpt2_lib.models.GPT2CausalLM)
    True
    """
    target = getattr(cls, "backbone_cls", None) or cls
    result = {}
    for name, metadata in builtin.all_presets().items():
        preset_cls = registered_class(metadata["class_name"])
        if preset_cls is None:
            continue
        if isinstance(target, type) and issubclass(preset_cls, target):
            result[name] = dict(metadata)
    return result
