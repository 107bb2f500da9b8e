"""Hugging Face safetensors folder → GGUF, for `ember convert`: Llama-family decoders here, BERT encoders through
`convert.bert_to_gguf`, both written by `export.gguf_writer`, the one GGUF writer.

What llama.cpp's own `convert_hf_to_gguf.py` does for a Llama, without PyTorch or transformers (a plain install has
neither; safetensors are read through the gguf package's own reader, bf16 widened by hand):

* tensor names from the gguf package's map; q and k rows permuted from Hugging Face's rotary layout (the two halves
  of each head) to llama.cpp's (interleaved pairs); no output.weight when the embeddings are tied;
* Llama 3's rope scaling as a `rope_freqs` tensor, linear scaling as keys; other scalings are refused;
* the vocabulary from tokenizer.json: byte-level BPE (GPT-2, SmolLM, Llama 3, Qwen) as a `gpt2` vocabulary with its
  merges, or SentencePiece-style BPE with byte fallback (Llama 2, Mistral) as a `llama` vocabulary with scores;
  special tokens, add_bos and the chat template come through the gguf package's `SpecialVocab`, as llama.cpp's do.

The pre-tokenizer (how text is split before BPE) is named by llama.cpp from a hash of token ids, which only fits the
published models it lists. Here it is matched on the tokenizer.json's split rules instead, so a tokenizer trained at
home gets the right name too; rules that match none fall back to "default" with a warning.

Tensors are produced lazily, while the file is written, so memory holds one tensor at a time whatever the model's
size.
"""

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ember.core.errors import BadRequest
from ember.fsutil import TMP_PREFIX, temp_dir
from ember.store.store import silent
from ember.train.export import add_llama_shape, gguf_writer

# config.json's architectures[0] → what it is converted as. Mistral and Qwen2 are a Llama's tensors under another
# name (Qwen2 with q/k/v biases, which llama.cpp's llama graph takes), so they become llama-architecture GGUFs.
DECODERS = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
ENCODERS = ("BertModel", "BertForMaskedLM", "BertForSequenceClassification")
SAFETENSOR_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}

# Pre-tokenizer rules as tokenizer.json writes them → the name llama.cpp knows them by (llama-vocab.cpp).
GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZERS = {
    (("split", GPT2_SPLIT),): "gpt-2",
    (("split", LLAMA3_SPLIT),): "llama-bpe",
    (("split", QWEN2_SPLIT),): "qwen2",
    (("digits",), ("split", GPT2_SPLIT)): "smollm",  # SmolLM, SmolLM2, StarCoder: each digit alone, then GPT-2's
}



@dataclass
class Converted:
    path: Path
    architecture: str  # config.json's, e.g. LlamaForCausalLM
    ftype: str
    parameters: int
    context_length: int
    tokenizer: str = ""  # e.g. "gpt2 (llama-bpe), 128256 tokens"
    chat_template: bool = False
    warnings: list[str] = field(default_factory=list)


# -- reading the folder ----------------------------------------------------------------------------------------------


