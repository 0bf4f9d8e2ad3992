"""Anytime sampling, measured: quality and time per image when sampling stops after k of the N tokens.

    python -m spectralar.anytime --checkpoint fmnist --data fmnist --num-per-class 100 --cfg 2 --out runs/anytime

For every k (default 1..N) the same labels are sampled with `generate(num_tokens=k)` (KV cache, eager) and
decoded from their first k tokens, the rest absent, exactly as `python -m spectralar.generate --tokens k` does;
the samples are scored as `python -m spectralar.evaluate generate` scores them (the classifier Frechet distance
CFD -- not FID -- against the held-out images, and the classifier's accuracy on the samples). Time per image,
sampling and decoding apart, in CPU time (steady on a busy machine) and wall time: the best of --repeats rounds
over every k (so a change in the machine's load falls on all k alike). Since step t of a run always draws the
t-th random number, the k-token samples are the first k tokens of the N-token samples of the same seed: the curve
shows what stopping early costs, on the same samples. Writes OUT/anytime.json and OUT/anytime.png.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from .checkpoint import CheckpointError
from .cli import (
    Parser,
    add_common_flags,
    add_sampling_flags,
    check_output,
    fail,
    int_list,
    pick_device,
    positive_int,
    sampling_params,
    set_threads,
)
from .data import DataError
from .evaluation.measures import (
    check_classifier,
    classifier_metrics,
    decode_all,
    encode_all,
    load_subset,
    write_json,
)
from .pretrained import classifier_dir, load_model, load_pretrained, resolve
from .sampling import decode_prefix, sample_batches
from .viz import plot_panels

__all__ = ["build_parser", "main"]

PROG = "python -m spectralar.anytime"


def build_parser() -> Parser:
    p = Parser(prog=PROG, description=__doc__)
    p.add_argument("--checkpoint", default="fmnist",
                   help="bundled model name or a directory with tokenizer/ and generator/ (and classifier/)")
    p.add_argument("--classifier", default=None,
                   help="classifier checkpoint directory (default: CHECKPOINT/classifier)")
    p.add_argument("--tokens", type=int_list, default=None, metavar="K[,K...]",
                   help="token budgets to measure (default: every k from 1 to N)")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed sampling runs per k (the best is reported)")
    p.add_argument("--real-num", type=positive_int, default=None, help="held-out real images (default: the split)")
    add_sampling_flags(p, num_per_class=100)
    add_common_flags(p, "runs/anytime")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        device = pick_device(args.device)
        check_output(args.out)
        set_threads(PROG, args.threads)
        run(args, device, " ".join([PROG, *(sys.argv[1:] if argv is None else argv)]))
    except (CheckpointError, DataError, ValueError, FileNotFoundError) as e:
        return fail(PROG, e)
    return 0


def _clocks() -> tuple[float, float]:
    """(process CPU seconds, wall seconds), after the device has finished its work."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.process_time(), time.perf_counter()


