"""Checkpoint → GGUF that stock llama.cpp runs (llama architecture, gpt2 byte-level vocabulary), quantize, import.

The PyTorch model already uses llama.cpp's interleaved rotary layout, so tensors are only renamed, never permuted.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ember.core.errors import BadRequest
from ember.core.templates import CHATML
from ember.fsutil import commit, open_temp
from ember.train.tokenizer import Tokenizer

if TYPE_CHECKING:
    import gguf

# Quantizations llama.cpp can make from an f16/f32 GGUF (tensors whose rows do not divide evenly fall back by
# llama.cpp's own rules).
QUANTS = ("q8_0", "q6_k", "q5_k_m", "q5_k_s", "q5_0", "q5_1", "q4_k_m", "q4_k_s", "q4_0", "q4_1", "q3_k_m", "q2_k")
FORMATS = ("f32", "f16") + QUANTS
# A --chat model carries ChatML, the template it was trained on (data.render_chat); base models have no turns: a
# prompt is continued as it stands.
PLAIN_TEMPLATE = "{% for m in messages %}{{ m.content }}{% endfor %}"


def _tensors(model) -> dict[str, np.ndarray]:
    """GGUF llama names for every weight (the tied output matrix is the embedding, so output.weight is omitted)."""
    sd = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    out = {"token_embd.weight": sd["embed.weight"], "output_norm.weight": sd["norm.weight"]}
    names = {"attn_norm.weight": "attn_norm.weight", "attn.wq.weight": "attn_q.weight",
             "attn.wk.weight": "attn_k.weight", "attn.wv.weight": "attn_v.weight",
             "attn.wo.weight": "attn_output.weight", "ffn_norm.weight": "ffn_norm.weight",
             "ffn.gate.weight": "ffn_gate.weight", "ffn.up.weight": "ffn_up.weight",
             "ffn.down.weight": "ffn_down.weight"}
    for i in range(model.cfg.n_layer):
        for ours, theirs in names.items():
            out[f"blk.{i}.{theirs}"] = sd[f"blocks.{i}.{ours}"]
    return out


@contextmanager
def gguf_writer(path: Path, arch: str) -> Iterator["gguf.GGUFWriter"]:
    """A GGUFWriter for `arch`: the caller adds keys and tensors; the file appears at `path` once all is written."""
    import gguf

    # Our locked temp file (the writer reopens the same name, the lock stays on the file): a cleanup run meanwhile by
    # another process (a server starting, ember doctor --fix) leaves it alone.
    held, tmp = open_temp(path.parent)
    w = gguf.GGUFWriter(str(tmp), arch)
    try:
        with held:
            yield w
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_tensors_to_file()
            w.close()
            commit(held, tmp, path)
    finally:
        w.close()  # also when a tensor fails or a cancel stops the writing half-way: no open handle on a gone file
        tmp.unlink(missing_ok=True)


def add_llama_shape(w: "gguf.GGUFWriter", *, ctx: int, dim: int, n_layer: int, ffn_dim: int, n_head: int,
                    n_kv_head: int, norm_eps: float, rope_base: float, head_dim: int, vocab_size: int) -> None:
    """The keys llama.cpp's `llama` architecture reads for its shape: shared by train's export and convert."""
    w.add_context_length(ctx)
    w.add_embedding_length(dim)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(ffn_dim)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv_head)
    w.add_layer_norm_rms_eps(norm_eps)
    w.add_rope_freq_base(rope_base)
    w.add_rope_dimension_count(head_dim)
    if head_dim != dim // n_head:  # llama.cpp assumes dim / heads otherwise
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_vocab_size(vocab_size)


def write_gguf(model, tok: Tokenizer, path: Path, *, chat: bool, name: str = "ember", ftype: str = "f16") -> Path:
    """Write model + tokenizer + chat template as one GGUF (f32 or f16), atomically."""
    import gguf

    if ftype not in ("f32", "f16"):
        raise BadRequest(f"write_gguf makes f32 or f16, not {ftype!r}; quantize afterwards")
    c = model.cfg
    with gguf_writer(path, "llama") as w:
        w.add_name(name)
        add_llama_shape(w, ctx=c.ctx, dim=c.dim, n_layer=c.n_layer, ffn_dim=c.ffn_dim, n_head=c.n_head,
                        n_kv_head=c.n_kv_head, norm_eps=c.norm_eps, rope_base=c.rope_base, head_dim=c.head_dim,
                        vocab_size=c.vocab_size)
        w.add_file_type(gguf.LlamaFileType.ALL_F32 if ftype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
        tokens, types, merges = tok.gguf_vocab()
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("gpt-2")  # GPT-2's split regex, the one the tokenizers library's ByteLevel uses
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_bos_token_id(tok.eot)
        w.add_eos_token_id(tok.im_end if chat else tok.eot)
        w.add_add_bos_token(False)  # training windows start anywhere in the text, never after a BOS
        w.add_chat_template(CHATML if chat else PLAIN_TEMPLATE)
        for tname, array in _tensors(model).items():
            # Norm gains stay f32 as llama.cpp's own converter keeps them.
            w.add_tensor(tname, array.astype(np.float16) if ftype == "f16" and array.ndim == 2 else array)
    return path


def quantize(src: Path, dst: Path, kind: str) -> Path:
    """llama.cpp's own quantizer (ember.quantize's, shared with `ember quantize`); nothing partial is ever left."""
    from ember.quantize.quantizer import quantize_file

    if kind not in QUANTS:
        raise BadRequest(f"unknown quantization {kind!r} (known: {', '.join(FORMATS)})")
    return quantize_file(src, dst, kind)


def export(ckpt_dir: Path, out: Path, fmt: str = "f16") -> Path:
    """The checkpoint in ckpt_dir as a GGUF at `out` in format f32, f16 or a llama.cpp quantization."""
    from ember.train.trainer import load_model

    if fmt not in FORMATS:
        raise BadRequest(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    model, tok, blob = load_model(ckpt_dir)
    chat = blob["train_config"].get("chat", False)
    name = out.stem
    if fmt in ("f32", "f16"):
        return write_gguf(model, tok, out, chat=chat, name=name, ftype=fmt)
    base = write_gguf(model, tok, out.with_suffix(".f16.gguf"), chat=chat, name=name, ftype="f16")
    try:
        return quantize(base, out, fmt)
    finally:
        base.unlink(missing_ok=True)


def publish(ckpt_dir: Path, name: str, fmt: str = "f16") -> Path:
    """Export the checkpoint and add it to the model store as `name`; returns the GGUF path kept beside it."""
    from ember.config import Settings
    from ember.store.gguf_info import read_gguf_info
    from ember.store.store import CreateSpec, ModelStore

    gguf_path = export(ckpt_dir, Path(ckpt_dir).resolve() / f"model-{fmt}.gguf", fmt)
    # The GGUF carries its template; these make a base model continue text the way `ember sample` does, in the
    # context it was trained for (not the 4096 default, which ember would cut down with a warning on every load).
    ModelStore(Settings.from_env().models).create(name, CreateSpec(from_=str(gguf_path), parameters={
        "temperature": 0.8, "top_k": 200, "repeat_penalty": 1.0,
        "num_ctx": read_gguf_info(gguf_path).context_length}))
    return gguf_path