def _json(path: Path, required: str | None = None) -> dict:
    if not path.is_file():
        if required:
            raise BadRequest(required)
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BadRequest(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise BadRequest(f"{path} is not a JSON object")
    return data


def read_config(src: Path) -> dict:
    """config.json of a Hugging Face model folder, with the reasons a folder is not one spelled out."""
    if not src.exists():
        raise BadRequest(f"{src} does not exist; give the folder of a Hugging Face model (config.json, "
                         "*.safetensors, tokenizer.json)")
    if src.is_file() and src.suffix.lower() == ".gguf":
        raise BadRequest(f"{src} is a GGUF file, not a folder: it needs no conversion; add it to the store with a "
                         f"Modelfile holding FROM {src.resolve()} and: ember create NAME -f Modelfile")
    if not src.is_dir():
        raise BadRequest(f"{src} is a file, not a folder; ember convert reads a Hugging Face model folder "
                         "(config.json, *.safetensors, tokenizer.json)")
    return _json(src / "config.json", f"{src} has no config.json: it is not a Hugging Face model folder")


def architecture(config: dict) -> str:
    archs = config.get("architectures")
    return archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else \
        str(config.get("model_type") or "unknown")


class _Weights:
    """Every tensor of a single or sharded safetensors checkpoint: name → (shape, dtype, bytes on demand)."""

    def __init__(self, src: Path):
        from gguf.utility import SafetensorsLocal

        index = src / "model.safetensors.index.json"
        if index.is_file():
            weight_map = _json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise BadRequest(f"{index} has no weight_map")
            files = sorted(set(weight_map.values()))
        elif (src / "model.safetensors").is_file():
            weight_map, files = {}, ["model.safetensors"]
        else:
            bins = sorted(p.name for p in src.glob("*.bin"))
            hint = f" ({bins[0]} is a PyTorch pickle, which ember does not load: save the model with " \
                "safe_serialization=True)" if bins else ""
            raise BadRequest(f"{src} has no model.safetensors or model.safetensors.index.json{hint}")
        self.tensors = {}
        for name in files:
            path = src / name
            if not path.is_file():
                raise BadRequest(f"{src}: shard {name} named in model.safetensors.index.json is missing")
            try:
                part = SafetensorsLocal(path)
            except (ValueError, OSError, KeyError) as e:
                raise BadRequest(f"{path} is not a readable safetensors file ({e})") from None
            self.tensors.update(part.tensors)
        if missing := sorted(set(weight_map) - set(self.tensors)):
            raise BadRequest(f"{src}: tensor {missing[0]} is in model.safetensors.index.json but in no shard")
        for name, t in self.tensors.items():
            if t.dtype not in SAFETENSOR_DTYPES:
                raise BadRequest(f"{src}: tensor {name} is stored as {t.dtype}; ember converts F32, F16 and BF16 "
                                 "weights, not checkpoints that are already quantized")

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.tensors[name].shape)

    def nbytes(self, name: str) -> int:
        return self.tensors[name].data_range.size

    def load(self, name: str) -> np.ndarray:
        t = self.tensors[name]
        raw = t.mmap_bytes().view(SAFETENSOR_DTYPES[t.dtype]).reshape(t.shape)
        if t.dtype == "BF16":  # bf16 is the top half of an f32
            return (raw.astype(np.uint32) << 16).view(np.float32)
        return raw.astype(np.float32)


# -- the vocabulary --------------------------------------------------------------------------------------------------


def _pre_tokenizer_steps(pre: dict | None, warnings: list[str]) -> tuple[tuple, ...]:
    """tokenizer.json's pre_tokenizer as a flat tuple of the splitting steps that change where tokens break."""
    if not pre:
        return ()
    kind = pre.get("type")
    if kind == "Sequence":
        return tuple(s for p in pre.get("pretokenizers", []) for s in _pre_tokenizer_steps(p, warnings))
    if kind == "ByteLevel":
        if pre.get("add_prefix_space"):
            warnings.append("the tokenizer adds a space before the text (ByteLevel add_prefix_space); llama.cpp "
                            "does not, so a prompt's first word may tokenize differently")
        return (("split", GPT2_SPLIT),) if pre.get("use_regex", True) else ()
    if kind == "Split":
        pattern = pre.get("pattern", {})
        return (("split", pattern.get("Regex") or pattern.get("String")),)
    if kind == "Digits":
        return (("digits",),) if pre.get("individual_digits") else (("digits-runs",),)
    return ((kind,),)


