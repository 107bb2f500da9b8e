"""A Llama-architecture decoder, small enough to read top to bottom (after nanoGPT's model.py).

RMSNorm, rotary positions, SwiGLU feed-forward, grouped-query attention and tied input/output embeddings: exactly
the graph llama.cpp's `llama` architecture runs, so `export.py` only renames tensors. Rotary is applied to
interleaved pairs (x0,x1), (x2,x3)… as GGUF llama expects, so no Q/K permutation is needed on export.
"""

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ModelConfig:
    vocab_size: int
    n_layer: int = 4
    dim: int = 128
    n_head: int = 4
    n_kv_head: int = 4
    ctx: int = 256
    ffn_dim: int = 0  # 0: about 8/3 of dim, as in Llama
    norm_eps: float = 1e-5
    rope_base: float = 10000.0

    def __post_init__(self):
        if self.dim % self.n_head:
            raise ValueError(f"--dim {self.dim} must be a multiple of --heads {self.n_head}")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"--heads {self.n_head} must be a multiple of --kv-heads {self.n_kv_head}")
        if (self.dim // self.n_head) % 2:
            raise ValueError(f"the head size --dim/--heads = {self.dim // self.n_head} must be even for rotary")
        if not self.ffn_dim:
            self.ffn_dim = 32 * math.ceil(self.dim * 8 / 3 / 32)

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    def num_params(self) -> int:
        """What Llama(self).num_params() counts, without building it: the embedding (tied), per layer the four
        attention matrices, the three feed-forward ones and two norms, and the final norm."""
        q, kv = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        layer = 2 * self.dim * q + 2 * self.dim * kv + 3 * self.dim * self.ffn_dim + 2 * self.dim
        return self.vocab_size * self.dim + self.n_layer * layer + self.dim

    def to_dict(self) -> dict:
        return asdict(self)


# Named sizes: roughly 1 M, 10 M and 50 M parameters (plus the embedding, which depends on the vocabulary).
SIZES = {
    "tiny": dict(n_layer=4, dim=128, n_head=4, n_kv_head=2, ctx=256),
    "small": dict(n_layer=6, dim=384, n_head=6, n_kv_head=2, ctx=512),
    "base": dict(n_layer=10, dim=640, n_head=10, n_kv_head=5, ctx=1024),
}


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotary_tables(cfg: ModelConfig, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of position * frequency, one frequency per pair of channels: (length, head_dim/2) each."""
    freqs = cfg.rope_base ** (-torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim)
    angles = torch.outer(torch.arange(length, dtype=torch.float32), freqs)
    return angles.cos(), angles.sin()


def apply_rotary(x, cos, sin):
    """Rotate each interleaved pair (x[2i], x[2i+1]) of every head by its position's angle. x: (B, H, T, D)."""
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        hd = cfg.head_dim
        self.wq = nn.Linear(cfg.dim, cfg.n_head * hd, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.n_kv_head * hd, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.n_kv_head * hd, bias=False)
        self.wo = nn.Linear(cfg.n_head * hd, cfg.dim, bias=False)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        c = self.cfg
        q = self.wq(x).view(B, T, c.n_head, c.head_dim).transpose(1, 2)
        k = self.wk(x).view(B, T, c.n_kv_head, c.head_dim).transpose(1, 2)
        v = self.wv(x).view(B, T, c.n_kv_head, c.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if c.n_kv_head != c.n_head:  # grouped-query: each K/V head serves n_head/n_kv_head query heads in a row
            k = k.repeat_interleave(c.n_head // c.n_kv_head, dim=1)
            v = v.repeat_interleave(c.n_head // c.n_kv_head, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))


class FeedForward(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.up = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.down = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn = FeedForward(cfg)

    def forward(self, x, cos, sin):
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.ffn(self.ffn_norm(x))


class Llama(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        cos, sin = rotary_tables(cfg, cfg.ctx)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.apply(self._init)
        # GPT-2's trick: scale the projections that feed the residual stream by depth, so it starts near identity.
        for name, p in self.named_parameters():
            if name.endswith(("wo.weight", "down.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx, targets=None):
        """Logits for every position (B, T, vocab); with targets, also the mean cross-entropy (-100 = ignored)."""
        length = idx.shape[1]
        if length > self.cfg.ctx:
            raise ValueError(f"sequence of {length} tokens is longer than the model's context {self.cfg.ctx}")
        x = self.embed(idx)
        cos, sin = self.cos[:length], self.sin[:length]
        for block in self.blocks:
            x = block(x, cos, sin)
        logits = F.linear(self.norm(x), self.embed.weight)  # tied: the output matrix is the embedding
        if targets is None:
            return logits, None
        # Summed, then divided by at least one: a window with nothing to learn (--chat, all user text) gives 0, not NaN.
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-100,
                               reduction="sum") / (targets != -100).sum().clamp(min=1)
        return logits, loss

    @torch.no_grad()
    def generate(self, idx, max_new_tokens: int, temperature: float = 0.8, top_k: int | None = 200,
                 stop: set[int] | None = None):
        """Append up to max_new_tokens sampled tokens (greedy at temperature 0); yields each new token id."""
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.cfg.ctx:])
            logits = logits[:, -1, :]
            if temperature <= 0:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                    logits = logits.masked_fill(logits < kth, -float("inf"))
                nxt = torch.multinomial(F.softmax(logits, dim=-1), 1)
            idx = torch.cat((idx, nxt), dim=1)
            yield int(nxt)
            if stop and int(nxt) in stop:
                return
