"""lm-eval task folder r1 (a package only so that the layer contract sees utils.py's imports)."""