def _byte_level_vocab(tok: dict, n_vocab: int, warnings: list[str]) -> tuple[list[str], list[int], str]:
    """tokenizer.json's byte-level BPE as llama.cpp's gpt2 vocabulary: tokens, types, pre-tokenizer name."""
    import gguf

    vocab = tok["model"].get("vocab") or {}
    by_id: dict[int, str] = {i: t for t, i in vocab.items()}
    kinds: dict[int, int] = {}
    for added in tok.get("added_tokens") or []:
        i, text = added.get("id"), added.get("content")
        if not isinstance(i, int) or not isinstance(text, str):
            continue
        by_id[i] = text
        looks_special = text.startswith("<|") and text.endswith("|>")  # as llama.cpp's converter decides
        kinds[i] = gguf.TokenType.CONTROL if added.get("special") or looks_special else gguf.TokenType.USER_DEFINED
    if by_id and max(by_id) >= n_vocab:
        raise BadRequest(f"the tokenizer has token id {max(by_id)}, past the model's vocab_size {n_vocab} "
                         "(config.json): tokenizer.json does not belong to these weights")
    tokens, types = [], []
    for i in range(n_vocab):  # rows past the tokenizer's last id are padding, as llama.cpp's converter names them
        tokens.append(by_id.get(i, f"[PAD{i}]"))
        types.append(kinds.get(i, gguf.TokenType.NORMAL if i in by_id else gguf.TokenType.UNUSED))
    steps = _pre_tokenizer_steps(tok.get("pre_tokenizer"), warnings)
    pre = PRE_TOKENIZERS.get(steps)
    if pre is None:
        pre = "default"
        warnings.append(f"llama.cpp knows no pre-tokenizer like this one ({steps}); wrote 'default', so some text "
                        "may split into other tokens than in transformers")
    return tokens, types, pre


def _spm_vocab(tok: dict, n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    """SentencePiece-style BPE (byte fallback, "▁" for spaces) as llama.cpp's llama vocabulary. llama.cpp merges the
    adjacent pair whose joined token scores highest, so a token's score is minus the rank of the merge that makes
    it: the order Hugging Face's BPE applies merges in."""
    import gguf

    model = tok["model"]
    vocab = model.get("vocab") or {}
    rank: dict[str, int] = {}
    for r, merge in enumerate(model.get("merges") or []):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        rank.setdefault(left + right, r)
    by_id = {i: t for t, i in vocab.items()}
    special = {a["id"]: a for a in tok.get("added_tokens") or [] if isinstance(a.get("id"), int)}
    for i, added in special.items():
        by_id[i] = added["content"]
    if by_id and max(by_id) >= n_vocab:
        raise BadRequest(f"the tokenizer has token id {max(by_id)}, past the model's vocab_size {n_vocab} "
                         "(config.json): tokenizer.json does not belong to these weights")
    unk = model.get("unk_token")
    tokens, scores, types = [], [], []
    for i in range(n_vocab):
        text = by_id.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            scores.append(-1000.0)
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(text)
        scores.append(-float(rank.get(text, 0)) if i not in special else 0.0)
        if i in special:
            types.append(gguf.TokenType.CONTROL if special[i].get("special") else gguf.TokenType.USER_DEFINED)
        elif text == unk:
            types.append(gguf.TokenType.UNKNOWN)
        elif len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL)
    return tokens, scores, types


def _is_spm(tok: dict) -> bool:
    """Llama 2's tokenizer.json: BPE with byte fallback, spaces as "▁" (a Metaspace step or Replace normalizer)."""
    text = json.dumps([tok.get("normalizer"), tok.get("pre_tokenizer")], ensure_ascii=False)
    return bool(tok["model"].get("byte_fallback")) and "\u2581" in text


