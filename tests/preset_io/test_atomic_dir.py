"""Atomic preset saves and exports: never touching the previous files,
recovering from killed saves, keeping symlinks and the umask (issue #15)."""

import json
import os
import subprocess
import sys
import warnings

import h5py
import numpy as np
import pytest

from gpt2_lib.models import Backbone
from gpt2_lib.models import GPT2Backbone
from gpt2_lib.utils import atomic
from tests.preset_io.helpers import run_backbone
from tests.preset_io.helpers import tiny_backbone
from tests.preset_io.helpers import weights_of

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKENS = np.array([[1, 2, 3, 4]])
MASK = np.ones_like(TOKENS)


def _snapshot(directory):
    """`{relative path: bytes}` of every file under `directory`."""
    files = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            files[os.path.relpath(path, directory)] = open(path, "rb").read()
    return files


def _hard_link_everything(directory, elsewhere):
    """Hard-link every file of `directory` under `elsewhere`: if a writer
    modified a previous file in place, the link would show it."""
    os.makedirs(elsewhere)
    for name, _ in _snapshot(directory).items():
        target = os.path.join(elsewhere, name.replace(os.sep, "__"))
        os.link(os.path.join(directory, name), target)


def _links_unchanged(directory_before, elsewhere):
    for name, data in directory_before.items():
        assert open(os.path.join(elsewhere, name.replace(os.sep, "__")), "rb").read() == data, name


def test_failed_export_leaves_previous_checkpoint_untouched(tmp_path, monkeypatch):
    target = tmp_path / "hf"
    tiny_backbone().export_to_transformers(target)
    before = _snapshot(target)
    _hard_link_everything(target, tmp_path / "links")

    def failing_save_file(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"half a file")
        raise KeyboardInterrupt("killed mid-export")

    import safetensors.numpy

    monkeypatch.setattr(safetensors.numpy, "save_file", failing_save_file)
    with pytest.raises(KeyboardInterrupt):
        tiny_backbone(seed=1, hidden_dim=16).export_to_transformers(target)
    assert _snapshot(target) == before
    _links_unchanged(before, tmp_path / "links")
    assert sorted(os.listdir(tmp_path)) == ["hf", "links"]  # no temporaries left


def test_export_and_save_never_write_previous_files_in_place(tmp_path):
    target = tmp_path / "p"
    tiny_backbone().export_to_transformers(target)
    before = _snapshot(target)
    _hard_link_everything(target, tmp_path / "links")
    other = tiny_backbone(seed=1)
    other.export_to_transformers(target)  # same names, new content
    _links_unchanged(before, tmp_path / "links")
    np.testing.assert_allclose(
        run_backbone(Backbone.from_preset(target), TOKENS, MASK), run_backbone(other, TOKENS, MASK), atol=1e-6
    )
    other.save_to_preset(target)  # now a KerasHub preset
    _links_unchanged(before, tmp_path / "links")
    assert "model.safetensors" not in os.listdir(target)  # the old format's weights went


def test_convert_a_folder_onto_itself(tmp_path):
    """`gpt2-lib convert SRC SRC`: the model still reads SRC while writing it."""
    from tests.hf_reference import random_transformers_gpt2
    from tests.hf_reference import transformers_hidden_states

    hf_model = random_transformers_gpt2(vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=4)
    hf_model.save_pretrained(tmp_path / "src")
    (tmp_path / "src" / "README.md").write_text("keep me")
    expected = transformers_hidden_states(hf_model, TOKENS, MASK)

    backbone = Backbone.from_preset(tmp_path / "src")
    backbone.export_to_transformers(tmp_path / "src")  # Transformers -> same folder
    np.testing.assert_allclose(run_backbone(Backbone.from_preset(tmp_path / "src"), TOKENS, MASK), expected, atol=1e-5)
    backbone.save_to_preset(tmp_path / "src")  # -> KerasHub, in place
    reloaded = Backbone.from_preset(tmp_path / "src")
    np.testing.assert_allclose(run_backbone(reloaded, TOKENS, MASK), expected, atol=1e-5)
    assert "model.safetensors" not in os.listdir(tmp_path / "src")
    reloaded.export_to_transformers(tmp_path / "src")  # KerasHub -> Transformers, in place
    files = sorted(os.listdir(tmp_path / "src"))
    assert files == ["README.md", "config.json", "model.safetensors"]  # no stale KerasHub files
    np.testing.assert_allclose(run_backbone(Backbone.from_preset(tmp_path / "src"), TOKENS, MASK), expected, atol=1e-5)
    assert sorted(os.listdir(tmp_path)) == ["src"]


