"""`Sampler`: the base class of the decoding strategies used by `generate()`."""

import keras
from keras import ops
from keras import random

from gpt2_lib.utils.tensors import enclosing_stateless_scope


def any_equal(inputs, values, padding_mask):
    """True where `inputs` equals any of `values` and `padding_mask` is True.

    Args:
        inputs: an int tensor.
        values: a list/tuple of ints (or tensors broadcastable to `inputs`).
        padding_mask: a bool tensor broadcastable to `inputs`.

    Example:
    >>> found = any_equal(np.array([[1, 2, 3]]), [2, 3], np.array([[True, True, False]]))
    >>> keras.ops.convert_to_numpy(found).tolist()
    [[False, True, False]]
    """
    output = ops.equal(inputs, values[0])
    for value in values[1:]:
        output = ops.logical_or(output, ops.equal(inputs, value))
    return ops.logical_and(output, padding_mask)


@keras.saving.register_keras_serializable(package="gpt2_lib")
class Sampler:
    """Base class of the token samplers used by `CausalLM.generate()`.

    A sampler runs the decoding loop: starting at `index`, it asks the model
    (through `next`) for the logits of the next token, turns them into
    probabilities (`compute_probabilities`, with `temperature`), picks a
    token (`get_next_token`) and writes it into `prompt`, until `prompt` is
    full or every sequence has produced a new stop token. Positions where
    `mask` is True (the prompt) are never overwritten.

    Subclass it and override `get_next_token(probabilities)` to write a new
    strategy; randomness must come from a `keras.random.SeedGenerator`
    attribute so that it is threaded correctly through compiled loops.

    Args:
        temperature: float, divides the logits before the softmax; higher is
            more diverse. Defaults to `1.0`.

    Call arguments:
        next: a function `(prompt, cache, index) -> (logits, hidden_states,
            cache)` giving the logits `(batch, vocab)` of position `index`
            from the token at `index - 1`.
        prompt: `(batch, max_length)` int tensor to fill in.
        cache: the model's key/value cache (any structure of tensors).
        index: int or scalar tensor, the first position to generate.
        mask: optional `(batch, max_length)` bool; True where `prompt` must
            be kept.
        stop_token_ids: optional list of ints; generation ends once every
            sequence has produced one of them at a position not in `mask`.
        hidden_states: unused by the built-in samplers (for contrastive
            search in KerasHub); accepted for compatibility.
        model: the model whose variables `next` reads (used on JAX to thread
            variables through the compiled loop).
        end: optional int or scalar tensor, the position to stop at when it
            comes before `max_length` (`generate()` pads prompts to a few
            lengths so that one compiled program serves every `max_length`
            up to it).

    Example:
    ```python
    class ForbidTokens(gpt2_lib.samplers.Sampler):
        def __init__(self, forbidden, **kwargs):
            super().__init__(**kwargs)
            self.forbidden = forbidden

        def get_next_token(self, probabilities):
            vocab = keras.ops.shape(probabilities)[-1]
            allowed = ~keras.ops.isin(keras.ops.arange(vocab), self.forbidden)
            return keras.ops.argmax(probabilities * allowed, axis=-1)

    causal_lm.compile(sampler=ForbidTokens([257, 262]))
    causal_lm.generate("That's strange")
    ```
    """

    def __init__(self, temperature=1.0):
        temperature = float(temperature)
        if not temperature > 0:
            raise ValueError(
                f"`temperature` must be a positive number. Received: temperature={temperature!r}"
            )
        self.temperature = temperature
        self._seed_generators = []

    def __setattr__(self, name, value):
        # Track seed generators so that their state can be threaded through
        # compiled loops (`variables`).
        if isinstance(value, random.SeedGenerator):
            self._seed_generators.append(value)
        super().__setattr__(name, value)

    @property
    def variables(self):
        """The state variables of the sampler's seed generators."""
        return [generator.state for generator in self._seed_generators]

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
        max_length = ops.shape(prompt)[-1]
        index = ops.cast(index, "int32")
        mask = ops.zeros_like(prompt, dtype="bool") if mask is None else ops.cast(mask, "bool")
        cache = () if cache is None else cache

        def cond(prompt, cache, index):
            return self._not_done(prompt, mask, stop_token_ids, index, end)

        def body(prompt, cache, index):
            logits, _, cache = next(prompt, cache, index)
            next_token = self.get_next_token(self.compute_probabilities(logits))
            prompt = self._write(prompt, mask, index, next_token)
            return prompt, cache, index + 1

        prompt, _, _ = self.run_loop(
            cond,
            body,
            loop_vars=(prompt, cache, index),
            maximum_iterations=max_length - index,
            model=model,
        )
        return prompt

    @staticmethod
    def _not_done(prompt, mask, stop_token_ids, index, end=None):
        """A bool scalar: False once every row has a new stop token, or at `end`.

        Only positions already generated (before `index`, outside `mask`)
        count: the slots still to fill hold padding, which for GPT-2 is the
        stop token itself. `end` (a scalar, optional) is where generation
        stops when it comes before the prompt's own length.
        """
        before_end = ops.convert_to_tensor(True, dtype="bool") if end is None else index < end
        if stop_token_ids is None:
            return before_end
        generated = ops.arange(ops.shape(prompt)[-1], dtype="int32")[None, :] < index
        new_tokens = ops.logical_and(ops.logical_not(mask), generated)
        stopped = ops.any(any_equal(prompt, stop_token_ids, new_tokens), axis=-1)
        return ops.logical_and(before_end, ops.logical_not(ops.all(stopped)))

    @staticmethod
    def _write(prompt, mask, index, next_token):
        """Write `next_token` at `index`, except where `mask` keeps the prompt."""
        current = ops.take(prompt, index, axis=1)
        keep = ops.take(mask, index, axis=1)
        next_token = ops.where(keep, current, ops.cast(next_token, prompt.dtype))
        return ops.slice_update(prompt, [0, index], next_token[:, None])

    def compute_probabilities(self, logits):
        """Softmax of `logits / temperature`, always in float32."""
        logits = ops.cast(logits, "float32")
        return keras.activations.softmax(logits / self.temperature)

    def run_loop(self, cond, body, loop_vars, maximum_iterations, model=None):
        """`keras.ops.while_loop`, threading seed state through it on JAX.

        On JAX a loop body must be a pure function: the sampler's seed
        generator states become loop variables, and the model's variables are
        mapped to their current values inside a `keras.StatelessScope`. The
        same within a `StatelessScope` on TensorFlow (a generate function
        that takes its weights as arguments): a seed state assigned in the
        loop body would be recorded in the scope, out of the loop's reach.
        """
        threaded = keras.config.backend() == "jax" or enclosing_stateless_scope() is not None
        if not threaded or not self.variables:
            return ops.while_loop(
                cond, body, loop_vars=loop_vars, maximum_iterations=maximum_iterations
            )
        model_variables = []
        if model is not None:
            model_variables = model.trainable_variables + model.non_trainable_variables
        # Current values: tracers of an enclosing compiled function if any.
        model_values = [ops.convert_to_tensor(v) for v in model_variables]
        sampler_values = [ops.convert_to_tensor(v) for v in self.variables]

        def stateless_cond(sampler_state, *loop_vars):
            return cond(*loop_vars)

        def stateless_body(sampler_state, *loop_vars):
            mapping = list(zip(self.variables, sampler_state))
            mapping += list(zip(model_variables, model_values))
            with keras.StatelessScope(state_mapping=mapping) as scope:
                loop_vars = body(*loop_vars)
            sampler_state = [
                scope.get_current_value(v) if scope.get_current_value(v) is not None else s
                for v, s in zip(self.variables, sampler_state)
            ]
            return (sampler_state, *loop_vars)

        sampler_state, *loop_vars = ops.while_loop(
            stateless_cond,
            stateless_body,
            loop_vars=(sampler_values, *loop_vars),
            maximum_iterations=maximum_iterations,
        )
        for variable, value in zip(self.variables, sampler_state):
            variable.assign(value)
        return tuple(loop_vars)

    def get_next_token(self, probabilities):
        """Pick the next token from `(batch, vocab)` probabilities.

        Subclasses must implement this method.

        Returns:
            `(batch,)` int token ids.
        """
        raise NotImplementedError(
            f"{type(self).__name__} must implement `get_next_token(probabilities)`."
        )

    def get_config(self):
        return {"temperature": self.temperature}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
