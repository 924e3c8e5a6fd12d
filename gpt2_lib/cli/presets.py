"""`gpt2-lib presets`: the built-in presets, read from their metadata files.

This command imports no Keras (it needs no backend): the metadata reader,
`gpt2_lib.utils.builtin_presets`, is plain data access.
"""

import json

from gpt2_lib.utils.builtin_presets import all_presets


def _source(meta):
    source = "embedded (offline)" if meta.get("path") else meta.get("kaggle_handle") or ""
    if meta.get("hf_handle"):
        source += f", {meta['hf_handle']}"
    return source


def run(args):
    presets = all_presets()
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