def _kill_during_save(tmp_path, when):
    """Save a seed-1 backbone to tmp_path/p in a process SIGKILLed at `when`."""
    code = f"""
import os, signal
import gpt2_lib
from gpt2_lib.utils import atomic
from gpt2_lib.preset_io import keras_hub_weights
from tests.preset_io.helpers import tiny_backbone

atomic._exchange = lambda first, second: False  # the two-rename commit
real_rename = os.rename
def rename(source, target):
    real_rename(source, target)
    if {when!r} == "between renames" and ".old-" in os.fspath(target):
        os.kill(os.getpid(), signal.SIGKILL)
os.rename = rename
real_write = keras_hub_weights._write_h5
def write(path, backbone, pairs):
    real_write(path, backbone, pairs[:3])
    if {when!r} == "while writing":
        os.kill(os.getpid(), signal.SIGKILL)
keras_hub_weights._write_h5 = write if {when!r} == "while writing" else real_write
tiny_backbone(seed=1).save_to_preset({str(tmp_path / "p")!r})
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == -9, out.stderr[-3000:]


def test_save_killed_between_renames_is_restored_by_the_next_load(tmp_path):
    first = tiny_backbone(seed=0)
    first.save_to_preset(tmp_path / "p")
    _kill_during_save(tmp_path, "between renames")
    leftovers = sorted(os.listdir(tmp_path))
    assert "p" not in leftovers and any(".p.new-" in n for n in leftovers), leftovers
    with pytest.warns(UserWarning, match=r"restored .*/p' from .*/\.p\.new-.*removed .*/\.p\.old-"):
        loaded = Backbone.from_preset(str(tmp_path / "p"))
    assert sorted(os.listdir(tmp_path)) == ["p"]
    # The interrupted save had completed its files: its weights are the ones restored.
    for expected, actual in zip(weights_of(tiny_backbone(seed=1)), weights_of(loaded)):
        np.testing.assert_array_equal(actual, expected)


def test_save_killed_while_writing_is_cleaned_by_the_next_save(tmp_path):
    tiny_backbone(seed=0).save_to_preset(tmp_path / "p")
    before = _snapshot(tmp_path / "p")
    _kill_during_save(tmp_path, "while writing")
    assert _snapshot(tmp_path / "p") == before
    (leftover,) = [n for n in os.listdir(tmp_path) if n != "p"]
    assert leftover.startswith(".p.tmp-")
    with pytest.warns(UserWarning, match=rf"removed .*{leftover}.*interrupted save"):
        tiny_backbone(seed=2).save_to_preset(tmp_path / "p")
    assert sorted(os.listdir(tmp_path)) == ["p"]


def test_older_leftovers_restore_the_previous_preset(tmp_path):
    # gpt2_lib before this change named the moved-away preset `.NAME.old-XXXX`.
    tiny_backbone().save_to_preset(tmp_path / "p")
    os.rename(tmp_path / "p", tmp_path / ".p.old-x1y2z3")
    os.mkdir(tmp_path / ".p.tmp-a1b2c3")
    with pytest.warns(UserWarning, match=r"restored .*\.p\.old-x1y2z3.*previous content.*removed .*\.p\.tmp-a1b2c3"):
        loaded = GPT2Backbone.from_preset(tmp_path / "p")
    assert sorted(os.listdir(tmp_path)) == ["p"]
    assert loaded.num_layers == 2


def test_a_running_writers_temporaries_are_left_alone(tmp_path):
    os.mkdir(tmp_path / "p")
    alive = f".p.tmp-{os.getppid()}-abc"  # the parent process is running
    os.mkdir(tmp_path / alive)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert atomic.recover_directory(tmp_path / "p") == []
    assert (tmp_path / alive).is_dir()


def test_symlinks_in_a_preset_survive_a_save(tmp_path):
    outside = tmp_path / "shared_data"
    outside.mkdir()
    (outside / "notes.txt").write_text("shared")
    target = tmp_path / "p"
    tiny_backbone().save_to_preset(target)
    os.symlink(outside, target / "data")
    os.symlink("config.json", target / "config_link.json")
    (target / "sub").mkdir()
    (target / "sub" / "extra.txt").write_text("extra")
    tiny_backbone(seed=1).save_to_preset(target)
    assert os.path.islink(target / "data") and os.readlink(target / "data") == str(outside)
    assert (target / "data" / "notes.txt").read_text() == "shared"
    assert os.readlink(target / "config_link.json") == "config.json"
    assert (target / "sub" / "extra.txt").read_text() == "extra"


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_files_follow_the_umask(tmp_path, umask):
    from gpt2_lib.models.gpt2.gpt2_tokenizer import GPT2Tokenizer
    from tests.preset_io.helpers import KH_BACKBONE

    previous = os.umask(umask)
    try:
        backbone = tiny_backbone()
        backbone.export_to_transformers(tmp_path / "hf")
        backbone.save_to_preset(tmp_path / "p")
        GPT2Tokenizer.from_preset(KH_BACKBONE).save_to_preset(tmp_path / "p")
        backbone.enable_lora(2)
        backbone.save_lora_weights(tmp_path / "a.lora.h5")
    finally:
        os.umask(previous)
    file_mode, dir_mode = 0o666 & ~umask, 0o777 & ~umask
    for root, dirs, files in os.walk(tmp_path):
        for name in files:
            assert os.stat(os.path.join(root, name)).st_mode & 0o777 == file_mode, name
        for name in dirs:
            assert os.stat(os.path.join(root, name)).st_mode & 0o777 == dir_mode, name
    assert sorted(os.listdir(tmp_path)) == ["a.lora.h5", "hf", "p"]


def test_home_directory_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    backbone = tiny_backbone()
    backbone.save_to_preset("~/p")
    backbone.export_to_transformers("~/hf")
    assert sorted(os.listdir(tmp_path)) == ["hf", "p"]
    for path in ("~/p", "~/hf"):
        np.testing.assert_allclose(
            run_backbone(Backbone.from_preset(path), TOKENS, MASK), run_backbone(backbone, TOKENS, MASK), atol=1e-6
        )


def test_save_onto_a_file_is_refused(tmp_path):
    (tmp_path / "p").write_text("not a folder")
    with pytest.raises(FileExistsError, match="a file of that name exists"):
        tiny_backbone().save_to_preset(tmp_path / "p")


def test_sequential_saves_add_up_and_supersede(tmp_path):
    from gpt2_lib.models.gpt2.gpt2_tokenizer import GPT2Tokenizer
    from tests.preset_io.helpers import KH_BACKBONE

    GPT2Tokenizer.from_preset(KH_BACKBONE).save_to_preset(tmp_path / "p")
    tiny_backbone().save_to_preset(tmp_path / "p", max_shard_size=0.00003)
    files = set(os.listdir(tmp_path / "p"))
    assert {"tokenizer.json", "assets", "model.weights.json", "model_00000.weights.h5"} <= files
    tiny_backbone().save_to_preset(tmp_path / "p")  # unsharded now: the shards go
    files = set(os.listdir(tmp_path / "p"))
    assert files == {"assets", "config.json", "metadata.json", "model.weights.h5", "tokenizer.json"}
    with h5py.File(tmp_path / "p" / "model.weights.h5") as f:
        assert "layers/reversible_embedding/vars/0" in f
    assert json.load(open(tmp_path / "p" / "tokenizer.json"))["registered_name"] == "keras_hub>GPT2Tokenizer"
    assert GPT2Tokenizer.from_preset(tmp_path / "p").vocabulary_size() == 262
