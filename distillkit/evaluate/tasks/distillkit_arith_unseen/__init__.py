"""lm-eval task folder distillkit_arith_unseen (a package only so that the layer contract sees utils.py's imports)."""
