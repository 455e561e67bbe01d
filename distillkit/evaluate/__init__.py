"""Evaluation under the R1 protocol with lm-eval: local tasks, k samples per question, pass@1 ± stderr."""
