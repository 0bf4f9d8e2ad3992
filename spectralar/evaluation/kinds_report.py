"""The tokenizer-kinds comparison's report: per-seed tables, the seed-to-seed noise of every measure, a verdict per
claim, and figures, from the eval.json files the runs wrote (kinds.py).

Noise of a measure: the largest difference between two seeds of any one run (the seed sets the initialisations, the
data order and the sampling; the evaluation images are the same). A claim "A beats B" on a measure is confirmed
when A is better in every seed and by more than the noise on average, refuted when B is, and within noise
otherwise; "A matches B" is refuted only when B is better in every seed by more than the noise.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from safetensors.torch import load_file

from .measures import write_json

__all__ = ["CLAIMS", "MEASURES", "summarize", "verdict", "write_report"]

# (key, label, higher is better) of the measures a claim is judged on; the first is the headline
MEASURES = (
    ("cfd_cfg2", "sample CFD, CFG 2", False),
    ("cfd_cfg1", "sample CFD, CFG 1", False),
    ("accuracy_cfg2", "classifier accuracy on samples, CFG 2", True),
    ("accuracy_cfg1", "classifier accuracy on samples, CFG 1", True),
    ("psnr_full", "reconstruction PSNR, all tokens (dB)", True),
    ("rcfd", "CFD of reconstructions", False),
)
CLAIMS = (
    ("at 16 tokens spectral beats raster", "spectral-16", "raster-16", "beats"),
    ("spectral at 16 matches raster at 64", "spectral-16", "raster-64", "matches"),
    ("nested targets beat plain 1-D tokens", "spectral-16", "1d-16", "beats"),
)
ORDER = ("spectral-16", "raster-16", "1d-16", "raster-64")


def load_evaluations(out: Path) -> dict[int, dict[str, dict]]:
    """{seed: {run name: eval.json}} for every evaluated run under `out`."""
    found: dict[int, dict[str, dict]] = {}
    for path in sorted(Path(out).glob("seed*/*/eval.json")):
        r = json.loads(path.read_text())
        found.setdefault(int(r["seed"]), {})[r["run"]] = r
    return found


def _fraction_index(n: int, frac: float) -> int:
    return max(1, round(frac * n)) - 1


def row(r: dict) -> dict:
    """The scalar measures of one run's eval.json (CFG scales as they were evaluated)."""
    rec, N = r["reconstruction"], r["num_tokens"]
    out = {"params_tokenizer": r["params"]["tokenizer"], "params_generator": r["params"]["generator"],
           "psnr_full": rec["psnr_vs_image"][-1], "ssim_full": rec["ssim_vs_image"][-1],
           "psnr_half_tokens": rec["psnr_vs_image"][_fraction_index(N, 0.5)],
           "psnr_quarter_tokens": rec["psnr_vs_image"][_fraction_index(N, 0.25)],
           "rcfd": rec["cfd_reconstructed_train_vs_real"]}
    for key, g in r["generation"].items():
        out.update({f"cfd_{key}": g["cfd_generated_vs_real"], f"accuracy_{key}": g["accuracy_on_generated"],
                    f"worst_class_{key}": g["worst_class"], f"worst_accuracy_{key}": g["worst_class_accuracy"],
                    f"diversity_features_{key}": g["diversity_features_mean"],
                    f"diversity_pixels_{key}": g["diversity_pixels_mean"],
                    f"sampling_ms_per_image_{key}": 1000 * g["sampling_seconds_per_image"]})
    p = r["generated_prefixes"]
    out.update({"prefix_cfd_half_tokens": p["cfd"][_fraction_index(N, 0.5)],
                "prefix_accuracy_half_tokens": p["accuracy"][_fraction_index(N, 0.5)],
                "probe_r2_continuous": r["probe"]["continuous"]["mean_r2_positions_2_to_N"],
                "probe_r2_quantized": r["probe"]["quantized"]["mean_r2_positions_2_to_N"],
                "ce_per_token": r["generator_cross_entropy"]["per_token"],
                "ce_per_image": r["generator_cross_entropy"]["per_image"],
                "tokenizer_seconds": r["train_seconds"].get("tokenizer"),
                "generator_seconds": r["train_seconds"].get("generator"), "eval_seconds": r["seconds"]})
    return out


