"""Handles: built-in names, kaggle:// and hf:// through their real clients (offline)."""

import os
import shutil

import numpy as np
import pytest

from gpt2_lib.models import Backbone
from gpt2_lib.preset_io import handles
from tests.preset_io.helpers import KH_BACKBONE
from tests.preset_io.helpers import assert_close_on_mask
from tests.preset_io.helpers import run_backbone

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _populate_kaggle_cache(cache, variant, version=3):
    base = cache / "models" / "keras" / "gpt2" / "keras" / variant
    shutil.copytree(KH_BACKBONE, base / str(version))
    (base / f"{version}.complete").touch()


def _check_fixture_outputs(backbone):
    expected = np.load(os.path.join(KH_BACKBONE, "expected.npz"))
    out = run_backbone(backbone, expected["token_ids"], expected["padding_mask"])
    assert_close_on_mask(out, expected["outputs"], expected["padding_mask"])


def test_kaggle_handle_and_builtin_name_through_kagglehub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path))
    _populate_kaggle_cache(tmp_path, "tiny_variant")
    backbone = Backbone.from_preset("kaggle://keras/gpt2/keras/tiny_variant/3")
    _check_fixture_outputs(backbone)
    # A built-in name resolves to its Kaggle handle (here served from the cache).
    _populate_kaggle_cache(tmp_path, "gpt2_base_en")
    assert handles.resolve_preset("gpt2_base_en") == str(tmp_path / "models/keras/gpt2/keras/gpt2_base_en/3")
    _check_fixture_outputs(Backbone.from_preset("gpt2_base_en"))


def _populate_hf_cache(cache, repo_id, source):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(source, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return repo / "snapshots" / commit


def test_hf_handle_through_offline_cache(tmp_path, monkeypatch):
    import huggingface_hub

    from tests.hf_reference import random_transformers_gpt2
    from tests.hf_reference import transformers_hidden_states

    hf_model = random_transformers_gpt2(vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=4)
    hf_model.save_pretrained(tmp_path / "src")
    _populate_hf_cache(tmp_path / "hub", "someone/tiny-gpt2", tmp_path / "src")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    backbone = Backbone.from_preset("hf://someone/tiny-gpt2")
    tokens = np.array([[1, 2, 3, 4]])
    mask = np.ones_like(tokens)
    np.testing.assert_allclose(
        run_backbone(backbone, tokens, mask), transformers_hidden_states(hf_model, tokens, mask), atol=1e-5, rtol=0
    )
    with pytest.raises(FileNotFoundError, match="not in the Hugging Face cache.*local directory"):
        Backbone.from_preset("hf://someone/not-cached")


@pytest.mark.parametrize(
    "preset, error, match",
    [
        ("gpt2_base", ValueError, "Did you mean 'gpt2_base_en'"),
        ("gpt2_larg_en", ValueError, "Did you mean 'gpt2_large_en'"),
        ("kaggle://keras/gpt2", ValueError, "Malformed Kaggle handle"),
        ("kaggle://keras/gpt2/pytorch/gpt2_base_en/3", ValueError, "only KerasHub-format"),
        ("hf://", ValueError, "Malformed Hugging Face handle"),
        ("hf://a/b/c", ValueError, "Malformed Hugging Face handle"),
        ("s3://bucket/preset", ValueError, "Unsupported preset scheme 's3://'"),
        ("./does/not/exist", FileNotFoundError, "does not exist"),
        ("", ValueError, "non-empty string"),
        ("  ", ValueError, "non-empty string"),
        (None, TypeError, "non-empty string"),
    ],
)
def test_bad_handles(preset, error, match):
    with pytest.raises(error, match=match):
        handles.resolve_preset(preset)


def test_network_failures_say_how_to_work_offline(monkeypatch):
    import huggingface_hub
    import kagglehub
    import requests

    def no_network(*args, **kwargs):
        raise requests.ConnectionError("Failed to establish a new connection")

    monkeypatch.setattr(kagglehub, "model_download", no_network)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    with pytest.raises(ConnectionError, match="network error.*local directory"):
        handles.resolve_preset("kaggle://keras/gpt2/keras/gpt2_base_en/3")
    with pytest.raises(ConnectionError, match="network error.*local directory"):
        handles.resolve_preset("hf://openai-community/gpt2")


def test_hf_offline_env_with_loopback_endpoint(tmp_path):
    """The real client in a fresh process: HF_HUB_OFFLINE=1 from the environment."""
    import subprocess
    import sys

    from tests.hf_reference import random_transformers_gpt2

    random_transformers_gpt2(vocab_size=50, n_positions=16, n_embd=32, n_layer=1, n_head=4).save_pretrained(tmp_path / "src")
    _populate_hf_cache(tmp_path / "hub", "owner/tiny", tmp_path / "src")
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1", HF_ENDPOINT="http://127.0.0.1:9")
    code = "from gpt2_lib.preset_io.handles import resolve_preset; print(resolve_preset('hf://owner/tiny'))"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("snapshots/0123456789abcdef0123456789abcdef01234567")