def _write_vocab(w, src: Path, n_vocab: int, warnings: list[str]) -> tuple[str, bool]:
    """Tokenizer keys; returns a one-line description, and whether a chat template came with them."""
    import gguf

    tok = _json(src / "tokenizer.json", f"{src} has no tokenizer.json; ember converts models whose tokenizer is "
                "saved in the fast (tokenizers) format: AutoTokenizer.from_pretrained(...).save_pretrained(folder)")
    model = tok.get("model")
    kind = model.get("type") if isinstance(model, dict) else None
    if kind != "BPE":
        raise BadRequest(f"{src}/tokenizer.json is a {kind or 'unknown'} tokenizer; a Llama-family model converts "
                         "with a BPE tokenizer: byte-level (GPT-2, Llama 3, Qwen, SmolLM) or SentencePiece-style "
                         "with byte fallback (Llama 2, Mistral)")
    if _is_spm(tok):
        tokens, scores, types = _spm_vocab(tok, n_vocab)
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        described = f"llama (SentencePiece BPE), {n_vocab} tokens"
        merges = False
    elif "ByteLevel" in json.dumps(tok.get("pre_tokenizer")):
        tokens, types, pre = _byte_level_vocab(tok, n_vocab, warnings)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre)
        w.add_token_list(tokens)
        w.add_token_types(types)
        described = f"gpt2 byte-level BPE (pre-tokenizer {pre}), {n_vocab} tokens"
        merges = True
    else:
        raise BadRequest(f"{src}/tokenizer.json is BPE but neither byte-level (no ByteLevel pre-tokenizer) nor "
                         "SentencePiece-style (byte_fallback with '▁' for spaces); llama.cpp has no vocabulary for it")
    # SpecialVocab logs each key it sets and warns about ones llama.cpp finds by itself: ember reports its own.
    logging.getLogger("gguf.vocab").setLevel(logging.ERROR)
    special = gguf.SpecialVocab(src, load_merges=merges, n_vocab=n_vocab)
    if "eos" not in special.special_token_ids:  # e.g. only generation_config.json names it
        eos = _json(src / "generation_config.json").get("eos_token_id")
        special._set_special_token("eos", eos[0] if isinstance(eos, list) and eos else eos)
    # Written always: llama.cpp's default depends on the pre-tokenizer (Llama 3's adds a BOS), transformers' on the
    # tokenizer files alone.
    special.add_special_token.setdefault("bos", False)
    special.add_to_gguf(w, quiet=True)
    if special.chat_template is None:
        warnings.append("no chat template (tokenizer_config.json or chat_template.jinja): ember will use ChatML")
    return described, special.chat_template is not None


# -- the tensors -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Hparams:
    n_vocab: int
    n_embd: int
    n_ff: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ctx: int
    eps: float
    rope_theta: float
    rope: dict


def _hparams(src: Path, config: dict, arch: str, warnings: list[str]) -> _Hparams:
    def need(key: str, kind=int):
        value = config.get(key)
        if not isinstance(value, kind) or isinstance(value, bool) or value <= 0:
            raise BadRequest(f"{src}/config.json: {key} must be a positive number, not {value!r}")
        return value

    if config.get("hidden_act", "silu") != "silu":
        raise BadRequest(f"{src}/config.json: hidden_act {config.get('hidden_act')!r}; a Llama uses silu")
    if config.get("quantization_config"):
        method = config["quantization_config"].get("quant_method", "?")
        raise BadRequest(f"{src} is quantized ({method}); convert the unquantized (F32/F16/BF16) checkpoint")
    if arch == "Qwen2ForCausalLM" and config.get("use_sliding_window"):
        raise BadRequest(f"{src}: sliding-window attention (use_sliding_window) is not converted")
    window = config.get("sliding_window")
    if arch == "MistralForCausalLM" and window and window < config.get("max_position_embeddings", 0):
        warnings.append(f"Mistral's sliding window ({window} tokens) is not kept: llama.cpp attends to the whole "
                        "context, which only matters for prompts longer than the window")
    n_embd, n_head = need("hidden_size"), need("num_attention_heads")
    head_dim = config.get("head_dim") or n_embd // n_head
    rope = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    if rope.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0)) != 1.0:
        raise BadRequest(f"{src}: partial rotary embeddings are not a Llama's")
    theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))
    return _Hparams(n_vocab=need("vocab_size"), n_embd=n_embd, n_ff=need("intermediate_size"),
                    n_layer=need("num_hidden_layers"), n_head=n_head,
                    n_head_kv=config.get("num_key_value_heads") or n_head, head_dim=head_dim,
                    n_ctx=need("max_position_embeddings"), eps=float(config.get("rms_norm_eps", 1e-6)),
                    rope_theta=float(theta), rope=rope)


