"""Stage 1: sample R1-style traces from a teacher (vLLM, an OpenAI-compatible endpoint, or transformers)."""
