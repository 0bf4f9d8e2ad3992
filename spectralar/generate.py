"""Sample class-conditional images: `python -m spectralar.generate --kv-cache`.

With no --checkpoint it uses the bundled Fashion-MNIST model. Writes a grid with one row per class
(and, with --progressive, the coarse-to-fine strip: each sample decoded from 1, 2, ..., N tokens) and
prints the sampling throughput. Under torchrun the batches are split across ranks; a batch's random
stream depends only on --seed and its index, so the images do not depend on the number of processes.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from .checkpoint import CheckpointError
from .cli import Parser, fail, int_list, positive_int
from .pretrained import class_names, load_pretrained, resolve
from .viz import save_grid


def build_parser():
    p = Parser(prog="python -m spectralar.generate", description=__doc__)
    p.add_argument("--checkpoint", default="fmnist",
                   help="bundled model name (fmnist) or a directory with tokenizer/ and generator/ (from train)")
    cache = p.add_mutually_exclusive_group()
    cache.add_argument("--kv-cache", dest="kv_cache", action="store_true", default=True,
                       help="sample with the static KV cache (default)")
    cache.add_argument("--no-kv-cache", dest="kv_cache", action="store_false",
                       help="recompute the whole prefix at every step (the slow baseline)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the decode step (CUDA graphs on CUDA); compile time is reported apart")
    p.add_argument("--classes", type=int_list, default=None, help="comma-separated class ids (default: all)")
    p.add_argument("--num-per-class", type=positive_int, default=8, help="samples per class (one grid row each)")
    p.add_argument("--cfg", type=float, default=2.0, help="classifier-free guidance scale (1 = none)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (0 = greedy)")
    p.add_argument("--top-k", type=positive_int, default=None, help="keep the k most likely codes")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass in (0, 1]")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same images)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images sampled per forward pass")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if available)")
    p.add_argument("--out", default="samples.png", help="output PNG path")
    p.add_argument("--scale", type=positive_int, default=3, help="pixel upscaling of the saved grid")
    p.add_argument("--progressive", action="store_true",
                   help="also write OUT_progressive.png: each sample decoded from 1..N tokens")
    return p


def sample(tokenizer, generator, labels, args, device, rank=0, world=1):
    """Codes and images for `labels`, batch by batch; batch c uses seed (args.seed, c) and runs on rank c % world."""
    codes, images, tokens, seconds = {}, {}, 0, 0.0
    for c, lab in _my_batches(labels, args, rank, world):
        lab = lab.to(device)
        g = torch.Generator(device=device).manual_seed(args.seed * 100003 + c)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        cb = generator.generate(lab, cfg_scale=args.cfg, temperature=args.temperature, top_k=args.top_k,
                                top_p=args.top_p, kv_cache=args.kv_cache, generator=g,
                                compile=args.compile)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - t
        tokens += cb.numel()
        codes[c], images[c] = cb.cpu(), tokenizer.decode(cb).cpu()
    return codes, images, tokens, seconds


def _my_batches(labels, args, rank, world):
    return [(c, labels[s:s + args.batch_size]) for c, s in enumerate(range(0, len(labels), args.batch_size))
            if c % world == rank]


def compile_warm_up(generator, labels, args, device, rank=0, world=1) -> float:
    """Compile the decode step for every batch size `sample` will use (one throw-away call each); seconds."""
    t = time.perf_counter()
    for n in sorted({len(lab) for _, lab in _my_batches(labels, args, rank, world)}):
        generator.generate(torch.zeros(n, dtype=torch.long, device=device), cfg_scale=args.cfg, compile=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def main(argv=None) -> int:
    prog = "python -m spectralar.generate"
    args = build_parser().parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    try:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if device.type == "cuda" and not torch.cuda.is_available():
            return fail(prog, f"--device {args.device}: CUDA is not available on this machine")
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        root = resolve(args.checkpoint)
        tokenizer, generator = load_pretrained(root, device)
        names = class_names(root) or [str(i) for i in range(generator.config.num_classes)]
        nc = generator.config.num_classes
        classes = args.classes if args.classes is not None else list(range(nc))
        bad = [c for c in classes if not 0 <= c < nc]
        if bad or not classes:
            return fail(prog, f"--classes {bad or classes}: class ids must lie in [0, {nc})")
        if args.top_p is not None and not 0 < args.top_p <= 1:
            return fail(prog, f"--top-p {args.top_p}: must lie in (0, 1]")
        if args.temperature < 0:
            return fail(prog, f"--temperature {args.temperature}: must be >= 0 (0 = greedy)")
        if args.cfg < 0:
            return fail(prog, f"--cfg {args.cfg}: must be >= 0")
        if args.compile and not args.kv_cache:
            return fail(prog, "--compile compiles the KV-cached decode step; it cannot go with --no-kv-cache")
        labels = torch.tensor(classes).repeat_interleave(args.num_per_class)
        compile_s = compile_warm_up(generator, labels, args, device, rank, world) if args.compile else 0.0
        codes, images, tokens, seconds = sample(tokenizer, generator, labels, args, device, rank, world)
        if world > 1:
            gathered = [None] * world
            dist.all_gather_object(gathered, (codes, images, tokens, seconds, compile_s))
            codes, images = {}, {}
            for c_, i_, *_ in gathered:
                codes.update(c_)
                images.update(i_)
            tokens = sum(g[2] for g in gathered)
            seconds = max(g[3] for g in gathered)
            compile_s = max(g[4] for g in gathered)
        if rank == 0:
            imgs = torch.cat([images[c] for c in sorted(images)])
            out = save_grid(imgs, args.out, nrow=args.num_per_class, scale=args.scale)
            n = len(labels)
            print(f"wrote {out.resolve()} ({len(classes)} rows: {', '.join(names[c] for c in classes)}; "
                  f"{args.num_per_class} per row)")
            mode = ("KV cache" if args.kv_cache else "no cache") + (", compiled" if args.compile else "")
            print(f"sampling ({mode}, cfg {args.cfg}, {device}, "
                  f"world {world}): {n / seconds:.1f} images/s, {tokens / seconds:.0f} tokens/s "
                  f"({seconds:.3f} s for {n} images of {generator.config.num_tokens} tokens"
                  + (f"; compile warm-up {compile_s:.1f} s not counted)" if args.compile else ")"))
            if args.progressive:
                allc = torch.cat([codes[c] for c in sorted(codes)])
                first = torch.arange(len(classes)) * args.num_per_class  # one sample per class
                prog_imgs = tokenizer.decode_progressive(allc[first].to(device)).cpu()  # [R, N, C, H, W]
                strip = prog_imgs
                p = Path(args.out)
                pout = save_grid(strip.flatten(0, 1), p.with_name(p.stem + "_progressive.png"),
                                 nrow=strip.shape[1], scale=args.scale)
                print(f"wrote {pout.resolve()} (rows: one sample per class; columns: decoded from "
                      f"1..{strip.shape[1]} tokens)")
    except (CheckpointError, ValueError) as e:
        return fail(prog, e)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
