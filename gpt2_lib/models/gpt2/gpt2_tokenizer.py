"""`GPT2Tokenizer` in KerasHub's layout (`keras_hub.models.gpt2.gpt2_tokenizer`).

The class lives in `gpt2_lib.tokenizers.gpt2_tokenizer` (tokenizers import
nothing from models); this module re-exports it so that
`gpt2_lib.models.gpt2.gpt2_tokenizer.GPT2Tokenizer` keeps working.
"""

from gpt2_lib.tokenizers.gpt2_tokenizer import END_OF_TEXT
from gpt2_lib.tokenizers.gpt2_tokenizer import GPT2Tokenizer

__all__ = ["END_OF_TEXT", "GPT2Tokenizer"]
