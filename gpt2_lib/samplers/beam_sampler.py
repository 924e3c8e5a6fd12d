"""Beam search."""

import keras
from keras import ops
from keras import tree

from gpt2_lib.samplers.sampler import Sampler


@keras.saving.register_keras_serializable(package="gpt2_lib")
class BeamSampler(Sampler):
    """Beam search: keep the `num_beams` most likely sequences at each step.

    Each step extends every beam by every token, and keeps the `num_beams`
    candidates with the highest total log-probability. Prompt positions of
    a batch with prompts of different lengths are forced to the prompt
    token, so every beam of a row shares that row's prompt. `num_beams=1` is
    greedy search.

    Args:
        num_beams: int, the number of beams kept.
        return_all_beams: bool. If True, the sampler returns
            `(sequences, log_probs)`: all beams of each row,
            `(batch, num_beams, max_length)`, sorted by their log-probability
            `(batch, num_beams)`. `generate()` needs the default, False.
        temperature: float, see `Sampler`.

    Example:
    ```python
    causal_lm.compile(sampler=gpt2_lib.samplers.BeamSampler(num_beams=4))
    causal_lm.generate("Keras is a")
    ```
    """

    def __init__(self, num_beams=5, return_all_beams=False, **kwargs):
        super().__init__(**kwargs)
        if isinstance(num_beams, bool) or not isinstance(num_beams, int) or num_beams < 1:
            raise ValueError(
                f"`num_beams` must be a positive integer. Received: num_beams={num_beams!r}"
            )
        self.num_beams = num_beams
        self.return_all_beams = bool(return_all_beams)

    def __call__(
        self,
        next,
        prompt,
        cache=None,
        index=0,
        mask=None,
        stop_token_ids=None,
        hidden_states=None,
        model=None,
        end=None,
    ):
        batch_size, max_length = ops.shape(prompt)[0], ops.shape(prompt)[1]
        beams = self.num_beams
        index = ops.cast(index, "int32")
        mask = ops.zeros_like(prompt, dtype="bool") if mask is None else ops.cast(mask, "bool")

        def repeat(x):  # (batch, ...) -> (batch * beams, ...), beams of a row adjacent
            return ops.repeat(x, beams, axis=0)

        def split(x):  # (batch * beams, ...) -> (batch, beams, ...)
            return ops.reshape(x, (-1, beams) + tuple(ops.shape(x)[1:]))

        def merge(x):  # (batch, beams, ...) -> (batch * beams, ...)
            return ops.reshape(x, (-1,) + tuple(ops.shape(x)[2:]))

        has_cache = cache is not None
        cache = tree.map_structure(repeat, cache) if has_cache else ()
        prompt, mask = repeat(prompt), repeat(mask)
        # Only the first beam of each row is live at the start.
        log_probs = ops.convert_to_tensor([[0.0] + [-1e9] * (beams - 1)], dtype="float32")
        log_probs = merge(ops.broadcast_to(log_probs, (batch_size, beams)))

        def cond(prompt, cache, index, log_probs):
            return self._not_done(prompt, mask, stop_token_ids, index, end)

        def body(prompt, cache, index, log_probs):
            logits, _, cache = next(prompt, cache, index)
            vocabulary_size = ops.shape(logits)[-1]
            token_log_probs = ops.log_softmax(
                ops.cast(logits, "float32") / self.temperature, axis=-1
            )
            # At a prompt position the only candidate is the prompt token.
            keep = ops.take(mask, index, axis=1)
            current = ops.take(prompt, index, axis=1)
            is_current = ops.arange(vocabulary_size, dtype="int32")[None, :] == ops.cast(
                current, "int32"
            )[:, None]
            forced = ops.where(is_current, 0.0, -1e9)
            token_log_probs = ops.where(keep[:, None], forced, token_log_probs)
            candidates = ops.reshape(
                token_log_probs + log_probs[:, None], (-1, beams * vocabulary_size)
            )
            best, flat_indices = ops.top_k(candidates, k=beams, sorted=True)
            beam_indices = flat_indices // vocabulary_size  # (batch, beams)
            next_token = merge(flat_indices % vocabulary_size)

            def gather(x):
                x = split(x)
                indices = beam_indices
                for _ in range(len(ops.shape(x)) - 2):
                    indices = ops.expand_dims(indices, -1)
                return merge(ops.take_along_axis(x, indices, axis=1))

            prompt = gather(prompt)
            if has_cache:
                cache = tree.map_structure(gather, cache)
            prompt = self._write(prompt, mask, index, next_token)
            return prompt, cache, index + 1, ops.reshape(best, (-1,))

        prompt, _, _, log_probs = self.run_loop(
            cond,
            body,
            loop_vars=(prompt, cache, index, log_probs),
            maximum_iterations=max_length - index,
            model=model,
        )
        all_prompts = split(prompt)  # (batch, beams, max_length)
        all_log_probs = split(log_probs)  # (batch, beams)
        order = ops.argsort(-all_log_probs, axis=-1)
        if self.return_all_beams:
            sorted_prompts = ops.take_along_axis(all_prompts, order[:, :, None], axis=1)
            return sorted_prompts, ops.take_along_axis(all_log_probs, order, axis=1)
        return ops.take_along_axis(all_prompts, order[:, :1, None], axis=1)[:, 0, :]

    def get_config(self):
        return {
            **super().get_config(),
            "num_beams": self.num_beams,
            "return_all_beams": self.return_all_beams,
        }
