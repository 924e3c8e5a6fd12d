"""GPT-2 causal language modeling preprocessor."""

import keras

from gpt2_lib.models.causal_lm_preprocessor import CausalLMPreprocessor
from gpt2_lib.models.gpt2.gpt2_backbone import GPT2Backbone
from gpt2_lib.tokenizers.gpt2_tokenizer import GPT2Tokenizer


@keras.saving.register_keras_serializable(package="gpt2_lib")
class GPT2CausalLMPreprocessor(CausalLMPreprocessor):
    """GPT-2 causal LM preprocessor.

    Meant for a GPT-2 causal LM task. It takes a string or a batch of
    strings, tokenizes them with a `GPT2Tokenizer`, adds `"<|endoftext|>"`
    as start and end token, pads (with `"<|endoftext|>"`) or truncates to
    `sequence_length`, and returns `(x, y, sample_weight)`, where `x` is
    `{"token_ids": int32, "padding_mask": bool}`, `y` is the next token at
    each position and `sample_weight` masks the padded labels. Outputs are
    NumPy arrays; a single string gives arrays without a batch axis.

    `generate_preprocess()` and `generate_postprocess()` are called by the
    task's `generate()`; they can also be called on their own.

    Args:
        tokenizer: A `gpt2_lib.models.GPT2Tokenizer`.
        sequence_length: int. The length of the packed inputs. Defaults to
            `1024`.
        add_start_token: bool. Whether to prepend the start token. Defaults
            to `True`.
        add_end_token: bool. Whether to append the end token. Defaults to
            `True`.

    Call arguments:
        x: A string or a batch of strings (list, 1-D NumPy array, TensorFlow
            string tensor).
        y: Must be `None`: the labels are made from `x`.
        sample_weight: Must be `None`.
        sequence_length: int. Overrides the configured `sequence_length`.

    Examples:

    >>> from gpt2_lib.models import GPT2CausalLMPreprocessor
    >>> preprocessor = GPT2CausalLMPreprocessor.from_preset(
    ...     "gpt2_tiny_shakespeare_en", sequence_length=128
    ... )
    >>> # One string: arrays of shape (128,).
    >>> x, y, sample_weight = preprocessor("Now is the winter")
    >>> x["token_ids"].shape, y.shape, sample_weight.shape
    ((128,), (128,), (128,))
    >>> # A batch: arrays of shape (2, 128).
    >>> x, y, sample_weight = preprocessor(["Good night", "sweet prince"])
    >>> x["padding_mask"].shape
    (2, 128)
    >>> # Generation.
    >>> prompts = preprocessor.generate_preprocess(["Now is the"])
    >>> preprocessor.generate_postprocess(prompts)
    ['Now is the']

    In a `tf.data` pipeline (with any Keras backend):

    ```python
    import tensorflow as tf

    def preprocess(text):
        x, y, w = preprocessor(text)
        return x["token_ids"], x["padding_mask"], y, w

    ds = tf.data.Dataset.from_tensor_slices(["a", "b", "c"]).batch(2)
    ds = ds.map(
        lambda s: tf.numpy_function(
            preprocess, [s], [tf.int32, tf.bool, tf.int32, tf.bool]
        )
    )
    ```
    """

    backbone_cls = GPT2Backbone
    tokenizer_cls = GPT2Tokenizer