def run(args, device, command) -> dict:
    t0 = time.time()
    root = resolve(args.checkpoint)
    tok, gen = load_pretrained(root, device)
    c, nc, N = tok.config, gen.config.num_classes, gen.config.num_tokens
    ks = list(range(1, N + 1)) if args.tokens is None else args.tokens
    if not ks or any(not 1 <= k <= N for k in ks):
        raise ValueError(f"--tokens {args.tokens}: token budgets lie in [1, {N}]")
    clf_path = classifier_dir(args.classifier, args.checkpoint)
    clf = load_model(clf_path, "classifier")
    check_classifier(clf, c.image_size, c.channels, nc)
    real, real_y, classes = load_subset(args.data, args.split, c.image_size, c.channels, args.real_num, args.seed)
    if len(classes) != nc:
        raise ValueError(f"--data has {len(classes)} classes, the generator {nc}")
    labels = torch.arange(nc).repeat_interleave(args.num_per_class)
    real_train, _, _ = load_subset(args.data, "train", c.image_size, c.channels, len(labels), args.seed + 1)
    rec_train = decode_all(tok, encode_all(tok, real_train))
    params = sampling_params(args)
    kw = {"batch_size": args.batch_size, "seed": args.seed, "params": params}
    sample_batches(tok, gen, labels[:args.batch_size], num_tokens=N, **kw)  # warm-up: allocator, first calls
    # rounds over every k, so that a change in the machine's load falls on all budgets alike; the best per k
    times = {k: [float("inf")] * 4 for k in ks}  # CPU and wall seconds of sampling, then of decoding
    images = {}
    for _ in range(args.repeats):
        for k in ks:
            t = _clocks()
            codes = sample_batches(tok, gen, labels, num_tokens=k, decode=False, **kw).all_codes()
            t2 = _clocks()
            imgs = torch.cat([decode_prefix(tok, codes[i:i + args.batch_size].to(device)).cpu()
                              for i in range(0, len(codes), args.batch_size)])  # as sample_batches decodes
            t3 = _clocks()
            times[k] = [min(a, b) for a, b in zip(times[k], [t2[0] - t[0], t2[1] - t[1], t3[0] - t2[0],
                                                             t3[1] - t2[1]])]
            assert k not in images or torch.equal(imgs, images[k])  # same seed, same samples
            images[k] = imgs
    rows = []
    for k in ks:
        m = classifier_metrics(clf, fake=images[k], labels=labels, real=real, real_labels=real_y,
                               real_train=real_train, reconstructed_train=rec_train, classes=classes,
                               split=args.split)
        cpu_s, wall_s, cpu_d, wall_d = (1e3 * t / len(labels) for t in times[k])
        rows.append({"tokens": k, "cfd": m["cfd_generated_vs_real"], "accuracy": m["accuracy_on_generated"],
                     "sampling_cpu_ms_per_image": cpu_s, "decoding_cpu_ms_per_image": cpu_d,
                     "total_cpu_ms_per_image": cpu_s + cpu_d, "sampling_wall_ms_per_image": wall_s,
                     "decoding_wall_ms_per_image": wall_d,
                     "accuracy_per_class": m["accuracy_on_generated_per_class"]})
        print(f"k={k:3d}: CFD {rows[-1]['cfd']:8.2f}  accuracy {rows[-1]['accuracy']:.3f}  per image: "
              f"{cpu_s:.3f} ms sampling + {cpu_d:.3f} ms decoding CPU time ({wall_s:.3f} + {wall_d:.3f} ms wall)")
    full = rows[-1]["sampling_cpu_ms_per_image"] if ks[-1] == N else None
    for r in rows:
        r["sampling_cpu_vs_all_tokens"] = None if full is None else r["sampling_cpu_ms_per_image"] / full
    report = {"command": command, "checkpoint": str(args.checkpoint), "data": args.data, "split": args.split,
              "num_tokens": N, "num_generated": len(labels), "num_real": int(real.shape[0]),
              "cfg_scale": params.cfg_scale, "temperature": params.temperature, "top_k": params.top_k,
              "top_p": params.top_p, "seed": args.seed, "batch_size": args.batch_size, "repeats": args.repeats,
              "device": str(device), "threads": torch.get_num_threads(), "label": m["label"],
              "cfd_real_train_vs_real_floor": m["cfd_real_train_vs_real_floor"],
              "cfd_reconstructed_train_vs_real": m["cfd_reconstructed_train_vs_real"],
              "classifier_accuracy_on_real": m["classifier_accuracy_on_real"], "rows": rows,
              "notes": "time per image: the best of `repeats` runs of the whole batch loop (KV cache, eager), "
                       "divided by num_generated; each round runs every k in turn. CPU time: the process's "
                       "(time.process_time), what one thread computes, steady on a busy machine where the wall "
                       "time is not; on an idle machine with one thread the two agree. Decoding is one decoder "
                       "pass per image whatever k",
              "seconds": None}
    out = Path(args.out)
    ks_done = [r["tokens"] for r in rows]
    plot_panels(out / "anytime.png", [
        ("CFD (not FID) vs real", "tokens sampled (k)", "CFD",
         {"generated": (ks_done, [r["cfd"] for r in rows])}, True),
        ("classifier accuracy", "tokens sampled (k)", "accuracy",
         {"generated": (ks_done, [r["accuracy"] for r in rows])}, False),
        ("CPU time per image", "tokens sampled (k)", "ms",
         {"sampling": (ks_done, [r["sampling_cpu_ms_per_image"] for r in rows]),
          "sampling + decoding": (ks_done, [r["total_cpu_ms_per_image"] for r in rows])}, False)],
        title=f"anytime sampling: stop after k of {N} tokens (CFG {params.cfg_scale}, {len(labels)} samples)")
    report["seconds"] = round(time.time() - t0, 1)
    write_json(out / "anytime.json", report)
    print(f"wrote {out / 'anytime.json'} and {out / 'anytime.png'}")
    return report


if __name__ == "__main__":
    sys.exit(main())
