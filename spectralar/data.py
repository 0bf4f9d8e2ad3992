"""Datasets: Fashion-MNIST from Debian's files, and an image folder (one sub-folder per class).

Both yield float images [C, S, S] in [-1, 1] and int64 labels. Batches are drawn by `index_batches`,
a deterministic, rank-sharded order that a checkpoint can resume at any batch.
"""

from __future__ import annotations

import contextlib
import copy
import gzip
import hashlib
import json
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

FMNIST_DIR = "/usr/share/datasets/fashion-mnist"
FMNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                  "Ankle boot"]
FMNIST_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DataError(ValueError):
    """Missing, unreadable or malformed data, with the path and what to do."""


def read_idx(path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic)")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    body = raw[4 + 4 * ndim:]
    if len(body) != int(np.prod(dims)) * dtype.itemsize:
        raise DataError(f"{path}: truncated or padded (header says {dims}, body has {len(body)} bytes)")
    return np.frombuffer(body, dtype=dtype).reshape(dims)


def to_model_range(images_uint8: torch.Tensor) -> torch.Tensor:
    return images_uint8.float().div(127.5).sub(1.0)


class TensorImages(torch.utils.data.Dataset):
    """In-memory uint8 images [N, C, S, S] + labels; converted to [-1, 1] floats per batch."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: list[str]):
        self.images, self.labels, self.classes = images, labels.long(), classes

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return to_model_range(self.images[i]), self.labels[i]

    def __getitems__(self, idx):  # batched fetch for DataLoader (one gather instead of B)
        idx = torch.as_tensor(idx)
        return to_model_range(self.images[idx]), self.labels[idx]

    def select(self, idx: list[int]) -> TensorImages:
        """The images at positions `idx`, in that order."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        return TensorImages(self.images[idx], self.labels[idx], self.classes)

    def fingerprint(self) -> str:
        """sha1 of the pixels, labels and class names: the identity of what a cache computed from this data."""
        h = hashlib.sha1(json.dumps([list(self.images.shape), self.classes]).encode())
        h.update(self.images.contiguous().numpy().tobytes())
        h.update(self.labels.contiguous().numpy().tobytes())
        return h.hexdigest()


def fashion_mnist(split: str = "train", root: str | os.PathLike | None = None, size: int = 32) -> TensorImages:
    """Fashion-MNIST, 28x28 padded with the background value to `size` (default 32), 1 channel."""
    root = Path(root or os.environ.get("SPECTRALAR_FMNIST", FMNIST_DIR))
    if split not in FMNIST_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    img_f, lab_f = (root / n for n in FMNIST_FILES[split])
    for f in (img_f, lab_f):
        if not f.exists():
            raise DataError(f"Fashion-MNIST file {f} is missing. Install it with "
                            "`apt-get update && apt-get install -y dataset-fashion-mnist` (Debian/Ubuntu), "
                            "or pass --data DIR with the four *-ubyte.gz files.")
    images, labels = read_idx(img_f), read_idx(lab_f)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{img_f}: expected images [N, H, W] and labels [N], got {images.shape} / {labels.shape}")
    if labels.max() >= len(FMNIST_CLASSES):
        raise DataError(f"{lab_f}: label {labels.max()} outside [0, 10)")
    x = pad_to(torch.from_numpy(images.copy())[:, None], size)
    return TensorImages(x, torch.from_numpy(labels.astype(np.int64)), FMNIST_CLASSES)


