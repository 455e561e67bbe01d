"""The student before training: `student_init/` (layer pruning, tokenizer repair), built by train and by generate's
pre-screen."""
