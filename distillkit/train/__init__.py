"""Stage 3: train the student (SFT through TRL, LoRA/QLoRA, soft-label KD with a memory-bounded loss)."""
