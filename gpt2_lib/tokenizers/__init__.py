"""Tokenizers, mirroring `keras_hub.tokenizers`.

Tokenizers import nothing from `gpt2_lib.models`: `GPT2Tokenizer` lives
here, and `gpt2_lib.models.GPT2Tokenizer` is the same class.
"""

from gpt2_lib.tokenizers.byte_pair_tokenizer import BytePairTokenizer
from gpt2_lib.tokenizers.gpt2_tokenizer import GPT2Tokenizer
from gpt2_lib.tokenizers.tokenizer import Tokenizer

__all__ = ["BytePairTokenizer", "GPT2Tokenizer", "Tokenizer"]
