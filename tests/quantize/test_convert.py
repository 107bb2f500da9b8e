"""`ember convert`: small random Llama-family models made with transformers, converted and run by llama.cpp.

Each model's logits from llama.cpp are compared with transformers' on the same tokens, and llama.cpp must split
English and Russian text into the ids the Hugging Face tokenizer gives.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import llama_cpp
import numpy as np
import pytest

from ember.core.errors import BadRequest
from ember.store.store import ModelStore
from ember.train.convert_llama import hf_to_gguf, publish

pytest.importorskip("transformers")

TEXTS = ["The quick brown fox jumps over the lazy dog. I'll pay $3.50 for 12345 apples!",
         "Над рекой стоял старый дом. Съешь ещё этих мягких французских булок, да выпей чаю.",
         "Mixed: кот Васька sat on the mat —  twice,\n\tthen 42 times."]
CORPUS = ("The quick brown fox jumps over the lazy dog. I'll be there, won't you? 12345 apples cost $3.50!\n"
          "Над рекой стоял старый дом. В доме жила бабушка Анна и её кот Васька. "
          "Съешь ещё этих мягких французских булок, да выпей же чаю.\n") * 20
CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")  # Qwen2 splits digits one by one


def _byte_level(style: str):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(ignore_merges=style == "llama3"))
    if style in ("llama3", "qwen2"):  # their own split, then bytes → characters without GPT-2's split
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT if style == "llama3" else QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([CORPUS], trainer)
    return tok, {"bos_token": "<|endoftext|>", "eos_token": "<|im_end|>"}


def _sentencepiece():
    """Llama 2's layout: <unk> <s> </s>, the 256 byte tokens, then BPE pieces over "▁"-joined words."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers

    def spm_normalizer():
        return normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])

    draft = Tokenizer(models.BPE(unk_token="<unk>"))
    draft.normalizer = spm_normalizer()
    draft.train_from_iterator([CORPUS], trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"]))
    learned = json.loads(draft.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"<0x{b:02X}>": 3 + b for b in range(256)}
    for piece, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    tok.normalizer = spm_normalizer()
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tok, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True}


def make_model(folder: Path, *, tokenizer: str = "gpt2", tied: bool = False, arch: str = "llama",
               template_file: bool = False, seed: int = 0, shard: str | None = None, rope: dict | None = None) -> Path:
    """A random model with its tokenizer, saved as transformers saves one: safetensors, tokenizer.json, configs."""
    import torch
    import transformers

    tok, special = _sentencepiece() if tokenizer == "spm" else _byte_level(tokenizer)
    folder.mkdir(parents=True)
    tok.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **special}
    if template_file:  # transformers 5 writes the template beside the config; older versions inside it
        (folder / "chat_template.jinja").write_text(CHATML, encoding="utf-8")
    else:
        config["chat_template"] = CHATML
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    shape = dict(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5,
                 tie_word_embeddings=tied, initializer_range=0.1,  # logits of a few units: differences show
                 bos_token_id=tok.token_to_id(special["bos_token"]), eos_token_id=tok.token_to_id(special["eos_token"]))
    torch.manual_seed(seed)
    if arch == "qwen2":
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**shape))
    else:
        rope = {"rope_type": "default", "rope_theta": 50000.0, **(rope or {})}
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**shape, rope_parameters=rope))
    model.save_pretrained(folder, safe_serialization=True, **({"max_shard_size": shard} if shard else {}))
    return folder


def hf_ids(folder: Path, text: str) -> list[int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)(text)["input_ids"]


