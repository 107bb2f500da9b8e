"""ADAPTER in a Modelfile: a real GGUF LoRA adapter, applied by llama.cpp when the model is served."""

import numpy as np
from gguf import GGUFWriter


def write_lora(path, scale: float, layers: int = 30, dim: int = 576, rank: int = 8):
    """A LoRA adapter on every layer's attention query, in llama.cpp's adapter GGUF layout."""
    writer = GGUFWriter(str(path), "llama")
    writer.add_type("adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(rank))
    rng = np.random.default_rng(0)
    for layer in range(layers):
        writer.add_tensor(f"blk.{layer}.attn_q.weight.lora_a", (rng.standard_normal((rank, dim)) * 0.1).astype(np.float32))
        writer.add_tensor(f"blk.{layer}.attn_q.weight.lora_b", (rng.standard_normal((dim, rank)) * scale).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def answer(api, model: str) -> str:
    r = api.post("/api/chat", json={"model": model, "stream": False, "options": {"temperature": 0, "num_predict": 12},
                                    "messages": [{"role": "user", "content": "Name a color."}]})
    assert r.status_code == 200, r.text
    return r.json()["message"]["content"]


def test_adapter_changes_the_answer_and_a_zero_adapter_does_not(api, tmp_path):
    write_lora(tmp_path / "zero.gguf", 0.0)
    write_lora(tmp_path / "strong.gguf", 1.0)
    for name, adapter in (("lora-zero", "zero.gguf"), ("lora-strong", "strong.gguf")):
        modelfile = f"FROM smollm2\nADAPTER {tmp_path / adapter}\n"
        assert api.post("/api/create", json={"model": name, "modelfile": modelfile}).status_code == 200
    base = answer(api, "smollm2")
    assert answer(api, "lora-zero") == base
    assert answer(api, "lora-strong") != base
    for name in ("lora-zero", "lora-strong"):
        api.request("DELETE", "/api/delete", json={"model": name})


def test_adapter_that_is_a_model_is_refused(api, ember_home):
    from ember.store.store import ModelStore

    gguf = ModelStore(ember_home / "models").get("smollm2").model_path
    r = api.post("/api/create", json={"model": "x", "modelfile": f"FROM smollm2\nADAPTER {gguf}\n"})
    assert r.status_code == 400 and "not a LoRA adapter" in r.json()["error"]
