"""`Task`: a backbone plus a preprocessor, ready for `fit()` and inference."""

import math

import keras
import numpy as np

from gpt2_lib import preset_io
from gpt2_lib.backends import tf_data
from gpt2_lib.models import distributed_data
from gpt2_lib.models import distribution as layouts
from gpt2_lib.models import lora
from gpt2_lib.optimizers import adam
from gpt2_lib.utils import distribution as dist
from gpt2_lib.utils.classproperty import classproperty
from gpt2_lib.utils import quantization
from gpt2_lib.utils.quantization import weights_signature
from gpt2_lib.utils.text_inputs import decode_strings
from gpt2_lib.utils.text_inputs import is_string_data
from gpt2_lib.utils.text_inputs import is_tf_dataset


def _is_empty(x):
    if isinstance(x, dict):
        return any(_is_empty(value) for value in x.values())
    if isinstance(x, (list, tuple, np.ndarray)):
        return len(x) == 0
    return False


def _check_not_empty(x):
    if _is_empty(x):
        raise ValueError(
            f"The data is empty ({type(x).__name__} of length 0): pass at least one "
            "sample (a string, or token ids of shape (batch, sequence))."
        )


class _PreprocessedArrays(keras.utils.PyDataset):
    """In-memory samples, batched and passed through a preprocessor."""

    def __init__(self, preprocess, x, y=None, sample_weight=None, batch_size=None, shuffle=False):
        super().__init__()
        if isinstance(x, (str, bytes)):
            x = [x]
        self.preprocess = preprocess
        self.x = np.asarray(x, dtype=object)
        self.y = None if y is None else np.asarray(y)
        self.sample_weight = None if sample_weight is None else np.asarray(sample_weight)
        self.batch_size = 32 if batch_size is None else int(batch_size)
        self.shuffle = shuffle
        self.order = np.arange(len(self.x))
        self.rng = np.random
        if shuffle:
            self.rng.shuffle(self.order)

    @property
    def num_batches(self):
        return math.ceil(len(self.x) / self.batch_size)

    def __getitem__(self, index):
        rows = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        if len(rows) == 0:
            raise IndexError(index)
        y = None if self.y is None else self.y[rows]
        sample_weight = None if self.sample_weight is None else self.sample_weight[rows]
        return self.preprocess(self.x[rows].tolist(), y, sample_weight)

    def on_epoch_end(self):
        if self.shuffle:
            self.rng.shuffle(self.order)

    def reseed(self, rng):
        """Shuffle with `rng` from now on (the same order on every process)."""
        self.rng = rng
        if self.shuffle:
            self.order = np.arange(len(self.x))
            rng.shuffle(self.order)


class _PreprocessedIterable(keras.utils.PyDataset):
    """Batches from a re-iterable source (a `tf.data.Dataset`), preprocessed."""

    def __init__(self, preprocess, make_iterator):
        super().__init__()
        self.preprocess = preprocess
        self.make_iterator = make_iterator
        self._num_batches = sum(1 for _ in make_iterator())
        self._iterator = None
        self._next_index = 0

    @property
    def num_batches(self):
        return self._num_batches

    def __getitem__(self, index):
        if index >= self._num_batches:
            raise IndexError(index)
        if self._iterator is None or index != self._next_index:
            self._iterator = self.make_iterator()
            for _ in range(index):
                next(self._iterator)
        self._next_index = index + 1
        batch = next(self._iterator)
        if isinstance(batch, tuple):
            return self.preprocess(*[decode_strings(part) for part in batch])
        return self.preprocess(decode_strings(batch))

    def on_epoch_end(self):
        self._iterator = None
        self._next_index = 0


