"""Nested Spectral Tokenizer (NST): image -> N causal spectral tokens -> every prefix decodes; and `Tokenizer`,
what it shares with the other tokenizer kinds (models/kinds.py: raster patches, plain 1-D queries).

Token i carries the DCT band {(u, v): w[i-1] <= max(u, v) < w[i]}; a prefix of i tokens decodes to
the sub-image x_i = IDCT(DCT(x) * M_i) (spectralar_kernels.spectral_subimages), so the decoder is
trained to regress x_i from codes 1..i, with codes i+1..N replaced by learned "absent" embeddings.

Encoder: [patches (P), learned queries (N)] under the prefix-LM mask (patches see patches, query j sees
all patches and queries <= j) -> linear to the code dim -> VectorQuantizer (cosine lookup).
Decoder: [codes 1..i | absent i+1..N, learned patch queries (P)] with full attention -> pixels.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from spectralar_kernels import spectral_subimages, spectral_windows, vq_nearest
from spectralar_kernels.windows import DATA_MAPPINGS

from .config import TokenizerConfig
from .layers import Block, init_weights

__all__ = ["SpectralTokenizer", "Tokenizer", "VectorQuantizer", "patchify", "unpatchify"]


class VectorQuantizer(nn.Module):
    """l2-normalised codebook with cosine lookup, straight-through estimator and dead-code restarts.

    Restarts: codes unused for `restart_every` optimizer steps are re-seeded from recent (normalised)
    encoder outputs. The training loop calls `after_optimizer_step()` once per optimizer step, so a restart
    never lands between the micro-batches of one step under gradient accumulation. Under DDP usage is
    summed over ranks and rank 0's choice is broadcast, so every replica keeps the same codebook. All state
    is in buffers, so a checkpoint resumes exactly.
    """

    def __init__(self, codebook_size: int, code_dim: int, commitment: float = 0.25, restart_every: int = 200,
                 buffer_size: int = 4096):
        super().__init__()
        self.commitment, self.restart_every = commitment, restart_every
        self.codebook = nn.Parameter(torch.randn(codebook_size, code_dim))
        self.register_buffer("usage", torch.zeros(codebook_size))
        self.register_buffer("recent", torch.zeros(buffer_size, code_dim))
        self.register_buffer("recent_count", torch.zeros((), dtype=torch.long))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def codes_to_vectors(self, idx):
        return F.normalize(self.codebook, dim=-1)[idx]

    def forward(self, z):
        """z [B, N, d] -> (quantized [B, N, d] with straight-through gradient, indices [B, N], stats dict)."""
        z = F.normalize(z.float(), dim=-1)
        cb = F.normalize(self.codebook, dim=-1)
        flat = z.reshape(-1, z.shape[-1])
        idx, _ = vq_nearest(flat.detach(), cb.detach(), metric="cosine")
        q = cb[idx].view_as(z)
        codebook_loss = F.mse_loss(q, z.detach())
        commit_loss = F.mse_loss(z, q.detach())
        counts = torch.bincount(idx, minlength=cb.shape[0]).float()
        p = counts / counts.sum()
        stats = {
            "vq_loss": codebook_loss + self.commitment * commit_loss,
            "perplexity": torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum()).detach(),
            "codes_used": (counts > 0).sum().detach(),
        }
        if self.training:
            with torch.no_grad():
                self.usage += counts
                self._remember(flat.detach())
        return z + (q - z).detach(), idx.view(z.shape[:-1]), stats

    @torch.no_grad()
    def after_optimizer_step(self) -> int:
        """Count one optimizer step; every `restart_every` steps restart the codes unused since the last
        restart. Returns how many were restarted."""
        self.steps += 1
        if self.restart_every > 0 and self.steps % self.restart_every == 0:
            return self.restart_dead_codes()
        return 0

    @torch.no_grad()
    def _remember(self, flat):
        n = self.recent.shape[0]
        take = flat[torch.randperm(flat.shape[0], device=flat.device)[:n]]
        pos = (self.recent_count + torch.arange(take.shape[0], device=flat.device)) % n
        self.recent[pos] = take
        self.recent_count += take.shape[0]

    @torch.no_grad()
    def restart_dead_codes(self) -> int:
        """Re-seed every code unused since the last restart; returns how many were restarted."""
        usage = self.usage.clone()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(usage)
        dead = (usage == 0).nonzero().squeeze(1)
        filled = int(min(self.recent_count.item(), self.recent.shape[0]))
        if dead.numel() and filled:
            pick = torch.randint(0, filled, (dead.numel(),), device=dead.device)
            noise = 0.01 * torch.randn(dead.numel(), self.codebook.shape[1], device=dead.device)
            self.codebook.data[dead] = self.recent[pick] + noise
            if dist.is_available() and dist.is_initialized():
                dist.broadcast(self.codebook.data, src=0)
        self.usage.zero_()
        return int(dead.numel())


def patchify(x, p):
    """[B, C, H, W] -> [B, (H/p)*(W/p), C*p*p]"""
    B, C, H, W = x.shape
    x = x.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(B, (H // p) * (W // p), C * p * p)


def unpatchify(x, p, C, S):
    """[B, (S/p)^2, C*p*p] -> [B, C, S, S]"""
    B, n = x.shape[:2]
    g = S // p
    return x.reshape(B, g, g, C, p, p).permute(0, 3, 1, 4, 2, 5).reshape(B, C, S, S)


class Tokenizer(nn.Module):
    """What every tokenizer kind (`TokenizerConfig.tokens`, models/kinds.py) shares: images float [B, C, S, S] in
    [-1, 1] <-> codes int64 [B, N] through one `VectorQuantizer`; the argument checks, the public API (`encode`,
    `decode`, `decode_progressive`) and the training forward.

    A kind supplies the network, `encode_continuous(images) -> [B, N, code_dim]` and
    `decode_vectors(vectors, num_tokens [B]) -> images` (tokens past num_tokens absent), and may override what a
    prefix is trained on: by default training decodes all N tokens and regresses the image itself.
    `prefix_meaning` says in one line what an image decoded from the first k tokens is, for the command lines.
    """

    kind = ""
    nested = False  # True: prefix k is trained to reconstruct a target of its own (the spectral sub-image x_k)
    prefix_meaning = ""

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        if config.image_size % config.patch_size:
            raise ValueError(f"image_size {config.image_size} is not divisible by patch_size {config.patch_size}")
        self.config = config

    # ---- what training reconstructs (a kind without nested targets keeps these) ---------------------

    def sample_prefix_lengths(self, B, device, generator=None, dist: str = "uniform"):
        """How many tokens each of B training images is decoded from: all N (no nested targets; `dist` is the
        nested kinds' choice and has nothing to pick here)."""
        return torch.full((B,), self.config.num_tokens, dtype=torch.long, device=device)

    def prefix_targets(self, images, num_tokens):
        """What the decoding of the first num_tokens [B] tokens is trained to reconstruct: the image itself."""
        return images

    # ---- checks ---------------------------------------------------------------------------------

    def _check_images(self, images):
        c = self.config
        if not isinstance(images, torch.Tensor) or not images.is_floating_point():
            raise ValueError(f"images must be a float tensor in [-1, 1] (convert uint8 explicitly), got "
                             f"{getattr(images, 'dtype', type(images).__name__)}")
        want = (c.channels, c.image_size, c.image_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != want or images.shape[0] == 0:
            raise ValueError(f"images must be [B, {want[0]}, {want[1]}, {want[2]}], got {tuple(images.shape)}")
        lo, hi = torch.aminmax(images.detach())
        if lo < -1.5 or hi > 1.5:  # a little slack for resampling overshoot; [0, 255] input is caught
            raise ValueError(f"images must be scaled to [-1, 1], got values in [{lo.item():.3g}, {hi.item():.3g}]")

    def _check_codes(self, codes):
        c = self.config
        if not isinstance(codes, torch.Tensor) or codes.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"codes must be an int64 tensor [B, {c.num_tokens}], got {getattr(codes, 'dtype', codes)}")
        if codes.dim() != 2 or codes.shape[1] != c.num_tokens or codes.shape[0] == 0:
            raise ValueError(f"codes must be [B, {c.num_tokens}], got {tuple(codes.shape)}")
        if codes.min() < 0 or codes.max() >= c.codebook_size:
            lo, hi = codes.min().item(), codes.max().item()
            raise ValueError(f"codes must lie in [0, {c.codebook_size}), got [{lo}, {hi}]")

    def _num_tokens_tensor(self, num_tokens, B, device):
        """How many tokens each of B images is decoded from: int64 [B] in [1, N] (None: all N)."""
        N = self.config.num_tokens
        if num_tokens is None:
            num_tokens = N
        t = torch.as_tensor(num_tokens, device=device)
        if t.is_floating_point() or t.dim() > 1 or (t.dim() == 1 and t.shape[0] != B):
            raise ValueError(f"num_tokens must be an int or an integer tensor [B={B}], got {num_tokens!r}")
        if t.min() < 1 or t.max() > N:
            raise ValueError(f"num_tokens must lie in [1, {N}], got {num_tokens!r}")
        return t.long().expand(B)

    # ---- public API -----------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, images) -> torch.Tensor:
        """images [B, C, S, S] in [-1, 1] -> codes int64 [B, N]."""
        self._check_images(images)
        z = F.normalize(self.encode_continuous(images).float(), dim=-1)
        cb = F.normalize(self.quantizer.codebook.float(), dim=-1)
        idx, _ = vq_nearest(z.reshape(-1, z.shape[-1]), cb, metric="cosine")
        return idx.view(images.shape[0], -1)

    @torch.no_grad()
    def decode(self, codes, num_tokens=None) -> torch.Tensor:
        """codes [B, N] -> images [B, C, S, S] decoded from tokens 1..num_tokens (int or [B]; default N)."""
        self._check_codes(codes)
        n = self._num_tokens_tensor(num_tokens, codes.shape[0], codes.device)
        return self.decode_vectors(self.quantizer.codes_to_vectors(codes.long()), n)

    @torch.no_grad()
    def decode_progressive(self, codes) -> torch.Tensor:
        """codes [B, N] -> [B, N, C, S, S]: entry i-1 is decoded from tokens 1..i (one batched call)."""
        self._check_codes(codes)
        B, N = codes.shape
        vec = self.quantizer.codes_to_vectors(codes.long())
        n = torch.arange(1, N + 1, device=codes.device).repeat(B)  # [B*N]
        out = self.decode_vectors(vec.repeat_interleave(N, 0), n)
        return out.view(B, N, *out.shape[1:])

    def forward(self, images, num_tokens=None):
        """Training step: losses and stats. Draws how many tokens each image is decoded from (its prefix length)
        unless `num_tokens` (int or [B]) is given.

        Returns a dict: loss (total), recon_loss (mean squared error), vq_loss, perplexity, codes_used, and the
        tensors recon [B, C, S, S], target (what the decoding of num_tokens tokens regresses: `prefix_targets`)
        and num_tokens [B]. Other objectives (an l1 term, adversarial, perceptual) are composed from these by the
        trainer.
        """
        self._check_images(images)
        B = images.shape[0]
        n = (self.sample_prefix_lengths(B, images.device) if num_tokens is None
             else self._num_tokens_tensor(num_tokens, B, images.device))
        q, idx, stats = self.quantizer(self.encode_continuous(images))
        recon = self.decode_vectors(q, n)
        target = self.prefix_targets(images, n)
        recon_loss = F.mse_loss(recon.float(), target.float())
        return {"loss": recon_loss + stats["vq_loss"], "recon_loss": recon_loss, **stats,
                "recon": recon, "target": target, "num_tokens": n, "codes": idx}


class SpectralTokenizer(Tokenizer):
    """Nested Spectral Tokenizer (the module docstring). Images are float [B, C, S, S] in [-1, 1]; codes int64
    [B, N]. The "1d" kind (models/kinds.py) is this network without the nested targets."""

    kind = "spectral"
    nested = True
    prefix_meaning = ("decoded from tokens 1..k: the tokenizer's estimate of the low-pass sub-image x_k (DCT "
                      "frequencies max(u, v) < w_k), which it is trained to reconstruct")

    def __init__(self, config: TokenizerConfig):
        c = config
        if self.nested and not c.windows:
            if c.mapping in DATA_MAPPINGS:
                raise ValueError(f"mapping={c.mapping!r} needs config.windows computed from data (spectral_windows)")
            # a copy with the windows filled in: the caller's config is never written to, and the model's own
            # config (what a checkpoint saves) names the windows it was built with
            c = dataclasses.replace(c, windows=spectral_windows(c.image_size, c.num_tokens, c.mapping, gamma=c.gamma))
        if self.nested and (len(c.windows) != c.num_tokens or c.windows[-1] != c.image_size):
            raise ValueError(f"windows {c.windows} must have num_tokens={c.num_tokens} entries "
                             f"ending at {c.image_size}")
        if not self.nested and c.windows:
            raise ValueError(f"windows apply to tokens='spectral' only, got windows={c.windows} for {self.kind!r}")
        super().__init__(c)
        P, N, W, pd = c.num_patches, c.num_tokens, c.width, c.channels * c.patch_size**2
        self.register_buffer("windows", torch.tensor(c.windows, dtype=torch.long), persistent=False)
        # encoder
        self.patch_in = nn.Linear(pd, W)
        self.queries = nn.Parameter(torch.zeros(1, N, W))
        self.enc_pos = nn.Parameter(torch.zeros(1, P + N, W))
        self.enc_blocks = nn.ModuleList(Block(W, c.heads, c.mlp_ratio) for _ in range(c.enc_depth))
        self.enc_ln = nn.LayerNorm(W)
        self.to_code = nn.Linear(W, c.code_dim)
        self.quantizer = VectorQuantizer(c.codebook_size, c.code_dim, c.commitment, c.restart_every, c.restart_buffer)
        # decoder
        self.from_code = nn.Linear(c.code_dim, W)
        if self.nested:
            self.absent = nn.Parameter(torch.zeros(1, N, W))
        else:  # never trained with absent tokens: a prefix decodes with zero vectors (position only) for the rest
            self.register_buffer("absent", torch.zeros(1, N, W), persistent=False)
        self.patch_queries = nn.Parameter(torch.zeros(1, P, W))
        self.dec_pos = nn.Parameter(torch.zeros(1, N + P, W))
        self.dec_blocks = nn.ModuleList(Block(W, c.heads, c.mlp_ratio) for _ in range(c.dec_depth))
        self.dec_ln = nn.LayerNorm(W)
        self.to_pixels = nn.Linear(W, pd)
        init_weights(self)
        for p in (self.queries, self.enc_pos, self.absent, self.patch_queries, self.dec_pos):
            if isinstance(p, nn.Parameter):
                nn.init.normal_(p, std=0.02)

    # ---- encoder / decoder ----------------------------------------------------------------------

    def encode_continuous(self, images):
        """Unquantised encoder output [B, N, code_dim] (query j depends on patches and queries <= j only)."""
        P = self.config.num_patches
        x = self.patch_in(patchify(images, self.config.patch_size))
        x = torch.cat([x, self.queries.expand(x.shape[0], -1, -1)], 1) + self.enc_pos
        for blk in self.enc_blocks:
            x = blk(x, causal=True, prefix_len=P)
        return self.to_code(self.enc_ln(x[:, P:]))

    def decode_vectors(self, vectors, num_tokens):
        """vectors [B, N, code_dim], num_tokens [B] -> images [B, C, S, S] from tokens 1..num_tokens only."""
        c = self.config
        B, N = vectors.shape[:2]
        present = torch.arange(N, device=vectors.device)[None, :] < num_tokens[:, None]  # [B, N]
        tok = torch.where(present[..., None], self.from_code(vectors), self.absent.to(vectors.dtype))
        x = torch.cat([tok, self.patch_queries.expand(B, -1, -1)], 1) + self.dec_pos
        for blk in self.dec_blocks:
            x = blk(x)
        return unpatchify(self.to_pixels(self.dec_ln(x[:, N:])), c.patch_size, c.channels, c.image_size)

    def sample_prefix_lengths(self, B, device, generator=None, dist: str = "uniform"):
        """B prefix lengths in [1, N]: "uniform" (the paper's) or "linear" (p(i) ~ i; a training choice)."""
        N = self.config.num_tokens
        if dist == "uniform":
            return torch.randint(1, N + 1, (B,), device=device, generator=generator)
        if dist == "linear":
            w = torch.arange(1, N + 1, dtype=torch.float, device=device)
            return torch.multinomial(w / w.sum(), B, replacement=True, generator=generator) + 1
        raise ValueError(f"unknown prefix length distribution {dist!r} (uniform | linear)")

    def prefix_targets(self, images, num_tokens):
        """The sub-images x_i = IDCT(DCT(x) * M_i) for i = num_tokens [B] (the nested targets)."""
        return spectral_subimages(images, self.windows[num_tokens - 1])
