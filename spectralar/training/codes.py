"""The generator stage's data: every image encoded once by the tokenizer, cached in the run folder, and the
identity of a checkpoint's weights (what the cache and the generator's checkpoint are keyed by)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import safe_open

from ..checkpoint import fingerprint, save_tensors
from ..data import collate
from ..progress import bar as progress_bar

__all__ = ["CodesDataset", "code_dtype", "encode_dataset", "fingerprint"]

CACHE_VERSION = "2"  # 1: keyed by the tokenizer and the image count only (it served another dataset's codes)


def code_dtype(codebook_size: int) -> torch.dtype:
    """The smallest integer dtype that holds codes 0 .. codebook_size - 1 (int16 wraps above 32767)."""
    return torch.int16 if codebook_size <= 2**15 else torch.int32


def _read_cache(cache: Path, key: dict) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The cached (codes, labels) when the cache was computed from exactly `key`'s tokenizer, data and split."""
    try:
        with safe_open(str(cache), framework="pt") as f:
            if (f.metadata() or {}) != key:
                return None
            return f.get_tensor("codes").long(), f.get_tensor("labels").long()
    except Exception:  # a stale or broken cache is rebuilt, never trusted
        return None


@torch.no_grad()
def encode_dataset(tokenizer, dataset, batch_size: int, device, cache: Path, key: dict, show: bool = True):
    """Codes int64 [N, num_tokens] and labels int64 [N] of every image of `dataset`, cached in file `cache`.

    `key` ({"tokenizer": its weights' sha1, "data": the dataset's fingerprint, "split": ...}) is stored with the
    cache, which is used only when all of it matches: codes of other data or of another tokenizer are never served.
    `show`: a progress bar (on stderr, when it is a terminal).
    """
    key = {"version": CACHE_VERSION, **{k: str(v) for k, v in key.items()}}
    if cache.exists():
        got = _read_cache(cache, key)
        if got is not None and len(got[1]) == len(dataset):
            return got
    codes, labels = [], []
    n = len(dataset)
    bar = progress_bar(total=n, desc=f"encoding {key.get('split', '')} images".replace("  ", " "), unit="img",
                       enabled=show)
    for i in range(0, n, batch_size):
        x, y = collate(dataset, list(range(i, min(n, i + batch_size))))
        codes.append(tokenizer.encode(x.to(device)).cpu())
        labels.append(y)
        bar.update(len(y))
    bar.close()
    codes, labels = torch.cat(codes), torch.cat(labels)
    tmp = cache.with_name(f"{cache.stem}.tmp")
    save_tensors({"codes": codes.to(code_dtype(tokenizer.config.codebook_size)), "labels": labels}, tmp,
                 metadata=key)
    os.replace(tmp, cache)
    return codes, labels


class CodesDataset(torch.utils.data.Dataset):
    """Code sequences [N, num_tokens] and labels [N], fetched a batch at a time."""

    def __init__(self, codes, labels):
        self.codes, self.labels = codes, labels

    def __len__(self):
        return len(self.labels)

    def __getitems__(self, idx):
        idx = torch.as_tensor(idx)
        return self.codes[idx], self.labels[idx]
