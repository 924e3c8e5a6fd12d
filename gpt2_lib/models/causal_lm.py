"""`CausalLM`: the base class of generative language models, with `generate()`."""

import itertools

import keras
import numpy as np
from keras import ops
from keras import tree

from gpt2_lib import optimizers
from gpt2_lib import samplers as samplers_lib
from gpt2_lib.backends import loop_weights
from gpt2_lib.backends import xla_cpu
from gpt2_lib.models import lora
from gpt2_lib.models.generation_inputs import check_max_length
from gpt2_lib.models.generation_inputs import check_stop_token_ids
from gpt2_lib.models.generation_inputs import padded_to_bucket
from gpt2_lib.models.generation_inputs import token_inputs
from gpt2_lib.models.task import Task
from gpt2_lib.utils.quantization import weights_signature
from gpt2_lib.utils.text_inputs import canonicalize_texts
from gpt2_lib.utils.text_inputs import decode_strings
from gpt2_lib.utils.text_inputs import is_string_data
from gpt2_lib.utils.text_inputs import is_tf_dataset
from gpt2_lib.utils.text_inputs import to_numpy
from gpt2_lib.utils.validation import check_ids


def _tensorflow_cpu_only():
    """True on the TensorFlow backend when TensorFlow sees no GPU."""
    if keras.config.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return not tf.config.list_physical_devices("GPU")


def _is_per_token_loss(loss):
    """A loss whose value reduces independent per-token terms over the last axis."""
    return (
        isinstance(loss, keras.losses.SparseCategoricalCrossentropy)
        and loss._fn_kwargs.get("axis", -1) == -1
    )


def _token_batch(y, y_pred, sample_weight):
    """`(batch, seq)` labels and weights for `(batch, seq, vocab)` predictions."""
    rank = lambda value: len(getattr(value, "shape", ()))  # noqa: E731
    return (
        ops.is_tensor(y_pred)
        and rank(y_pred) == 3
        and rank(y) == 2
        and (sample_weight is None or rank(sample_weight) == 2)
        and getattr(y_pred, "_keras_mask", None) is None
    )