def hf_logits(folder: Path, ids: list[int]) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def cpp_logits(path: Path, ids: list[int]) -> np.ndarray:
    # An f32 KV cache (llama.cpp's default is f16), so that what is compared is the conversion alone.
    llm = llama_cpp.Llama(str(path), logits_all=True, n_ctx=256, n_threads=2, type_k=0, type_v=0, verbose=False)
    llm.eval(ids)
    return np.array(llm.scores[:len(ids)])


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {"gpt2-untied": make_model(root / "gpt2-untied", shard="200KB"),  # in three files and an index
            "llama3-tied": make_model(root / "llama3-tied", tokenizer="llama3", tied=True, template_file=True),
            "spm": make_model(root / "spm", tokenizer="spm", seed=1),
            "qwen2": make_model(root / "qwen2", tokenizer="qwen2", arch="qwen2", seed=2),
            # Llama 3.1's long-context rope: per-frequency factors, written as llama.cpp's rope_freqs tensor
            "llama3-rope": make_model(root / "llama3-rope", seed=3, rope={
                "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 64})}


@pytest.mark.parametrize("kind", ["gpt2-untied", "llama3-tied", "spm", "qwen2", "llama3-rope"])
def test_f32_matches_transformers(kind, folders, tmp_path):
    src = folders[kind]
    result = hf_to_gguf(src, tmp_path / "m.gguf", ftype="f32")
    assert result.path.is_file() and not result.warnings, result.warnings
    llm = llama_cpp.Llama(str(result.path), vocab_only=True, verbose=False)
    assert llm.metadata["tokenizer.chat_template"] == CHATML
    for text in TEXTS:
        want = hf_ids(src, text)
        assert llm.tokenize(text.encode(), add_bos=llm.metadata.get("tokenizer.ggml.add_bos_token") == "true",
                            special=False) == want, text
    ids = hf_ids(src, TEXTS[0] + " " + TEXTS[1])
    ref, got = hf_logits(src, ids), cpp_logits(result.path, ids)
    assert np.abs(ref).max() > 1  # a layout mistake would show far above the tolerance
    assert np.abs(ref - got).max() <= 1e-3, np.abs(ref - got).max()


def test_tied_embeddings_write_no_output_matrix(folders, tmp_path):
    from gguf import GGUFReader

    names = {t.name for t in GGUFReader(hf_to_gguf(folders["llama3-tied"], tmp_path / "t.gguf").path).tensors}
    assert "output.weight" not in names and "token_embd.weight" in names
    names = {t.name for t in GGUFReader(hf_to_gguf(folders["gpt2-untied"], tmp_path / "u.gguf").path).tensors}
    assert "output.weight" in names


@pytest.mark.parametrize(("ftype", "tolerance"), [("f16", 0.02), ("bf16", 0.1), ("q8_0", 0.25)])
def test_smaller_types_load_and_stay_close(ftype, tolerance, folders, tmp_path):
    src = folders["gpt2-untied"]
    ids = hf_ids(src, TEXTS[0] + " " + TEXTS[1])
    result = hf_to_gguf(src, tmp_path / f"m-{ftype}.gguf", ftype=ftype)
    assert llama_cpp.Llama(str(result.path), vocab_only=True, verbose=False).metadata["general.file_type"] == str(
        {"f16": 1, "bf16": 32, "q8_0": 7}[ftype])
    ref, got = hf_logits(src, ids), cpp_logits(result.path, ids)
    assert np.abs(ref - got).max() <= tolerance, np.abs(ref - got).max()
    assert (ref.argmax(-1) == got.argmax(-1)).mean() > 0.9


def test_cancel_leaves_nothing(folders, tmp_path):
    def cancel(status, **progress):
        if progress.get("completed"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        hf_to_gguf(folders["gpt2-untied"], tmp_path / "out" / "m.gguf", report=cancel)
    assert list((tmp_path / "out").iterdir()) == []
    os.environ["EMBER_HOME"] = str(tmp_path / "home")
    try:
        with pytest.raises(KeyboardInterrupt):
            publish(folders["gpt2-untied"], "half", "q8_0", report=cancel)
        assert_empty(ModelStore(tmp_path / "home" / "models"))
    finally:
        del os.environ["EMBER_HOME"]


def assert_empty(store: ModelStore) -> None:
    """No model, no blob, no temp file or folder: as before the command ran."""
    assert store.list() == [] and list(store.blobs.root.iterdir()) == []
    assert sorted(p.name for p in store.root.iterdir()) in (["blobs", "manifests"], [".lock", "blobs", "manifests"])


def ember(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBER_")}
    env.update(EMBER_HOME=str(home), PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "ember", *args], env=env, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)


def test_cli_converts_into_the_store_and_the_model_answers(folders, tmp_path):
    proc = ember("convert", str(folders["llama3-tied"]), "--name", "tiny-llama", "--type", "q8_0", home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "converted LlamaForCausalLM" in proc.stderr and "to q8_0" in proc.stderr
    assert "pre-tokenizer llama-bpe" in proc.stderr and "chat template: yes" in proc.stderr
    assert "created model 'tiny-llama:latest'" in proc.stderr
    model = ModelStore(tmp_path / "models").get("tiny-llama")
    assert model.info.quantization.upper() == "Q8_0" and model.chat_template == CHATML
    assert model.params.get("num_ctx") == 256  # its own window, not a warning on each load
    answer = ember("run", "tiny-llama", "Привет, how are you?", home=tmp_path)
    assert answer.returncode == 0 and answer.stdout.strip(), answer.stderr  # random weights: any text will do


def _broken(folders, tmp_path, what: str) -> Path:
    src = tmp_path / "broken"
    if what == "file":
        src = tmp_path / "model.safetensors"
        src.write_bytes(b"\0" * 16)
        return src
    if what == "missing":
        return tmp_path / "nowhere"
    src.mkdir()
    for f in folders["gpt2-untied"].iterdir():
        (src / f.name).symlink_to(f)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").unlink()
    if what == "no-config":
        return src
    if what == "architecture":
        config.update(architectures=["GPT2LMHeadModel"], model_type="gpt2")
    elif what == "shape":
        config["intermediate_size"] = 96  # the weights' is 128
    elif what == "no-tokenizer":
        (src / "tokenizer.json").unlink()
    elif what == "no-weights":
        (src / "model.safetensors.index.json").unlink()
    (src / "config.json").write_text(json.dumps(config))
    return src


@pytest.mark.parametrize(("what", "message"), [
    ("file", "is a file, not a folder"),
    ("missing", "does not exist"),
    ("no-config", "has no config.json"),
    ("architecture", "holds a GPT2LMHeadModel"),
    ("shape", "_proj.weight has shape [128, 64], but config.json makes it [96, 64]"),
    ("no-tokenizer", "has no tokenizer.json"),
    ("no-weights", "has no model.safetensors"),
    ("bad-type", "type 'q9' is not a quantization"),
])
def test_bad_input_is_one_clear_line_and_stores_nothing(what, message, folders, tmp_path):
    src = _broken(folders, tmp_path, what)
    with pytest.raises(BadRequest, match=message.replace("[", r"\[").replace("]", r"\]")):
        hf_to_gguf(src, tmp_path / "x.gguf", ftype="q9" if what == "bad-type" else "f16")
    if what in ("architecture", "no-tokenizer"):  # the same through the command line, once each way
        proc = ember("convert", str(src), "--name", "bad", home=tmp_path / "home")
        assert proc.returncode == 1
        lines = proc.stderr.strip().splitlines()
        assert lines[-1].startswith("Error:") and message in lines[-1] and "Traceback" not in proc.stderr
        assert_empty(ModelStore(tmp_path / "home" / "models"))
    assert not (tmp_path / "x.gguf").exists()
