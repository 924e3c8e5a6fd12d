"""Optimizer helpers (backend-specific update kernels for Keras optimizers)."""

from gpt2_lib.optimizers.fused_adam import use_fused_adam
