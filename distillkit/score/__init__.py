"""Teacher scoring: soft labels (top-k logprobs, or sampled draws) for existing traces by one prefill pass of the teacher."""