@keras.saving.register_keras_serializable(package="gpt2_lib")
class Task(keras.Model):
    """Base class of the task models: a `Backbone`, a head and a preprocessor.

    A `Task` is a functional `keras.Model` built on a
    `gpt2_lib.models.Backbone` (`task.backbone`) with an optional
    preprocessor (`task.preprocessor`). With a preprocessor attached,
    `fit()`, `evaluate()` and `predict()` accept raw strings (a string, a
    list or array of strings, or a batched `tf.data.Dataset` of strings)
    and preprocess them batch by batch on every backend; set
    `task.preprocessor = None` to feed already preprocessed inputs.

    `from_preset()` builds the task, its backbone and its preprocessor from
    a preset (inferring the task class when called on a base class), and
    `save_to_preset()` writes KerasHub's task preset layout.

    Args:
        compile: bool. If True (the default), the task is compiled with
            its default loss and optimizer on construction.
        **kwargs: `keras.Model` arguments.

    Example:
    ```python
    causal_lm = gpt2_lib.models.CausalLM.from_preset("gpt2_base_en")
    type(causal_lm).__name__  # "GPT2CausalLM"
    causal_lm.save_to_preset("./my_gpt2")
    ```
    """

    backbone_cls = None
    preprocessor_cls = None

    def __init__(self, *args, compile=True, **kwargs):
        super().__init__(*args, **kwargs)
        self._initialized = True
        if self.backbone is not None:
            self.dtype_policy = self.backbone.dtype_policy
        # The backbone's checks (clear errors) before Keras' own.
        self.quantize = quantization.checked_quantize(self.quantize, self._check_quantize)
        if compile:
            self.compile()

    def __setattr__(self, name, value):
        # On torch, `torch.nn.Module.__setattr__` refuses modules assigned
        # before `Module.__init__` and bypasses property setters; our state is
        # all in the functional graph, so plain attributes are enough there.
        is_property = isinstance(getattr(type(self), name, None), property)
        if keras.config.backend() == "torch" and (
            is_property or not hasattr(self, "_initialized")
        ):
            return object.__setattr__(self, name, value)
        return super().__setattr__(name, value)

    def build(self, input_shape=None):
        self.built = True

    @property
    def backbone(self):
        """The `gpt2_lib.models.Backbone` with the core network."""
        return getattr(self, "_backbone", None)

    @backbone.setter
    def backbone(self, value):
        self._backbone = value

    @property
    def preprocessor(self):
        """The preprocessor applied to raw inputs, or None."""
        return getattr(self, "_preprocessor", None)

    @preprocessor.setter
    def preprocessor(self, value):
        self._preprocessor = value

    # Config -----------------------------------------------------------------

    def get_config(self):
        # Not chained to `Model.get_config()`: a functional model's config is
        # its graph, which our constructors do not take.
        return {
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "preprocessor": (
                None
                if self.preprocessor is None
                else keras.saving.serialize_keras_object(self.preprocessor)
            ),
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("backbone"), dict):
            config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        if isinstance(config.get("preprocessor"), dict):
            config["preprocessor"] = keras.saving.deserialize_keras_object(
                config["preprocessor"]
            )
        return cls(**config)

    # Presets ----------------------------------------------------------------

    @classproperty
    def presets(cls):
        """Built-in presets this class can load: `{name: metadata}`."""
        return preset_io.presets_for_class(cls)

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """Build a task (backbone, preprocessor and head) from a preset.

        Called on a base class (`Task`, `CausalLM`), the concrete class is
        inferred from the preset.

        Args:
            preset: a built-in name (see `presets`), a `kaggle://` or `hf://`
                handle, or a local preset directory.
            load_weights: bool. False gives freshly initialized weights.
            **kwargs: overrides: `preprocessor=None` to skip it, backbone
                config such as `dtype`, or preprocessor config such as
                `sequence_length`.

        Example:
        ```python
        causal_lm = gpt2_lib.models.GPT2CausalLM.from_preset(
            "gpt2_base_en", dtype="bfloat16"
        )
        ```
        """
        if cls is Task:
            raise ValueError(
                "Do not call `Task.from_preset()` directly; call a task class, e.g. "
                "`gpt2_lib.models.CausalLM.from_preset()` or "
                "`gpt2_lib.models.GPT2CausalLM.from_preset()`."
            )
        return preset_io.load_task(cls, preset, load_weights=load_weights, **kwargs)

    def save_to_preset(self, preset_dir, max_shard_size=10):
        """Save the task to a KerasHub-layout preset directory.

        Writes `config.json`, `model.weights.h5` (the backbone),
        `task.json`, `preprocessor.json`, `tokenizer.json` and the tokenizer
        assets; the write is atomic.

        Args:
            preset_dir: the directory to write.
            max_shard_size: int or float, in GB, see `Backbone.save_to_preset`.
        """
        lora.check_lora_disabled(self.backbone)
        preset_io.save_task(self, preset_dir, max_shard_size=max_shard_size)

    def export_to_transformers(self, path):
        """Write the model as a Transformers checkpoint directory.

        The directory (`config.json` + `model.safetensors`, plus `vocab.json`
        and `merges.txt` when a preprocessor is attached) loads with
        `transformers.GPT2LMHeadModel.from_pretrained(path)` (the LM head is
        the tied token embedding) and `transformers.AutoTokenizer`.

        Args:
            path: the directory to write (atomically).
        """
        lora.check_lora_disabled(self.backbone)
        tokenizer = getattr(self.preprocessor, "tokenizer", None)
        preset_io.export_to_transformers(self.backbone, path, tokenizer=tokenizer)

    # Quantization -------------------------------------------------------------

    def quantize(self, mode=None, config=None, filters=None, **kwargs):
        """Quantize the backbone's weights in place (`Backbone.quantize`).

        The token embedding, which is also the LM head (tied), is quantized
        with the rest, as in KerasHub. Compiled functions (training,
        prediction, generation) are rebuilt on their next use. Compile again
        before `fit()`: the trainable weights changed.

        Args:
            mode: `"int8"`, `"int4"` or `"float8"` (see `Backbone.quantize`).
            config: optional `keras.quantizers.QuantizationConfig`.
            filters: optional regex(es) searched in layer names, or a
                callable `layer -> bool` (see `Backbone.quantize`).
            **kwargs: passed to `keras.Model.quantize`.

        Example:
        >>> import gpt2_lib
        >>> causal_lm = gpt2_lib.models.GPT2CausalLM.from_preset("gpt2_tiny_shakespeare_en")
        >>> causal_lm.quantize("int8")
        >>> causal_lm.compile(sampler="greedy")
        >>> text = causal_lm.generate("ROMEO:", max_length=16)
        """
        lora.release_torch_parameters(self)  # the task's dict holds the kernels too
        try:
            self.backbone.quantize(mode, config=config, filters=filters, **kwargs)
        finally:
            lora.refresh_torch_parameters(self)
        self.train_function = None
        self.test_function = None
        self.predict_function = None
        self._post_quantize(mode, **kwargs)

    def _check_quantize(self, mode=None, config=None):
        check = getattr(self.backbone, "check_quantize", None)
        if check is None:
            raise ValueError(
                f"{type(self).__name__} has no gpt2_lib backbone to quantize "
                f"(backbone: {type(self.backbone).__name__})."
            )
        return check(mode, config)

    def _post_quantize(self, mode, **kwargs):
        # Not Keras' version: on torch it would register the task's parameter
        # dict as a submodule; `quantize` has refreshed it in place.
        pass

    def _drop_stale_functions(self):
        """Forget compiled train/test/predict functions traced with other weights.

        `task.backbone.quantize()` (or any change of the weights' structure)
        does not go through the task, and TensorFlow's compiled functions
        keep computing with the weights they captured. Called at the start
        of `fit`, `evaluate` and `predict`.
        """
        signature = weights_signature(self)
        previous = getattr(self, "_weights_signature", None)
        if previous is not None and signature != previous:
            self.train_function = None
            self.test_function = None
            self.predict_function = None
            lora.refresh_torch_parameters(self)
        self._weights_signature = signature

    # `.keras` files ----------------------------------------------------------

    def save_assets(self, dir_path):
        """Write the preprocessor's tokenizer files (called by `model.save()`)."""
        if self.preprocessor is not None:
            self.preprocessor.save_assets(dir_path)

    def load_assets(self, dir_path):
        """Read the tokenizer files back (called by `keras.saving.load_model()`)."""
        if self.preprocessor is not None:
            self.preprocessor.load_assets(dir_path)

    # Data -------------------------------------------------------------------

    def preprocess_samples(self, x, y=None, sample_weight=None):
        """Apply the preprocessor to one batch (or pack it as is without one)."""
        if self.preprocessor is None:
            return keras.utils.pack_x_y_sample_weight(x, y, sample_weight)
        return self.preprocessor(x, y=y, sample_weight=sample_weight)

    def _prepare_data(self, x, y=None, sample_weight=None, batch_size=None, shuffle=False, labels=True):
        """Route raw strings through the preprocessor, batch by batch.

        `labels=False` (for `predict`) asks for model inputs only.
        Returns `(x, y, sample_weight, batch_size)` for `keras.Model`.
        """
        if self.preprocessor is not None:
            if is_tf_dataset(x):
                return (
                    _PreprocessedIterable(self.preprocess_samples, x.as_numpy_iterator),
                    None,
                    None,
                    None,
                )
            if is_string_data(x):
                data = _PreprocessedArrays(
                    self.preprocess_samples, x, y, sample_weight, batch_size, shuffle
                )
                return data, None, None, None
        return x, y, sample_weight, batch_size

    # Distribution ----------------------------------------------------------

    def _distribution(self):
        """The active distribution (its layouts applied to the backbone), or None."""
        distribution = dist.current()
        if distribution is None:
            return None
        dist.check_backend(f"run {type(self).__name__}", distribution)
        if self.backbone is not None and callable(getattr(self.backbone, "weight_table", None)):
            # Adapters or quantized kernels created since the build get their layouts.
            layouts.apply_layouts(self.backbone, distribution, warn=False)
        return distribution

    def _distributed_batches(self, distribution, x, y, sample_weight, batch_size, shuffle, mode):
        """`DistributedBatches` over the (prepared) data, or None if Keras' own will do."""
        local = distribution.num_processes > 1 and not distribution.auto_shard_dataset
        rng = distributed_data.shared_rng() if shuffle else None
        if isinstance(x, _PreprocessedArrays):
            if rng is not None:
                x.reseed(rng)
            source = x
        elif isinstance(x, keras.utils.PyDataset):
            source = x
        elif is_tf_dataset(x):
            source = _PreprocessedIterable(self.preprocess_samples, x.as_numpy_iterator)
        elif x is not None and all(
            isinstance(v, np.ndarray) or (hasattr(v, "shape") and hasattr(v, "__array__"))
            for v in keras.tree.flatten((x, y, sample_weight))
            if v is not None
        ):
            source = distributed_data.ArrayBatches(x, y, sample_weight, batch_size, shuffle, rng)
        else:
            return None  # generators etc.: Keras' own handling (and errors)
        return distributed_data.DistributedBatches(source, distribution, mode, local=local)

    def predict_step(self, *args, **kwargs):
        result = super().predict_step(*args, **kwargs)
        distribution = dist.current()
        if distribution is None or distribution.num_processes == 1:
            return result
        # Outputs that span processes cannot become NumPy arrays: replicate them.
        replicated = keras.distribution.TensorLayout([], distribution.device_mesh)
        outputs, state = result
        outputs = keras.tree.map_structure(
            lambda t: keras.distribution.distribute_tensor(t, replicated), outputs
        )
        return outputs, state

    # Training and inference -------------------------------------------------

    def fit(self, x=None, y=None, batch_size=None, sample_weight=None, shuffle=True, validation_data=None, **kwargs):
        """`keras.Model.fit`, preprocessing raw strings if a preprocessor is attached.

        Under a `keras.distribution` (JAX) every process passes the same
        (global) data; each feeds the rows of its devices, and a batch whose
        size the batch axis does not divide is padded with rows that weigh
        nothing (see `gpt2_lib.models.distributed_data`). bfloat16 trainable
        weights with Keras' `Adam`/`AdamW` are refused: their updates would
        all be 0 (`gpt2_lib.optimizers.adam.check_updates`).
        """
        _check_not_empty(x)
        adam.check_updates(self.optimizer, self.trainable_variables)
        self._drop_stale_functions()
        distribution = self._distribution()
        if distribution is not None:
            return self._distributed_fit(
                distribution, x, y, batch_size, sample_weight, shuffle, validation_data, kwargs
            )
        x, y, sample_weight, batch_size = self._prepare_data(
            x, y, sample_weight, batch_size, shuffle
        )
        if validation_data is not None:
            if not isinstance(validation_data, tuple):
                validation_data = (validation_data,)
            val = self._prepare_data(*validation_data[:3], batch_size=kwargs.get("validation_batch_size") or batch_size)
            validation_data = val[0] if isinstance(val[0], keras.utils.PyDataset) else tuple(
                v for v in val[:3] if v is not None
            )
        dataset = tf_data.array_dataset(x, y, sample_weight, batch_size, shuffle, kwargs)
        if dataset is not None:
            # The dataset shuffles itself (Keras would warn that `shuffle` is ignored).
            x, y, sample_weight, batch_size, shuffle = dataset, None, None, None, False
        return super().fit(
            x=x,
            y=y,
            batch_size=batch_size,
            sample_weight=sample_weight,
            shuffle=shuffle,
            validation_data=validation_data,
            **kwargs,
        )

    def evaluate(self, x=None, y=None, batch_size=None, sample_weight=None, **kwargs):
        """`keras.Model.evaluate`, preprocessing raw strings if a preprocessor is attached."""
        _check_not_empty(x)
        self._drop_stale_functions()
        x, y, sample_weight, batch_size = self._prepare_data(x, y, sample_weight, batch_size)
        distribution = self._distribution()
        if distribution is not None:
            data = self._distributed_batches(
                distribution, x, y, sample_weight, batch_size, False, "evaluate"
            )
            if data is not None:
                with distributed_data.feeding_process_rows(distribution):
                    return super().evaluate(x=data, **kwargs)
        dataset = tf_data.array_dataset(x, y, sample_weight, batch_size, False, kwargs)
        if dataset is not None:
            x, y, sample_weight, batch_size = dataset, None, None, None
        return super().evaluate(x=x, y=y, batch_size=batch_size, sample_weight=sample_weight, **kwargs)

    def predict(self, x, batch_size=None, **kwargs):
        """`keras.Model.predict`, preprocessing raw strings if a preprocessor is attached.

        Under a distribution every process gets the whole result.
        """
        _check_not_empty(x)
        self._drop_stale_functions()
        x, _, _, batch_size = self._prepare_data(x, batch_size=batch_size, labels=False)
        distribution = self._distribution()
        if distribution is not None:
            data = self._distributed_batches(distribution, x, None, None, batch_size, False, "predict")
            if data is not None:
                with distributed_data.feeding_process_rows(distribution):
                    return data.trim(super().predict(data, **kwargs))
        dataset = tf_data.array_dataset(x, None, None, batch_size, False, kwargs)
        if dataset is not None:
            x, batch_size = dataset, None
        return super().predict(x, batch_size=batch_size, **kwargs)

    def _distributed_fit(self, distribution, x, y, batch_size, sample_weight, shuffle, validation_data, kwargs):
        split = kwargs.pop("validation_split", None)
        if split and validation_data is None and not (is_tf_dataset(x) or is_string_data(x)):
            if isinstance(x, keras.utils.PyDataset):
                raise ValueError(
                    "`validation_split` needs arrays; pass `validation_data` instead."
                )
            # Keras' split: the last `split` fraction of the samples, before shuffling.
            size = len(keras.tree.flatten(x)[0])
            cut = int(np.floor(size * (1.0 - split)))
            head = lambda v: keras.tree.map_structure(lambda a: a[:cut], v)  # noqa: E731
            tail = lambda v: keras.tree.map_structure(lambda a: a[cut:], v)  # noqa: E731
            validation_data = tuple(
                tail(v) for v in (x, y, sample_weight) if v is not None
            ) if y is not None or sample_weight is not None else (tail(x),)
            x, y, sample_weight = head(x), None if y is None else head(y), (
                None if sample_weight is None else head(sample_weight)
            )
        elif split:
            raise ValueError(
                "`validation_split` needs in-memory arrays or token dicts; with "
                "strings or a tf.data.Dataset, pass `validation_data` instead."
            )
        x, y, sample_weight, batch_size = self._prepare_data(
            x, y, sample_weight, batch_size, shuffle
        )
        data = self._distributed_batches(distribution, x, y, sample_weight, batch_size, shuffle, "fit")
        if data is None:
            return super().fit(x=x, y=y, batch_size=batch_size, sample_weight=sample_weight,
                               shuffle=shuffle, validation_data=validation_data, **kwargs)
        if validation_data is not None:
            if not isinstance(validation_data, tuple):
                validation_data = (validation_data,)
            val_batch = kwargs.pop("validation_batch_size", None) or batch_size
            val = self._prepare_data(*validation_data[:3], batch_size=val_batch)
            validation_data = self._distributed_batches(distribution, *val, False, "evaluate")
        with distributed_data.feeding_process_rows(distribution):
            return super().fit(x=data, shuffle=False, validation_data=validation_data, **kwargs)
