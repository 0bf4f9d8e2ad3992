"""Sample class-conditional images: `python -m spectralar.generate --kv-cache`.

With no --checkpoint it uses the bundled Fashion-MNIST model. Writes a grid with one row per class
(and, with --progressive, the coarse-to-fine strip: each sample decoded from 1, 2, ..., N tokens) and
prints the sampling throughput. Under torchrun the batches are split across ranks; a batch's random
stream depends only on --seed and its index, so the images do not depend on the number of processes.
"""

from __future__ import annotations

import sys

import torch

from .checkpoint import CheckpointError
from .cli import Parser, add_sampling_flags, check_grid_pixels, check_output, fail, int_list, pick_device, positive_int
from .distributed import close_distributed, init_distributed
from .pretrained import checked_config, class_names, load_pretrained, resolve
from .sampling import Samples, check_sampling_args, compile_warm_up, gather_samples, sample_batches
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
    add_sampling_flags(p, num_per_class=8)
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same images)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images sampled per forward pass")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if available)")
    p.add_argument("--out", default="samples.png", help="output image path (.png)")
    p.add_argument("--scale", type=positive_int, default=3, help="pixel upscaling of the saved grid")
    p.add_argument("--progressive", action="store_true",
                   help="also write OUT_progressive.png: each sample decoded from 1..N tokens")
    return p


def main(argv=None) -> int:
    prog = "python -m spectralar.generate"
    args = build_parser().parse_args(argv)
    try:
        try:
            check_sampling_args(kv_cache=args.kv_cache, compile=args.compile)
        except ValueError as e:
            return fail(prog, f"--compile cannot go with --no-kv-cache: {e}")
        device = pick_device(args.device)
        rank, world = init_distributed(device)
        if rank == 0:
            out = check_output(args.out, image=True)
        root = resolve(args.checkpoint)
        tcfg, _ = checked_config(root / "tokenizer", "tokenizer")
        nc = checked_config(root / "generator", "generator")[0].num_classes
        classes = args.classes if args.classes is not None else list(range(nc))
        bad = [c for c in classes if not 0 <= c < nc]
        if bad or not classes:
            return fail(prog, f"--classes {bad or classes}: class ids must lie in [0, {nc})")
        cols = max(args.num_per_class, tcfg.num_tokens if args.progressive else 0)
        check_grid_pixels(len(classes), cols, tcfg.image_size, args.scale)
        tokenizer, generator = load_pretrained(root, device)
        names = class_names(root) or [str(i) for i in range(nc)]
        labels = torch.tensor(classes).repeat_interleave(args.num_per_class)
        compile_s = 0.0
        if args.compile:
            compile_s = compile_warm_up(generator, labels, batch_size=args.batch_size, cfg_scale=args.cfg_scale,
                                        rank=rank, world=world)
        part = sample_batches(tokenizer, generator, labels, batch_size=args.batch_size, seed=args.seed,
                              cfg_scale=args.cfg_scale, temperature=args.temperature, top_k=args.top_k,
                              top_p=args.top_p, kv_cache=args.kv_cache, compile=args.compile, rank=rank, world=world)
        part.compile_seconds = compile_s
        samples = gather_samples(part, rank, world)
        if rank == 0:
            _write(args, out, tokenizer, generator, samples, labels, classes, names, device, world)
    except (CheckpointError, ValueError) as e:
        return fail(prog, e)
    finally:
        close_distributed()
    return 0


def _write(args, out, tokenizer, generator, samples: Samples, labels, classes, names, device, world) -> None:
    """Rank 0: the grid (and the progressive strip) and the throughput line."""
    out = save_grid(samples.all_images(), out, nrow=args.num_per_class, scale=args.scale)
    n, seconds = len(labels), samples.seconds
    print(f"wrote {out.resolve()} ({len(classes)} rows: {', '.join(names[c] for c in classes)}; "
          f"{args.num_per_class} per row)")
    mode = ("KV cache" if args.kv_cache else "no cache") + (", compiled" if args.compile else "")
    print(f"sampling ({mode}, cfg {args.cfg_scale}, {device}, "
          f"world {world}): {n / seconds:.1f} images/s, {samples.tokens / seconds:.0f} tokens/s "
          f"({seconds:.3f} s for {n} images of {generator.config.num_tokens} tokens"
          + (f"; compile warm-up {samples.compile_seconds:.1f} s not counted)" if args.compile else ")"))
    if args.progressive:
        first = torch.arange(len(classes)) * args.num_per_class  # one sample per class
        strip = tokenizer.decode_progressive(samples.all_codes()[first].to(device)).cpu()  # [R, N, C, H, W]
        pout = save_grid(strip.flatten(0, 1), out.with_name(out.stem + "_progressive" + out.suffix),
                         nrow=strip.shape[1], scale=args.scale)
        print(f"wrote {pout.resolve()} (rows: one sample per class; columns: decoded from "
              f"1..{strip.shape[1]} tokens)")
        if not tokenizer.nested:  # raster and 1-D tokens: say what a prefix is (spectral prefixes are x_k)
            print(f"{tokenizer.kind} tokens: column k is {tokenizer.prefix_meaning}")


if __name__ == "__main__":
    sys.exit(main())
