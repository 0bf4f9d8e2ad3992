"""An LPIPS-style perceptual distance on a frozen VGG16 whose weights the user supplies as a file.

Nothing is downloaded, ever: the backbone is defined here (torchvision is not a dependency) with exactly the layout
of torchvision's `vgg16().features`, so a state dict saved from torchvision (`features.N.weight` / `.bias`, with
or without the `features.` prefix; `classifier.*` is ignored) loads from `.safetensors` or from a torch file read
with `weights_only=True`. The distance is LPIPS without its learned per-channel "lin" weights: features at relu1_2,
relu2_2, relu3_3, relu4_3 and relu5_3, each unit-normalised over channels, squared differences summed over
channels, averaged over positions and summed over the five stages with equal weights.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file

# torchvision's VGG16 "D" configuration: conv3x3 widths, "M" = 2x2 max-pool. The last pool (after relu5_3) is left
# out: no feature is taken after it and it has no weights, so the module indices still match torchvision's.
VGG16_LAYOUT = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
TAPS = (3, 8, 15, 22, 29)  # indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in `features`
MIN_SIZE = 16  # four 2x pools before relu5_3 must leave at least one position
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def vgg16_features() -> nn.Sequential:
    layers, c = [], 3
    for v in VGG16_LAYOUT:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU()]
            c = v
    return nn.Sequential(*layers)


def _read(path: Path) -> dict:
    """The raw tensor dict of a `.safetensors` or torch file; anything else, or anything unreadable, is a
    ValueError naming the file."""
    if not path.is_file():
        raise ValueError(f"perceptual backbone {path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in (".safetensors", ".pt", ".pth"):
        raise ValueError(f"perceptual backbone {path}: expected a .safetensors, .pt or .pth file")
    try:
        if suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickles code
    except Exception as e:
        raise ValueError(f"perceptual backbone {path}: cannot read it ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict):
        raise ValueError(f"perceptual backbone {path}: holds a {type(state).__name__}, not a state dict")
    return state


def load_vgg16_state(path) -> dict:
    """The `features` state dict of VGG16 from a user file, every tensor checked against the layout."""
    path = Path(path)
    raw = _read(path)
    want = vgg16_features().state_dict()
    state, missing = {}, []
    for k, ref in want.items():
        v = raw.get(f"features.{k}", raw.get(k))
        if v is None:
            missing.append(f"features.{k}")
        elif not torch.is_tensor(v) or not v.is_floating_point() or v.shape != ref.shape:
            got = tuple(v.shape) if torch.is_tensor(v) else type(v).__name__
            raise ValueError(f"perceptual backbone {path}: features.{k} must be a float tensor of shape "
                             f"{tuple(ref.shape)}, got {got} (is this torchvision's vgg16?)")
        else:
            state[k] = v.float()
    if missing:
        raise ValueError(f"perceptual backbone {path}: {len(missing)} of VGG16's {len(want)} tensors are missing "
                         f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
    return state


class PerceptualDistance(nn.Module):
    """distance(a, b) -> [B] for images in [-1, 1] (1 or 3 channels). Frozen and always in eval mode; gradients
    flow to the inputs only. `sha1` fingerprints the loaded weights (a resumed run must use the same ones)."""

    def __init__(self, state: dict):
        super().__init__()
        self.features = vgg16_features()
        self.features.load_state_dict(state)
        self.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        h = hashlib.sha1()
        for k in sorted(state):
            h.update(state[k].contiguous().numpy().tobytes())
        self.sha1 = h.hexdigest()
        self.eval()

    @classmethod
    def from_file(cls, path) -> PerceptualDistance:
        return cls(load_vgg16_state(path))

    def train(self, mode: bool = True):
        return super().train(False)  # a fixed metric: a parent's .train() must not change it

    def _stages(self, x):
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        h = ((x + 1) / 2 - self.mean) / self.std
        out = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in TAPS:
                f = h.float()
                out.append(f / (f.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    def forward(self, a, b):
        if a.shape != b.shape or min(a.shape[-2:]) < MIN_SIZE:
            raise ValueError(f"perceptual distance: needs two images of one shape, at least {MIN_SIZE} px a side; "
                             f"got {tuple(a.shape)} and {tuple(b.shape)}")
        # two passes, not one on the concatenation: the backward then runs only through an input needing it
        return sum((x - y).pow(2).sum(1).mean((1, 2)) for x, y in zip(self._stages(a), self._stages(b)))
