"""llama.cpp through llama-cpp-python: the default engine for GGUF models on CPU and GPU.

`LlamaCppGenerator` keeps several sequences (slots) in one llama.cpp context and advances them together: every step is
one `llama_decode` holding the next token of each generating sequence plus a chunk of any prompt being read. Sampling
runs in llama.cpp's own sampler chain per slot, so Python never touches the vocabulary. A slot keeps its KV cache
after a request ends, and a new request starts from the longest start of its prompt that a slot holds (see
`choose_slot`); a prompt is read in chunks paced so that the others keep generating (see `_KEPT_PACE`).
"""

import collections
import ctypes
import logging
import os
import random
import threading
import time
from dataclasses import dataclass, field

import llama_cpp
from llama_cpp import Llama
from llama_cpp import _internals as internals

from ember.core.errors import BadRequest, EmberError
from ember.engines.base import EngineStatus, LoadSpec, Role, Sequence
from ember.engines.coalesce import Coalesced
from ember.store.gguf_info import read_gguf_info
from ember.system import available_memory

log = logging.getLogger("ember.engine")

# ggml log levels: 1 debug, 2 info, 3 warn, 4 error, 5 continues the previous line. llama.cpp's warnings are
# advice for its developers (e.g. "the full capacity of the model will not be utilized"): ember's log, not the terminal.
_LOG_LEVELS = {3: logging.INFO, 4: logging.ERROR}
_llama_log = logging.getLogger("ember.engine.llama")


@llama_cpp.llama_log_callback
def _log_from_llama(level: int, text: bytes, _user_data) -> None:
    # llama-cpp-python prints llama.cpp's ~180 KB of load chatter to stderr unless a `Llama(verbose=False)` was made;
    # routed into ember's logger, it stays out of the terminal and `ember serve` shows the warnings.
    line = text.decode("utf-8", errors="replace").rstrip()
    if line:
        _llama_log.log(_LOG_LEVELS.get(level, logging.DEBUG), "%s", line)


llama_cpp.llama_log_set(_log_from_llama, ctypes.c_void_p(0))


def default_threads() -> int:
    # Generation is memory-bound: one thread per core, as llama.cpp's own default does.
    return max(1, len(os.sched_getaffinity(0)))


def kv_bytes_per_token(model_path) -> int:
    """f16 K and V for every layer, from the GGUF header (read before loading, to plan slots and memory)."""
    info = read_gguf_info(model_path)
    meta, arch = info.model_info, info.architecture
    heads = _largest(meta.get(f"{arch}.attention.head_count")) or 1
    kv_heads = _largest(meta.get(f"{arch}.attention.head_count_kv")) or heads
    return 2 * 2 * info.block_count * info.embedding_length * kv_heads // max(1, heads)


def _largest(value) -> int:
    """A head count, which some models give per layer."""
    return max(value, default=0) if isinstance(value, list) else int(value or 0)


def auto_parallel(spec: LoadSpec) -> int:
    """Slots for a model: up to 16, as many as a quarter of the available memory holds KV caches for."""
    per_slot = max(1, kv_bytes_per_token(spec.model_path) * spec.num_ctx)
    return max(1, min(16, available_memory() // 4 // per_slot))


@dataclass(frozen=True)
class _Plan:
    """A LoadSpec with the engine's own choices filled in."""

    threads: int
    batch: int
    slots: int

    @classmethod
    def of(cls, spec: LoadSpec) -> "_Plan":
        slots = 1 if spec.role is Role.EMBED else spec.num_parallel or auto_parallel(spec)
        return cls(threads=spec.num_thread or default_threads(), batch=spec.num_batch or 512, slots=slots)


def _piece(vocab, token: int) -> bytes:
    # llama-cpp-python's own token_to_piece returns a fixed 32-byte buffer, NUL padding included.
    buf = ctypes.create_string_buffer(64)
    n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, False)
    if n < 0:
        buf = ctypes.create_string_buffer(-n)
        n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, False)
    return buf.raw[:n]


