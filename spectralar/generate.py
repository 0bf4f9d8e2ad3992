"""Sample class-conditional images: `python -m spectralar.generate --kv-cache`.

With no --checkpoint it uses the bundled Fashion-MNIST model. Writes a grid with one row per class
(and, with --progressive, the coarse-to-fine strip: each sample decoded from 1, 2, ..., N tokens; with
--animate, the grid's coarse-to-fine animation) and prints the sampling throughput. --tokens k samples only
the first k tokens and decodes them (anytime sampling: about k/N of the time, a blurrier image). Under torchrun
the batches are split across ranks; a batch's random stream depends only on --seed and its index, so the images
do not depend on the number of processes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from .cli import (
    USER_ERRORS,
    Parser,
    add_sampling_flags,
    check_grid_pixels,
    check_output,
    fail,
    int_list,
    pick_device,
    positive_int,
    sampling_params,
    set_threads,
    threads_flag,
)
from .distributed import close_distributed, init_distributed
from .pretrained import checked_config, class_names, load_pretrained, resolve
from .sampling import Samples, compile_warm_up, decode_prefix, gather_samples, sample_batches
from .viz import ANIMATION_FORMATS, save_animation, save_grid


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
    p.add_argument("--tokens", type=positive_int, default=None, metavar="K",
                   help="sample only the first K of the model's N tokens and decode them, the rest absent (anytime "
                        "sampling: about K/N of the sampling time; default N)")
    p.add_argument("--animate", default=None, metavar="PATH",
                   help="also write the grid's coarse-to-fine animation, one frame per token: .gif or .png / "
                        ".apng (animated PNG), lossless; .webp, lossy and several times smaller")
    threads_flag(p)
    return p


def main(argv=None) -> int:
    prog = "python -m spectralar.generate"
    args = build_parser().parse_args(argv)
    if args.compile and not args.kv_cache:
        return fail(prog, "--compile compiles the KV-cached decode step: it cannot go with --no-kv-cache")
    try:
        device = pick_device(args.device)
        rank, world = init_distributed(device)
        if rank == 0:
            out = check_output(args.out, image=True)
            if args.animate is not None:
                _check_animation(args.animate)
        root = resolve(args.checkpoint)
        tcfg, _ = checked_config(root / "tokenizer", "tokenizer")
        nc = checked_config(root / "generator", "generator")[0].num_classes
        classes = args.classes if args.classes is not None else list(range(nc))
        bad = [c for c in classes if not 0 <= c < nc]
        if bad or not classes:
            return fail(prog, f"--classes {bad or classes}: class ids must lie in [0, {nc})")
        n = tcfg.num_tokens if args.tokens is None else args.tokens
        if n > tcfg.num_tokens:
            return fail(prog, f"--tokens {n}: this model has {tcfg.num_tokens} tokens; use 1 to {tcfg.num_tokens}")
        cols = max(args.num_per_class, n if args.progressive else 0)
        check_grid_pixels(len(classes), cols, tcfg.image_size, args.scale)
        set_threads(prog, args.threads)
        tokenizer, generator = load_pretrained(root, device)
        names = class_names(root) or [str(i) for i in range(nc)]
        labels = torch.tensor(classes).repeat_interleave(args.num_per_class)
        params = sampling_params(args)
        compile_s = 0.0
        if args.compile:
            compile_s = compile_warm_up(generator, labels, batch_size=args.batch_size, params=params, rank=rank,
                                        world=world)
        part = sample_batches(tokenizer, generator, labels, batch_size=args.batch_size, seed=args.seed,
                              params=params, num_tokens=n, kv_cache=args.kv_cache, compile=args.compile, rank=rank,
                              world=world)
        part.compile_seconds = compile_s
        samples = gather_samples(part, rank, world)
        if rank == 0:
            _write(args, out, tokenizer, generator, samples, labels, classes, names, device, world)
    except USER_ERRORS as e:
        return fail(prog, e)
    finally:
        close_distributed()
    return 0


def _check_animation(path) -> None:
    """--animate PATH: writable, in a format that holds several frames."""
    check_output(path, flag="--animate", image=True)
    if Path(path).suffix.lower() not in ANIMATION_FORMATS:
        raise ValueError(f"--animate {path}: an animation is written as {', '.join(ANIMATION_FORMATS)}")


def _write(args, out, tokenizer, generator, samples: Samples, labels, classes, names, device, world) -> None:
    """Rank 0: the grid (and the progressive strip, the animation) and the throughput line."""
    out = save_grid(samples.all_images(), out, nrow=args.num_per_class, scale=args.scale)
    n, seconds, N = len(labels), samples.seconds, generator.config.num_tokens
    codes = samples.all_codes()
    k = codes.shape[1]
    print(f"wrote {out.resolve()} ({len(classes)} rows: {', '.join(names[c] for c in classes)}; "
          f"{args.num_per_class} per row" + (f"; decoded from the first {k} of {N} tokens)" if k < N else ")"))
    mode = ("KV cache" if args.kv_cache else "no cache") + (", compiled" if args.compile else "")
    print(f"sampling ({mode}, cfg {args.cfg_scale}, {device}, "
          f"world {world}): {n / seconds:.1f} images/s, {samples.tokens / seconds:.0f} tokens/s "
          f"({seconds:.3f} s for {n} images of {k} tokens"
          + (f"; compile warm-up {samples.compile_seconds:.1f} s not counted)" if args.compile else ")"))
    if args.progressive:
        first = torch.arange(len(classes)) * args.num_per_class  # one sample per class
        rows = codes[first].to(device)
        if k < N:  # entry i of the strip reads tokens 1..i+1 only: the padding is never decoded
            rows = torch.cat([rows, rows.new_zeros(rows.shape[0], N - k)], 1)
        strip = tokenizer.decode_progressive(rows)[:, :k].cpu()  # [R, k, C, H, W]
        pout = save_grid(strip.flatten(0, 1), out.with_name(out.stem + "_progressive" + out.suffix),
                         nrow=strip.shape[1], scale=args.scale)
        print(f"wrote {pout.resolve()} (rows: one sample per class; columns: decoded from "
              f"1..{strip.shape[1]} tokens)")
        if not tokenizer.nested:  # raster and 1-D tokens: say what a prefix is (spectral prefixes are x_k)
            print(f"{tokenizer.kind} tokens: column k is {tokenizer.prefix_meaning}")
    if args.animate is not None:
        # frame t: every sample decoded from its first t tokens (what sampling.stream previews after token t)
        frames = [torch.cat([decode_prefix(tokenizer, codes[i:i + args.batch_size, :t].to(device)).cpu()
                             for i in range(0, codes.shape[0], args.batch_size)]) for t in range(1, k + 1)]
        aout = save_animation(frames, args.animate, nrow=args.num_per_class, scale=args.scale)
        print(f"wrote {aout.resolve()} ({k} frames: the grid decoded from its first 1..{k} tokens)")


if __name__ == "__main__":
    sys.exit(main())