def _rope_keys(w, src: Path, hp: _Hparams) -> np.ndarray | None:
    """Rope scaling as llama.cpp reads it; Llama 3's comes back as the rope_freqs tensor to write."""
    import gguf

    kind = (hp.rope.get("rope_type") or hp.rope.get("type") or "default").lower()
    if kind == "default":
        return None
    if kind == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(hp.rope["factor"]))
        return None
    if kind == "llama3":  # the per-frequency factors of llama.cpp's LlamaModel.generate_extra_tensors
        factor = hp.rope.get("factor", 8.0)
        low, high = hp.rope.get("low_freq_factor", 1.0), hp.rope.get("high_freq_factor", 4.0)
        old_ctx = hp.rope.get("original_max_position_embeddings", 8192)
        freqs = 1.0 / (hp.rope_theta ** (np.arange(0, hp.head_dim, 2, dtype=np.float32) / hp.head_dim))
        factors = []
        for freq in freqs:
            wavelen = 2 * math.pi / freq
            if wavelen < old_ctx / high:
                factors.append(1.0)
            elif wavelen > old_ctx / low:
                factors.append(factor)
            else:
                smooth = (old_ctx / wavelen - low) / (high - low)
                factors.append(1 / ((1 - smooth) / factor + smooth))
        return np.array(factors, dtype=np.float32)
    raise BadRequest(f"{src}: rope scaling {kind!r} is not converted (supported: none, linear, llama3)")


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face's rotary layout (each head's first half, then its second) → llama.cpp's pairs (as
    convert_hf_to_gguf.py's LlamaModel.permute). Works on a weight (rows, n_embd) and a bias (rows,)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _expected_shape(tname: str, hp: _Hparams) -> tuple[int, ...] | None:
    """The Hugging Face (out, in) shape each GGUF tensor must have; None for one this table does not know."""
    q, kv = hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim
    kind = tname.split(".", 2)[-1] if tname.startswith("blk.") else tname
    return {"token_embd.weight": (hp.n_vocab, hp.n_embd), "output.weight": (hp.n_vocab, hp.n_embd),
            "output_norm.weight": (hp.n_embd,), "attn_norm.weight": (hp.n_embd,), "ffn_norm.weight": (hp.n_embd,),
            "attn_q.weight": (q, hp.n_embd), "attn_k.weight": (kv, hp.n_embd), "attn_v.weight": (kv, hp.n_embd),
            "attn_q.bias": (q,), "attn_k.bias": (kv,), "attn_v.bias": (kv,),
            "attn_output.weight": (hp.n_embd, q), "attn_output.bias": (hp.n_embd,),
            "ffn_gate.weight": (hp.n_ff, hp.n_embd), "ffn_up.weight": (hp.n_ff, hp.n_embd),
            "ffn_down.weight": (hp.n_embd, hp.n_ff), "ffn_gate.bias": (hp.n_ff,), "ffn_up.bias": (hp.n_ff,),
            "ffn_down.bias": (hp.n_embd,)}.get(kind)


def _plan_tensors(src: Path, weights: _Weights, hp: _Hparams, tied: bool) -> list[tuple[str, str]]:
    """(Hugging Face name, GGUF name) for every tensor to write, checked against the config before any is read."""
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, hp.n_layer)
    plan = []
    for hf in weights.tensors:
        if hf.endswith(".rotary_emb.inv_freq") or (tied and hf == "lm_head.weight"):
            continue  # recomputed by llama.cpp; the tied output is the embedding itself
        tname = names.get_name(hf, try_suffixes=(".weight", ".bias"))
        want = _expected_shape(tname, hp) if tname else None
        if want is None:
            raise BadRequest(f"{src}: tensor {hf} has no place in llama.cpp's Llama")
        if weights.shape(hf) != want:
            raise BadRequest(f"{src}: tensor {hf} has shape {list(weights.shape(hf))}, but config.json makes it "
                             f"{list(want)}: the weights and config.json do not belong together")
        plan.append((hf, tname))
    required = ["token_embd.weight", "output_norm.weight"] + [
        f"blk.{i}.{t}.weight" for i in range(hp.n_layer)
        for t in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up",
                  "ffn_down")]
    have = {t for _, t in plan}
    if missing := [t for t in required if t not in have]:
        raise BadRequest(f"{src}: the weights lack {missing[0]} ({len(missing)} tensors missing in all); a shard "
                         "may be absent")
    return plan


