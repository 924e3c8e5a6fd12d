"""Learned absolute position embedding, indexed by position ids."""

import keras
from keras import ops


def position_ids_from_padding_mask(padding_mask):
    """Position of every token counted over the non-padding tokens before it.

    A row `[0, 0, 1, 1, 1]` (left padding) gives `[0, 0, 0, 1, 2]`, so a prompt
    gets the same positions whether or not it is padded on the left; a row
    padded on the right gives `0, 1, 2, ...` as usual.

    Args:
        padding_mask: `(batch, seq)` tensor, nonzero/True for real tokens.

    Returns:
        `(batch, seq)` int32 position ids.
    """
    counts = ops.cumsum(ops.cast(padding_mask, "int32"), axis=1)
    return ops.maximum(counts - 1, 0)


@keras.saving.register_keras_serializable(package="gpt2_lib")
class PositionEmbedding(keras.layers.Layer):
    """A learned embedding of absolute positions `0 .. sequence_length - 1`.

    Args:
        sequence_length: int. The number of positions (the model's maximum
            sequence length).
        hidden_dim: int. The size of each position's embedding.
        initializer: the initializer of the `(sequence_length, hidden)` table.
        **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        padding_mask: `(batch, seq)` mask of real tokens; used to count
            positions when `position_ids` is None.
        position_ids: optional `(batch, seq)` int tensor of explicit positions.

    Example:
    >>> layer = PositionEmbedding(sequence_length=16, hidden_dim=8)
    >>> tuple(layer(np.ones((2, 5), "int32")).shape)
    (2, 5, 8)
    """

    def __init__(self, sequence_length, hidden_dim, initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.sequence_length = int(sequence_length)
        self.hidden_dim = int(hidden_dim)
        self.initializer = keras.initializers.get(initializer)

    def build(self, *args, **kwargs):
        self.embeddings = self.add_weight(
            name="embeddings",
            shape=(self.sequence_length, self.hidden_dim),
            initializer=self.initializer,
        )
        self.built = True

    def call(self, padding_mask, position_ids=None):
        if position_ids is None:
            position_ids = position_ids_from_padding_mask(padding_mask)
        return ops.take(self.embeddings, ops.cast(position_ids, "int32"), axis=0)

    def compute_output_spec(self, padding_mask, position_ids=None):
        return keras.KerasTensor(
            tuple(padding_mask.shape) + (self.hidden_dim,), dtype=self.compute_dtype
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "sequence_length": self.sequence_length,
                "hidden_dim": self.hidden_dim,
                "initializer": keras.initializers.serialize(self.initializer),
            }
        )
        return config
