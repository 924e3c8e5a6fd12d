"""Built-in presets: metadata, parameter counts, shipped inside the wheel."""

import os
import subprocess
import sys

import pytest

from gpt2_lib.models import Backbone
from gpt2_lib.models import GPT2Backbone
from gpt2_lib.utils import builtin_presets as builtin
from gpt2_lib.preset_io import skip_weight_init

EXPECTED = {
    "gpt2_base_en": (124439808, "hf://openai-community/gpt2"),
    "gpt2_medium_en": (354823168, "hf://openai-community/gpt2-medium"),
    "gpt2_large_en": (774030080, "hf://openai-community/gpt2-large"),
    "gpt2_extra_large_en": (1557611200, "hf://openai-community/gpt2-xl"),
    "gpt2_base_en_cnn_dailymail": (124439808, None),
}
# Presets shipped inside the package (data in presets/<name>/), loadable offline.
EMBEDDED = {"gpt2_tiny_shakespeare_en": 2262336}
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_metadata():
    presets = GPT2Backbone.presets
    assert set(presets) == set(EXPECTED) | set(EMBEDDED)
    assert set(Backbone.presets) == set(EXPECTED) | set(EMBEDDED)
    for name, (params, hf_handle) in EXPECTED.items():
        metadata = presets[name]
        assert metadata["params"] == params
        assert metadata["kaggle_handle"] == f"kaggle://keras/gpt2/keras/{name}/3"
        assert metadata["hf_handle"] == hf_handle
        assert metadata["description"]


def test_base_preset_config_builds_with_the_stated_count():
    backbone = GPT2Backbone.from_preset("gpt2_base_en", load_weights=False)
    assert backbone.count_params() == EXPECTED["gpt2_base_en"][0]


def test_embedded_preset_loads_offline_with_its_stated_count():
    from gpt2_lib.models import GPT2CausalLM
    from gpt2_lib.preset_io.handles import resolve_preset

    for name, params in EMBEDDED.items():
        assert resolve_preset(name) == os.path.join(builtin.presets_dir(), name)
        lm = GPT2CausalLM.from_preset(name)
        assert lm.backbone.count_params() == params == builtin.get_preset(name)["params"]
        config = builtin.get_preset(name)["config"]
        assert {k: lm.backbone.get_config()[k] for k in config} == config
        assert lm.preprocessor.tokenizer.vocabulary_size() == config["vocabulary_size"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_preset_count(name):
    """Build the preset's config with 1 and 2 layers (a full XL is 6 GB):
    the count is affine in `num_layers`, so two builds give the full count."""
    with skip_weight_init():
        one = GPT2Backbone.from_preset(name, load_weights=False, num_layers=1).count_params()
        two = GPT2Backbone.from_preset(name, load_weights=False, num_layers=2).count_params()
    layers = builtin.get_preset(name)["config"]["num_layers"]
    assert one + (layers - 1) * (two - one) == EXPECTED[name][0]


def test_unrelated_class_is_an_error():
    from tests.preset_io.test_keras_hub import OtherBackbone

    assert OtherBackbone.presets == {}
    with pytest.raises(ValueError, match="holds a GPT2Backbone backbone, which is not a OtherBackbone"):
        OtherBackbone.from_preset("gpt2_base_en", load_weights=False)


def test_presets_ship_in_the_wheel(tmp_path):
    """Build the wheel, install it (not editable) and list the presets."""
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), REPO],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = os.listdir(tmp_path / "dist")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(tmp_path / "site"), str(tmp_path / "dist" / wheel)],
        capture_output=True, text=True, timeout=300,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    # Load the installed builtin.py by path (importing gpt2_lib would import
    # Keras, slow and beside the point: the check is where the data lies).
    installed = tmp_path / "site" / "gpt2_lib" / "utils" / "builtin_presets.py"
    code = (
        "import importlib.util as u;"
        f"s = u.spec_from_file_location('builtin', {str(installed)!r});"
        "b = u.module_from_spec(s); s.loader.exec_module(b);"
        "print(b.__file__); print(b.presets_dir()); print(sorted(b.all_presets()))"
    )
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "site"))
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    module_file, presets_dir, names = out.stdout.strip().splitlines()[-3:]
    assert module_file.startswith(str(tmp_path / "site"))
    assert presets_dir == str(tmp_path / "site" / "gpt2_lib" / "_presets")
    assert names == str(sorted(set(EXPECTED) | set(EMBEDDED)))
    for name in EMBEDDED:
        shipped = tmp_path / "site" / "gpt2_lib" / "_presets" / name
        for filename in ("config.json", "task.json", "tokenizer.json", "model.weights.h5"):
            assert (shipped / filename).is_file(), f"{name}/{filename} missing from the wheel"