def verdict(values: dict[str, dict[int, float]], a: str, b: str, how: str, higher: bool, noise: float | None) -> dict:
    """The verdict on "a beats b" (how="beats") or "a matches b" (how="matches") from one measure's values
    {run: {seed: value}}; gaps are positive where `a` is better."""
    seeds = sorted(set(values.get(a, {})) & set(values.get(b, {})))
    gaps = [(values[a][s] - values[b][s]) * (1 if higher else -1) for s in seeds]
    res = {"seeds": seeds, "gap_per_seed": gaps, "mean_gap": float(np.mean(gaps)) if gaps else None, "noise": noise}
    if not gaps:
        return {**res, "verdict": "not run"}
    if noise is None:
        return {**res, "verdict": "one seed: no noise estimate"}
    mean = res["mean_gap"]
    a_better = all(g > 0 for g in gaps) and mean > noise
    b_better = all(g < 0 for g in gaps) and -mean > noise
    if how == "matches":
        v = "refuted" if b_better else ("confirmed (better beyond noise)" if a_better else "confirmed (within noise)")
    else:
        v = "confirmed" if a_better else ("refuted" if b_better else "within noise")
    return {**res, "verdict": v}


def summarize(evals: dict[int, dict[str, dict]]) -> dict:
    """Tables per seed, noise per measure, verdicts per claim (see the module docstring)."""
    rows = {seed: {name: row(r) for name, r in sorted(runs.items(), key=lambda kv: _order(kv[0]))}
            for seed, runs in sorted(evals.items())}
    keys = sorted({k for runs in rows.values() for rw in runs.values() for k in rw})
    noise = {}
    for k in keys:
        spreads = []
        for name in {n for runs in rows.values() for n in runs}:
            vals = [runs[name][k] for runs in rows.values() if name in runs]
            if len(vals) >= 2 and all(isinstance(v, (int, float)) and v is not None for v in vals):
                spreads.append(max(vals) - min(vals))
        noise[k] = max(spreads) if spreads else None
    verdicts = {}
    for claim, a, b, how in CLAIMS:
        per = {}
        for key, label, higher in MEASURES:
            values = {name: {s: rows[s][name][key] for s in rows if name in rows[s] and key in rows[s][name]}
                      for name in (a, b)}
            per[key] = {"measure": label, **verdict(values, a, b, how, higher, noise.get(key))}
        verdicts[claim] = {"runs": [a, b], "headline_measure": MEASURES[0][1],
                           "verdict": per[MEASURES[0][0]]["verdict"], "per_measure": per}
    return {"rows": {str(s): r for s, r in rows.items()}, "noise": noise, "verdicts": verdicts}


def _order(name: str) -> tuple:
    return (ORDER.index(name) if name in ORDER else len(ORDER), name)


def _fmt(v, digits=2) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    return f"{v:.{digits}f}" if abs(v) < 1e4 else f"{v:.3g}"


