"""Tokenizers for training: byte-level BPE learned from the user's text, or one token per character.

Both are byte-level BPE models of the `tokenizers` library (GPT-2's byte-to-unicode alphabet and pre-tokenizer), so
both export to GGUF as `tokenizer.ggml.model = "gpt2"` and llama.cpp splits text exactly as training did. The
character tokenizer is a BPE whose only merges join the UTF-8 bytes of each character seen in the data; all 256
single bytes are always in the vocabulary, so no input is ever untokenizable.
"""

import json
import math
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from ember.core.errors import BadRequest
from ember.fsutil import atomic_write_text

EOT = "<|endoftext|>"  # ends every document; the model's EOS
IM_START, IM_END = "<|im_start|>", "<|im_end|>"  # ChatML turns, used by --chat
SPECIALS = [EOT, IM_START, IM_END]
KINDS = ("bpe", "char")


def _byte_level(tok: HFTokenizer) -> HFTokenizer:
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def default_vocab_size(n_bytes: int) -> int:
    """About 4·sqrt(bytes) rounded to 256, within 512…32000: small data gets a small vocabulary it can learn."""
    return int(min(32000, max(512, 256 * round(4 * math.sqrt(n_bytes) / 256))))


class Tokenizer:
    def __init__(self, hf: HFTokenizer, kind: str):
        self.hf, self.kind = hf, kind
        self.eot = hf.token_to_id(EOT)
        self.im_start, self.im_end = hf.token_to_id(IM_START), hf.token_to_id(IM_END)

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    @classmethod
    def train(cls, texts: list[str], kind: str = "bpe", vocab_size: int | None = None) -> "Tokenizer":
        if kind == "char":
            return cls._train_char(texts)
        if kind != "bpe":
            raise BadRequest(f"unknown tokenizer {kind!r}; use --tokenizer bpe or --tokenizer char")
        vocab_size = vocab_size or default_vocab_size(sum(len(t.encode("utf-8")) for t in texts))
        if vocab_size < 256 + len(SPECIALS):
            raise BadRequest(f"--vocab {vocab_size} is too small: byte-level BPE needs at least {256 + len(SPECIALS)}")
        hf = _byte_level(HFTokenizer(models.BPE()))
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=2)
        hf.train_from_iterator(texts, trainer)
        return cls(hf, "bpe")

    @classmethod
    def _train_char(cls, texts: Iterable[str]) -> "Tokenizer":
        to_unicode = _bytes_to_unicode()
        vocab = {s: i for i, s in enumerate(SPECIALS)}
        for b in range(256):
            vocab[to_unicode[b]] = len(vocab)
        # llama.cpp refuses a gpt2 vocabulary without merges, and pure-ASCII text needs none: this one joins two
        # 0xFF bytes, which never occur in UTF-8, so it never fires.
        merges = [(to_unicode[255], to_unicode[255])]
        vocab[to_unicode[255] * 2] = len(vocab)
        for ch in sorted(set().union(*map(set, texts))):
            pieces = [to_unicode[b] for b in ch.encode("utf-8")]
            for n in range(2, len(pieces) + 1):  # "abc" -> merges (a, b), (ab, c)
                joined = "".join(pieces[:n])
                if joined not in vocab:
                    merges.append(("".join(pieces[:n - 1]), pieces[n - 1]))
                    vocab[joined] = len(vocab)
        hf = _byte_level(HFTokenizer(models.BPE(vocab=vocab, merges=merges)))
        hf.add_special_tokens(SPECIALS)
        return cls(hf, "char")

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=False)

    def save(self, path: Path) -> None:
        """A standard tokenizer.json (the kind lives in the checkpoint's training config)."""
        atomic_write_text(path, self.hf.to_str())

    @classmethod
    def load(cls, path: Path, kind: str = "bpe") -> "Tokenizer":
        return cls(HFTokenizer.from_file(str(path)), kind)

    def gguf_vocab(self) -> tuple[list[str], list[int], list[str]]:
        """Tokens (byte-level strings, by id), their GGUF token types, and merges as "left right" in rank order."""
        from gguf import TokenType

        model = json.loads(self.hf.to_str())["model"]
        by_id = {i: s for s, i in model["vocab"].items()}
        specials = {t.content: t for t in self.hf.get_added_tokens_decoder().values()}
        for s in specials:
            by_id[self.hf.token_to_id(s)] = s
        tokens = [by_id[i] for i in range(self.vocab_size)]
        types = [int(TokenType.CONTROL if t in specials else TokenType.NORMAL) for t in tokens]
        merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
        return tokens, types, merges


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from bytes to printable characters, the alphabet of byte-level BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))
