"""Write a ~100 MB random GPT-2 preset for the memory test: `python -m ... DIR`."""

import sys

import keras

import gpt2_lib

if __name__ == "__main__":
    keras.utils.set_random_seed(0)
    backbone = gpt2_lib.models.GPT2Backbone(
        vocabulary_size=8192, num_layers=6, num_heads=8, hidden_dim=512,
        intermediate_dim=2048, max_sequence_length=256,
    )
    backbone.save_to_preset(sys.argv[1])
