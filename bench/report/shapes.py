"""Shapes per section: realistic ones (this model's) on CUDA, tiny ones on a CPU dry run.

Realistic = the shapes of ../cases.py, which the bench_*.py files time too: 64 x 3 x 256^2 images (sub-images
for all 64 prefixes at batch 8: 64 outputs per image), 64-token windows, VQ of M = 4096 code vectors (64 images
x 64 tokens, d = 12) against K = 4096 / 16384, attention in the generator (B = 64 images with CFG -> 128 rows,
T = 65, causal, H = 16, D = 64), the encoder (B = 64, 256 patches + 64 queries = 320, prefix-LM over the 256
patches, H = 12, D = 64) and the decoder (T = 320, full). Timings reuse the realistic shapes of the checks, so
they run kernels the checks already compiled.
"""

from __future__ import annotations

from .. import cases


def sizes(dry: bool) -> dict:
    if dry:
        img, vq, gen, enc = (2, 3, 32, 32), (256, 512, 12), (4, 17, 2, 32), (2, 80, 2, 32)
        return {
            "dct": [("awkward", (5, 1, 1), None), ("awkward", (2, 7, 33), None), ("awkward", (2, 3, 40, 24), 8),
                    ("realistic", img, None), ("realistic", img, 8)],
            "dct_time": [(img, None), (img, 8)],
            "sub": [("awkward", (3, 1, 7, 7), 7, False), ("awkward", (2, 1, 17, 17), [1, 3, 8, 17], True),
                    ("realistic", img, 16, False), ("realistic", img, 16, True)],
            "sub_time": [(img, 16, False), (img, 16, True)],
            "vq": [("awkward", 7, 100, 12), ("awkward", 33, 65, 3), ("realistic", *vq)],
            "vq_time": [vq],
            "attn": [("awkward", (2, 7, 2, 40), ("full", "causal", "prefix")), ("awkward", (1, 17, 2, 24), ("prefix",)),
                     ("generator", gen, ("causal",)), ("encoder", enc, ("prefix=64",)), ("decoder", enc, ("full",))],
            "attn_time": [("generator", gen, "causal"), ("encoder", enc, "prefix=64"), ("decoder", enc, "full")],
            "kv": [("awkward", 3, 20, 2, 40, 1, [0, 5, 19]), ("awkward", 2, 20, 1, 24, 3, [0, 10]),
                   ("realistic", 4, 17, 2, 32, 1, [16] * 4)],
            "kv_time": [(4, 17, 2, 32, 1, [16] * 4)],
            "generators": {"models": ["fmnist", "d16"], "step_rows": [2], "batches": [1, 2], "graph_batches": [1],
                           "reps": 1, "agree_batch": 1},
            "copy_bytes": 32 << 20, "gemm_n": 256,
        }  # fmt: skip
    decode = [(b, t_max, h, d, t_q, [n] * b) for b, t_max, h, d, t_q, n in cases.DECODE.values()]
    return {
        "dct": [("awkward", (5, 1, 1), None), ("awkward", (2, 7, 33), None), ("awkward", (3, 65, 17), None),
                ("awkward", (2, 300, 257), None), ("awkward", (2, 3, 40, 24), 8), ("awkward", (2, 12, 20), 4),
                ("awkward", (1, 8, 8), 8), ("awkward", (3, 72, 136), 8), ("awkward", (2, 5, 64, 64), 8),
                *(("realistic", shape, block) for shape, block in cases.DCT.values())],
        "dct_time": list(cases.DCT.values()),
        "sub": [("awkward", (3, 1, 7, 7), 7, False), ("awkward", (2, 2, 33, 33), 16, False),
                ("awkward", (1, 1, 257, 257), 64, False), ("awkward", (2, 1, 17, 17), [1, 3, 8, 17], True),
                ("awkward", (1, 3, 64, 64), 16, True), ("awkward", (1, 1, 130, 130), [1, 64, 65, 129, 130], True),
                *(("realistic", *case) for case in cases.SUBIMAGES.values())],
        "sub_time": list(cases.SUBIMAGES.values()),
        "vq": [("awkward", 1, 1, 12), ("awkward", 7, 1000, 12), ("awkward", 1000, 4097, 12),
               ("awkward", 300, 333, 3), ("awkward", 129, 1025, 40),
               *(("realistic", *case) for case in cases.VQ.values())],
        "vq_time": list(cases.VQ.values()),
        "attn": [("awkward", (2, 1, 3, 24), ("full", "causal")),
                 ("awkward", (2, 7, 2, 40), ("full", "causal", "prefix")),
                 ("awkward", (1, 65, 3, 64), ("full", "causal", "prefix")),
                 ("awkward", (2, 129, 2, 64), ("full", "causal", "prefix")),
                 ("awkward", (1, 257, 2, 80), ("full", "causal", "prefix")),
                 *((name, shape, (mask,)) for name, (shape, mask) in cases.ATTENTION.items())],
        "attn_time": [(name, shape, mask) for name, (shape, mask) in cases.ATTENTION.items()],
        "kv": [("awkward", 3, 257, 2, 40, 1, [0, 5, 256]), ("awkward", 3, 257, 2, 40, 7, [0, 100, 250]),
               ("awkward", 1, 1, 1, 24, 1, [0]), ("awkward", 2, 150, 3, 80, 1, [149, 17]),
               ("realistic", *decode[0]), ("realistic", *decode[0][:5], [10] * decode[0][0]),
               ("realistic", *decode[1])],
        "kv_time": decode,
        # step_rows: decode-step rows (batch x 2 with CFG); graph_batches: sampling batches also run with the
        # compiled step (the same rows as step_rows, so the sampler reuses the step the timing compiled)
        "generators": {"models": ["fmnist", "d16"], "step_rows": [2, 128], "batches": list(cases.SAMPLING_BATCHES),
                       "graph_batches": [1, 64], "reps": 2, "agree_batch": 64},
        "copy_bytes": 1 << 30, "gemm_n": 8192,
    }  # fmt: skip
