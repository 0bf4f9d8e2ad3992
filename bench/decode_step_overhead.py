"""Per-call cost of one CPU decode step: attention_with_kvcache against the step a caller writes by hand.

B=8, H=8, D=32, 24 slots, fp32, int32 tensor cache_seqlens. The hand-written step: index_put of the new k/v
at cache_seqlens, a boolean mask `arange(T) <= cache_seqlens`, SDPA (aranges precomputed). Two position
patterns: ragged (random per sample) and shared (LlamaGen's `input_pos[:1].expand(B)`), with autograd off and
on. The two are timed alternately, 200 calls a round; the minimum over the rounds is printed.

    OMP_NUM_THREADS=1 python -m bench.decode_step_overhead 30      # 30 rounds (default 20)
"""

import sys
import timeit

import torch
import torch.nn.functional as F

from spectralar_kernels import attention_with_kvcache

B, H, D, T = 8, 8, 32, 24


def main(rounds: int = 20) -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    kc, vc = torch.randn(B, T, H, D, generator=g), torch.randn(B, T, H, D, generator=g)
    q, k, v = (torch.randn(B, 1, H, D, generator=g) for _ in range(3))
    rows, slots = torch.arange(B), torch.arange(T)

    def plain(seqlens):
        kc[rows, seqlens] = k[:, 0]
        vc[rows, seqlens] = v[:, 0]
        mask = (slots <= seqlens[:, None])[:, None, None]  # [B, 1, 1, T]
        o = F.scaled_dot_product_attention(q.transpose(1, 2), kc.transpose(1, 2), vc.transpose(1, 2), attn_mask=mask)
        return o.transpose(1, 2)

    def ours(seqlens):
        return attention_with_kvcache(q, kc, vc, seqlens, k, v, causal=True)

    cases = {
        "ragged": torch.randint(0, T - 1, (B,), generator=g, dtype=torch.int32),
        "shared": torch.tensor([13, 0, 5], dtype=torch.int32)[:1].expand(B),
    }
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            for name, seqlens in cases.items():
                assert (plain(seqlens) - ours(seqlens)).abs().max() < 1e-5
                best = {}
                for _ in range(rounds):
                    for label, fn in (("plain torch", plain), ("ours", ours)):
                        t = timeit.timeit(lambda fn=fn, s=seqlens: fn(s), number=200) / 200 * 1e6
                        best[label] = min(best.get(label, t), t)
                p, o = best["plain torch"], best["ours"]
                print(f"{name:6s} grad={grad!s:5s}  plain torch {p:6.1f} us  ours {o:6.1f} us  ours/plain {o / p:.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
