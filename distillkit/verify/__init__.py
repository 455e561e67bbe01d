"""Judging traces, shared by filter and generate's curation: the verifiers, the code sandbox and its worker pool,
dedup and decontamination keys."""
