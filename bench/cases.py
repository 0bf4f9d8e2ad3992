"""The shapes of this model that both the GPU report (report/shapes.py) and the pytest benchmarks (bench_*.py)
time, defined once. Dict keys are the benchmarks' case ids.

The GPU report times every case as it is here (the measured.json entries it writes cite them). The bench_*.py files
time them as they are on CUDA and with a smaller batch on CPU (`smaller`), where the pytest benchmarks also run
on a 2-core machine; each file adds its own small cases (the fmnist sizes).

ImageNet size (the d16 generator and its tokenizer): 64 images of 3 x 256 x 256 with 64 tokens each, all 64
prefixes of 8 images, code dim 12 against codebooks of 4096 and 16384 codes; attention in the generator (64
images with CFG: 128 rows, T = 65 = class token + 64 codes, causal, 16 heads of 64), in the tokenizer's encoder
(B = 64, 256 patches + 64 queries = 320, prefix-LM over the 256 patches, 12 heads of 64) and decoder (T = 320,
full); one KV-cache decoding step against 64 cached entries (T_max = 65) for 128 rows and for 2 (batch 1 with
CFG); sampling at batches 1 to 256 with CFG 2.0.
"""

from __future__ import annotations

IMAGES = (64, 3, 256, 256)
GENERATOR = (128, 65, 16, 64)  # attention [B, T, H, D]
TOKENIZER = (64, 320, 12, 64)

# name: (shape [B, C, H, W], block or None for the whole plane)
DCT = {"imagenet-256x256x3": (IMAGES, None), "block8-256x256x3": (IMAGES, 8)}
# name: (shape [B, C, S, S], tokens N, all_prefixes)
SUBIMAGES = {"imagenet-256-per-sample": (IMAGES, 64, False), "imagenet-256-all64": ((8, 3, 256, 256), 64, True)}
# name: (M, K, d)
VQ = {"M4096-K4096-d12": (4096, 4096, 12), "M4096-K16384-d12": (4096, 16384, 12)}
# name: ([B, T, H, D], mask: "full", "causal" or "prefix=P")
ATTENTION = {"generator": (GENERATOR, "causal"), "encoder": (TOKENIZER, "prefix=256"), "decoder": (TOKENIZER, "full")}
# name: (B, T_max, H, D, T_q, cached entries per row)
DECODE = {"B128": (128, 65, 16, 64, 1, 64), "B2": (2, 65, 16, 64, 1, 64)}
SAMPLING_BATCHES = (1, 16, 64, 256)  # images per call; CFG doubles the rows
CFG_SCALE = 2.0


def smaller(shape: tuple, batch: int) -> tuple:
    """`shape` with its leading (batch) dimension at most `batch`: a case as a CPU run times it."""
    return (min(shape[0], batch), *shape[1:])


def parse_mask(mask: str, t: int) -> tuple[bool, int, str]:
    """(causal, prefix_len, label) for "full", "causal", "prefix" (prefix T // 2) or "prefix=P"."""
    if mask.startswith("prefix"):
        prefix = int(mask.split("=")[1]) if "=" in mask else t // 2
        return True, prefix, f"prefix={prefix}"
    return mask == "causal", 0, mask
