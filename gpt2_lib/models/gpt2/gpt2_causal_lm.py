"""GPT-2 for causal language modeling: the backbone plus the tied LM head."""

import keras
from keras import ops

from gpt2_lib.backends import torch_gpt2
from gpt2_lib.backends.attention import updates_whole_cache
from gpt2_lib.backends.dense import reverse_embedding
from gpt2_lib.backends.embedding import supports_int4_lookup
from gpt2_lib.backends.loop_weights import tied_logits
from gpt2_lib.models.causal_lm import CausalLM
from gpt2_lib.models.gpt2.gpt2_backbone import GPT2Backbone
from gpt2_lib.models.gpt2.gpt2_causal_lm_preprocessor import GPT2CausalLMPreprocessor
from gpt2_lib.samplers.sampler import any_equal
from gpt2_lib.utils.validation import check_ids


@keras.saving.register_keras_serializable(package="gpt2_lib")
class GPT2CausalLM(CausalLM):
    """An end-to-end GPT-2 model for causal language modeling.

    Predicts each next token: the backbone's hidden states are projected to
    the vocabulary with the (tied) token embedding. Train it with `fit()` on
    plain text (through the preprocessor) or on token ids; generate text
    with `generate()`, choosing the decoding strategy with
    `compile(sampler=...)` (`"top_k"` by default).

    Args:
        backbone: a `gpt2_lib.models.GPT2Backbone`.
        preprocessor: a `gpt2_lib.models.GPT2CausalLMPreprocessor`, or None
            to feed token ids directly.
        **kwargs: `Task` arguments (`compile`, `name`).

    Examples:
    ```python
    gpt2_lm = gpt2_lib.models.GPT2CausalLM.from_preset("gpt2_base_en")
    gpt2_lm.generate("I want to say", max_length=30)
    gpt2_lm.generate(["This is a", "Where are you"], max_length=30)

    gpt2_lm.compile(sampler="greedy")  # or "top_k", "top_p", "random", "beam"
    gpt2_lm.fit(["The quick brown fox jumped.", "I forgot my homework."], batch_size=2)
    gpt2_lm.save_to_preset("./my_finetuned")
    ```

    Without a preprocessor:
    ```python
    import numpy as np
    backbone = gpt2_lib.models.GPT2Backbone(
        vocabulary_size=100, num_layers=2, num_heads=2, hidden_dim=32,
        intermediate_dim=64, max_sequence_length=32,
    )
    lm = gpt2_lib.models.GPT2CausalLM(backbone)
    lm.compile(sampler="greedy")
    prompt = {"token_ids": np.array([[5, 6, 0, 0]]), "padding_mask": np.array([[1, 1, 0, 0]])}
    lm.generate(prompt, stop_token_ids=None)["token_ids"].shape  # (1, 4)
    lm.fit({"token_ids": np.random.randint(0, 100, (4, 16))}, batch_size=2)
    ```
    """

    backbone_cls = GPT2Backbone
    preprocessor_cls = GPT2CausalLMPreprocessor
    # Prompts are fed to the cache this many tokens at a time: one compiled
    # program serves every prompt length.
    prefill_chunk_size = 32

    def __init__(self, backbone, preprocessor=None, **kwargs):
        if not isinstance(backbone, GPT2Backbone):
            raise TypeError(
                "`backbone` must be a `gpt2_lib.models.GPT2Backbone`. Received: "
                f"{type(backbone).__name__}."
            )
        # === Layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor

        # === Functional model ===
        inputs = backbone.input  # token_ids, padding_mask, optional position_ids
        hidden_states = backbone(inputs)
        logits = backbone.token_embedding(hidden_states, reverse=True)
        super().__init__(inputs=inputs, outputs=logits, **kwargs)

    @staticmethod
    def _with_position_ids(inputs):
        """`position_ids` is an optional input: fill it with None if absent."""
        if isinstance(inputs, dict) and "position_ids" not in inputs:
            return {**inputs, "position_ids": None}
        return inputs

    def __call__(self, inputs, *args, **kwargs):
        return super().__call__(self._with_position_ids(inputs), *args, **kwargs)

    def call(self, inputs, training=None, **kwargs):
        # `training` named, so that Keras passes it (`fit()` with dropout).
        inputs = self._with_position_ids(inputs)
        if self._head_outside_the_graph():
            hidden_states = self.backbone(inputs, training=training)
            return reverse_embedding(self.backbone.token_embedding, hidden_states)
        return super().call(inputs, training=training, **kwargs)

    def _head_outside_the_graph(self):
        """The tied head through `reverse_embedding`: on torch its float32
        product on oneDNN (`torch_matmul`), not MKL; for an int4 table
        (JAX/TensorFlow) dequantized without Keras' per-column gather, which
        XLA:CPU fuses into the product (cost: rows x vocabulary x hidden)."""
        table = self.backbone.token_embedding
        return keras.config.backend() == "torch" or supports_int4_lookup(table)

    # === Cached forward pass ===

    def call_with_cache(self, token_ids, padding_mask, cache, cache_update_index, blocks=None):
        """Logits of `token_ids` at cache positions `[cache_update_index, +seq)`.

        Args:
            token_ids: `(batch, seq)` ids.
            padding_mask: `(batch, max_length)` real-token mask over the whole
                cache (positions are counted over it).
            cache: `(batch, num_layers, 2, heads, max_length, head_dim)`
                (`GPT2Backbone.build_cache`).
            cache_update_index: the cache position of `token_ids[:, 0]`.
            blocks: optional fast path for the blocks, see
                `GPT2Backbone.call_with_cache` (`generation_blocks()`).

        Returns:
            `(logits, hidden_states, cache)`.
        """
        hidden_states, cache = self.backbone.call_with_cache(
            token_ids, padding_mask, cache, cache_update_index, blocks=blocks
        )
        if blocks is not None:
            logits = blocks.logits(hidden_states)
        else:
            logits = tied_logits(self.backbone.token_embedding, hidden_states)
        return logits, hidden_states, cache

    def generation_blocks(self):
        """The blocks' fast path for one generation, or None for the Keras layers.

        On torch (when `gpt2_lib.backends.torch_gpt2.supports` the model) a
        `TorchBlocks` holding the weights read once for this generation,
        which also computes the LM head (`blocks.logits`).
        """
        if torch_gpt2.supports(self.backbone, generation=True):
            return torch_gpt2.TorchBlocks(self.backbone, for_generation=True)
        return None

    def _prefill(self, token_ids, padding_mask, cache, length, blocks=None):
        """Fill the cache for positions `[0, length)`, a chunk at a time.

        Chunks have a static size (so one compiled program serves every
        prompt length); the last one may run past `length` or overlap the
        previous one. Keys/values written past `length` are rewritten by the
        decoding loop before any query can see them.
        """
        batch_size, total = ops.shape(token_ids)
        chunk = min(total, self.prefill_chunk_size)
        num_chunks = (length + chunk - 1) // chunk

        def body(i, cache):
            start = ops.minimum(i * chunk, total - chunk)
            tokens = ops.slice(token_ids, [0, start], [batch_size, chunk])
            _, cache = self.backbone.call_with_cache(
                tokens, padding_mask, cache, start, blocks=blocks
            )
            return cache

        return ops.fori_loop(0, num_chunks, body, cache)

    def generate_step(self, inputs, stop_token_ids=None):
        """Generate for one batch of inputs (compilable).

        Each row's prompt is its real tokens (`padding_mask` True); the
        positions after its last real token are filled in. Padding before
        the prompt stays padding: positions and attention follow the mask,
        so it does not change the result.

        Args:
            inputs: dict of `"token_ids"` and `"padding_mask"`,
                `(batch, max_length)`, and optionally `"end"`, a scalar
                position before `max_length` where generation stops (the
                slots from it on are left as they are).
            stop_token_ids: None or a tuple of ids; generation stops once
                every row has produced one.

        Returns:
            dict of `"token_ids"` and `"padding_mask"` (False on padding and
            after each row's first stop token).
        """
        token_ids = ops.cast(inputs["token_ids"], "int32")
        prompt_mask = ops.cast(inputs["padding_mask"], "bool")
        batch_size, max_length = ops.shape(token_ids)
        positions = ops.arange(max_length, dtype="int32")
        # One past each row's last real token: where its new tokens start.
        row_end = ops.max(ops.where(prompt_mask, positions[None, :] + 1, 0), axis=1)
        new_slots = positions[None, :] >= row_end[:, None]
        # New tokens are real tokens for attention and positions.
        real = ops.logical_or(prompt_mask, new_slots)
        index = ops.min(row_end)

        blocks = self.generation_blocks()
        # The whole cache where it is updated in place (JAX) or the fast path
        # takes it (torch); one cache per block elsewhere (TensorFlow: batch 8
        # decodes 1.2x faster than with one stacked cache, benchmarks/NOTES.md).
        per_block = blocks is None and not updates_whole_cache()
        cache = self.backbone.build_cache(batch_size, max_length, per_block=per_block)
        cache = self._prefill(token_ids, real, cache, index - 1, blocks)

        def next(prompt, cache, index):
            # Feed the token at `index - 1`; get the logits for `index`.
            rows = ops.shape(prompt)[0]
            mask = real if rows == batch_size else ops.repeat(real, rows // batch_size, axis=0)
            tokens = ops.slice(prompt, [0, index - 1], [rows, 1])
            logits, hidden_states, cache = self.call_with_cache(
                tokens, mask, cache, index - 1, blocks=blocks
            )
            return logits[:, 0, :], hidden_states[:, 0, :], cache

        # `end` only when given: a user's sampler may not take it.
        end = {} if inputs.get("end") is None else {"end": ops.cast(inputs["end"], "int32")}
        token_ids = self.sampler(
            next=next,
            prompt=token_ids,
            cache=cache,
            index=index,
            mask=ops.logical_not(new_slots),
            stop_token_ids=stop_token_ids,
            model=self,
            **end,
        )
        padding_mask = real
        if stop_token_ids is not None:
            # Mask everything after each row's first new stop token.
            is_end = ops.cast(any_equal(token_ids, stop_token_ids, new_slots), "int32")
            after_end = (ops.cumsum(is_end, axis=1) - is_end) > 0
            padding_mask = ops.logical_and(real, ops.logical_not(after_end))
        return {"token_ids": token_ids, "padding_mask": padding_mask}

    # === Scoring ===

    def score(
        self,
        token_ids,
        padding_mask=None,
        scoring_mode="logits",
        layer_intercept_fn=None,
        target_ids=None,
    ):
        """Score token sequences: logits, or per-token losses / log-likelihoods.

        Args:
            token_ids: `(batch, length)` int ids (e.g. prompt + generation).
            padding_mask: `(batch, length)` mask of real tokens; defaults to
                all ones. Positions follow it (left padding is fine).
            scoring_mode: `"logits"` (`(batch, length, vocab)`), `"loss"`
                (per-token cross-entropy, `(batch, length)`) or
                `"log_likelihood"` (its negative: the log-probability of each
                target token).
            layer_intercept_fn: optional `fn(x, i)` applied to the embeddings
                (`i=-1`) and to each block's output (`i=0, 1, ...`); it must
                return a tensor of the same shape (for interpretability).
            target_ids: `(batch, length)` ids to score at each position. For
                `"loss"`/`"log_likelihood"` it defaults to the next token
                (`token_ids` shifted left); positions whose target is padding
                or past the end then score 0.

        Returns:
            A tensor as described for `scoring_mode`.

        Example:
        ```python
        x = lm.preprocessor.generate_preprocess(["The quick brown fox"], sequence_length=8)
        log_likelihood = lm.score(x["token_ids"], x["padding_mask"], scoring_mode="log_likelihood")
        perplexity = np.exp(-log_likelihood.sum() / (x["padding_mask"].sum() - 1))
        ```
        """
        if scoring_mode not in ("logits", "loss", "log_likelihood"):
            raise ValueError(
                f"Unsupported scoring_mode={scoring_mode!r}. Use 'logits', 'loss' or "
                "'log_likelihood'."
            )
        token_ids = ops.cast(ops.convert_to_tensor(token_ids), "int32")
        if len(ops.shape(token_ids)) != 2:
            raise ValueError(
                f"`token_ids` must have shape (batch, length). Received {ops.shape(token_ids)}."
            )
        if padding_mask is None:
            padding_mask = ops.ones_like(token_ids, dtype="bool")
        padding_mask = ops.cast(ops.convert_to_tensor(padding_mask), "bool")
        check_ids(token_ids, "token_ids", self.backbone.vocabulary_size)
        check_ids(target_ids, "target_ids", self.backbone.vocabulary_size)
        length = ops.shape(token_ids)[1]
        if length is not None and length > self.backbone.max_sequence_length:
            raise ValueError(
                f"`token_ids` has length {length}, longer than this model's "
                f"max_sequence_length={self.backbone.max_sequence_length}. Score "
                "shorter windows."
            )
        if layer_intercept_fn is None:
            logits = self({"token_ids": token_ids, "padding_mask": padding_mask})
        else:
            hidden_states = self.backbone.call_with_intercept(
                token_ids, padding_mask, layer_intercept_fn
            )
            if self._head_outside_the_graph():
                logits = reverse_embedding(self.backbone.token_embedding, hidden_states)
            else:
                logits = self.backbone.token_embedding(hidden_states, reverse=True)
        if scoring_mode == "logits":
            return logits
        weights = None
        if target_ids is None:
            target_ids = ops.pad(token_ids[:, 1:], [[0, 0], [0, 1]])
            next_real = ops.pad(padding_mask[:, 1:], [[0, 0], [0, 1]])
            weights = ops.cast(ops.logical_and(padding_mask, next_real), "float32")
        loss = keras.losses.sparse_categorical_crossentropy(
            ops.cast(target_ids, "int32"), ops.cast(logits, "float32"), from_logits=True
        )
        if weights is not None:
            loss = loss * weights
        return loss if scoring_mode == "loss" else -loss
