"""Keras optimizers whose updates run in each backend's fused kernels."""

from gpt2_lib.optimizers.adam import Adam
from gpt2_lib.optimizers.adam import AdamW
from gpt2_lib.optimizers.adam import use_fused_adam

__all__ = ["Adam", "AdamW", "use_fused_adam"]
