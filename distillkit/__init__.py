"""distillkit: teacher traces -> verified data -> distilled student -> R1-protocol evaluation."""

__version__ = "0.1.0"
