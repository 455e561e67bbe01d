"""Teacher engines every stage may use: backends that sample (vLLM, an OpenAI-compatible server, transformers),
scorers that prefill text for soft labels, and vLLM's settings on CPU."""
