"""Teaching an existing model: LoRA on a stored GGUF (or a Hugging Face folder), served as an adapter or merged."""
