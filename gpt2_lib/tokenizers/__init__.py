"""Tokenizers, mirroring `keras_hub.tokenizers`."""

from gpt2_lib.tokenizers.byte_pair_tokenizer import BytePairTokenizer
from gpt2_lib.tokenizers.tokenizer import Tokenizer
