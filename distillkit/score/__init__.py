"""Teacher scoring: soft labels (top-k logprobs) for existing traces by one prefill pass of the teacher."""
