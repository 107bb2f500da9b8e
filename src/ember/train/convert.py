"""Hugging Face safetensors folder → GGUF that stock llama.cpp runs.

Today: BERT-family encoders (sentence-transformers embedding models and cross-encoder rerankers), so that bundled
embedding models run on llama.cpp like every other model. Tensor names come from the `gguf` package's own map, the
vocabulary is rewritten the way llama.cpp's converter does it (WordPiece in "phantom space" form), and the file is
written through `export.gguf_writer`, the one GGUF writer train, tune and convert share.

Why not call llama.cpp's `convert_hf_to_gguf.py`: it is not in the llama-cpp-python wheel, and it imports
`transformers` to read a tokenizer that `tokenizer.json` already describes.
"""

import json
import logging
from pathlib import Path

import numpy as np

from ember.core.errors import BadRequest

# sentence-transformers' pooling modes → llama.cpp's pooling types (LLAMA_POOLING_TYPE_*).
POOLING = {"pooling_mode_mean_tokens": 1, "pooling_mode_cls_token": 2, "pooling_mode_lasttoken": 3}
POOLING_RANK = 4  # a cross-encoder: one relevance score per (query, document) pair
# Never used for embeddings (llama.cpp's converter drops them too).
DROPPED = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise BadRequest(f"cannot read {path}: {e}") from None


def _pooling(src: Path, config: dict) -> int:
    if config.get("architectures", [""])[0].endswith("ForSequenceClassification"):
        return POOLING_RANK
    modules = _read_json(src / "modules.json")
    folder = next((m["path"] for m in modules if m.get("type", "").endswith("Pooling")), "1_Pooling") \
        if isinstance(modules, list) else "1_Pooling"
    pooling = _read_json(src / folder / "config.json")
    return next((kind for key, kind in POOLING.items() if pooling.get(key)), 1)  # mean, sentence-transformers' default


def _wordpiece_vocab(tokenizer: dict, n_vocab: int) -> tuple[list[str], list[int]]:
    """Tokens as llama.cpp's WordPiece tokenizer wants them: "##x" → "x", other words get a leading "▁"."""
    import gguf

    model = tokenizer.get("model", {})
    if model.get("type") != "WordPiece":
        raise BadRequest(f"only WordPiece (BERT) tokenizers can be converted here, not {model.get('type')!r}")
    by_id = {i: t for t, i in model["vocab"].items()}
    special = {t["id"] for t in tokenizer.get("added_tokens", []) if t.get("special")}
    tokens, types = [], []
    for i in range(n_vocab):
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in special:
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL)
        else:
            tokens.append(token[2:] if token.startswith("##") else "\u2581" + token)
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def bert_to_gguf(src: Path, dst: Path, *, name: str, ftype: str = "f32") -> Path:
    """Convert the BERT encoder in `src` (config.json, model.safetensors, tokenizer.json) to a GGUF at `dst`."""
    import gguf
    from safetensors import safe_open

    from ember.train.export import gguf_writer

    config = _read_json(src / "config.json")
    if config.get("model_type") != "bert":
        raise BadRequest(f"{src} holds a {config.get('model_type') or 'unknown'} model; only BERT encoders convert")
    if ftype not in ("f32", "f16"):
        raise BadRequest(f"a BERT model converts to f32 or f16, not {ftype!r}")
    n_layer = config["num_hidden_layers"]
    names = gguf.TensorNameMap(gguf.MODEL_ARCH.BERT, n_layer)
    tokens, types = _wordpiece_vocab(_read_json(src / "tokenizer.json"), config["vocab_size"])
    pooling = _pooling(src, config)
    with gguf_writer(dst, "bert") as w:
        w.add_name(name)
        w.add_context_length(config["max_position_embeddings"])
        w.add_embedding_length(config["hidden_size"])
        w.add_feed_forward_length(config["intermediate_size"])
        w.add_block_count(n_layer)
        w.add_head_count(config["num_attention_heads"])
        w.add_layer_norm_eps(config["layer_norm_eps"])
        w.add_causal_attention(False)
        w.add_pooling_type(gguf.PoolingType(pooling))
        w.add_file_type(gguf.LlamaFileType.ALL_F32 if ftype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
        w.add_token_type_count(config.get("type_vocab_size", 1))
        w.add_tokenizer_model("bert")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_types(types)
        # gguf's SpecialVocab warns that it has no key for [CLS]; llama.cpp's BERT vocabulary finds it by itself.
        logging.getLogger("gguf.vocab").setLevel(logging.ERROR)
        gguf.SpecialVocab(src, n_vocab=len(tokens)).add_to_gguf(w)
        with safe_open(src / "model.safetensors", "np") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                hf = key.removeprefix("bert.")
                if pooling == POOLING_RANK and hf.startswith("pooler.dense."):  # a cross-encoder's pooler: its head
                    tname = "cls." + hf.rsplit(".", 1)[1]
                elif hf in DROPPED or hf.startswith("cls."):
                    continue
                elif hf.startswith("classifier."):  # a cross-encoder's head, named as llama.cpp's converter names it
                    tname = "cls.output." + hf.split(".", 1)[1]
                else:
                    tname = names.get_name(hf, try_suffixes=(".weight", ".bias"))
                if tname is None:
                    raise BadRequest(f"{src}: tensor {key} has no place in llama.cpp's BERT")
                array = f.get_tensor(key).astype(np.float32)
                # Only the matrices that are multiplied may be f16: the position and token-type tables are added to
                # f32 activations, which llama.cpp's CPU backend does not do in f16; norms and biases stay f32.
                half = ftype == "f16" and array.ndim == 2 and tname.startswith(("blk.", "token_embd.", "cls."))
                w.add_tensor(tname, array.astype(np.float16) if half else array)
    return dst