def llama_to_gguf(src: Path, dst: Path, *, name: str, ftype: str = "f16",
                  report: Callable[..., None] = silent) -> Converted:
    """Convert the Llama-family decoder in `src` to a GGUF at `dst` in f32, f16 or bf16 (atomically)."""
    import gguf

    if ftype not in ("f32", "f16", "bf16"):
        raise BadRequest(f"llama_to_gguf writes f32, f16 or bf16, not {ftype!r}; quantize afterwards")
    src = Path(src)
    config = read_config(src)
    arch = architecture(config)
    if arch not in DECODERS:
        raise BadRequest(f"{src} holds a {arch}; converted here: {', '.join(DECODERS)}")
    warnings: list[str] = []
    hp = _hparams(src, config, arch, warnings)
    weights = _Weights(src)
    tied = bool(config.get("tie_word_embeddings", False)) or "lm_head.weight" not in weights.tensors
    plan = _plan_tensors(src, weights, hp, tied)
    half = {"f16": np.float16, "bf16": np.uint8}.get(ftype)  # bf16 goes in as gguf's bytes
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "bf16": gguf.LlamaFileType.MOSTLY_BF16}[ftype]

    with gguf_writer(dst, "llama") as w:
        w.add_name(name)
        add_llama_shape(w, ctx=hp.n_ctx, dim=hp.n_embd, n_layer=hp.n_layer, ffn_dim=hp.n_ff, n_head=hp.n_head,
                        n_kv_head=hp.n_head_kv, norm_eps=hp.eps, rope_base=hp.rope_theta, head_dim=hp.head_dim,
                        vocab_size=hp.n_vocab)
        w.add_file_type(file_type)
        rope_freqs = _rope_keys(w, src, hp)
        described, chat_template = _write_vocab(w, src, hp.n_vocab, warnings)

        total = sum(weights.nbytes(hf) for hf, _ in plan)  # bytes read, for the progress bar
        parameters = sum(int(np.prod(weights.shape(hf))) for hf, _ in plan)
        done = [0]

        def produce(hf: str, tname: str, matrix: bool) -> Callable[[], np.ndarray]:
            def make() -> np.ndarray:
                report("converting tensors", completed=done[0], total=total, item="tensors")
                array = weights.load(hf)
                if tname.endswith(("attn_q.weight", "attn_q.bias")):
                    array = _permute(array, hp.n_head)
                elif tname.endswith(("attn_k.weight", "attn_k.bias")):
                    array = _permute(array, hp.n_head_kv)
                done[0] += weights.nbytes(hf)
                if not matrix:
                    return np.ascontiguousarray(array, dtype=np.float32)
                if ftype == "bf16":
                    return gguf.quants.quantize(np.ascontiguousarray(array), gguf.GGMLQuantizationType.BF16)
                return np.ascontiguousarray(array, dtype=half or np.float32)
            return make

        if rope_freqs is not None:
            w.add_tensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", rope_freqs)
        for hf, tname in plan:
            shape = weights.shape(hf)
            # Norm gains and biases stay f32, as llama.cpp's converter keeps every 1-D tensor.
            matrix = len(shape) == 2 and ftype != "f32"
            dtype = np.float32 if not matrix else np.uint8 if ftype == "bf16" else np.float16
            out_shape = (shape[0], shape[1] * 2) if matrix and ftype == "bf16" else shape
            lazy = gguf.LazyNumpyTensor(meta=gguf.LazyNumpyTensor.meta_with_dtype_and_shape(dtype, out_shape),
                                        func=produce(hf, tname, matrix))
            w.add_tensor(tname, lazy, raw_dtype=gguf.GGMLQuantizationType.BF16 if matrix and ftype == "bf16"
                         else None)
    report("converting tensors", completed=total, total=total, item="tensors")
    return Converted(path=dst, architecture=arch, ftype=ftype, parameters=parameters, context_length=hp.n_ctx,
                     tokenizer=described, chat_template=chat_template, warnings=warnings)