@keras.saving.register_keras_serializable(package="gpt2_lib")
class CausalLM(Task):
    """Base class of causal (next-token) language models.

    A `CausalLM` predicts each token from the ones before it. `fit()` trains
    it on text (through its preprocessor) or on token ids; `generate()`
    continues prompts token by token, with the decoding strategy set by the
    `sampler` argument of `compile()`.

    Generation is compiled once per input shape and backend (`jax.jit`,
    `tf.function(jit_compile=True, autograph=False)`; eager under
    `torch.no_grad()` on torch), with lengths padded up to a multiple of
    128 positions, so that every `max_length` from 897 to 1024
    shares one program, and reused across calls: `generate_function` stays
    the same object until `compile()` is called again or the weights change
    structure (quantized, LoRA adapters added or merged, a weight replaced
    or of another dtype), through the task or its backbone.

    Example:
    ```python
    causal_lm = gpt2_lib.models.CausalLM.from_preset("gpt2_base_en")
    causal_lm.compile(sampler="greedy")
    causal_lm.generate("Keras is a", max_length=64)
    ```
    """

    def __init__(self, *args, **kwargs):
        self.generate_function = None
        self._generate_signature = None
        self.sampler = None
        super().__init__(*args, **kwargs)

    def compile(
        self,
        optimizer="auto",
        loss="auto",
        *,
        weighted_metrics="auto",
        sampler="top_k",
        **kwargs,
    ):
        """Configure training and generation.

        Args:
            optimizer: `"auto"` (AdamW, learning rate 5e-5, weight decay 0.01
                except on biases, LayerNorm and embeddings, gradient norm
                clipped to 1), an optimizer name or a `keras.Optimizer`.
            loss: `"auto"` (`SparseCategoricalCrossentropy(from_logits=True)`;
                padding is masked out through the sample weights the
                preprocessor returns), a loss name or a `keras.losses.Loss`.
            weighted_metrics: `"auto"` (`SparseCategoricalAccuracy`,
                weighted so that padding does not count) or a list of metrics.
            sampler: the decoding strategy of `generate()`: `"greedy"`,
                `"top_k"`, `"top_p"`, `"random"`, `"beam"`, or a
                `gpt2_lib.samplers.Sampler` instance.
            **kwargs: other `keras.Model.compile` arguments. `jit_compile`
                defaults to `"auto"`, except on TensorFlow without a GPU where
                it defaults to False: TensorFlow's own CPU kernels train GPT-2
                faster than XLA (see `benchmarks/NOTES.md`). It also applies
                to `generate()`, which with `"auto"` runs under XLA on every
                device (GPT-2 base float32 on CPU: 1.26x / 1.71x faster than
                TensorFlow's own kernels at batch 1 / 8).
        """
        sampler = samplers_lib.get(sampler)
        self._jit_generate = kwargs.get("jit_compile", "auto")
        if kwargs.get("jit_compile", "auto") == "auto" and _tensorflow_cpu_only():
            kwargs["jit_compile"] = False
        if optimizer == "auto":
            # Keras' AdamW, updated in one fused kernel on torch and TensorFlow.
            optimizer = optimizers.AdamW(
                learning_rate=5e-5, weight_decay=0.01, global_clipnorm=1.0
            )
            optimizer.exclude_from_weight_decay(
                var_names=["bias", "gamma", "beta", "embeddings"]
            )
        if loss == "auto":
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if weighted_metrics == "auto":
            weighted_metrics = [keras.metrics.SparseCategoricalAccuracy()]
        super().compile(
            optimizer=optimizer, loss=loss, weighted_metrics=weighted_metrics, **kwargs
        )
        self.sampler = sampler
        # A new sampler (or new compile flags) needs a new generate function.
        self.generate_function = None

    def get_compile_config(self):
        """Keras' compile config plus the sampler (saved in `.keras` files)."""
        config = super().get_compile_config() or {}
        if self.sampler is not None:
            config["sampler"] = samplers_lib.serialize(self.sampler)
        return config

    def compile_from_config(self, config):
        """Compile as the saved model was (`keras.saving.load_model`)."""
        config = keras.saving.deserialize_keras_object(dict(config))
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    # Training data ------------------------------------------------------------

    def _prepare_data(self, x, y=None, sample_weight=None, batch_size=None, shuffle=False, labels=True):
        # Token ids without labels: predict each next token, masking padding.
        # (`predict` takes the token ids as they are: logits for every position.)
        if isinstance(x, dict) and "token_ids" in x:
            check_ids(x["token_ids"], "token_ids", self.backbone.vocabulary_size)
        if labels and isinstance(x, dict) and "token_ids" in x and y is None and sample_weight is None:
            token_ids = to_numpy(x["token_ids"])
            padding_mask = to_numpy(
                x.get("padding_mask", np.ones_like(token_ids))
            ).astype(bool)
            if token_ids.ndim != 2 or token_ids.shape[1] < 2:
                raise ValueError(
                    "Token ids for training must have shape (batch, sequence) with "
                    f"sequence >= 2 (inputs and next-token labels). Received "
                    f"shape {token_ids.shape}."
                )
            x = {"token_ids": token_ids[:, :-1], "padding_mask": padding_mask[:, :-1]}
            y = token_ids[:, 1:]
            sample_weight = (padding_mask[:, 1:] & padding_mask[:, :-1]).astype("float32")
            return x, y, sample_weight, batch_size
        return super()._prepare_data(x, y, sample_weight, batch_size, shuffle, labels)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The compiled loss, on `(batch * seq, vocab)` rows for per-token losses.

        A per-token loss (sparse categorical cross-entropy) has the same value
        on the flattened rows, and torch computes it there without moving the
        vocabulary axis: on GPT-2 base, batch 4 x 256, that saves two copies
        of the logits and a strided log-softmax (~0.4 s per training step).
        """
        if _is_per_token_loss(self.loss) and _token_batch(y, y_pred, sample_weight):
            y_pred = ops.reshape(y_pred, (-1, ops.shape(y_pred)[-1]))
            y = ops.reshape(y, (-1,))
            if sample_weight is not None:
                sample_weight = ops.reshape(sample_weight, (-1,))
        return super().compute_loss(x, y, y_pred, sample_weight, training=training)

    # Generation ---------------------------------------------------------------

    def generation_blocks(self):
        """A backend fast path for one generation's cached forward passes, or None."""
        return None

    def generate_step(self, inputs, stop_token_ids=None):
        """Generate for one batch of `{"token_ids", "padding_mask"}` (compilable).

        Subclasses implement this with their model's cached forward pass.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement `generate_step()`.")

    def _post_quantize(self, mode, **kwargs):
        super()._post_quantize(mode, **kwargs)
        # Drop the compiled function now: on TensorFlow it holds the float
        # kernels it captured.
        self.generate_function = None

    def make_generate_function(self):
        """The compiled generation function, built on first use.

        Returns a function `(inputs, stop_token_ids) -> outputs` over
        dicts of `"token_ids"` and `"padding_mask"`; it is cached in
        `self.generate_function` until the next `compile()`, or until the
        weights change structure (`quantize()` on the task or its backbone,
        LoRA adapters, a dtype change): a compiled function captures the
        weights it was traced with, so it is rebuilt for the new ones.
        """
        signature = weights_signature(self)
        if self.generate_function is not None and signature == self._generate_signature:
            return self.generate_function
        if self._generate_signature is not None and signature != self._generate_signature:
            # Weights were replaced behind our back (`backbone.quantize()`):
            # let go of the old tensors on torch too.
            lora.refresh_torch_parameters(self)
        self._generate_signature = signature
        backend = keras.config.backend()
        if backend == "torch":
            import torch

            def generate_function(inputs, stop_token_ids=None):
                with torch.no_grad():
                    return self.generate_step(inputs, stop_token_ids)

        elif backend == "tensorflow" and not self.run_eagerly:
            generate_function = self._make_tensorflow_generate_function()
        elif backend == "jax" and not self.run_eagerly:
            generate_function = self._make_jax_generate_function()
        else:
            generate_function = self.generate_step
        self.generate_function = generate_function
        return generate_function

    def _xla_for_generation(self):
        """Whether TensorFlow compiles `generate()` with XLA (see `compile`)."""
        jit = getattr(self, "_jit_generate", "auto")
        return True if jit == "auto" else bool(jit)

    def _make_tensorflow_generate_function(self):
        """`generate_step` under `tf.function` (no AutoGraph: the loops are
        `ops` loops already, and converting the code took 3.4 s of the first
        call's 5.8 s of tracing).

        Under XLA, half-precision weights enter as arguments, as their
        zero-copy `uint16` bits (`loop_weights.carry_in`), for
        `loop_weights` to widen them one layer at a time: read as variables,
        XLA hoisted float32 copies of them out of the loops (GPT-2 base
        bfloat16: 1453 MB peak for 237 MB of weights), and bitcast inside
        the function it kept a copy of their bits.
        """
        import tensorflow as tf

        jit = self._xla_for_generation()
        variables = self.trainable_variables + self.non_trainable_variables
        if not jit:
            return tf.function(self.generate_step, jit_compile=False, autograph=False)
        if not any(loop_weights.enters_as_bits(v) for v in variables):

            def generate_in_xla(inputs, stop_token_ids=None):
                with xla_cpu.tensorflow_xla():
                    return self.generate_step(inputs, stop_token_ids)

            return tf.function(generate_in_xla, jit_compile=True, autograph=False)

        def stateless_generate(values, inputs, stop_token_ids):
            mapping = zip(variables, loop_weights.carry_out(values, variables))
            with keras.StatelessScope(state_mapping=mapping) as scope, xla_cpu.tensorflow_xla():
                outputs = self.generate_step(inputs, stop_token_ids)
            for variable in self.sampler.variables:  # e.g. a seed's advance
                value = scope.get_current_value(variable)
                if value is not None:
                    variable.assign(value)
            return outputs

        compiled = tf.function(stateless_generate, jit_compile=True, autograph=False)

        def generate_function(inputs, stop_token_ids=None):
            return compiled(loop_weights.carry_in(variables), inputs, stop_token_ids)

        # As `tf.function`'s, for the compiled program (`stage="optimized_hlo"`).
        generate_function.experimental_get_compiler_ir = (
            lambda inputs, stop_token_ids=None: compiled.experimental_get_compiler_ir(
                loop_weights.carry_in(variables), inputs, stop_token_ids
            )
        )
        return generate_function

    def _make_jax_generate_function(self):
        """`generate_step` as a pure function of the variables, under `jax.jit`."""
        import functools

        import jax

        @functools.partial(jax.jit, static_argnames=("stop_token_ids",))
        def compiled(state, inputs, stop_token_ids):
            sampler_values, trainable_values, non_trainable_values = state
            variables = self.trainable_variables + self.non_trainable_variables
            values = loop_weights.carry_out(trainable_values + non_trainable_values, variables)
            mapping = itertools.chain(
                zip(self.sampler.variables, sampler_values), zip(variables, values)
            )
            with keras.StatelessScope(state_mapping=mapping) as scope:
                outputs = self.generate_step(inputs, stop_token_ids)
            sampler_values = [
                scope.get_current_value(v) if scope.get_current_value(v) is not None else value
                for v, value in zip(self.sampler.variables, sampler_values)
            ]
            return outputs, sampler_values

        def arguments(inputs, stop_token_ids):
            state = (
                [v.value for v in self.sampler.variables],
                loop_weights.carry_in(self.trainable_variables),
                loop_weights.carry_in(self.non_trainable_variables),
            )
            return state, tree.map_structure(ops.convert_to_tensor, inputs), stop_token_ids

        def generate_function(inputs, stop_token_ids=None):
            outputs, sampler_values = compiled(*arguments(inputs, stop_token_ids))
            for variable, value in zip(self.sampler.variables, sampler_values):
                variable.assign(value)
            return outputs

        # `jax.stages.Lowered` of a call: `.compile().memory_analysis()`, `.as_text()`.
        generate_function.lower = lambda inputs, stop_token_ids=None: compiled.lower(
            *arguments(inputs, stop_token_ids)
        )
        return generate_function

    def _padded_to_bucket(self, batch):
        """Compiled generation (JAX, TensorFlow): `batch` padded to a multiple
        of 128 positions (`generation_inputs.padded_to_bucket`); torch and
        eager runs take it as it is."""
        if keras.config.backend() not in ("jax", "tensorflow") or self.run_eagerly:
            return batch
        return padded_to_bucket(batch, self.backbone.max_sequence_length)

    def _stop_token_ids(self, stop_token_ids):
        if isinstance(stop_token_ids, str) and stop_token_ids == "auto":
            if self.preprocessor is None:
                raise ValueError(
                    'stop_token_ids="auto" uses the tokenizer\'s end token, but this '
                    "model has no preprocessor. Pass `stop_token_ids=None` to generate "
                    "until `max_length`, or a list of ids, e.g. `stop_token_ids=[50256]`."
                )
            tokenizer = self.preprocessor.tokenizer
            stop_token_ids = [tokenizer.end_token_id]
        return check_stop_token_ids(stop_token_ids, self.backbone.vocabulary_size)

    def _check_max_length(self, max_length):
        return check_max_length(max_length, self.backbone.max_sequence_length)

    def _token_inputs(self, inputs, max_length):
        return token_inputs(
            inputs, max_length, self.backbone.vocabulary_size, self.backbone.max_sequence_length
        )

    def _string_inputs(self, inputs, max_length):
        """Tokenize prompts with the preprocessor, with clear errors."""
        if isinstance(inputs, (list, tuple)) and not inputs:
            raise ValueError("`generate()` got an empty list of prompts.")
        prompts, batched = canonicalize_texts(inputs, caller="generate()")
        is_scalar = not batched
        if not prompts:
            raise ValueError("`generate()` got an empty list of prompts.")
        for i, prompt in enumerate(prompts):
            if not prompt:
                raise ValueError(
                    f"Prompt {i} is an empty string. Give every prompt some text."
                )
        if max_length is None:
            max_length = self._check_max_length(self.preprocessor.sequence_length)
        x = self.preprocessor.generate_preprocess(prompts, sequence_length=max_length)
        padding_mask = np.asarray(x["padding_mask"]).astype(bool)
        full = padding_mask.all(axis=1)
        if full.any():
            row = int(np.argmax(full))
            count = len(self.preprocessor.tokenizer.tokenize(prompts[row]))
            raise ValueError(
                f"Prompt {row} has {count} tokens (plus the start token), which does "
                f"not leave room to generate within max_length={max_length}. Pass a "
                "larger `max_length` or a shorter prompt."
            )
        return {
            "token_ids": np.asarray(x["token_ids"]).astype("int32"),
            "padding_mask": padding_mask,
        }, is_scalar

    def stream_generate(self, prompt, max_length=None, stop_token_ids="auto"):
        """Yield the continuation of one string prompt as it is produced.

        Runs the decoding loop one token at a time in Python (the cached
        forward pass, the compiled sampler's `compute_probabilities` and
        `get_next_token`), so each piece of text can be shown as soon as it
        exists. With a greedy sampler the pieces join to exactly the text
        `generate(prompt, strip_prompt=True)` returns. Per token it is
        slower than `generate()`, which compiles the whole loop: use it for
        interactive output. Beam search cannot stream (the best beam is
        known only at the end).

        Args:
            prompt: a string.
            max_length: int, total length in tokens (prompt included);
                defaults to the preprocessor's `sequence_length`.
            stop_token_ids: as for `generate()`.

        Yields:
            str pieces of the continuation. A piece is held back while it
            ends inside a multi-byte UTF-8 character.

        Example:
        ```python
        for piece in causal_lm.stream_generate("ROMEO.", max_length=64):
            print(piece, end="", flush=True)
        ```
        """
        from gpt2_lib.samplers import BeamSampler

        if isinstance(self.sampler, BeamSampler):
            raise ValueError(
                "Beam search cannot stream: the best beam is known only at the end. "
                "Use `generate()`, or compile with another sampler."
            )
        if self.preprocessor is None or not isinstance(prompt, str):
            raise ValueError(
                "`stream_generate()` takes one string prompt and needs a preprocessor; "
                f"received {type(prompt).__name__}. Use `generate()` for batches or token ids."
            )
        max_length = self._check_max_length(max_length)
        stop_token_ids = self._stop_token_ids(stop_token_ids) or ()
        batch, _ = self._string_inputs([prompt], max_length)
        token_ids = batch["token_ids"].copy()  # (1, length)
        length = token_ids.shape[1]
        end = int(batch["padding_mask"][0].sum())
        real = np.ones_like(token_ids, dtype=bool)  # new tokens are real tokens
        cache = self.backbone.build_cache(1, length)
        blocks = self.generation_blocks()
        if end > 1:
            _, _, cache = self.call_with_cache(
                token_ids[:, : end - 1], real, cache, 0, blocks=blocks
            )
        tokenizer = self.preprocessor.tokenizer
        new_ids, shown = [], ""
        for index in range(end, length):
            logits, _, cache = self.call_with_cache(
                token_ids[:, index - 1 : index], real, cache, index - 1, blocks=blocks
            )
            probabilities = self.sampler.compute_probabilities(logits[:, 0, :])
            next_token = int(to_numpy(self.sampler.get_next_token(probabilities))[0])
            if next_token in stop_token_ids:
                break
            token_ids[0, index] = next_token
            new_ids.append(next_token)
            text = tokenizer.detokenize(new_ids)
            if not text.endswith("\ufffd") and len(text) > len(shown):
                yield text[len(shown) :]
                shown = text
        text = tokenizer.detokenize(new_ids) if new_ids else ""
        if text != shown:
            yield text[len(shown) :]

    @staticmethod
    def _strip_prompt(outputs, inputs):
        """Move each row's new tokens to the front; mask the rest."""
        token_ids, mask = outputs["token_ids"], outputs["padding_mask"]
        prompt_mask = inputs["padding_mask"]
        length = prompt_mask.shape[1]
        row_end = length - np.argmax(prompt_mask[:, ::-1], axis=1)
        new_ids = np.zeros_like(token_ids)
        new_mask = np.zeros_like(mask)
        for row, end in enumerate(row_end):
            new_ids[row, : length - end] = token_ids[row, end:]
            new_mask[row, : length - end] = mask[row, end:]
        return {"token_ids": new_ids, "padding_mask": new_mask}

    def generate(self, inputs, max_length=None, stop_token_ids="auto", strip_prompt=False):
        """Continue prompts token by token.

        The decoding strategy is the `sampler` given to `compile()`. Prompts
        of different lengths can share a batch: each row gets exactly the
        tokens it would get alone (for deterministic samplers).

        Args:
            inputs: with a preprocessor, a string, a list of strings or a
                batched `tf.data.Dataset` of strings; without one (or
                always), a dict of `"token_ids"` and `"padding_mask"` arrays
                `(batch, length)` or `(length,)`. In a token dict, positions
                after each row's last real token are filled with new tokens;
                padding before the prompt (left padding, as Transformers
                users pass) is kept and does not change the result.
            max_length: int. The total length (prompt + new tokens). With a
                preprocessor it defaults to the preprocessor's
                `sequence_length`; with token inputs it pads them on the
                right to this length (it cannot shorten them).
            stop_token_ids: `"auto"` (the tokenizer's end token,
                `<|endoftext|>`), None (always fill `max_length`), or a list
                of ids. Generation stops once every sequence has produced one.
            strip_prompt: bool. If True, return only the new tokens.

        Returns:
            A string or a list of strings for string inputs; otherwise a
            dict of NumPy `"token_ids"` and `"padding_mask"` (False on
            padding and after a stop token).

        Example:
        ```python
        causal_lm.generate("I want to say", max_length=30)
        causal_lm.generate(["two prompts", "of different lengths here"], max_length=40)
        prompt = {"token_ids": np.array([[5338, 318, 0, 0]]), "padding_mask": np.array([[1, 1, 0, 0]])}
        causal_lm.generate(prompt, stop_token_ids=None)
        ```
        """
        max_length = self._check_max_length(max_length)
        if is_tf_dataset(inputs):
            batches = [decode_strings(b) for b in inputs.as_numpy_iterator()]
            outputs = [
                self.generate(b, max_length=max_length, stop_token_ids=stop_token_ids, strip_prompt=strip_prompt)
                for b in batches
            ]
            if outputs and isinstance(outputs[0], dict):
                return {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}
            return [s for o in outputs for s in (o if isinstance(o, list) else [o])]
        stop_token_ids = self._stop_token_ids(stop_token_ids)
        use_preprocessor = not isinstance(inputs, dict)
        if use_preprocessor:
            if self.preprocessor is None:
                raise ValueError(
                    "This model has no preprocessor, so `generate()` needs a dict of "
                    "'token_ids' and 'padding_mask'. Received "
                    f"{type(inputs).__name__}. Attach a preprocessor to generate from strings."
                )
            if not is_string_data(inputs) and not (isinstance(inputs, (list, tuple)) and not inputs):
                raise TypeError(
                    "`generate()` takes a string, a list of strings, or a dict of token "
                    f"ids. Received {type(inputs).__name__}: {inputs!r:.100}"
                )
            batch, is_scalar = self._string_inputs(inputs, max_length)
        else:
            batch, is_scalar = self._token_inputs(inputs, max_length)
        generate_function = self.make_generate_function()
        length = batch["token_ids"].shape[1]
        outputs = generate_function(self._padded_to_bucket(batch), stop_token_ids=stop_token_ids)
        outputs = {
            "token_ids": to_numpy(outputs["token_ids"])[..., :length].astype("int32"),
            "padding_mask": to_numpy(outputs["padding_mask"])[..., :length].astype(bool),
        }
        if strip_prompt:
            outputs = self._strip_prompt(outputs, batch)
        if use_preprocessor:
            texts = self.preprocessor.generate_postprocess(outputs)
            return texts[0] if is_scalar else list(texts)
        if is_scalar:
            return {key: value[0] for key, value in outputs.items()}
        return outputs
