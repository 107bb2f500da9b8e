"""Our tokenizers and llama.cpp's reading of the exported vocabulary split text identically (English, Russian)."""

import llama_cpp
import pytest
import torch

from ember.train.export import write_gguf
from ember.train.model import Llama, ModelConfig
from ember.train.tokenizer import Tokenizer, default_vocab_size
from tests.train.helpers import RUSSIAN, english_text

SAMPLES = [
    "ROMEO:\nBut, soft! what light through yonder window breaks?  It's the east,\n\n and 1234 suns.",
    "Над рекой стоял старый дом. — Васька, иди завтракать! Ёж, 2024 год.\n\tКонец",
    "mixed: Привет, world!  <|endoftext|> after",
    "unseen characters: 你好 🙂 ü",
]


def llama_vocab(tok: Tokenizer, path) -> llama_cpp.Llama:
    model = Llama(ModelConfig(vocab_size=tok.vocab_size, n_layer=1, dim=32, n_head=2, n_kv_head=2, ctx=64))
    write_gguf(model, tok, path, chat=False, ftype="f32")
    return llama_cpp.Llama(str(path), vocab_only=True, verbose=False)


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_llama_cpp_tokenizes_like_training(kind, tmp_path):
    tok = Tokenizer.train([english_text()[:20000], RUSSIAN * 20], kind, 600 if kind == "bpe" else None)
    llm = llama_vocab(tok, tmp_path / f"{kind}.gguf")
    for text in SAMPLES:
        ours = tok.encode(text)
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ours, text
        assert tok.decode(ours) == text
        assert llm.detokenize(ours, special=True).decode() == text


def test_char_tokenizer_is_one_token_per_character():
    tok = Tokenizer.train(["ёлка — Ёж", "abc"], "char")
    assert len(tok.encode("ёлка — Ёж abc")) == len("ёлка — Ёж abc")
    assert tok.encode("<|endoftext|>") == [tok.eot]


def test_bpe_learns_russian_words():
    tok = Tokenizer.train([RUSSIAN * 20], "bpe", 512)
    assert len(tok.encode(" бабушка")) <= 2  # a frequent word becomes one or two tokens, not 15 bytes


def test_vocab_size_grows_with_data():
    assert default_vocab_size(10_000) == 512
    assert 3000 < default_vocab_size(1_000_000) < 5000
    assert default_vocab_size(10**10) == 32000


def test_gguf_vocab_lists_specials_as_control(tmp_path):
    tok = Tokenizer.train(["abc"], "char")
    tokens, types, merges = tok.gguf_vocab()
    assert tokens[tok.eot] == "<|endoftext|>" and types[tok.eot] == 3 and types[tok.eot + 3] == 1
    assert len(tokens) == tok.vocab_size and merges
    assert torch.tensor(types).min() >= 1