# -- any folder, any type, into the store ----------------------------------------------------------------------------


def hf_to_gguf(src: Path, dst: Path, *, name: str | None = None, ftype: str = "f16",
               report: Callable[..., None] = silent) -> Converted:
    """The Hugging Face model folder `src` as a GGUF at `dst`: f32, f16 and bf16 written directly, quantizations
    (q8_0, q4_k_m, …) made by llama.cpp from an f16 temp file beside `dst`. `dst` appears whole or not at all."""
    from ember.quantize.quantizer import quantize_file
    from ember.train.convert import bert_to_gguf

    src, dst = Path(src), Path(dst)
    ftype = _type(ftype)
    config = read_config(src)
    arch = architecture(config)
    name = name or src.name
    direct = ftype if ftype in ("f32", "f16", "bf16") else "f16"
    if arch in DECODERS:
        target = dst if direct == ftype else dst.parent / f"{TMP_PREFIX}{dst.stem}.f16.gguf"
        result = llama_to_gguf(src, target, name=name, ftype=direct, report=report)
    elif config.get("model_type") == "bert":
        if direct == "bf16":
            raise BadRequest("a BERT encoder converts to f32, f16 or a quantization, not bf16")
        report(f"converting {arch} (BERT encoder)")
        target = dst if direct == ftype else dst.parent / f"{TMP_PREFIX}{dst.stem}.f16.gguf"
        bert_to_gguf(src, target, name=name, ftype=direct)
        result = Converted(path=target, architecture=arch, ftype=direct, parameters=0,
                           context_length=int(config.get("max_position_embeddings", 0)), tokenizer="bert WordPiece")
    else:
        raise BadRequest(f"{src} holds a {arch} ({config.get('model_type') or 'unknown type'}); ember converts "
                         f"Llama-family decoders ({', '.join(DECODERS)}) and BERT encoders")
    if direct == ftype:
        return result
    try:
        report(f"quantizing to {ftype}")
        quantize_file(target, dst, ftype)
    finally:
        target.unlink(missing_ok=True)
    result.path, result.ftype = dst, ftype
    return result


def _type(ftype: str) -> str:
    """The type as the quantizer spells it in lower case (q4_K_M and Q4_K_M are q4_k_m), or a clear refusal."""
    from ember.quantize.types import parse_type

    kind = (ftype or "").strip().lower()
    return kind if kind in ("f32", "f16", "bf16") else parse_type(ftype, "type").name.lower()


def check(src: Path, name: str, ftype: str) -> str:
    """What can be refused in a moment (the folder, its config, the architecture, the name, the type), before any
    progress is shown; returns the type as the quantizer spells it."""
    from ember.store.names import parse_name

    parse_name(name)
    config = read_config(Path(src))
    arch = architecture(config)
    if arch not in DECODERS and config.get("model_type") != "bert":
        raise BadRequest(f"{src} holds a {arch} ({config.get('model_type') or 'unknown type'}); ember converts "
                         f"Llama-family decoders ({', '.join(DECODERS)}) and BERT encoders")
    return _type(ftype)


def publish(src: Path, name: str, ftype: str = "f16", report: Callable[..., None] = silent) -> Converted:
    """Convert `src` and add it to the model store as `name`; nothing is stored if anything fails."""
    from ember.config import Settings
    from ember.store.store import CreateSpec, ModelStore

    settings = Settings.from_env()
    ftype = check(src, name, ftype)  # before minutes of work
    store = ModelStore(settings.models)
    # Beside the store, so a model larger than /tmp still fits; the folder goes whatever happens (after a kill -9,
    # with the next cleanup: it is locked only while this process lives).
    with temp_dir(settings.models) as tmp:
        result = hf_to_gguf(src, tmp / "model.gguf", name=name, ftype=ftype, report=report)
        # ember's default window is 4096: a model trained for less gets its own, not a warning on every load.
        short = 0 < result.context_length < settings.context_length
        store.create(name, CreateSpec(from_=str(result.path),
                                      parameters={"num_ctx": result.context_length} if short else {}), report)
    return result
