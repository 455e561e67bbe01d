"""lm-eval task folder distillkit_arith_lab (a package only so that the layer contract sees utils.py's imports)."""
