"""Shrinking models and measuring what it costs: quantization, conversion, perplexity and KL divergence."""
