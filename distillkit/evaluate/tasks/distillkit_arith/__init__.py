"""lm-eval task folder distillkit_arith (a package only so that the layer contract sees utils.py's imports)."""
