"""Evaluation as a library: held-out subsets, reconstruction and generation metrics, the causality probe's
embeddings, and strict JSON reports. `python -m spectralar.evaluate` and `python -m spectralar.experiments`
are thin command lines over these functions."""

from __future__ import annotations

import importlib.util
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from spectralar_kernels import spectral_subimages

from ..checkpoint import save_checkpoint
from ..data import collate, index_batches, make_dataset
from ..models.classifier import SmallCNN, classify
from ..models.config import ClassifierConfig, to_dict
from ..progress import bar
from ..training.schedule import lr_at
from .metrics import CFD_LABEL, frechet_distance_from_features, psnr, relative_diversity, ssim

PSNR_CAP_DB = 100.0  # per-image cap, so that a perfect reconstruction does not make the mean infinite


# ---- data and reports -----------------------------------------------------------------------------


def load_subset(data, split, size, channels, num, seed=0):
    """(images [M, C, S, S], labels [M], class names) for the first `num` images of a seeded permutation."""
    ds = make_dataset(data, split, size, channels)
    n = len(ds) if num is None else min(num, len(ds))
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    x, y = collate(ds, idx)
    return x, y, list(ds.classes)


def _finite(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json(path: Path, obj: dict) -> Path:
    """Strict JSON (a NaN or infinite metric becomes null), written via a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(_finite(obj), indent=1, allow_nan=False) + "\n")
    tmp.rename(path)
    return path


def uncapped(psnrs):
    """PSNR values for plotting: the cap (an exact match, e.g. x_N = x) is left out rather than drawn at 100 dB."""
    return [None if v is None or v >= PSNR_CAP_DB else v for v in psnrs]


# ---- tokenizer ------------------------------------------------------------------------------------


@torch.no_grad()
def reconstruction_metrics(tokenizer, images, batch_size=100) -> dict:
    """Mean PSNR / SSIM per prefix length 1..N of `tokenizer` on images [M, C, S, S] (kept on the CPU).

    Reconstructions and exact sub-images are clamped to [-1, 1] (the displayable range) before scoring.
    Returns lists of length N: psnr/ssim_vs_image, psnr/ssim_vs_subimage, psnr/ssim_subimage_vs_image; the
    sub-image lists hold None for a tokenizer kind without spectral windows (raster, 1d).
    """
    dev = next(tokenizer.parameters()).device
    windows, N = tokenizer.config.windows, tokenizer.config.num_tokens
    keys = [f"{m}_{k}" for k in ("vs_image", "vs_subimage", "subimage_vs_image") for m in ("psnr", "ssim")]
    sums = {k: torch.zeros(N, dtype=torch.float64) for k in keys}
    for i in bar(range(0, images.shape[0], batch_size), desc="reconstruct", unit="batch"):
        x = images[i:i + batch_size].to(dev).float()
        rec = tokenizer.decode_progressive(tokenizer.encode(x)).clamp(-1, 1).cpu()  # [B, N, C, S, S]
        real = x.cpu()[:, None].expand_as(rec)
        pairs = {"vs_image": (rec, real)}
        if windows:
            sub = spectral_subimages(x, windows, all_prefixes=True).clamp(-1, 1).cpu()
            pairs.update(vs_subimage=(rec, sub), subimage_vs_image=(sub, real))
        for name, (a, b) in pairs.items():
            a2, b2 = a.flatten(0, 1), b.flatten(0, 1)  # [B*N, C, S, S]
            sums[f"psnr_{name}"] += psnr(a2, b2, max_db=PSNR_CAP_DB).view(-1, N).sum(0)
            sums[f"ssim_{name}"] += ssim(a2, b2).view(-1, N).sum(0)
    scored = {f"{m}_{name}" for name in pairs for m in ("psnr", "ssim")}
    return {k: (v / images.shape[0]).tolist() if k in scored else [None] * N for k, v in sums.items()}


@torch.no_grad()
def decode_all(tokenizer, codes, num_tokens=None, batch_size=500) -> torch.Tensor:
    """Images [M, C, S, S] (CPU) decoded from the first `num_tokens` (default all) of codes [M, N]."""
    dev = next(tokenizer.parameters()).device
    return torch.cat([tokenizer.decode(codes[i:i + batch_size].to(dev), num_tokens).cpu()
                      for i in bar(range(0, codes.shape[0], batch_size), desc="decode", unit="batch")])


@torch.no_grad()
def encode_all(tokenizer, images, batch_size=500) -> torch.Tensor:
    """Codes [M, N] (CPU) of images [M, C, S, S]."""
    dev = next(tokenizer.parameters()).device
    return torch.cat([tokenizer.encode(images[i:i + batch_size].to(dev)).cpu()
                      for i in bar(range(0, images.shape[0], batch_size), desc="encode", unit="batch")])


# ---- generation -----------------------------------------------------------------------------------


def check_classifier(clf, image_size, channels, num_classes):
    c = clf.config
    if (c.image_size, c.channels, c.num_classes) != (image_size, channels, num_classes):
        raise ValueError(f"the classifier takes {c.channels}x{c.image_size}x{c.image_size} images of {c.num_classes} "
                         f"classes, the model makes {channels}x{image_size}x{image_size} of {num_classes}")


def class_accuracy(logits, labels, classes) -> tuple[float, dict]:
    """(accuracy, {class name: accuracy}) of logits [M, K] against labels [M]."""
    hit = (logits.argmax(1) == labels).float()
    per = {classes[c]: float(hit[labels == c].mean()) for c in range(len(classes)) if (labels == c).any()}
    return float(hit.mean()), per


def classifier_metrics(clf, *, fake, labels, real, real_labels, real_train, reconstructed_train, classes,
                       split="test") -> dict:
    """CFD and accuracy of generated images `fake` (class ids `labels`) against the held-out `real` images,
    with the floor (`real_train`, as many training images as generated) and the tokenizer's reconstructions of
    them (`reconstructed_train`) scored the same way."""
    f_test, l_test = classify(clf, real)
    f_fake, l_fake = classify(clf, fake)
    f_train, _ = classify(clf, real_train)
    f_rec, _ = classify(clf, reconstructed_train)
    acc, per_class = class_accuracy(l_fake, labels, classes)
    feat_div = relative_diversity(f_fake, labels, f_test, real_labels, classes)
    pix_div = relative_diversity(fake, labels, real, real_labels, classes)
    return {
        "label": CFD_LABEL,
        "classifier_accuracy_on_real": class_accuracy(l_test, real_labels, classes)[0],
        "cfd_generated_vs_real": frechet_distance_from_features(f_fake, f_test),
        "cfd_real_train_vs_real_floor": frechet_distance_from_features(f_train, f_test),
        "cfd_reconstructed_train_vs_real": frechet_distance_from_features(f_rec, f_test),
        "accuracy_on_generated": acc, "accuracy_on_generated_per_class": per_class,
        "diversity_features_per_class": feat_div, "diversity_pixels_per_class": pix_div,
        "diversity_features_mean": sum(feat_div.values()) / max(len(feat_div), 1),
        "diversity_pixels_mean": sum(pix_div.values()) / max(len(pix_div), 1),
        "notes": f"features: the classifier's {clf.config.feature_dim}-d penultimate layer; the floor and the "
                 f"reconstruction rows use {real_train.shape[0]} training images (as many as generated), against "
                 f"the same {real.shape[0]} {split} images. CFD is not FID and is not comparable with FIDs. "
                 f"Diversity: per class, the mean pairwise distance between that class's samples over that between "
                 f"its {split} images (1 = as varied as real data), in classifier features and in pixels."}


def check_inception(weights) -> None:
    """Refuse, before any sampling, Inception weights that are missing or that torch-fidelity is not here to use."""
    if not Path(weights).is_file():
        raise ValueError(f"--inception-weights {weights}: no such file")
    if importlib.util.find_spec("torch_fidelity") is None:
        raise ValueError("--inception-weights needs torch-fidelity, which is not installed: "
                         "`pip install torch-fidelity` (or drop the flag for the classifier metrics)")


def _fidelity_dataset(images):
    """torch-fidelity input: uint8 [3, H, W] images (grey replicated to RGB)."""
    u8 = images.clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    if u8.shape[1] == 1:
        u8 = u8.repeat(1, 3, 1, 1)

    class _Images(torch.utils.data.Dataset):
        def __len__(self):
            return u8.shape[0]

        def __getitem__(self, i):
            return u8[i]

    return _Images()


def inception_metrics(fake, real, weights, device, batch_size) -> dict:
    """FID, IS, precision and recall from torch-fidelity's documented defaults (InceptionV3 'compat')."""
    import torch_fidelity

    m = torch_fidelity.calculate_metrics(input1=_fidelity_dataset(fake), input2=_fidelity_dataset(real),
                                         cuda=device.type == "cuda", batch_size=batch_size, isc=True, fid=True,
                                         prc=True, feature_extractor_weights_path=str(weights), cache=False,
                                         verbose=False)
    return {k: float(v) for k, v in m.items()}


# ---- the classifier behind CFD ---------------------------------------------------------------------


def train_classifier(train_ds, config: ClassifierConfig, steps: int = 2000, batch_size: int = 128, lr: float = 2e-3,
                     seed: int = 0, device="cpu", val=None, log=print) -> tuple[SmallCNN, dict]:
    """Train a SmallCNN with AdamW (cosine schedule, 100 warmup steps) and random +-2 px shifts.

    Args:
        train_ds: a dataset yielding ([C, S, S] in [-1, 1], label); batches come from `collate`.
        val: optional (images [M, C, S, S], labels [M]) for the reported accuracy.
    Returns:
        (model in eval mode, info dict with steps, seconds, final train loss and val accuracy).
    """
    torch.manual_seed(seed)
    model = SmallCNN(config).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    warmup = min(100, max(1, steps // 10))
    step, epoch, t0, loss_avg = 0, 0, time.time(), None
    model.train()
    progress = bar(total=steps, desc="classifier", unit="step")
    while step < steps:
        batches = index_batches(len(train_ds), batch_size, seed, epoch)
        if not batches:
            raise ValueError(f"{len(train_ds)} images cannot fill one batch of {batch_size}")
        for idx in batches:
            x, y = collate(train_ds, idx)
            x, y = x.to(device), y.to(device)
            # +-2 px random shifts (replicated edges): cheap augmentation against overfitting
            pad = F.pad(x, (2, 2, 2, 2), mode="replicate")
            dy, dx = torch.randint(0, 5, (2,)).tolist()
            x = pad[..., dy:dy + x.shape[-2], dx:dx + x.shape[-1]]
            for g in opt.param_groups:
                g["lr"] = lr_at(step, lr=lr, warmup=warmup, steps=steps)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            progress.update()
            loss_avg = loss.item() if loss_avg is None else 0.98 * loss_avg + 0.02 * loss.item()
            if log and (step % 200 == 0 or step == steps):
                log(f"[classifier] step {step}/{steps} loss {loss_avg:.4f} ({time.time() - t0:.0f} s)")
            if step >= steps:
                break
        epoch += 1
    progress.close()
    model.eval()
    info = {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "seconds": round(time.time() - t0, 1),
            "train_loss": loss_avg}
    if val is not None:
        _, logits = classify(model, val[0])
        info["val_accuracy"] = float((logits.argmax(1) == val[1]).float().mean())
        info["val_size"] = int(val[1].numel())
    return model, info


def save_classifier(path, model: SmallCNN, info: dict) -> Path:
    """Write checkpoint directory `path` (model.safetensors + config.json, kind "classifier")."""
    return save_checkpoint(path, "classifier", model, to_dict(model.config), step=info.get("steps", 0), train=info)
