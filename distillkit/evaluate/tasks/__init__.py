"""lm-eval task folders (YAML, data, utils.py), loaded by path; packages only so that the layer contract
(pyproject.toml, [tool.importlinter]) sees the imports of their utils.py."""
