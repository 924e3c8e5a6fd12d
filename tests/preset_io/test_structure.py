"""preset_io is generic: it imports only itself and gpt2_lib.utils, and reaches
a backbone's weights only through its weight table."""

import ast
import os

import gpt2_lib.preset_io

PACKAGE_DIR = os.path.dirname(gpt2_lib.preset_io.__file__)
ALLOWED = ("gpt2_lib.preset_io", "gpt2_lib.utils")


def _sources():
    for name in sorted(os.listdir(PACKAGE_DIR)):
        if name.endswith(".py"):
            path = os.path.join(PACKAGE_DIR, name)
            yield name, open(path, encoding="utf-8").read()


def test_imports_only_preset_io_and_utils_even_inside_functions():
    bad = []
    for name, source in _sources():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{name}: relative import"
                modules = [node.module]
            else:
                continue
            for module in modules:
                if module.split(".")[0] == "gpt2_lib" and not module.startswith(ALLOWED):
                    bad.append(f"{name}:{node.lineno} imports {module}")
    assert not bad, bad


def test_no_private_sublayer_reads_and_small_modules():
    for name, source in _sources():
        assert "._self_attention" not in source and "._feedforward" not in source, name
        assert source.count("\n") < 600, name
