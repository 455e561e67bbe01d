"""Stage hashes are what make a finished run folder count as done: the quickstart's, pinned for every stage.

A changed value here means every existing run of the recipe reruns that stage (and the ones after it) after an
upgrade. The values were computed before the package was re-laid out (issue 32) and must survive moves of code:
the hash reads only the recipe's values, never a module or class name.
"""

import json

from distillkit.config import STAGES, load_recipe
from distillkit.pipeline import stage_config_hash

QUICKSTART = {"generate": "8658471f8fe76c6e", "filter": "23df901a3e3d56f2", "score": "4eaba39f2a18e270",
              "train": "fbf6e7e2be69d188", "evaluate": "662f2784a24d9543", "publish": "d9d0cbc8d422c38e"}


def test_quickstart_stage_hashes_are_pinned(tmp_path):
    cfg = load_recipe("quickstart", [f"output_dir={tmp_path}"])
    assert {s: stage_config_hash(cfg, s) for s in STAGES} == QUICKSTART


def test_hashed_config_names_no_module():
    # a module path inside a dumped config (a class, a "module:function" string) would tie hashes to the layout
    dumped = json.dumps(load_recipe("quickstart").model_dump(mode="json"))
    assert "distillkit." not in dumped and "distillkit/" not in dumped
