"""`gpt2-lib presets`: the built-in presets, read from their metadata files.

This command imports no Keras (it needs no backend): it reads the same
`presets/*.json` metadata files `gpt2_lib.preset_io.builtin` reads (shipped
in the wheel as `gpt2_lib/_presets`), without importing `gpt2_lib.preset_io`
(whose package imports Keras).
"""

import json
import os

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CANDIDATE_DIRS = (
    os.path.join(_PACKAGE, "_presets"),  # installed wheel
    os.path.join(os.path.dirname(_PACKAGE), "presets"),  # source tree
)


def builtin_presets():
    """`{name: metadata}` of the built-in presets, sorted by name."""
    for directory in _CANDIDATE_DIRS:
        if os.path.isdir(directory):
            break
    else:
        raise FileNotFoundError(
            f"the built-in preset metadata folder is missing (looked in {list(_CANDIDATE_DIRS)}); "
            "reinstall gpt2_lib."
        )
    presets = {}
    for filename in sorted(os.listdir(directory)):
        if filename.endswith(".json"):
            with open(os.path.join(directory, filename), encoding="utf-8") as f:
                metadata = json.load(f)
            presets[metadata["name"]] = metadata
    return dict(sorted(presets.items()))


def _source(meta):
    source = "embedded (offline)" if meta.get("path") else meta.get("kaggle_handle") or ""
    if meta.get("hf_handle"):
        source += f", {meta['hf_handle']}"
    return source


def run(args):
    presets = builtin_presets()
    if args.json:
        for name, meta in presets.items():
            print(json.dumps({
                "name": name, "params": meta["params"], "description": meta["description"],
                "kaggle_handle": meta.get("kaggle_handle"), "hf_handle": meta.get("hf_handle"),
                "embedded": bool(meta.get("path")),
            }))
        return
    rows = [("name", "params", "description", "source")]
    for name, meta in presets.items():
        rows.append((name, f"{meta['params']:,}", meta["description"], _source(meta)))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[3])
