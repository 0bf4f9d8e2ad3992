"""Swap spectralar_kernels' attention into a LlamaGen-style class-conditional GPT and check nothing changes.

The model is written here for this example (not taken from LlamaGen) with what such image-token GPTs have:
RMSNorm, rotary position embeddings, SwiGLU MLPs, grouped-query attention, a class token as the prompt (plus a
learned "null" class for classifier-free guidance) and a static KV cache. Its attention comes in the two forms
image GPTs are written in, and for each the swap is the import line that provides the attention functions:

    SDPAAttention    LlamaGen's form: torch's SDPA for training, a `[B, H_kv, T_max, D]` cache read under a mask.
                     from torch.nn.functional import scaled_dot_product_attention     # the model as written
                     from spectralar_kernels import scaled_dot_product_attention      # the swap
    FlashAttention   flash-attn's form: `flash_attn_func` for training, `flash_attn_with_kvcache` (a
                     `[B, T_max, H_kv, D]` cache it appends to itself) for prefill and decode.
                     from flash_attn import flash_attn_func, flash_attn_with_kvcache  # the model as written
                     from spectralar_kernels import flash_attn_func, flash_attn_with_kvcache  # the swap

Both forms run side by side here, so the module the names come from is the `ops` argument of each model
(`torch.nn.functional`, `flash_attn` or `spectralar_kernels`); the model code is the same text either way.
flash-attn needs a CUDA GPU: without it, the flash-attn-form model on spectralar_kernels is checked against the
SDPA model on torch (the same weights compute the same function).

Checked, for each swap: logits and parameter gradients of a training batch (within the tolerance printed), and
the generated tokens with classifier-free guidance, greedy and sampled from a fixed generator (must be
identical), with the logits of every decoding step. Exits 1 on any mismatch.

    python examples/llamagen_style_gpt.py             # small config, CPU: a few seconds
    python examples/llamagen_style_gpt.py --micro     # tiny config (CI)
    SPECTRALAR_KERNELS=triton TRITON_INTERPRET=1 python examples/llamagen_style_gpt.py --micro  # Triton on CPU
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from _util import rel_err, timed

import spectralar_kernels as sk

TOLERANCE = 1e-4  # max |difference| of logits and of each gradient, relative to the largest |value| (fp32)


@dataclass
class Config:
    vocab_size: int = 128  # the image tokenizer's codebook size
    num_classes: int = 10
    dim: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_kv_head: int = 2  # < n_head: grouped-query attention
    image_tokens: int = 16  # a 4 x 4 token grid
    rope_base: float = 10000.0


MICRO = Config(vocab_size=32, num_classes=4, dim=32, n_layer=2, n_head=2, n_kv_head=1, image_tokens=4)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(n_pos: int, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin `[n_pos, head_dim / 2]` of the rotary angles, position p and frequency i: p * base^(-2i/D)."""
    inv_freq = base ** -(torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(n_pos, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the dim pairs (i, i + D/2) of `x [B, T, H, D]` by the angles of its T positions (`[T, D/2]`)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    cos, sin = cos[:, None], sin[:, None]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


class SDPAAttention(nn.Module):
    """LlamaGen's attention: `ops.scaled_dot_product_attention` (torch's signature) for training and for a static
    `[B, H_kv, T_max, D]` cache read whole under a mask."""

    def __init__(self, cfg: Config, ops):
        super().__init__()
        self.ops = ops  # the module providing scaled_dot_product_attention: the one line a swap changes
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.dim // cfg.n_head
        self.wqkv = nn.Linear(cfg.dim, (cfg.n_head + 2 * cfg.n_kv_head) * self.head_dim, bias=False)
        self.wo = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.k_cache = self.v_cache = None

    def setup_cache(self, batch: int, t_max: int, dtype: torch.dtype, device: torch.device) -> None:
        shape = (batch, self.n_kv_head, t_max, self.head_dim)
        self.k_cache = torch.zeros(shape, dtype=dtype, device=device)
        self.v_cache = torch.zeros(shape, dtype=dtype, device=device)

    def forward(self, x, cos, sin, input_pos=None):
        """x `[B, T, dim]`; input_pos None: causal over x (training); else the T positions x takes in the cache."""
        b, t, _ = x.shape
        q, k, v = self.wqkv(x).split([self.n_head * self.head_dim, *[self.n_kv_head * self.head_dim] * 2], dim=-1)
        q = apply_rope(q.view(b, t, self.n_head, self.head_dim), cos, sin)
        k = apply_rope(k.view(b, t, self.n_kv_head, self.head_dim), cos, sin)
        v = v.view(b, t, self.n_kv_head, self.head_dim)
        y = self.attend(q, k, v) if input_pos is None else self.attend_cached(q, k, v, input_pos)
        return self.wo(y.reshape(b, t, -1))

    def attend(self, q, k, v):
        """Causal attention, `[B, T, H, D]` in and out (GQA: query head h reads KV head h // (H / H_kv))."""
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        return self.ops.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True).transpose(1, 2)

    def attend_cached(self, q, k, v, input_pos):
        """Write k, v at `input_pos`, then attend to every cache slot up to each query's position."""
        self.k_cache.index_copy_(2, input_pos, k.transpose(1, 2))
        self.v_cache.index_copy_(2, input_pos, v.transpose(1, 2))
        mask = input_pos[:, None] >= torch.arange(self.k_cache.shape[2], device=q.device)  # [T, T_max]
        y = self.ops.scaled_dot_product_attention(q.transpose(1, 2), self.k_cache, self.v_cache, attn_mask=mask,
                                                  enable_gqa=True)  # fmt: skip
        return y.transpose(1, 2)


class FlashAttention(SDPAAttention):
    """The same module written for flash-attn: `ops.flash_attn_func` for training, `ops.flash_attn_with_kvcache`
    on a `[B, T_max, H_kv, D]` cache for prefill and decode (flash-attn's layout: no transposes)."""

    def setup_cache(self, batch, t_max, dtype, device):
        shape = (batch, t_max, self.n_kv_head, self.head_dim)
        self.k_cache = torch.zeros(shape, dtype=dtype, device=device)
        self.v_cache = torch.zeros(shape, dtype=dtype, device=device)

    def attend(self, q, k, v):
        return self.ops.flash_attn_func(q, k, v, causal=True)

    def attend_cached(self, q, k, v, input_pos):
        # cache_seqlens: the filled length before this call, per sample (int32, as flash-attn takes it). The call
        # appends k, v there and reads only the valid slots; its causal mask is aligned to the bottom right.
        seqlens = input_pos[:1].to(torch.int32).repeat(q.shape[0])
        return self.ops.flash_attn_with_kvcache(q, self.k_cache, self.v_cache, k, v, cache_seqlens=seqlens,
                                                causal=True)  # fmt: skip


class FeedForward(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        hidden = 32 * -(-8 * dim // 3 // 32)  # SwiGLU's 2/3 of 4 * dim, rounded up to a multiple of 32
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, cfg: Config, attention: type[SDPAAttention], ops):
        super().__init__()
        self.attn_norm, self.attn = RMSNorm(cfg.dim), attention(cfg, ops)
        self.ffn_norm, self.ffn = RMSNorm(cfg.dim), FeedForward(cfg.dim)

    def forward(self, x, cos, sin, input_pos=None):
        x = x + self.attn(self.attn_norm(x), cos, sin, input_pos)
        return x + self.ffn(self.ffn_norm(x))


class GPT(nn.Module):
    """Class token at position 0, then the image tokens; position t predicts token t."""

    def __init__(self, cfg: Config, attention: type[SDPAAttention], ops):
        super().__init__()
        self.cfg = cfg
        self.cls_embed = nn.Embedding(cfg.num_classes + 1, cfg.dim)  # row num_classes: the null class (CFG)
        self.tok_embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg, attention, ops) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        cos, sin = rope_tables(cfg.image_tokens, cfg.dim // cfg.n_head, cfg.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def setup_caches(self, batch: int) -> None:
        p = self.head.weight
        for blk in self.blocks:  # slots: the class token and the image tokens fed back (all but the last)
            blk.attn.setup_cache(batch, self.cfg.image_tokens, p.dtype, p.device)

    def forward(self, cond=None, idx=None, input_pos=None):
        """Training (input_pos None): cond `[B]`, idx `[B, N]` -> logits `[B, N, V]`, predicting idx[:, t] from
        the class and idx[:, :t]. Cached: the class tokens of `cond` (prefill) or the tokens `idx [B, T]`,
        at positions `input_pos [T]`."""
        if input_pos is None:
            x = torch.cat([self.cls_embed(cond)[:, None], self.tok_embed(idx[:, :-1])], dim=1)
            cos, sin = self.rope_cos[: x.shape[1]], self.rope_sin[: x.shape[1]]
        else:
            x = self.cls_embed(cond)[:, None] if cond is not None else self.tok_embed(idx)
            cos, sin = self.rope_cos[input_pos], self.rope_sin[input_pos]
        for blk in self.blocks:
            x = blk(x, cos, sin, input_pos)
        return self.head(self.norm(x)).float()


def pick(logits, generator, temperature: float, top_k: int):
    """Greedy without a generator; otherwise a top-k, temperature-scaled draw from `generator`."""
    if generator is None:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]


@torch.no_grad()
def generate(model: GPT, cond, cfg_scale: float, generator=None, temperature: float = 1.0, top_k: int = 0):
    """Image tokens `[B, N]` for classes `cond [B]`, one token per step through the KV cache, with
    classifier-free guidance (a null-class copy of the batch runs alongside) when cfg_scale != 1.
    Also returns the guided logits each token was drawn from, `[B, N, V]`."""
    n, guided = model.cfg.image_tokens, cfg_scale != 1.0
    if guided:
        cond = torch.cat([cond, torch.full_like(cond, model.cfg.num_classes)])
    model.setup_caches(cond.shape[0])
    logits = model(cond=cond, input_pos=torch.zeros(1, dtype=torch.long, device=cond.device))[:, -1]
    tokens, step_logits = [], []
    for i in range(n):
        if guided:
            c, u = logits.chunk(2)
            logits = u + (c - u) * cfg_scale
        tok = pick(logits, generator, temperature, top_k)
        tokens.append(tok)
        step_logits.append(logits)
        if i + 1 < n:
            x = torch.cat([tok, tok]) if guided else tok
            pos = torch.tensor([i + 1], device=cond.device)
            logits = model(idx=x[:, None], input_pos=pos)[:, -1]
    return torch.stack(tokens, dim=1), torch.stack(step_logits, dim=1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--micro", action="store_true", help="tiny config (CI, the Triton interpreter)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--cfg-scale", type=float, default=4.0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0: sample from all codes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per path (the best is printed)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    cfg = MICRO if args.micro else Config()
    if args.batch < 1 or args.repeats < 1:
        p.error(f"--batch and --repeats must be >= 1, got {args.batch} and {args.repeats}")
    if not 0 <= args.top_k <= cfg.vocab_size or args.temperature <= 0:
        p.error(f"need 0 <= --top-k <= {cfg.vocab_size} and --temperature > 0")
    device = torch.device(args.device)

    torch.manual_seed(args.seed)
    weights = GPT(cfg, SDPAAttention, F).state_dict()  # one set of weights for every model below
    for name in ("cls_embed.weight", "tok_embed.weight"):
        nn.init.normal_(weights[name])
    flash = _flash_attn_module(device)
    pairs = {  # swap: (the model as written, the model with the import swapped)
        "torch SDPA -> spectralar_kernels": (_model(cfg, SDPAAttention, F, weights, device),
                                             _model(cfg, SDPAAttention, sk, weights, device)),
        "flash-attn -> spectralar_kernels": (_model(cfg, FlashAttention, flash, weights, device) if flash else
                                             _model(cfg, SDPAAttention, F, weights, device),
                                             _model(cfg, FlashAttention, sk, weights, device)),
    }  # fmt: skip
    cond = torch.randint(cfg.num_classes, (args.batch,), device=device)
    idx = torch.randint(cfg.vocab_size, (args.batch, cfg.image_tokens), device=device)

    backend = os.environ.get("SPECTRALAR_KERNELS", "auto")
    n = cfg.image_tokens
    print(f"LlamaGen-style GPT, {'micro' if args.micro else 'small'} config: dim {cfg.dim}, {cfg.n_layer} layers, "
          f"{cfg.n_head} heads ({cfg.n_kv_head} KV), {n} tokens, batch {args.batch}, CFG {args.cfg_scale}; "
          f"{device.type}, SPECTRALAR_KERNELS={backend}")  # fmt: skip
    if not flash:
        print("flash-attn is not available here (it needs CUDA): the flash-attn-form model on spectralar_kernels is "
              "checked against the SDPA model on torch")  # fmt: skip
    ok = True
    for swap, (ref, swapped) in pairs.items():
        rows, times = compare(ref, swapped, cond, idx, args, device)
        print(f"\n{swap}")
        print(f"{'path':<20}{'train fwd+bwd ms':>18}{f'sample {n} tokens ms':>24}")
        for name, (t_train, t_gen) in zip(("as written", "swapped"), times):
            print(f"{name:<20}{t_train:>18.2f}{t_gen:>24.2f}")
        print(f"{'check':<26}{'result':>14}{'tolerance':>12}  ok")
        for name, result, tol, good in rows:
            print(f"{name:<26}{result:>14}{tol:>12}  {'yes' if good else 'NO'}")
        ok = ok and all(row[-1] for row in rows)
    if ok:
        print("\nOK: identical tokens (greedy and sampled) for both swaps; logits, decode logits and gradients "
              "within tolerance")  # fmt: skip
        return 0
    print("MISMATCH: a swapped model differs from the one as written", file=sys.stderr)
    return 1


def _flash_attn_module(device: torch.device):
    """The `flash_attn` package when it can run here (CUDA), else None."""
    if device.type != "cuda":
        return None
    try:
        import flash_attn
    except ImportError:
        return None
    return flash_attn


def _model(cfg: Config, attention: type[SDPAAttention], ops, weights: dict, device: torch.device) -> GPT:
    model = GPT(cfg, attention, ops)
    model.load_state_dict(weights)
    return model.to(device)


def compare(ref: GPT, swapped: GPT, cond, idx, args, device) -> tuple[list, list]:
    """Check rows (name, result, tolerance, ok) and the (train, sample) times of both models."""

    def train_step(model):
        model.zero_grad(set_to_none=True)
        logits = model(cond, idx)
        F.cross_entropy(logits.flatten(0, 1), idx.flatten()).backward()
        return logits.detach()

    def sample(model, greedy: bool):
        gen = None if greedy else torch.Generator(device).manual_seed(args.seed)
        return generate(model, cond, args.cfg_scale, gen, args.temperature, args.top_k)

    logits = [train_step(m) for m in (ref, swapped)]
    logit_err = rel_err(*logits)
    grad_err = max(rel_err(a.grad, b.grad) for a, b in zip(ref.parameters(), swapped.parameters()))
    greedy = [sample(m, True) for m in (ref, swapped)]
    sampled = [sample(m, False) for m in (ref, swapped)]
    greedy_same, sampled_same = torch.equal(greedy[0][0], greedy[1][0]), torch.equal(sampled[0][0], sampled[1][0])
    decode_err = max(rel_err(a[1], b[1]) for a, b in (greedy, sampled))
    times = [(timed(lambda m=m: train_step(m), args.repeats, device), timed(lambda m=m: sample(m, False),
                                                                            args.repeats, device))
             for m in (ref, swapped)]  # fmt: skip
    rows = [
        ("logits max rel |diff|", f"{logit_err:.2e}", f"{TOLERANCE:.0e}", logit_err <= TOLERANCE),
        ("grads max rel |diff|", f"{grad_err:.2e}", f"{TOLERANCE:.0e}", grad_err <= TOLERANCE),
        ("decode logits max rel", f"{decode_err:.2e}", f"{TOLERANCE:.0e}", decode_err <= TOLERANCE),
        ("greedy tokens (CFG)", "same" if greedy_same else "DIFFERENT", "equal", greedy_same),
        ("sampled tokens (CFG)", "same" if sampled_same else "DIFFERENT", "equal", sampled_same),
    ]
    return rows, times


if __name__ == "__main__":
    sys.exit(main())
