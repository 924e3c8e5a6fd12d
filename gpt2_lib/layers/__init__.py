"""GPT-2's building blocks."""

from keras.layers import ReversibleEmbedding

from gpt2_lib.layers.attention_mask import CausalAttentionMask
from gpt2_lib.layers.attention_mask import causal_attention_mask
from gpt2_lib.layers.cached_multi_head_attention import CachedMultiHeadAttention
from gpt2_lib.layers.position_embedding import PositionEmbedding
from gpt2_lib.layers.position_embedding import position_ids_from_padding_mask
from gpt2_lib.layers.transformer_decoder import TransformerDecoder
from gpt2_lib.layers.weight_table import WeightTableEntry

__all__ = [
    "CachedMultiHeadAttention",
    "CausalAttentionMask",
    "PositionEmbedding",
    "ReversibleEmbedding",
    "TransformerDecoder",
    "WeightTableEntry",
    "causal_attention_mask",
    "position_ids_from_padding_mask",
]
