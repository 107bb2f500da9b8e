"""The model being taught: a stored GGUF read into PyTorch, and how the server turns chats into its tokens.

transformers reads the GGUF and dequantizes it with the gguf package (its own GGUF loader; we add nothing to it),
undoing llama.cpp's rotary row order for Llama so the weights are in Hugging Face's layout. The adapter and the
merged model are written back in llama.cpp's layout (see adapter.py).
"""

import contextlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path

from ember.core import templates
from ember.core.errors import BadRequest
from ember.store.store import Model
from ember.tune.data import ChatFormat

# GGUF architectures LoRA is tested on here, and whether llama.cpp keeps q/k rows in its own rotary order for them
# (Llama's converter permutes them; NeoX-style rotary ones such as Gemma 3 keep Hugging Face's order).
ARCHITECTURES = {"llama": True, "gemma3": False}


@dataclass
class Base:
    model: Model  # the store entry: its GGUF, template, system prompt and parameters

    @property
    def architecture(self) -> str:
        return self.model.info.architecture

    @property
    def permuted_qk(self) -> bool:
        return ARCHITECTURES[self.architecture]


def check(model: Model) -> Base:
    if model.is_speech:
        raise BadRequest(f"{model.name} is a speech-to-text model; ember tune teaches language models")
    info = model.info
    if info.architecture not in ARCHITECTURES:
        raise BadRequest(f"{model.name} is a {info.architecture!r} model; ember tune supports "
                         f"{', '.join(ARCHITECTURES)} (Llama-family models such as SmolLM2, and Gemma 3)")
    if model.adapter_paths:
        raise BadRequest(f"{model.name} already carries a LoRA adapter; tune its base model instead, or create a "
                         "merged copy first (ember tune … --merge)")
    return Base(model)


def load_torch(base: Base):
    """The base model as a PyTorch module in float32, every weight dequantized."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    path = Path(base.model.model_path)
    # transformers wants a folder and a file name; the store's blob has no .gguf suffix, which it does not need.
    with contextlib.redirect_stderr(io.StringIO()):
        logging.getLogger("transformers").setLevel(logging.ERROR)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    model.config.use_cache = False
    return model


def chat_format(base: Base):
    """The template, system prompt and tokenizer the server will use for this model (see runtime.generation)."""
    from llama_cpp import Llama

    from ember.engines.llamacpp import _Vocabulary  # the engine's own tokenizing, so training sees served tokens

    model = base.model
    info = model.info
    vocab = _Vocabulary()
    llm = Llama(model_path=str(model.model_path), vocab_only=True, verbose=False)
    vocab._init_vocab(llm._model)
    vocab.owner = llm  # the vocabulary lives as long as the Llama that loaded it
    return ChatFormat(template=model.chat_template or templates.CHATML, system=model.system,
                      bos_token=info.bos_token or "", eos_token=info.eos_token or "", tokenize=vocab.tokenize)
