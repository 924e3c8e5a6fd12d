"""Tokenizers, mirroring `keras_hub.tokenizers`."""

from gpt2_lib.tokenizers.byte_pair_tokenizer import BytePairTokenizer
from gpt2_lib.tokenizers.tokenizer import Tokenizer

__all__ = ["BytePairTokenizer", "GPT2Tokenizer", "Tokenizer"]


def __getattr__(name):
    # `keras_hub.tokenizers.GPT2Tokenizer` exists too. Imported lazily: the
    # GPT-2 tokenizer module imports this package.
    if name == "GPT2Tokenizer":
        from gpt2_lib.models.gpt2.gpt2_tokenizer import GPT2Tokenizer

        return GPT2Tokenizer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
