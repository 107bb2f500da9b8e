"""llama.cpp through llama-cpp-python: the default engine for GGUF models on CPU and GPU."""

import ctypes
import logging
import os
import random
from typing import Iterator

import llama_cpp
from llama_cpp import Llama, LlamaGrammar

from ember.core.errors import BadRequest
from ember.engines.base import LoadSpec, Sampling

log = logging.getLogger("ember.engine")


def default_threads() -> int:
    # Generation is memory-bound: one thread per core, as llama.cpp's own default does.
    return max(1, len(os.sched_getaffinity(0)))


def compile_grammar(gbnf: str) -> LlamaGrammar:
    return LlamaGrammar.from_string(gbnf, verbose=False)


def _piece(vocab, token: int) -> bytes:
    # llama-cpp-python's own token_to_piece returns a fixed 32-byte buffer, NUL padding included.
    buf = ctypes.create_string_buffer(64)
    n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, False)
    if n < 0:
        buf = ctypes.create_string_buffer(-n)
        n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, False)
    return buf.raw[:n]


class LlamaCppRunner:
    """One GGUF model in one llama.cpp context, decoding one sequence at a time.

    Not thread-safe: the scheduler gives each runner a single worker thread.
    """

    def __init__(self, spec: LoadSpec):
        if len(spec.adapter_paths) > 1:
            raise BadRequest("ember applies one LoRA adapter per model; this model lists several")
        self.spec = spec
        kwargs = {}
        if spec.embedding:
            kwargs = dict(embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN, n_seq_max=16,
                          n_ubatch=spec.num_ctx)
        self.llm = Llama(
            model_path=str(spec.model_path),
            n_ctx=spec.num_ctx,
            n_batch=min(spec.num_batch, spec.num_ctx) if not spec.embedding else spec.num_ctx,
            n_threads=spec.num_thread,
            n_threads_batch=spec.num_thread,
            lora_path=str(spec.adapter_paths[0]) if spec.adapter_paths else None,
            verbose=False,
            **kwargs,
        )
        self.n_ctx = self.llm.n_ctx()
        self.n_ctx_train = self.llm._model.n_ctx_train()
        self._vocab = self.llm._model.vocab
        self._bos = self.llm.token_bos()
        self._pieces: dict[int, bytes] = {}
        self.memory_bytes = self.llm._model.size() + llama_cpp.llama_state_get_size(self.llm.ctx)

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        tokens = self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=special)
        # A template that writes the BOS text itself plus llama.cpp's automatic BOS would give two.
        if len(tokens) >= 2 and tokens[0] == tokens[1] == self._bos:
            tokens = tokens[1:]
        return tokens

    def token_bytes(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = _piece(self._vocab, token)
        return piece

    def is_end(self, token: int) -> bool:
        return llama_cpp.llama_vocab_is_eog(self._vocab, token)

    def cached_prefix(self, tokens: list[int]) -> int:
        """How many leading tokens of `tokens` are already in the KV cache from the previous request."""
        n = 0
        for a, b in zip(self.llm._input_ids, tokens):
            if a != b:
                break
            n += 1
        return n

    def generate(self, tokens: list[int], sampling: Sampling) -> Iterator[int]:
        o = sampling.options
        self.llm.last_n_tokens_size = self.n_ctx if o.repeat_last_n == -1 else o.repeat_last_n
        self.llm.set_seed(o.seed if o.seed is not None and o.seed >= 0 else random.randrange(2**31))
        grammar = compile_grammar(sampling.grammar) if sampling.grammar else None
        produced = 0
        for token in self.llm.generate(
            tokens,
            temp=o.temperature, top_k=o.top_k, top_p=o.top_p, min_p=o.min_p, typical_p=o.typical_p,
            repeat_penalty=o.repeat_penalty, frequency_penalty=o.frequency_penalty,
            presence_penalty=o.presence_penalty, mirostat_mode=o.mirostat, mirostat_tau=o.mirostat_tau,
            mirostat_eta=o.mirostat_eta, grammar=grammar,
        ):
            if self.is_end(token) or sampling.cancel.is_set():
                return
            yield token
            produced += 1
            if sampling.max_tokens and produced >= sampling.max_tokens:
                return

    def embed(self, token_lists: list[list[int]]) -> list[list[float]]:
        llm = self.llm
        n_embd = llm.n_embd()
        out: list[list[float]] = []
        # One decode per group of sequences that fits a batch (n_seq_max sequences, n_ctx tokens).
        group: list[list[int]] = []

        def flush():
            if not group:
                return
            llm._ctx.kv_cache_clear()
            llm._batch.reset()
            for seq_id, toks in enumerate(group):
                llm._batch.add_sequence(toks, seq_id, True)
            llm._ctx.decode(llm._batch)
            for seq_id in range(len(group)):
                out.append(list(llama_cpp.llama_get_embeddings_seq(llm.ctx, seq_id)[:n_embd]))
            group.clear()

        for toks in token_lists:
            if group and (len(group) >= 16 or sum(map(len, group)) + len(toks) > self.n_ctx):
                flush()
            group.append(toks)
        flush()
        llm._ctx.kv_cache_clear()
        llm.reset()
        return out

    def close(self) -> None:
        self.llm.close()
