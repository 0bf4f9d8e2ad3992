"""Patch discriminator, hinge losses and VQGAN's adaptive weight: the tokenizer's adversarial term.

The paper does not spell out its tokenizer's objective; this is the adversarial term of VQGAN-style tokenizers:
pix2pix's PatchGAN with a hinge loss, sized from the tokenizer config (channels, image size) and the
training config (`disc_channels`). The train loop owns the schedule (`adv_weight`, `adv_start`, `adv_adaptive`).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)


class PatchDiscriminator(nn.Module):
    """Fully convolutional real/fake classifier: one logit per overlapping image patch, [B, 1, h, w].

    4x4 convolutions with stride 2 halve the image `n_down` times (widths w, 2w, 4w, ... capped at 8w), then
    a stride-1 4x4 convolution and a 4x4 convolution to one channel, LeakyReLU(0.2) between. n_down =
    log2(image_size) - 5, kept in [1, 3]: at 256 px pix2pix's 70x70 patches on a 30x30 grid, at 32 px one
    downsampling (a 14x14 grid). GroupNorm, not BatchNorm: no running statistics, no coupling between the
    samples of a batch (real and fake batches are scored separately), nothing to synchronise under DDP.
    """

    def __init__(self, channels: int, width: int = 64, image_size: int = 256):
        super().__init__()
        for name, v, low in (("channels", channels, 1), ("width", width, 1), ("image_size", image_size, 8)):
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ValueError(f"discriminator {name} must be an integer >= {low}, got {v!r}")
        n_down = min(3, max(1, int(math.log2(image_size)) - 5))
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch = width
        for i in range(1, n_down + 1):
            out = width * min(2**i, 8)
            stride = 2 if i < n_down else 1
            layers += [nn.Conv2d(ch, out, 4, stride, 1, bias=False), _norm(out), nn.LeakyReLU(0.2)]
            ch = out
        layers.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @classmethod
    def from_config(cls, config, width: int = 64) -> PatchDiscriminator:
        """The discriminator for a `TokenizerConfig` (its channels and image size), of base width `width` (the
        training config's `disc_channels`)."""
        return cls(config.channels, width, config.image_size)

    def forward(self, images):
        """images [B, C, S, S] (the tokenizer's range, [-1, 1]) -> patch logits [B, 1, h, w]."""
        return self.net(images)


def hinge_d_loss(real_logits, fake_logits):
    """Discriminator hinge loss, (mean relu(1 - D(real)) + mean relu(1 + D(fake))) / 2, in fp32: 1 for a
    discriminator that outputs 0, 0 once every real logit is >= 1 and every fake one <= -1."""
    return 0.5 * (F.relu(1 - real_logits.float()).mean() + F.relu(1 + fake_logits.float()).mean())


def hinge_g_loss(fake_logits):
    """Generator (tokenizer) side of the hinge GAN: -mean D(fake), in fp32."""
    return -fake_logits.float().mean()


def adaptive_weight(rec_loss, adv_loss, last_layer: torch.Tensor, max_weight: float = 1e4, eps: float = 1e-4):
    """VQGAN's balance of the adversarial term: |d rec_loss / dW| / (|d adv_loss / dW| + eps) at the
    tokenizer's last weight W (`to_pixels.weight`), clamped to [0, max_weight] and detached, so the two
    terms pull on the output layer about equally hard whatever their scales. Keeps both graphs for the
    backward pass that follows. Under DDP the norms are this rank's (the gradients are still averaged)."""
    (g_rec,) = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)
    (g_adv,) = torch.autograd.grad(adv_loss, last_layer, retain_graph=True)
    return (g_rec.float().norm() / (g_adv.float().norm() + eps)).clamp(0, max_weight).detach()
