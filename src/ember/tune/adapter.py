"""A tuned LoRA written for llama.cpp: as an adapter GGUF over the untouched base, or merged into a full F16 GGUF.

peft keeps, for each adapted Linear W (out × in), A (rank × in) and B (out × rank) with W' = W + (alpha / rank)·B·A.
llama.cpp's adapter format holds the same A and B under the base tensor's GGUF name (`blk.0.attn_q.weight.lora_a`,
`….lora_b`) and applies alpha / rank itself, so the matrices are written as peft has them. One thing differs: for
Llama, llama.cpp stores q and k with their rows in its own rotary order (its converter permutes them; transformers
undoes that when it reads the GGUF), so B's rows, and a merged q or k, are permuted the same way here.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ember.train.export import gguf_writer


@dataclass
class Lora:
    name: str  # the base tensor's GGUF name, e.g. blk.3.attn_q.weight
    a: np.ndarray  # rank × in
    b: np.ndarray  # out × rank, rows in llama.cpp's order
    scale: float  # alpha / rank

    def delta(self) -> np.ndarray:
        return self.scale * (self.b.astype(np.float64) @ self.a.astype(np.float64))


def _rotary_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face's rotary row order → llama.cpp's, per head (the permutation its Llama converter applies)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def loras(peft_model, architecture: str, permuted_qk: bool) -> list[Lora]:
    """Every adapted matrix of a peft model, named and ordered as llama.cpp wants them."""
    import gguf
    from peft.tuners.lora import LoraLayer

    config = peft_model.get_base_model().config
    arch = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == architecture)
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    out = []
    for module_name, module in peft_model.named_modules():
        if not isinstance(module, LoraLayer) or "default" not in module.lora_A:
            continue
        hf_name = module_name.removeprefix("base_model.model.")
        name = names.get_name(hf_name + ".weight", try_suffixes=(".weight",))
        if name is None:
            raise ValueError(f"no GGUF name for {hf_name}")  # a target the map lacks: a bug here, not bad input
        a = module.lora_A["default"].weight.detach().float().cpu().numpy()
        b = module.lora_B["default"].weight.detach().float().cpu().numpy()
        if permuted_qk and ".attn_q." in name:
            b = _rotary_rows(b, config.num_attention_heads)
        elif permuted_qk and ".attn_k." in name:
            b = _rotary_rows(b, config.num_key_value_heads)
        out.append(Lora(name, a, b, float(module.scaling["default"])))
    return out


def write_adapter(path: Path, adapters: list[Lora], architecture: str, alpha: float, base_name: str) -> Path:
    """A LoRA adapter GGUF that llama.cpp (and Ollama's ADAPTER) applies over the base model."""
    import gguf

    ranks = {lora.a.shape[0] for lora in adapters}
    with gguf_writer(path, architecture) as w:
        w.add_type(gguf.GGUFType.ADAPTER)
        w.add_string(gguf.Keys.Adapter.TYPE, "lora")
        # llama.cpp scales by alpha / rank with the rank read from each tensor; peft's scaling is alpha / r too.
        w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
        w.add_name(f"LoRA adapter for {base_name} (rank {', '.join(map(str, sorted(ranks)))})")
        for lora in adapters:
            w.add_tensor(f"{lora.name}.lora_a", np.ascontiguousarray(lora.a, dtype=np.float32))
            w.add_tensor(f"{lora.name}.lora_b", np.ascontiguousarray(lora.b, dtype=np.float32))
    return path


# Keys the writer sets itself, or that describe the file rather than the model.
_OWN_KEYS = ("general.architecture", "general.file_type", "general.quantization_version")


def write_merged(path: Path, base_gguf: Path, adapters: list[Lora], name: str) -> Path:
    """The base GGUF with each adapted matrix replaced by W + scale·B·A, every matrix F16 (norms stay F32).

    The base's quantized matrices are dequantized first, which is also what the LoRA was trained against; the
    result can be quantized again with `ember quantize`.
    """
    import gguf
    from gguf.quants import dequantize

    reader = gguf.GGUFReader(str(base_gguf))
    architecture = str(reader.fields["general.architecture"].contents())
    deltas = {lora.name: lora for lora in adapters}
    with gguf_writer(path, architecture) as w:
        for field in reader.fields.values():
            if field.name.startswith("GGUF.") or field.name in _OWN_KEYS:
                continue
            if field.name == gguf.Keys.General.NAME:
                w.add_name(name)
                continue
            value_type = field.types[0]
            sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
            w.add_key_value(field.name, field.contents(), value_type, sub_type=sub_type)
        w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for tensor in reader.tensors:
            weights = dequantize(tensor.data, tensor.tensor_type).reshape(tuple(reversed(tensor.shape.tolist())))
            if tensor.name in deltas:
                weights = weights + deltas[tensor.name].delta()
            w.add_tensor(tensor.name, weights.astype(np.float16 if weights.ndim >= 2 else np.float32))
    return path
