"""Stage 4: evaluate teacher and student with lm-eval under the R1 protocol (sampled pass@1 over k)."""
