"""Subprocess side of the multi-process test: 2 processes x 4 CPU devices.

    python -m tests.distribution.multi_worker reference WORKDIR
    python -m tests.distribution.multi_worker PROCESS_ID COUNT PORT WORKDIR

`reference` (one process, one device) writes the single-device results to
`WORKDIR/reference.npz`. Each of the COUNT processes calls
`keras.distribution.initialize()` (JAX's distributed runtime over localhost,
gloo collectives on the CPU) and runs the same steps, passing the same
global data on every process:

1. `DataParallel` over all 8 devices: `from_preset`, `fit` on token ids
   (13 rows in batches of 8: a partial batch) and on strings through the
   preprocessor, `evaluate`, `predict` (5 rows), greedy `generate`,
   `save_to_preset`.
2. `ModelParallel` on a (1, 8) mesh, whose model axis spans both processes:
   `from_preset` of a Transformers checkpoint, `fit`, `save_to_preset`
   (shards gathered across processes), LoRA `fit` and `save_lora_weights`.

Results are compared with the reference in every process; the saved files
are checked by the test in a fresh process.
"""

import json
import os
import sys
import warnings

import keras
import numpy as np

TEXTS = ["To be, or not to be", "that is the question", "ROMEO: hi", "JULIET: hello", "A horse!"]


def gathered(model):
    from gpt2_lib.utils.distribution import gather

    return [gather(v) for v in model.weights]


def steps(workdir, distributed):
    """The computation both sides run; returns {name: array or list of arrays}."""
    import gpt2_lib
    from gpt2_lib.models import GPT2Backbone
    from gpt2_lib.models import GPT2CausalLM
    from tests.distribution.worker import LENGTH
    from tests.distribution.worker import data

    preset, hf = os.path.join(workdir, "preset"), os.path.join(workdir, "hf")
    tokens, prompts = data()
    out = {}

    def use(name):
        if not distributed:
            return
        if name == "dp":
            distribution = keras.distribution.DataParallel()
        else:
            mesh = keras.distribution.DeviceMesh((1, 8), ["batch", "model"])
            distribution = keras.distribution.ModelParallel(
                layout_map=GPT2Backbone.get_layout_map(mesh), batch_dim_name="batch"
            )
        keras.distribution.set_distribution(distribution)

    # 1. DataParallel over both processes.
    use("dp")
    keras.utils.set_random_seed(0)
    lm = GPT2CausalLM(GPT2Backbone.from_preset(preset))
    lm.compile(optimizer=keras.optimizers.SGD(0.1), sampler="greedy")
    out["dp_generate"] = lm.generate(prompts, stop_token_ids=None)["token_ids"]
    out["dp_predict"] = lm.predict({"token_ids": tokens[:5], "padding_mask": np.ones((5, LENGTH), bool)}, verbose=0)
    out["dp_evaluate"] = np.array(lm.evaluate({"token_ids": tokens[:8]}, batch_size=8, verbose=0))
    lm.fit({"token_ids": tokens}, batch_size=8, epochs=2, shuffle=False, verbose=0)
    out["dp_fit"] = gathered(lm.backbone)
    lm.save_to_preset(os.path.join(workdir, "saved_dp"))
    tokenizer = gpt2_lib.models.GPT2Tokenizer.from_preset("gpt2_tiny_shakespeare_en")
    preprocessor = gpt2_lib.models.GPT2CausalLMPreprocessor(tokenizer, sequence_length=LENGTH)
    lm = GPT2CausalLM(GPT2Backbone.from_preset(preset + "_text"), preprocessor=preprocessor)
    lm.compile(optimizer=keras.optimizers.SGD(0.1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lm.fit(TEXTS, batch_size=4, epochs=1, shuffle=False, verbose=0)
    out["dp_strings"] = gathered(lm.backbone)

    # 2. ModelParallel (1, 8): the model axis spans both processes.
    use("mp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 4 heads on 8 devices: head_dim
        lm = GPT2CausalLM(GPT2Backbone.from_preset(hf))
    lm.compile(optimizer=keras.optimizers.SGD(0.1))
    lm.fit({"token_ids": tokens}, batch_size=8, epochs=1, shuffle=False, verbose=0)
    out["mp_fit"] = gathered(lm.backbone)
    lm.save_to_preset(os.path.join(workdir, "saved_mp"))
    lm.backbone.enable_lora(2)
    for variable in lm.backbone.weights:
        if "lora_kernel_b" in variable.path:
            variable.assign(np.full(variable.shape, 0.01, "float32"))
    lm.compile(optimizer=keras.optimizers.SGD(0.1))
    lm.fit({"token_ids": tokens[:8]}, batch_size=8, epochs=1, shuffle=False, verbose=0)
    out["mp_lora"] = [w for v, w in zip(lm.backbone.weights, gathered(lm.backbone)) if "lora" in v.path]
    lm.backbone.save_lora_weights(os.path.join(workdir, "saved_mp.lora.h5"))
    return out


def flat(results):
    arrays = {}
    for name, value in results.items():
        if isinstance(value, list):
            for i, item in enumerate(value):
                arrays[f"{name}/{i}"] = np.asarray(item)
        else:
            arrays[name] = np.asarray(value)
    return arrays


def reference(workdir):
    from tests.distribution.worker import make_preset

    import gpt2_lib

    make_preset(os.path.join(workdir, "preset"))
    make_preset(os.path.join(workdir, "preset_text"), vocabulary_size=2257)
    gpt2_lib.models.GPT2Backbone.from_preset(os.path.join(workdir, "preset")).export_to_transformers(
        os.path.join(workdir, "hf")
    )
    np.savez(os.path.join(workdir, "reference.npz"), **flat(steps(workdir, distributed=False)))


def process(process_id, count, port, workdir):
    keras.distribution.initialize(job_addresses=f"localhost:{port}", num_processes=count, process_id=process_id)
    import jax

    assert jax.process_count() == count and jax.device_count() == 4 * count, jax.devices()
    got = flat(steps(workdir, distributed=True))
    expected = dict(np.load(os.path.join(workdir, "reference.npz")))
    assert sorted(got) == sorted(expected), (sorted(got), sorted(expected))
    diffs = {}
    for key in sorted(got):
        if key.endswith("generate"):
            assert np.array_equal(got[key], expected[key]), f"process {process_id}: {key} tokens differ"
            continue
        diff = float(np.max(np.abs(got[key].astype("float64") - expected[key])))
        diffs[key.split("/")[0]] = max(diff, diffs.get(key.split("/")[0], 0.0))
    limits = {"dp_predict": 1e-5, "dp_evaluate": 1e-5}
    for name, diff in diffs.items():
        assert diff < limits.get(name, 1e-6), f"process {process_id}: {name} differs by {diff}"
    print(json.dumps({"process": process_id, "max_diffs": diffs}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "reference":
        reference(sys.argv[2])
    else:
        process(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