def pad_to(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 images [..., s, s] -> [..., size, size], centred, padded with 0 (Fashion-MNIST's background).
    Used by training and by spectralar.reconstruct, so an image of the native size is prepared the same way."""
    pad = size - images.shape[-1]
    if pad < 0:
        raise ValueError(f"size {size} is smaller than the images ({images.shape[-1]})")
    return torch.nn.functional.pad(images, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2), value=0)


# ---- image files -----------------------------------------------------------------------------------------
# Pillow's own `convert` clips 16-bit grey values to 255 (a white image), truncates floating-point pixels (a black
# one) and drops transparency (what lies under a transparent area shows). Here instead: 16-bit images (PNG, TIFF,
# PGM) are scaled to 8 bits (v / 257, rounded) and 32-bit integer ones refused; floating-point images (TIFF mode
# "F") must hold values in [0, 1] and are scaled by 255, others are refused with the range found, never guessed;
# transparency (an alpha channel or a transparent colour) is composited onto black (`BACKGROUND`); files Pillow
# cannot read, and images beyond its decompression-bomb limit, raise DataError naming the file.

BACKGROUND = 0  # what transparent pixels become (0-255, every channel)

_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N"}


@contextlib.contextmanager
def open_image(path):
    """`PIL.Image.open(path)` as a context manager whose failures are DataError naming `path`: not an image,
    unreadable, truncated, or more pixels than Pillow decodes (its decompression-bomb limit)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # below the limit: decoded, as asked
            im = Image.open(path)
    except Image.DecompressionBombError as e:
        raise DataError(f"{path}: too large to decode safely ({e}); downscale it, or raise "
                        "PIL.Image.MAX_IMAGE_PIXELS if you trust the file") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{path}: unreadable image ({e})") from None
    with im:
        try:
            yield im
        except DataError:
            raise
        except (OSError, ValueError, SyntaxError) as e:  # decoding happens lazily, inside the block
            raise DataError(f"{path}: unreadable image ({e})") from None


def pixels(im, channels: int, path="image") -> np.ndarray:
    """uint8 [H, W] (channels=1) or [H, W, 3] (channels=3) of the Pillow image `im` (read from `path`): 16-bit
    scaled, floats in [0, 1] scaled, transparency composited onto `BACKGROUND` (see "image files" above)."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if im.mode in _SIXTEEN_BIT or im.mode == "I":
        a = np.asarray(im)
        if im.mode == "I" and (getattr(im, "tag_v2", {}).get(258, (16,))[0] > 16 or a.min() < 0 or a.max() > 65535):
            raise DataError(f"{path}: a 32-bit integer image (values {a.min()} to {a.max()}); save it with 8 or "
                            "16 bits per channel")
        grey = np.rint(a.astype(np.float64) / 257.0).astype(np.uint8)
        alpha = None
        t = im.info.get("transparency")
        if isinstance(t, int):
            alpha = np.where(a == t, 0, 255).astype(np.uint8)
        return _finish(grey[..., None], alpha, channels)
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if not (np.isfinite(a).all() and lo >= 0.0 and hi <= 1.0):
            bad = "non-finite values" if not np.isfinite(a).all() else f"values in [{lo:.4g}, {hi:.4g}]"
            raise DataError(f"{path}: a floating-point image with {bad}; only [0, 1] is understood (scale it to "
                            "[0, 1], or save it with 8 or 16 bits per channel)")
        return _finish(np.rint(a * 255.0).astype(np.uint8)[..., None], None, channels)
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = np.asarray(im.convert("RGBA"))
        return _finish(rgba[..., :3], rgba[..., 3], channels)
    return np.asarray(im.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)


def _finish(colour: np.ndarray, alpha: np.ndarray | None, channels: int) -> np.ndarray:
    """colour uint8 [H, W, 1 or 3], alpha uint8 [H, W] or None -> uint8 [H, W] or [H, W, 3]."""
    if alpha is not None and (alpha < 255).any():
        w = alpha.astype(np.float64)[..., None] / 255.0
        colour = np.rint(colour * w + BACKGROUND * (1.0 - w)).astype(np.uint8)
    if channels == 3:
        return np.ascontiguousarray(np.broadcast_to(colour, colour.shape[:2] + (3,)))
    if colour.shape[-1] == 1:
        return colour[..., 0]
    from PIL import Image

    return np.asarray(Image.fromarray(colour, "RGB").convert("L"))  # ITU-R 601 luma, as Pillow's "L"


def load_image(path, size: int, channels: int = 3) -> torch.Tensor:
    """Decode with Pillow (bit depths, floats and transparency as "image files" above says), resize the shorter
    side to `size` (bicubic), center-crop; uint8 [C, size, size]. DataError naming the file when it cannot."""
    from PIL import Image

    with open_image(path) as im:
        arr = pixels(im, channels, path)
    im = Image.fromarray(arr)
    w, h = im.size
    s = size / min(w, h)
    im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
    w, h = im.size
    left, top = (w - size) // 2, (h - size) // 2
    t = torch.from_numpy(np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8).copy())
    return t.permute(2, 0, 1) if t.dim() == 3 else t[None]


FMNIST_SIZE = 28  # Fashion-MNIST's native image size; training pads it (fashion_mnist)


def prepare_image(path, size: int, channels: int, fmnist: bool) -> tuple[torch.Tensor, str]:
    """(uint8 [channels, size, size], what was done) for image file `path`, prepared as the training data was: for
    a tokenizer trained on Fashion-MNIST (`fmnist`), a 28x28 image (its native size) is padded with the background
    value; any other size is resized (shorter side, bicubic) and center-cropped (`load_image`). Bit depths, floats
    and transparency are converted as `load_image` does. DataError if the file is not an image Pillow reads."""
    with open_image(path) as im:
        w, h = im.size
        if fmnist and (w, h) == (FMNIST_SIZE, FMNIST_SIZE) and size >= FMNIST_SIZE:
            small = torch.from_numpy(pixels(im, 1, path).copy())
            return pad_to(small[None], size), (f"{w}x{h} (Fashion-MNIST's size): padded to {size}x{size} with "
                                               "the background value, as in training")
    how = (f"{w}x{h}: used as is" if (w, h) == (size, size) else
           f"{w}x{h}: resized (shorter side to {size}) and center-cropped to {size}x{size}")
    return load_image(path, size, channels), how


class ImageFolder(torch.utils.data.Dataset):
    """ROOT/<class>/<image> (the ImageNet layout); classes sorted by folder name.

    skip_bad=False: an unreadable file raises DataError naming it. skip_bad=True: every file is
    decoded once up front, bad ones are dropped and counted (`self.skipped`), never given a wrong label.
    """

    def __init__(self, root, size: int, channels: int = 3, skip_bad: bool = False):
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: no such directory (expected ROOT/<class>/<image files>)")
        self.root, self.size, self.channels = root, size, channels
        self.classes = sorted(d.name for d in root.iterdir() if d.is_dir())
        if not self.classes:
            raise DataError(f"{root}: no class sub-folders (expected ROOT/<class>/<image files>)")
        self.files = [(p, ci) for ci, c in enumerate(self.classes) for p in sorted((root / c).rglob("*"))
                      if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
        if not self.files:
            raise DataError(f"{root}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        self.skipped: list[str] = []
        if skip_bad:
            good = []
            for p, ci in self.files:
                try:
                    load_image(p, size, channels)
                    good.append((p, ci))
                except DataError:
                    self.skipped.append(str(p))
            self.files = good

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        p, ci = self.files[i]
        return to_model_range(load_image(p, self.size, self.channels)), torch.tensor(ci)

    def select(self, idx: list[int]) -> ImageFolder:
        """The images at positions `idx`, in that order (same classes, nothing decoded)."""
        out = copy.copy(self)
        out.files = [self.files[i] for i in idx]
        return out

    def fingerprint(self) -> str:
        """sha1 of the class names, every file's path (relative to the root), size and label, and the bytes of up
        to 64 files spread over the list: the identity of what a cache computed from this data. Cheap (one stat
        per file), and independent of where the folder lives and of its files' times, so a copied folder is the
        same data."""
        h = hashlib.sha1(json.dumps([self.classes, self.size, self.channels]).encode())
        for p, ci in self.files:
            h.update(f"{p.relative_to(self.root)}\0{p.stat().st_size}\0{ci}\n".encode())
        for p, _ in self.files[:: max(1, len(self.files) // 64)][:64]:
            h.update(p.read_bytes())
        return h.hexdigest()

    @property
    def labels(self):
        return torch.tensor([ci for _, ci in self.files])


def _folder_split(p: Path, split: str) -> Path:
    """The folder of `split` under image folder `p`: ROOT/<split> in the ROOT/train + ROOT/val layout (the one
    ImageNet ships), else ROOT itself."""
    if (p / "train").is_dir():
        if not (p / split).is_dir():
            have = sorted(d.name for d in p.iterdir() if d.is_dir())
            raise DataError(f"{p} has a train/ folder but no {split}/ (it holds {', '.join(have)}); name a split "
                            "that exists (e.g. 'val'), or pass the folder of that split itself")
        return p / split
    return p


def make_dataset(data: str, split: str, size: int, channels: int, skip_bad: bool = False):
    """`data` = "fmnist" (Debian's files), or a directory of Fashion-MNIST IDX files, or an image folder: either
    ROOT/<class>/<images> or ROOT/<split>/<class>/<images> (ROOT/train, ROOT/val, ...)."""
    if data == "fmnist":
        return fashion_mnist(split, size=size)
    p = Path(data)
    if p.is_dir() and (p / FMNIST_FILES["train"][0]).exists():
        return fashion_mnist(split, root=p, size=size)
    return ImageFolder(_folder_split(p, split), size, channels, skip_bad)


@dataclass
class TrainingData:
    """What a training run trains and validates on (`training_data`).

    `val` is None without validation; it never holds a training image. `notes` are lines for the run's log: where
    the validation images come from, and the unreadable images skipped.
    """

    train: torch.utils.data.Dataset
    val: torch.utils.data.Dataset | None
    notes: list[str]


def _skipped(ds, where) -> list[str]:
    bad = getattr(ds, "skipped", [])
    return [f"skipped {len(bad)} unreadable image(s) in {where}, e.g. {bad[0]}"] if bad else []


def held_out(ds, count: int) -> tuple[list[int], list[int]]:
    """(training positions, held-out positions) of dataset `ds`, the `count` held out chosen deterministically:
    for an image folder the files whose relative paths hash lowest (so adding files moves few others), for
    in-memory images a fixed permutation."""
    n = len(ds)
    if isinstance(ds, ImageFolder):
        key = [hashlib.sha1(str(p.relative_to(ds.root)).encode()).hexdigest() for p, _ in ds.files]
        order = sorted(range(n), key=key.__getitem__)
    else:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(0)).tolist()
    out = set(order[:count])
    return [i for i in range(n) if i not in out], sorted(out)


def training_data(data: str, size: int, channels: int, val_size: int, skip_bad: bool = False,
                  validation: bool = True) -> TrainingData:
    """The training images and the validation images of `data` (`make_dataset`'s forms), never the same images:

    - Fashion-MNIST (Debian's or a folder of its IDX files): its train and test splits;
    - an image folder with ROOT/train: ROOT/train, and ROOT/val when it exists;
    - otherwise a held-out part of the training data: min(val_size, a tenth of it), chosen deterministically
      (`held_out`) and removed from training, so every run on the same data holds out the same images.

    val_size 0: no validation, and nothing held out. validation=False: the split is made (the training images
    are the same) but the validation images are not loaded (the processes of a run other than the first).
    `skip_bad` applies to both parts; what it skipped is in `notes`.
    """
    train = make_dataset(data, "train", size, channels, skip_bad)
    notes = _skipped(train, f"the training images of {data}")
    if val_size <= 0:
        return TrainingData(train, None, notes)
    p = Path(data)
    if data == "fmnist" or (p / FMNIST_FILES["test"][0]).exists():
        val = make_dataset(data, "test", size, channels) if validation else None
        return TrainingData(train, val, notes + [f"validation: the test split of {data}"])
    if (p / "train").is_dir() and (p / "val").is_dir():
        val = ImageFolder(p / "val", size, channels, skip_bad) if validation else None
        if val is not None and val.classes != train.classes:
            raise DataError(f"{p / 'val'} has classes {val.classes[:5]}..., {p / 'train'} {train.classes[:5]}...: "
                            "the validation folder must have the training folder's class sub-folders")
        return TrainingData(train, val, notes + (_skipped(val, p / "val") if val else [])
                            + [f"validation: {p / 'val'}"])
    count = min(val_size, len(train) // 10)
    if count == 0:
        return TrainingData(train, None, notes + [f"validation: none ({len(train)} images are too few to hold "
                                                  "a tenth out)"])
    keep, out = held_out(train, count)
    where = p / "train" if (p / "train").is_dir() else p
    note = (f"validation: {count} images held out of the {len(train)} in {where} (it has no val/ folder); "
            f"training on the other {len(keep)}")
    return TrainingData(train.select(keep), train.select(out) if validation else None, notes + [note])


def index_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """This rank's batches of one epoch: a seeded permutation, sharded round-robin, full batches only."""
    g = torch.Generator().manual_seed(seed * 1000003 + epoch)
    perm = torch.randperm(n, generator=g)
    per_rank = n // world
    mine = perm[rank:per_rank * world:world]
    nb = len(mine) // batch_size
    return mine[:nb * batch_size].view(nb, batch_size).tolist()


def collate(dataset, idx):
    if hasattr(dataset, "__getitems__"):
        return dataset.__getitems__(idx)
    xs, ys = zip(*(dataset[i] for i in idx))
    return torch.stack(xs), torch.stack(ys)
