"""BERT-family embedding models on ONNX Runtime: the same GGUF, a faster engine for encoders on this CPU.

llama.cpp decodes several inputs as one sequence batch and masks attention across them, so its attention cost grows
with the square of the whole batch; ONNX Runtime's fused encoder kernels attend within each padded input. On the
2-core machine here that made all-MiniLM-L6-v2 ~1.5x faster than llama.cpp with cosine 1.0000 between their vectors
(bench/embed.py). The graph is built at load from the GGUF's own tensors with ONNX Runtime's fused encoder operators
(EmbedLayerNormalization, Attention, SkipLayerNormalization, BiasGelu: what onnxruntime.transformers' optimiser fuses
an exported BERT into), so the store keeps one file per model and no exporter (torch) is needed to serve. Quantized
matrices are dequantized to f32 here; tokenizing stays llama.cpp's (its vocabulary alone is loaded), so both engines
see the same tokens. Quantized encoders stay on llama.cpp (see `can_run`).
"""

import numpy as np

from ember.core.errors import BadRequest
from ember.engines.base import EngineStatus, LoadSpec
from ember.engines.coalesce import Coalesced
from ember.store.gguf_info import read_tensors

# LLAMA_POOLING_TYPE_* as the GGUF stores them: what the engine does with the last hidden states.
POOL_MEAN, POOL_CLS, POOL_RANK = 1, 2, 4
# Inputs run together: sorted by length so each group pads little; a group stops at this many padded tokens. Small
# groups won here (MiniLM, 2 cores, texts of ~150 tokens: 40 texts/s at 256–512 tokens a group, 37 at 1024, 30 at
# 4096), as the working set stays in cache.
GROUP_TOKENS = 512
MAX_GROUP = 64
# A group's activations: the widest buffers (the FFN's, 4 x hidden) and attention scores, for hidden sizes to 1024.
WORK_BYTES = GROUP_TOKENS * 4 * 4096 * 4


def available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def can_run(info) -> bool:
    """An encoder this engine builds: plain BERT (and XLM-RoBERTa, stored as BERT) with mean or CLS pooling, or a
    cross-encoder (RANK pooling: a relevance score per query and document), with f32 or f16 weights.

    A quantized one stays on llama.cpp, which keeps it quantized: here it would be dequantized to f32 at every load
    (multilingual-e5's Q4_0: 74 MB became 470 MB and took ~6 s to load, for 1.35x the texts per second)."""
    arch = info.architecture
    pooling = info.model_info.get(f"{arch}.pooling_type")
    return (arch == "bert" and pooling in (POOL_MEAN, POOL_CLS, POOL_RANK) and info.quantization in ("F32", "F16")
            and available())


def _tensors(path) -> dict[str, np.ndarray]:
    """Every tensor as f32 in PyTorch's layout (out, in), dequantized where it was quantized."""
    from gguf import GGMLQuantizationType as T
    from gguf.quants import dequantize

    out = {}
    for name, (kind, shape, raw) in read_tensors(path).items():
        if kind is T.F32 or kind is T.F16:
            data = raw.view(np.float32 if kind is T.F32 else np.float16).astype(np.float32)
        else:
            data = dequantize(raw, kind).astype(np.float32, copy=False)
        out[name] = data.reshape(shape)
    return out


def _rank_head(path):
    """A cross-encoder's head on the [CLS] hidden state, as llama.cpp's RANK pooling applies it: an optional dense
    layer with tanh (BERT's pooler, RoBERTa's classifier dense), then the output layer (`cls.output`)."""
    w = _tensors(path)
    if "cls.output.weight" not in w:
        raise BadRequest(f"{path.name} says it ranks (pooling RANK) but has no cls.output head")
    dense = (w["cls.weight"], w.get("cls.bias", 0.0)) if "cls.weight" in w else None
    out_w, out_b = w["cls.output.weight"], w.get("cls.output.bias", 0.0)

    def head(cls: np.ndarray) -> np.ndarray:
        if dense is not None:
            cls = np.tanh(cls @ dense[0].T + dense[1])
        return cls @ out_w.T + out_b

    return head


