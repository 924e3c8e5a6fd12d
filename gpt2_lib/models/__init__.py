"""Public model API, mirroring `keras_hub.models`."""

from gpt2_lib.models.backbone import Backbone
from gpt2_lib.models.causal_lm import CausalLM
from gpt2_lib.models.causal_lm_preprocessor import CausalLMPreprocessor
from gpt2_lib.models.gpt2.gpt2_backbone import GPT2Backbone
from gpt2_lib.models.gpt2.gpt2_causal_lm import GPT2CausalLM
from gpt2_lib.models.gpt2.gpt2_causal_lm_preprocessor import GPT2CausalLMPreprocessor
from gpt2_lib.models.gpt2.gpt2_preprocessor import GPT2Preprocessor
from gpt2_lib.models.gpt2.gpt2_tokenizer import GPT2Tokenizer
from gpt2_lib.models.preprocessor import Preprocessor
from gpt2_lib.models.task import Task
from gpt2_lib.tokenizers import Tokenizer

__all__ = [
    "Backbone",
    "CausalLM",
    "CausalLMPreprocessor",
    "GPT2Backbone",
    "GPT2CausalLM",
    "GPT2CausalLMPreprocessor",
    "GPT2Preprocessor",
    "GPT2Tokenizer",
    "Preprocessor",
    "Task",
    "Tokenizer",
]