def tables_markdown(summary: dict) -> str:
    """Markdown tables (one per seed, then the verdicts) of a `summarize` result."""
    cols = [("params_tokenizer", "tokenizer params (M)", lambda v: _fmt(v / 1e6, 3)),
            ("psnr_full", "rec. PSNR, all tokens", _fmt), ("ssim_full", "rec. SSIM", lambda v: _fmt(v, 3)),
            ("rcfd", "rec. CFD", lambda v: _fmt(v, 1)),
            ("cfd_cfg1", "CFD CFG 1", lambda v: _fmt(v, 1)), ("accuracy_cfg1", "acc. CFG 1", lambda v: _fmt(v, 3)),
            ("cfd_cfg2", "CFD CFG 2", lambda v: _fmt(v, 1)), ("accuracy_cfg2", "acc. CFG 2", lambda v: _fmt(v, 3)),
            ("worst_accuracy_cfg2", "worst class CFG 2", lambda v: _fmt(v, 2)),
            ("diversity_features_cfg2", "diversity CFG 2", lambda v: _fmt(v, 3)),
            ("probe_r2_continuous", "probe R^2", lambda v: _fmt(v, 3)),
            ("ce_per_token", "val. CE / token", lambda v: _fmt(v, 3)),
            ("ce_per_image", "val. CE / image", lambda v: _fmt(v, 1)),
            ("sampling_ms_per_image_cfg2", "ms / image (KV cache)", lambda v: _fmt(v, 2))]
    lines = []
    for seed, runs in summary["rows"].items():
        lines += [f"Seed {seed}:", "", "| run | " + " | ".join(c[1] for c in cols) + " |",
                  "|---" * (len(cols) + 1) + "|"]
        for name, r in runs.items():
            cells = [f(r[k]) if k in r and r[k] is not None else "-" for k, _, f in cols]
            if "worst_class_cfg2" in r:
                cells[8] += f" ({r['worst_class_cfg2']})"
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["| claim | verdict (" + MEASURES[0][1] + ") | " + " | ".join(m[1] for m in MEASURES[1:]) + " |",
              "|---" * (len(MEASURES) + 1) + "|"]
    for claim, v in summary["verdicts"].items():
        cells = []
        for key, _, _ in MEASURES:
            m = v["per_measure"][key]
            gaps = ", ".join(f"{g:+.3g}" for g in m["gap_per_seed"])
            noise = "-" if m["noise"] is None else f"{m['noise']:.3g}"
            cells.append(f"{m['verdict']} (gaps {gaps or '-'}; noise {noise})")
        lines.append(f"| {claim} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ---- figures -------------------------------------------------------------------------------------------------


def _canvas(images: np.ndarray, pad: int = 2) -> np.ndarray:
    """uint8 [R, K, C, S, S] -> one grey or RGB picture [H, W(, 3)] with white gaps."""
    R, K, C, S, _ = images.shape
    out = np.full((R * (S + pad) + pad, K * (S + pad) + pad, C), 255, np.uint8)
    for i in range(R):
        for j in range(K):
            out[pad + i * (S + pad):pad + i * (S + pad) + S, pad + j * (S + pad):pad + j * (S + pad) + S] = \
                images[i, j].transpose(1, 2, 0)
    return out[..., 0] if C == 1 else out


def _panels(path: Path, pictures: list[tuple[str, np.ndarray]], title: str, width: float,
            columns: list[str] | None = None) -> Path:
    """Pictures stacked in one figure, each titled; `columns` names the columns of the first one (evenly spaced)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heights = [p.shape[0] for _, p in pictures]
    fig, axes = plt.subplots(len(pictures), 1, figsize=(width, width * sum(heights) / pictures[0][1].shape[1] + 0.4
                                                           * len(pictures)),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for i, (ax, (label, pic)) in enumerate(zip(axes[:, 0], pictures)):
        ax.imshow(pic, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(label, fontsize=9, loc="left")
        ax.set_yticks([])
        ax.tick_params(length=0)
        for side in ax.spines.values():
            side.set_visible(False)
        if columns and i == 0:
            step = pic.shape[1] / len(columns)
            ax.set_xticks([step * (j + 0.5) for j in range(len(columns))], columns, fontsize=7)
            ax.xaxis.tick_top()
        else:
            ax.set_xticks([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def figures(out: Path, evals: dict[int, dict[str, dict]], seed: int) -> list[Path]:
    """kinds_samples.png (the same classes sampled by every run of `seed`), kinds_prefixes.png (each run's prefix
    strip: one sample per class decoded from 1/16, 2/16, ..., all of its N tokens) and kinds_prefix_quality.png."""
    runs = sorted(evals.get(seed, {}), key=_order)
    written = []
    if runs:
        pics = {name: load_file(str(Path(out) / f"seed{seed}" / name / "figures.safetensors")) for name in runs}
        # rows: the first two samples of each class at the last CFG scale; columns: the classes
        last = list(next(iter(evals[seed].values()))["generation"].values())[-1]
        samples = [(f"{name}: 2 samples per class, CFG {last['cfg_scale']:g}",
                    _canvas(pics[name]["samples"][:, :2].transpose(0, 1).numpy())) for name in runs]
        classes = list(last["accuracy_on_generated_per_class"])
        written.append(_panels(out / "kinds_samples.png", samples, f"samples of each tokenizer kind (seed {seed})", 12,
                               columns=classes))
        strips = []
        for name in runs:
            p = pics[name]["prefixes"]  # [classes, N, C, S, S]
            N = p.shape[1]
            cols = sorted({_fraction_index(N, j / 16) for j in range(1, 17)})
            strips.append((f"{name}: tokens used " + ", ".join(str(c + 1) for c in cols),
                           _canvas(p[:, cols].numpy())))
        written.append(_panels(out / "kinds_prefixes.png", strips, f"every prefix, one sample per class (seed {seed})",
                               7))
    written.append(_quality_figure(out / "kinds_prefix_quality.png", evals))
    return written


def _quality_figure(path: Path, evals) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    colours = {name: f"C{i}" for i, name in enumerate(ORDER)}
    for seed, runs in sorted(evals.items()):
        for name, r in sorted(runs.items(), key=lambda kv: _order(kv[0])):
            N = r["num_tokens"]
            frac = [k / N for k in range(1, N + 1)]
            style = {"color": colours.get(name, "k"), "ls": "-" if seed == min(evals) else "--", "lw": 1.2,
                     "label": f"{name} seed {seed}"}
            axes[0].plot(frac, r["reconstruction"]["psnr_vs_image"], **style)
            axes[1].plot(frac, r["generated_prefixes"]["accuracy"], **style)
            axes[2].plot(frac, [v if v and math.isfinite(v) else np.nan for v in r["generated_prefixes"]["cfd"]],
                         **style)
    for ax, (t, y) in zip(axes, [("reconstruction of test images", "PSNR vs real (dB)"),
                                 ("samples decoded from a prefix", "classifier accuracy"),
                                 ("samples decoded from a prefix", "CFD (not FID) vs test")]):
        ax.set(title=t, xlabel="fraction of the N tokens used", ylabel=y)
        ax.grid(alpha=0.3)
    axes[2].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(out, log=print) -> dict:
    """kinds.json, kinds_tables.md and the figures in `out`, from every evaluated run there; returns kinds.json."""
    out = Path(out)
    evals = load_evaluations(out)
    if not evals:
        log(f"no evaluated runs in {out} yet: nothing to report")
        return {}
    summary = summarize(evals)
    settings = {json.dumps(r["training"], sort_keys=True) for runs in evals.values() for r in runs.values()}
    report = {"label": "CFD is the classifier Frechet distance, not FID", "noise_definition": __doc__.split("\n\n")[1],
              "runs_evaluated": {str(s): sorted(r, key=_order) for s, r in evals.items()},
              # the fairness check: every run trained with the same settings (seed and kind aside)
              "same_training_settings": len(settings) == 1, "training": [json.loads(t) for t in sorted(settings)],
              **summary}
    timing = out / "sampling_timing.json"
    if timing.is_file():  # side-by-side timings of one process beat the per-run ones measured under other loads
        report["sampling_timing_side_by_side"] = json.loads(timing.read_text())
    write_json(out / "kinds.json", report)
    text = tables_markdown(summary)
    if timing.is_file():
        t = report["sampling_timing_side_by_side"]["seconds_per_image_median"]
        base = t.get("spectral-16")
        text += ("\nKV-cached sampling, side by side in one process (median of rounds), ms per image: "
                 + ", ".join(f"{n} {1000 * v:.2f}" + (f" ({v / base:.2f}x spectral-16)" if base else "")
                             for n, v in sorted(t.items(), key=lambda kv: _order(kv[0]))) + "\n")
    (out / "kinds_tables.md").write_text(text)
    figures(out, evals, min(evals))
    for claim, v in summary["verdicts"].items():
        log(f"{claim}: {v['verdict']} ({v['headline_measure']})")
    return report
