"""Build a GPT-2 backbone and run it on a padded batch.

Run with any backend:

    KERAS_BACKEND=torch python examples/backbone_forward.py
"""

import keras
import numpy as np

import gpt2_lib

input_data = {
    "token_ids": np.ones((1, 12), "int32"),
    "padding_mask": np.array([[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0]]),
}
model = gpt2_lib.models.GPT2Backbone(
    vocabulary_size=50257,
    num_layers=12,
    num_heads=12,
    hidden_dim=768,
    intermediate_dim=3072,
    max_sequence_length=1024,
)
hidden_states = model(input_data)
print(f"backend: {keras.backend.backend()}")
print(f"parameters: {model.count_params():,}")
print(f"last hidden state: {tuple(hidden_states.shape)}")
print(f"token embedding: {model.token_embedding.embeddings.shape}")
