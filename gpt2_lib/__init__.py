"""gpt2_lib: GPT-2 for Keras 3 on JAX, PyTorch and TensorFlow."""

from gpt2_lib import layers
from gpt2_lib import models
from gpt2_lib import optimizers
from gpt2_lib import samplers
from gpt2_lib import tokenizers

__version__ = "0.1.0"