def build_graph(path, info) -> bytes:
    """The encoder as a serialized ONNX model: input_ids, token_type_ids (B, S) int32 → last hidden states (B, S, H)."""
    from onnx import TensorProto, helper, numpy_helper

    arch, mi = info.architecture, info.model_info
    layers, heads = int(mi[f"{arch}.block_count"]), int(mi[f"{arch}.attention.head_count"])
    eps = float(mi.get(f"{arch}.attention.layer_norm_epsilon", 1e-12))
    w = _tensors(path)
    inits, nodes = [], []

    def const(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name))
        return name

    word = const("word", w["token_embd.weight"])
    position = const("position", w["position_embd.weight"])
    types = w.get("token_types.weight")
    segment = const("segment", types) if types is not None else ""
    nodes.append(helper.make_node(
        "EmbedLayerNormalization",
        ["input_ids", "token_type_ids" if segment else "", word, position, segment,
         const("embed_norm_w", w["token_embd_norm.weight"]), const("embed_norm_b", w["token_embd_norm.bias"]),
         "attention_mask"],
        ["h0", "mask_index"], domain="com.microsoft", epsilon=eps))
    hidden = "h0"
    for i in range(layers):
        b = f"blk.{i}."
        qkv_w = np.concatenate([w[b + f"attn_{x}.weight"].T for x in "qkv"], axis=1)
        qkv_b = np.concatenate([w[b + f"attn_{x}.bias"] for x in "qkv"])
        nodes += [
            helper.make_node("Attention", [hidden, const(f"{b}qkv_w", qkv_w), const(f"{b}qkv_b", qkv_b), "mask_index"],
                             [f"{b}attn"], domain="com.microsoft", num_heads=heads),
            helper.make_node("MatMul", [f"{b}attn", const(f"{b}o_w", w[b + "attn_output.weight"].T)], [f"{b}o"]),
            helper.make_node("SkipLayerNormalization",
                             [f"{b}o", hidden, const(f"{b}n1_w", w[b + "attn_output_norm.weight"]),
                              const(f"{b}n1_b", w[b + "attn_output_norm.bias"]),
                              const(f"{b}o_b", w[b + "attn_output.bias"])],
                             [f"{b}h1"], domain="com.microsoft", epsilon=eps),
            helper.make_node("MatMul", [f"{b}h1", const(f"{b}up_w", w[b + "ffn_up.weight"].T)], [f"{b}up"]),
            helper.make_node("BiasGelu", [f"{b}up", const(f"{b}up_b", w[b + "ffn_up.bias"])], [f"{b}act"],
                             domain="com.microsoft"),
            helper.make_node("MatMul", [f"{b}act", const(f"{b}down_w", w[b + "ffn_down.weight"].T)], [f"{b}down"]),
            helper.make_node("SkipLayerNormalization",
                             [f"{b}down", f"{b}h1", const(f"{b}n2_w", w[b + "layer_output_norm.weight"]),
                              const(f"{b}n2_b", w[b + "layer_output_norm.bias"]),
                              const(f"{b}down_b", w[b + "ffn_down.bias"])],
                             [f"{b}h2"], domain="com.microsoft", epsilon=eps),
        ]
        hidden = f"{b}h2"
    dims = ["batch", "sequence"]
    graph = helper.make_graph(
        nodes, "encoder",
        [helper.make_tensor_value_info(n, TensorProto.INT32, dims)
         for n in ("input_ids", "token_type_ids", "attention_mask")],
        [helper.make_tensor_value_info(hidden, TensorProto.FLOAT, [*dims, "hidden"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    return model.SerializeToString()


class OnnxBertEmbedder:
    """An encoder on ONNX Runtime; the Embedder protocol as LlamaCppEmbedder has it."""

    def __init__(self, spec: LoadSpec, info):
        import onnxruntime as ort
        from llama_cpp import Llama

        from ember.engines.llamacpp import _Vocabulary, default_threads

        self.spec = spec
        self._threads = spec.num_thread or default_threads()
        self._pooling = int(info.model_info[f"{info.architecture}.pooling_type"])
        self._dims = int(info.model_info[f"{info.architecture}.embedding_length"])
        self.n_ctx_train = int(info.model_info.get(f"{info.architecture}.context_length", 512))
        self.n_ctx = min(spec.num_ctx, self.n_ctx_train)  # positions beyond the trained ones have no embedding
        self._tokenizer_model = info.model_info.get("tokenizer.ggml.model", "bert")
        self._type_count = int(info.model_info.get("tokenizer.ggml.token_type_count", 1) or 1)
        self._head = _rank_head(spec.model_path) if self._pooling == POOL_RANK else None
        graph = build_graph(spec.model_path, info)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self._threads
        options.inter_op_num_threads = 1
        # Its threads sleep between runs instead of spinning: the server has other work for the cores between
        # requests (reading them, writing vectors), and an idle server should be idle. /api/embed measured the same.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # ORT's warnings about unused initializers and the like stay out of the log
        self._session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        self._weights_bytes = len(graph)
        # The vocabulary only (no weights, no context): llama.cpp's tokenizer for this GGUF.
        self._vocab_model = Llama(model_path=str(spec.model_path), vocab_only=True, verbose=False)
        self._tokens = _Vocabulary()
        self._tokens._init_vocab(self._vocab_model._model)
        self._batched = Coalesced(self._embed_all)

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        return self._tokens.tokenize(text, special=special)

    @property
    def ranks(self) -> bool:
        """A cross-encoder: it scores pairs (`score_pairs`) rather than embedding texts."""
        return self._head is not None

    def pair(self, query: list[int], document: list[int]) -> tuple[list[int], list[int]]:
        """One input from a tokenized query and document (each as `tokenize` gives it, with its own start and end
        marks) and its token types, as the model was trained: BERT's [CLS] q [SEP] d [SEP], the document's part of
        type 1; XLM-RoBERTa's <s> q </s></s> d </s>, one type. The document is cut to fit the window."""
        if self._tokenizer_model == "bert":
            tokens, rest = query, document[1:]  # the document's [CLS] dropped
        else:
            tokens, rest = query + query[-1:], document[1:]  # </s></s> between them
        room = self.n_ctx - len(tokens)
        if room < 2:
            raise BadRequest(f"the query is {len(query)} tokens: too long for the model's window ({self.n_ctx})")
        if len(rest) > room:
            rest = rest[: room - 1] + rest[-1:]  # cut, its end mark kept
        second = 1 if self._type_count > 1 and self._tokenizer_model == "bert" else 0
        return tokens + rest, [0] * len(tokens) + [second] * len(rest)

    def score_pairs(self, pairs: list[tuple[list[int], list[int]]]) -> list[float]:
        """The cross-encoder's relevance score (its head's first output, a logit) for each (tokens, types) pair."""
        if self._head is None:
            raise BadRequest("this model embeds texts; it has no relevance head to score pairs")
        order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]))
        scores: list[float] = [0.0] * len(pairs)
        for start in range(0, len(order), 8):
            group = order[start:start + 8]
            hidden = self._hidden([pairs[i][0] for i in group], [pairs[i][1] for i in group])
            for i, row in zip(group, self._head(hidden[:, 0])):
                scores[i] = float(row[0])
        return scores

    def status(self) -> EngineStatus:
        return EngineStatus(weights_bytes=self._weights_bytes, cache_bytes=WORK_BYTES, context=self.n_ctx, slots=1,
                            busy_slots=int(self._batched.busy), threads=self._threads, runner="onnxruntime")

    def embed(self, token_lists: list[list[int]]) -> list[list[float]]:
        for tokens in token_lists:
            if len(tokens) > self.n_ctx:
                raise BadRequest(f"an input of {len(tokens)} tokens is longer than the model's window ({self.n_ctx})")
        return self._batched(token_lists)

    def _embed_all(self, token_lists: list[list[int]]) -> list[list[float]]:
        out: list[list[float] | None] = [None] * len(token_lists)
        order = sorted(range(len(token_lists)), key=lambda i: len(token_lists[i]))
        start = 0
        while start < len(order):
            end = start + 1
            # Sorted ascending, so the group's last input is its longest: padded size = count x that length.
            while (end < len(order) and end - start < MAX_GROUP
                   and (end + 1 - start) * len(token_lists[order[end]]) <= GROUP_TOKENS):
                end += 1
            group = order[start:end]
            for i, vector in zip(group, self._run([token_lists[i] for i in group])):
                out[i] = vector
            start = end
        return out  # type: ignore[return-value]

    def _hidden(self, token_lists: list[list[int]], type_lists: list[list[int]] | None = None) -> np.ndarray:
        length = max(map(len, token_lists))
        ids = np.zeros((len(token_lists), length), dtype=np.int32)
        types, mask = np.zeros_like(ids), np.zeros_like(ids)
        for row, tokens in enumerate(token_lists):
            ids[row, :len(tokens)] = tokens
            mask[row, :len(tokens)] = 1
            if type_lists:
                types[row, :len(tokens)] = type_lists[row]
        return self._session.run(None, {"input_ids": ids, "token_type_ids": types, "attention_mask": mask})[0]

    def _run(self, token_lists: list[list[int]]) -> list[list[float]]:
        hidden = self._hidden(token_lists)
        mask = np.zeros(hidden.shape[:2], dtype=np.float32)
        for row, tokens in enumerate(token_lists):
            mask[row, :len(tokens)] = 1
        if self._pooling in (POOL_CLS, POOL_RANK):
            pooled = hidden[:, 0]
        else:
            weights = mask[..., None]
            pooled = (hidden * weights).sum(1) / weights.sum(1)
        return pooled.tolist()

    def close(self) -> None:
        self._session = None
        self._vocab_model.close()


class OnnxBertFactory:
    def estimate(self, spec: LoadSpec) -> int:
        # Every weight as f32 (a quantized GGUF grows here), plus one group's activations.
        weights = sum(4 * int(np.prod(shape)) for _, shape, _ in read_tensors(spec.model_path).values())
        return weights + WORK_BYTES

    def load(self, spec: LoadSpec) -> OnnxBertEmbedder:
        from ember.store.gguf_info import read_gguf_info

        try:
            return OnnxBertEmbedder(spec, read_gguf_info(spec.model_path))
        except BadRequest:
            raise
        except Exception as e:  # ONNX Runtime's own errors name their C++ source, not the model
            raise BadRequest(f"{spec.model_path.name} could not be loaded by ONNX Runtime: {e}") from None
