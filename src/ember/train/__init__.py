"""Training small Llama-style models from scratch: data, tokenizers, the model, the loop, export to GGUF.

Needs ember's optional part [train] (PyTorch, tokenizers, matplotlib); this package itself imports none of them.
"""
