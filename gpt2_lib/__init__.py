"""gpt2_lib: GPT-2 for Keras 3 on JAX, PyTorch and TensorFlow.

The subpackages (`layers`, `models`, `optimizers`, `samplers`,
`tokenizers`) are imported on first access (PEP 562), so that
`import gpt2_lib` (and the `gpt2-lib` command's `--help`) imports no Keras:
Keras picks its backend when it is first imported, and the command sets it
from `--backend` first.

Example:
>>> import gpt2_lib
>>> gpt2_lib.__version__
'0.1.0'
>>> type(gpt2_lib.samplers.get("greedy")).__name__
'GreedySampler'
"""

import importlib

__version__ = "0.1.0"

_SUBPACKAGES = ("layers", "models", "optimizers", "samplers", "tokenizers")

# Functions at the top level, from the module that defines them.
_FUNCTIONS = {"enable_compilation_cache": "backends.compilation_cache"}

__all__ = ["__version__", *_SUBPACKAGES, *_FUNCTIONS]


def __getattr__(name):
    if name in _SUBPACKAGES:
        module = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module
        return module
    if name in _FUNCTIONS:
        function = getattr(importlib.import_module(f"{__name__}.{_FUNCTIONS[name]}"), name)
        globals()[name] = function
        return function
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_SUBPACKAGES) | set(_FUNCTIONS))
