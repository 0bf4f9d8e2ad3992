# temporary device-check script (deleted after the run)
import torch
from triton.testing import do_bench

from spectralar_kernels.vq import triton as vt

for M, K in [(1024, 1024), (4096, 4096), (4096, 16384)]:
    z = torch.randn(M, 12, device="cuda")
    c = torch.randn(K, 12, device="cuda")
    line = f"M={M} K={K}: cdist+argmin {1e3 * do_bench(lambda: torch.cdist(z, c).argmin(1)):7.1f} us"
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        zz, cc = z.to(dt), c.to(dt)
        for metric in ("l2", "cosine"):
            us = 1e3 * do_bench(lambda: vt.vq_nearest_fwd(zz, cc, metric))
            line += f" | {str(dt)[6:]} {metric} {us:6.1f} us"
    print(line, flush=True)
for fn in (vt._vq_nearest_fwd_kernel, vt._vq_nearest_reduce_kernel):
    try:
        for dev_cache in fn.device_caches.values():
            for key, k in dev_cache[0].items():
                print(fn.__name__, k.metadata.num_warps, k.metadata.num_stages, "regs", k.n_regs, "spills", k.n_spills,
                      "shared", k.metadata.shared)
    except Exception as e:
        print("no cache info", type(e).__name__, e)
