"""A tiny, randomly initialised BERT cross-encoder with MiniLM's vocabulary, saved as a Hugging Face folder: no
reranker ships inside a wheel here, and what the tests check is that ember scores pairs exactly as transformers does
(pair layout, token types, pooler and head), which random weights show as well as trained ones."""

import shutil
from pathlib import Path

from ember.store import bundled
from ember.store.names import parse_name

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def make_cross_encoder(folder: Path) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    minilm = bundled.locate(bundled.find(parse_name("minilm"))).parent
    torch.manual_seed(7)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, type_vocab_size=2, num_labels=1,
                        initializer_range=0.5)  # wide weights: scores far enough apart to order
    model = BertForSequenceClassification(config).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copy(minilm / name, folder / name)
    return folder


def reference_scores(folder: Path, query: str, documents: list[str]) -> list[float]:
    """transformers' logits for (query, document) pairs, the tokenizer making the pairs as it does in training."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = BertForSequenceClassification.from_pretrained(folder).eval()
    batch = tokenizer([query] * len(documents), documents, padding=True, truncation=True, max_length=128,
                      return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits[:, 0].tolist()
