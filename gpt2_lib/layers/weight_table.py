"""One row of a backbone's weight table (`GPT2Backbone.weight_table()`)."""

from typing import NamedTuple

import keras


class WeightTableEntry(NamedTuple):
    """A layer that owns weights, under names that never change.

    Attributes:
        path: the layer's path in the backbone, e.g.
            `"transformer_layer_3/self_attention/query"` (the prefix of its
            variables' `path`, and what LoRA files and layout maps key on).
        role: what the layer is, the same in every block: `"token_embedding"`,
            `"position_embedding"`, `"layer_norm"` (the final one), or a
            block's sublayer name (`"self_attention/query"`, ...; see
            `TransformerDecoder.named_sublayers`).
        block: the block index, or None outside the blocks.
        layer: the Keras layer.
    """

    path: str
    role: str
    block: int | None
    layer: keras.layers.Layer