class _Vocabulary:
    """Tokenizing and detokenizing, shared by both engines (llama.cpp's vocabulary is read-only, so thread-safe)."""

    def _init_vocab(self, model: internals.LlamaModel) -> None:
        self._model = model
        self._vocab = model.vocab
        self._bos = model.token_bos()
        self._pieces: dict[int, bytes] = {}
        self.n_ctx_train = model.n_ctx_train()
        self.n_vocab = model.n_vocab()

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        tokens = self._model.tokenize(text.encode("utf-8"), add_bos=True, special=special)
        # A template that writes the BOS text itself plus llama.cpp's automatic BOS would give two.
        if len(tokens) >= 2 and tokens[0] == tokens[1] == self._bos:
            tokens = tokens[1:]
        return tokens

    def token_bytes(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = _piece(self._vocab, token)
        return piece


@dataclass
class Slot:
    id: int
    cached: list[int] = field(default_factory=list)  # tokens whose KV this slot's sequence holds
    seq: Sequence | None = None
    pending: list[int] = field(default_factory=list)  # prompt tokens still to decode
    last: int = -1  # the latest sampled token, decoded at the next step
    produced: int = 0
    sampler: object = None
    last_used: float = 0.0


# Copying one slot's KV to another (a memcpy of its whole stream) took ~10 ms for the bundled model on this 2-core CPU,
# about what reading two prompt tokens takes; below a few shared tokens a copy is not worth it.
_COPY_WORTH_TOKENS = 4


# While others generate, prompts get the compute that keeps the others' pace at _KEPT_PACE or better: each step earns
# prompt time in proportion to its decode time (at least up to _STEP_FLOOR_S a step: a lone stream at 20 tokens/s
# still reads smoothly, and cannot starve a queue of prompts), and a chunk of at least _MIN_CHUNK tokens is read when
# the credit allows. Token costs are measured as the runner goes, so this holds on a 2-core laptop and on a GPU alike.
# Chunks are not smaller because small ones cost far more per token deep in a prompt: on this CPU, 8 tokens at
# position 3000 took 24 ms each, 512 took 6 ms.
_KEPT_PACE = 0.65
_STEP_FLOOR_S = 0.05
_MIN_CHUNK = 64
# Requests sent together reach an idle runner a few ms apart; waiting this long lets their prompts share one step.
_GATHER_S = 0.02


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def choose_slot(slots: list[Slot], tokens: list[int]) -> tuple[Slot, Slot | None]:
    """A free slot for a prompt, holding as much of its start as can be had without evicting another chat; and the
    slot whose cache should be copied into it first, if any.

    A slot whose cache is mostly this prompt's start (the same chat, a shared system prompt) is the first choice;
    otherwise the least recently used slot, so several chats keep their caches. Busy slots are kept together:
    llama.cpp attends over every slot between the lowest and the highest busy one, so eight sequences spread over
    sixteen slots decoded 60 % slower than eight side by side. When the chosen slot is not where the busy ones are, or
    another slot (busy or not) holds a longer start of the prompt (a system prompt several users share), that slot's
    cache is to be copied into the one used.
    """
    free = [s for s in slots if s.seq is None]
    source = max(slots, key=lambda s: (_common_prefix(s.cached, tokens), s.seq is None))
    shared = _common_prefix(source.cached, tokens)
    reuse = source.seq is None and 2 * shared >= len(source.cached)
    slot = source if reuse else min(free, key=lambda s: s.last_used)
    busy = [s.id for s in slots if s.seq]
    if busy:
        span = lambda s: max(busy + [s.id]) - min(busy + [s.id])  # noqa: E731
        slot = min(free, key=lambda s: (span(s), s is not slot, s.last_used))
    copy = slot is not source and shared > _common_prefix(slot.cached, tokens) + _COPY_WORTH_TOKENS
    return slot, source if copy else None


class LlamaCppGenerator(_Vocabulary):
    def __init__(self, spec: LoadSpec):
        if len(spec.adapter_paths) > 1:
            raise BadRequest("ember applies one LoRA adapter per model; this model lists several")
        self.spec = spec
        plan = _Plan.of(spec)
        self._threads, self._num_batch = plan.threads, plan.batch
        mparams = llama_cpp.llama_model_default_params()
        self._model_handle = internals.LlamaModel(path_model=str(spec.model_path), params=mparams, verbose=False)
        self._init_vocab(self._model_handle)
        cparams = llama_cpp.llama_context_default_params()
        n_slots = plan.slots
        cparams.n_ctx = spec.num_ctx * n_slots
        cparams.n_seq_max = n_slots
        cparams.kv_unified = False  # each slot gets its own num_ctx, so one long chat cannot starve the others
        cparams.n_batch = cparams.n_ubatch = plan.batch
        cparams.n_threads = cparams.n_threads_batch = plan.threads
        cparams.no_perf = True
        self._ctx_handle = internals.LlamaContext(model=self._model_handle, params=cparams, verbose=False)
        self._ctx = self._ctx_handle.ctx
        self._mem = llama_cpp.llama_get_memory(self._ctx)
        self._adapter = None
        if spec.adapter_paths:
            self._apply_adapter(spec.adapter_paths[0])
        self.n_ctx = llama_cpp.llama_n_ctx_seq(self._ctx)
        self.n_vocab = self._model_handle.n_vocab()
        self._weights_bytes = self._model_handle.size()
        self._cache_bytes = kv_bytes_per_token(spec.model_path) * cparams.n_ctx
        self._batch = llama_cpp.llama_batch_init(plan.batch, 0, 1)
        self._slots = [Slot(i) for i in range(n_slots)]
        self._incoming: collections.deque[Sequence] = collections.deque()
        self._wake = threading.Condition()
        self._closed = False
        self._token_s = self._prompt_token_s = 0.01  # measured seconds per generated / per prompt token in a step
        self._prompt_credit_s = 0.0
        self._thread = threading.Thread(target=self._loop, name="ember-decode", daemon=True)
        self._thread.start()

    def _apply_adapter(self, path) -> None:
        adapter = llama_cpp.llama_adapter_lora_init(self._model_handle.model, str(path).encode())
        if adapter is None:
            raise BadRequest(f"llama.cpp could not load the LoRA adapter {path}")
        self._adapter = adapter
        adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(adapter)
        scales = (ctypes.c_float * 1)(1.0)
        if llama_cpp.llama_set_adapters_lora(self._ctx, adapters, 1, scales):
            raise BadRequest(f"llama.cpp could not apply the LoRA adapter {path} to this model")

    # -- the public side ---------------------------------------------------------------------------------------

    def status(self) -> EngineStatus:
        return EngineStatus(weights_bytes=self._weights_bytes, cache_bytes=self._cache_bytes, context=self.n_ctx,
                            slots=len(self._slots), busy_slots=sum(1 for s in self._slots if s.seq),
                            threads=self._threads)

    def submit(self, sequence: Sequence) -> None:
        with self._wake:
            self._incoming.append(sequence)
            self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join()
        for slot in self._slots:
            if slot.seq:
                slot.seq.ended("cancelled")
            self._free_sampler(slot)
        for seq in self._incoming:
            seq.ended("cancelled")
        llama_cpp.llama_batch_free(self._batch)
        self._ctx_handle.close()
        if self._adapter is not None:
            llama_cpp.llama_adapter_lora_free(self._adapter)
        self._model_handle.close()

    # -- the decode thread -------------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._closed and not self._incoming and not any(s.seq for s in self._slots):
                    self._wake.wait()
                if not any(s.seq for s in self._slots):
                    deadline = time.monotonic() + _GATHER_S
                    while not self._closed and (left := deadline - time.monotonic()) > 0:
                        self._wake.wait(left)
                if self._closed:
                    return
                self._admit()
            try:
                self._step()
            except Exception as e:  # a failed decode ends the sequences in it, not the server
                log.exception("decode step failed")
                for slot in self._slots:
                    if slot.seq:
                        self._finish(slot, "error", e)

    def _admit(self) -> None:
        # A request that went away while it waited for a slot ends now, not when a slot frees.
        for seq in [s for s in self._incoming if s.cancel.is_set()]:
            self._incoming.remove(seq)
            seq.ended("cancelled")
        while self._incoming:
            free = [s for s in self._slots if s.seq is None]
            if not free:
                return
            seq = self._incoming.popleft()
            if seq.cancel.is_set():
                seq.ended("cancelled")
                continue
            try:
                sampler = self._sampler(seq)
            except BadRequest as e:
                seq.ended("error", e)
                continue
            slot, copy_from = choose_slot(self._slots, seq.tokens)
            if copy_from is not None:
                # llama.cpp copies a whole stream between slots (a memcpy of one slot's KV, at the next decode); the
                # tail past the shared start is dropped just below.
                llama_cpp.llama_memory_seq_cp(self._mem, copy_from.id, slot.id, -1, -1)
                slot.cached = list(copy_from.cached)
            reuse = min(_common_prefix(slot.cached, seq.tokens), len(seq.tokens) - 1)
            llama_cpp.llama_memory_seq_rm(self._mem, slot.id, reuse, -1)
            slot.cached = slot.cached[:reuse]
            slot.pending = list(seq.tokens[reuse:])
            slot.seq, slot.produced, slot.last, slot.sampler = seq, 0, -1, sampler
            seq.started(reuse)

    def _sampler(self, seq: Sequence):
        o = seq.options
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        add = lambda s: llama_cpp.llama_sampler_chain_add(chain, s)  # noqa: E731
        last_n = self.n_ctx if o.repeat_last_n == -1 else o.repeat_last_n
        add(llama_cpp.llama_sampler_init_penalties(self.n_vocab, last_n, o.repeat_penalty, o.frequency_penalty,
                                                   o.presence_penalty))
        if seq.grammar:
            grammar = llama_cpp.llama_sampler_init_grammar(self._vocab, seq.grammar.encode(), b"root")
            if not grammar:
                llama_cpp.llama_sampler_free(chain)
                raise BadRequest("llama.cpp could not compile the output grammar")
            add(grammar)
        seed = o.seed if o.seed is not None and o.seed >= 0 else random.randrange(2**31)
        if o.temperature <= 0:
            add(llama_cpp.llama_sampler_init_greedy())
        elif o.mirostat == 1:
            add(llama_cpp.llama_sampler_init_temp(o.temperature))
            add(llama_cpp.llama_sampler_init_mirostat(self.n_vocab, seed, o.mirostat_tau, o.mirostat_eta, 100))
        elif o.mirostat == 2:
            add(llama_cpp.llama_sampler_init_temp(o.temperature))
            add(llama_cpp.llama_sampler_init_mirostat_v2(seed, o.mirostat_tau, o.mirostat_eta))
        else:
            add(llama_cpp.llama_sampler_init_top_k(o.top_k))
            add(llama_cpp.llama_sampler_init_typical(o.typical_p, 1))
            add(llama_cpp.llama_sampler_init_top_p(o.top_p, 1))
            add(llama_cpp.llama_sampler_init_min_p(o.min_p, 1))
            add(llama_cpp.llama_sampler_init_temp(o.temperature))
            add(llama_cpp.llama_sampler_init_dist(seed))
        # Repetition penalties look back over the prompt too, as in Ollama and llama.cpp's server.
        penalties = llama_cpp.llama_sampler_chain_get(chain, 0)
        for token in seq.tokens[-last_n:] if last_n > 0 else []:
            llama_cpp.llama_sampler_accept(penalties, token)
        return chain

    def _free_sampler(self, slot: Slot) -> None:
        if slot.sampler is not None:
            llama_cpp.llama_sampler_free(slot.sampler)
            slot.sampler = None

    def _finish(self, slot: Slot, reason: str, error: BaseException | None = None) -> None:
        seq, slot.seq = slot.seq, None
        slot.pending = []
        slot.last_used = time.monotonic()
        self._free_sampler(slot)
        if reason == "error":
            slot.cached = []
            llama_cpp.llama_memory_seq_rm(self._mem, slot.id, 0, -1)
        seq.ended(reason, error)

    def _account(self, seconds: float, generated: int, read: int) -> None:
        """Keeps the running costs of a generated and a prompt token, and the prompts' time credit (_KEPT_PACE)."""
        decode_s = generated * self._token_s
        if read:
            prompt_s = max(seconds - decode_s, 0.1 * seconds)
            self._prompt_token_s += 0.2 * (prompt_s / read - self._prompt_token_s)
            if generated:
                self._prompt_credit_s -= prompt_s
        elif generated:
            self._token_s += 0.2 * (seconds / generated - self._token_s)
        if generated and any(s.seq and s.pending for s in self._slots):
            earned = max(decode_s / _KEPT_PACE, _STEP_FLOOR_S) - decode_s
            self._prompt_credit_s = min(self._prompt_credit_s + earned, earned)
        else:
            self._prompt_credit_s = min(self._prompt_credit_s, 0.0)

    def _step(self) -> None:
        batch, n = self._batch, 0
        sample_at: list[tuple[Slot, int]] = []

        def put(slot: Slot, token: int, logits: bool) -> None:
            nonlocal n
            batch.token[n] = token
            batch.pos[n] = len(slot.cached)
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = slot.id
            batch.logits[n] = logits
            if logits:
                sample_at.append((slot, n))
            slot.cached.append(token)
            n += 1

        for slot in self._slots:
            if slot.seq and slot.seq.cancel.is_set():
                self._finish(slot, "cancelled")
        generating = [s for s in self._slots if s.seq and not s.pending]
        for slot in generating:
            put(slot, slot.last, True)
        # Prompts are read in chunks between the others' tokens (see _KEPT_PACE).
        room = self._num_batch - n
        share = room
        if generating:
            credit = self._prompt_credit_s
            share = max(_MIN_CHUNK, int(credit / self._prompt_token_s)) if credit > 0 else 0
        for slot in sorted((s for s in self._slots if s.seq and s.pending), key=lambda s: s.last_used):
            take = min(len(slot.pending), room, share)
            if take <= 0:
                break
            chunk, slot.pending = slot.pending[:take], slot.pending[take:]
            for i, token in enumerate(chunk):
                put(slot, token, not slot.pending and i == take - 1)
            room, share = room - take, share - take
        if n == 0:
            return
        batch.n_tokens = n
        started = time.perf_counter()
        status = llama_cpp.llama_decode(self._ctx, batch)
        if status != 0:
            raise RuntimeError(f"llama_decode returned {status}")
        self._account(time.perf_counter() - started, len(generating), n - len(generating))
        for slot, index in sample_at:
            token = llama_cpp.llama_sampler_sample(slot.sampler, self._ctx, index)
            if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                self._finish(slot, "stop")
                continue
            slot.last = token
            slot.produced += 1
            if not slot.seq.token(token):
                self._finish(slot, "stop")
            elif slot.produced >= slot.seq.max_tokens:
                self._finish(slot, "length")


# Inputs decoded together, in tokens. An encoder attends across the whole decode (a mask keeps sequences apart, but
# the work is done), so small decodes win: all-MiniLM-L6 here ran 94 texts/s at 64–128 tokens a decode, 73 at 256,
# 56 at 512 (bench/embed.py has the comparison with other engines).
DECODE_TOKENS = 128


class LlamaCppEmbedder(_Vocabulary):
    """A model loaded for embeddings, several inputs per decode.

    Pooling is the model's own (an embedding model's GGUF says mean or CLS); a model without one (a chat model's
    hidden states) is mean-pooled. Concurrent requests are combined (see `Coalesced`): eight callers sending one text
    each cost about one decode.
    """

    def __init__(self, spec: LoadSpec):
        self.spec = spec
        self._threads = _Plan.of(spec).threads
        info = read_gguf_info(spec.model_path)
        if info.model_info.get(f"{info.architecture}.pooling_type") == llama_cpp.LLAMA_POOLING_TYPE_RANK:
            # Its output is one score per sequence, not a vector; and llama.cpp gives BERT pairs no token types.
            raise BadRequest(f"{spec.model_path.name} is a cross-encoder: ember runs those on ONNX Runtime (BERT "
                             "family, f32/f16); unset EMBER_EMBED_ENGINE=llama.cpp, or use /api/rerank")
        pooling = (llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED if f"{info.architecture}.pooling_type" in info.model_info
                   else llama_cpp.LLAMA_POOLING_TYPE_MEAN)
        self.llm = Llama(model_path=str(spec.model_path), n_ctx=spec.num_ctx, n_batch=spec.num_ctx,
                         n_ubatch=spec.num_ctx, n_threads=self._threads, n_threads_batch=self._threads,
                         embedding=True, pooling_type=pooling, verbose=False)
        self._init_vocab(self.llm._model)
        # llama.cpp may round the window up; one input must still fit the batch it was sized for.
        self.n_ctx = min(self.llm.n_ctx(), spec.num_ctx)
        self._weights_bytes = self.llm._model.size()
        self._cache_bytes = kv_bytes_per_token(spec.model_path) * self.n_ctx
        self._batched = Coalesced(self._embed_all)

    def status(self) -> EngineStatus:
        return EngineStatus(weights_bytes=self._weights_bytes, cache_bytes=self._cache_bytes, context=self.n_ctx,
                            slots=1, busy_slots=int(self._batched.busy), threads=self._threads)

    def embed(self, token_lists: list[list[int]]) -> list[list[float]]:
        return self._batched(token_lists)

    def _embed_all(self, token_lists: list[list[int]]) -> list[list[float]]:
        llm, n_embd = self.llm, self.llm.n_embd()
        n_seq_max = llm.context_params.n_seq_max
        out: list[list[float]] = []
        group: list[list[int]] = []

        def flush() -> None:
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

        # One decode per group of inputs up to DECODE_TOKENS (an input longer than that alone) and n_seq_max inputs.
        for toks in token_lists:
            if group and (len(group) >= n_seq_max or sum(map(len, group)) + len(toks) > DECODE_TOKENS):
                flush()
            group.append(toks)
        flush()
        llm._ctx.kv_cache_clear()
        return out

    def close(self) -> None:
        self.llm.close()


class LlamaCppFactory:
    """Loads GGUF models with llama.cpp: a generator or an embedder, as the spec's role asks."""

    def estimate(self, spec: LoadSpec) -> int:
        weights = sum(p.stat().st_size for p in (spec.model_path, *spec.adapter_paths))
        return weights + kv_bytes_per_token(spec.model_path) * spec.num_ctx * _Plan.of(spec).slots

    def load(self, spec: LoadSpec):
        try:
            return LlamaCppEmbedder(spec) if spec.role is Role.EMBED else LlamaCppGenerator(spec)
        except EmberError:
            raise
        except Exception as e:  # llama.cpp says only "failed to load" in a ValueError
            raise BadRequest(f"{spec.model_path.name} could not be loaded by llama.cpp: {e}") from None
