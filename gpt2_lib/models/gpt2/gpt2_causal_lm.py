"""GPT-2 for causal language modeling: the backbone plus the tied LM head."""

import keras
from keras import ops

from gpt2_lib.layers.attention_mask import causal_attention_mask
from gpt2_lib.models.causal_lm import CausalLM
from gpt2_lib.models.gpt2.gpt2_backbone import GPT2Backbone
from gpt2_lib.models.gpt2.gpt2_causal_lm_preprocessor import GPT2CausalLMPreprocessor
from gpt2_lib.models.gpt2.gpt2_torch_forward import has_quantized_layers
from gpt2_lib.samplers.sampler import any_equal


class _TorchDecoder:
    """One-token cached decoding step in plain torch, for eager generation.

    Keras on torch runs eagerly: each decoding step pays for ~150 layer
    calls and for copying the whole key/value cache (`slice_update` clones,
    `stack`), which costs more than the step's matmuls. This computes the
    same step with torch ops on the backbone's weights (read once per
    `generate()` call, LoRA included through `kernel`), writing the new
    keys/values into the cache in place. `GPT2CausalLM.call_with_cache`
    is the reference it is tested against.
    """

    def __init__(self, backbone):
        import torch

        self.torch = torch
        dtype = keras.backend.standardize_dtype(backbone.compute_dtype)
        self.dtype = getattr(torch, dtype)

        def value(weight):
            return ops.convert_to_tensor(weight).detach().to(self.dtype)

        def layer_norm(layer):
            return (value(layer.gamma).float(), value(layer.beta).float(), layer.epsilon)

        self.hidden_dim = backbone.hidden_dim
        self.num_heads = backbone.num_heads
        self.head_dim = backbone.hidden_dim // backbone.num_heads
        self.scale = 1.0 / self.head_dim**0.5
        self.token_embedding = value(backbone.token_embedding.embeddings)
        self.position_embedding = value(backbone.position_embedding.embeddings)
        self.final_norm = layer_norm(backbone.layer_norm)
        self.blocks = []
        for block in backbone.transformer_layers:
            attention = block._self_attention_layer
            qkv_kernel = torch.cat(
                [
                    value(dense.kernel).reshape(self.hidden_dim, -1)
                    for dense in (attention.query_dense, attention.key_dense, attention.value_dense)
                ],
                dim=1,
            )
            qkv_bias = torch.cat(
                [
                    value(dense.bias).reshape(-1)
                    for dense in (attention.query_dense, attention.key_dense, attention.value_dense)
                ]
            )
            self.blocks.append(
                (
                    layer_norm(block._self_attention_layer_norm),
                    qkv_kernel,
                    qkv_bias,
                    value(attention.output_dense.kernel).reshape(-1, self.hidden_dim),
                    value(attention.output_dense.bias),
                    layer_norm(block._feedforward_layer_norm),
                    value(block._feedforward_intermediate_dense.kernel),
                    value(block._feedforward_intermediate_dense.bias),
                    value(block._feedforward_output_dense.kernel),
                    value(block._feedforward_output_dense.bias),
                )
            )

    @staticmethod
    def supports(backbone):
        """Plain float layers only (quantized layers take the Keras path)."""
        return keras.config.backend() == "torch" and not has_quantized_layers(backbone)

    def _norm(self, x, params):
        gamma, beta, epsilon = params
        out = self.torch.nn.functional.layer_norm(x.float(), gamma.shape, gamma, beta, epsilon)
        return out.to(self.dtype)

    def __call__(self, token_ids, padding_mask, cache, index):
        """`(logits, hidden, cache)` for `token_ids` `(batch, 1)` at `index`."""
        torch = self.torch
        functional = torch.nn.functional
        index = int(index)
        batch = token_ids.shape[0]
        padding_mask = padding_mask.bool()
        position = (padding_mask.int().cumsum(1) - 1).clamp(min=0)[:, index]
        x = self.token_embedding[token_ids[:, 0].long()] + self.position_embedding[position.long()]
        x = x[:, None, :]  # (batch, 1, hidden)
        visible = padding_mask.clone()
        visible[:, index + 1 :] = False
        attention_mask = visible[:, None, None, :]  # (batch, 1, 1, max_length)
        shape = (batch, 1, self.num_heads, self.head_dim)
        for i, (norm_1, qkv_kernel, qkv_bias, out_kernel, out_bias, norm_2, w_1, b_1, w_2, b_2) in enumerate(
            self.blocks
        ):
            qkv = torch.addmm(qkv_bias, self._norm(x, norm_1)[:, 0], qkv_kernel)
            query, key, value = qkv.split(self.hidden_dim, dim=1)
            cache[:, i, 0, index] = key.reshape(batch, self.num_heads, self.head_dim)
            cache[:, i, 1, index] = value.reshape(batch, self.num_heads, self.head_dim)
            # One query: plain matmuls beat the fused kernel's threading.
            scores = torch.matmul(
                query.reshape(shape).transpose(1, 2), cache[:, i, 0].permute(0, 2, 3, 1)
            ).float() * self.scale  # (batch, heads, 1, max_length)
            scores = scores.masked_fill(~attention_mask, -1e9)
            probs = torch.softmax(scores, dim=-1).to(self.dtype)
            attended = torch.matmul(probs, cache[:, i, 1].transpose(1, 2))  # (batch, heads, 1, head_dim)
            x = x + torch.addmm(out_bias, attended.reshape(batch, -1), out_kernel)[:, None]
            hidden = functional.gelu(
                torch.addmm(b_1, self._norm(x, norm_2)[:, 0], w_1), approximate="tanh"
            )
            x = x + torch.addmm(b_2, hidden, w_2)[:, None]
        hidden_states = self._norm(x, self.final_norm)
        logits = hidden_states @ self.token_embedding.T
        return logits, hidden_states, cache


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

    def call(self, inputs, *args, **kwargs):
        return super().call(self._with_position_ids(inputs), *args, **kwargs)

    # === Cached forward pass ===

    def call_with_cache(self, token_ids, padding_mask, cache, cache_update_index):
        """Logits of `token_ids` at cache positions `[cache_update_index, +seq)`.

        Args:
            token_ids: `(batch, seq)` ids.
            padding_mask: `(batch, max_length)` real-token mask over the whole
                cache (positions are counted over it).
            cache: `(batch, num_layers, 2, max_length, heads, head_dim)`.
            cache_update_index: the cache position of `token_ids[:, 0]`.

        Returns:
            `(logits, hidden_states, cache)`.
        """
        hidden_states, cache = self.backbone.call_with_cache(
            token_ids, padding_mask, cache, cache_update_index
        )
        logits = self.backbone.token_embedding(hidden_states, reverse=True)
        return logits, hidden_states, cache

    def _prefill(self, token_ids, padding_mask, cache, length):
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
            _, cache = self.backbone.call_with_cache(tokens, padding_mask, cache, start)
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
                `(batch, max_length)`.
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

        cache = self.backbone.build_cache(batch_size, max_length)
        cache = self._prefill(token_ids, real, cache, index - 1)
        call_with_cache = self.call_with_cache
        if _TorchDecoder.supports(self.backbone):
            call_with_cache = _TorchDecoder(self.backbone)

        def next(prompt, cache, index):
            # Feed the token at `index - 1`; get the logits for `index`.
            rows = ops.shape(prompt)[0]
            mask = real if rows == batch_size else ops.repeat(real, rows // batch_size, axis=0)
            tokens = ops.slice(prompt, [0, index - 1], [rows, 1])
            logits, hidden_states, cache = call_with_cache(tokens, mask, cache, index - 1)
            return logits[:, 0, :], hidden_states[:, 0, :], cache

        token_ids = self.sampler(
            next=next,
            prompt=token_ids,
            cache=cache,
            index=index,
            mask=ops.logical_not(new_slots),
            stop_token_ids=stop_token_ids,
            model=self,
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
        if layer_intercept_fn is None:
            layer_intercept_fn = lambda x, i: x  # noqa: E731
        backbone = self.backbone
        x = backbone.token_embedding(token_ids) + backbone.position_embedding(padding_mask)
        x = layer_intercept_fn(x, -1)
        attention_mask = causal_attention_mask(padding_mask)
        for i, block in enumerate(backbone.transformer_layers):
            x = layer_intercept_fn(block(x, attention_mask), i)
        logits = backbone.token_embedding(backbone.layer_norm(x), reverse=True)
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
