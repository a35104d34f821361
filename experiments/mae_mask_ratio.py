"""MAE masking-ratio sweep on the digits, scored by probes of the frozen encoder.

    python -m experiments.mae_mask_ratio [--seeds 2] [--smoke]

Claim (He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR
2022, Sec. 4.1, Fig. 5): a high masking ratio, 75%, is best for both
fine-tuning and linear probing; linear-probe accuracy rises steadily with the
ratio up to that sweet spot.

`configs/mae_digits.py` with mask = 0.25 / 0.5 / 0.75 / 0.9, the runs
differing only in `mask` (and seed), shortened from the default 800 steps x
256 (see STEPS, BATCH). Metrics: ridge linear probe and kNN (k=20) of the
frozen encoder's mean-pooled features, fit on the 8,000 training digits and
scored on the 2,000 test digits; the untrained encoder (step 0, same seeds)
is the baseline.
"""
from __future__ import annotations

import os

import numpy as np

from experiments import common
from mmjax.metrics import read_metrics

NAME = "mae_mask_ratio"
CONFIG = "configs/mae_digits.py"
RATIOS = (0.25, 0.5, 0.75, 0.9)
# Of 800 x 256 by default. Shorter runs say nothing: at mask 0.75, 400 x 128 left the encoder's linear probe
# at 0.69 and kNN at 0.48, no better than the untrained encoder's 0.75 / 0.48.
STEPS, BATCH = 600, 128
# Measured once while sizing the sweep (mask 0.75, seed 0, 800 x 128, probes every 200 steps):
# step -> (linear, kNN). The linear probe leaves the untrained encoder's level only after step 400.
CALIBRATION_75 = {200: (0.706, 0.473), 400: (0.746, 0.583), 600: (0.809, 0.726), 800: (0.823, 0.744)}
SMOKE_STEPS = 10
METRICS = (("linear_top1_image", "linear probe"), ("knn_top1_image", "kNN"))
# The default config run to convergence, for scale (experiments/README.md, seed 0, mask 0.75,
# 800 steps x 256): linear 0.858, kNN 0.792.
FULL_RUN = {"linear_top1_image": 0.858, "knn_top1_image": 0.792}
CLAIM = ("\"The ratio of 75% is good for both linear probing and fine-tuning\"; \"For linear probing, the accuracy "
         "increases steadily with the masking ratio until the sweet point: the accuracy gap is up to ~20% (54.6% vs. "
         "73.5%)\". He et al., *Masked Autoencoders Are Scalable Vision Learners*, CVPR 2022, Sec. 4.1, Fig. 5 "
         "(ViT-L, ImageNet-1K, 800 epochs)")


def run_variant(ratio: float, smoke: bool) -> str:
    return f"{CONFIG}:mask={ratio},steps={SMOKE_STEPS if smoke else STEPS}" + (",model=tiny" if smoke else "")


def run(args, ratio: float, seed: int) -> tuple[dict, dict]:
    """(final eval, untrained-encoder eval at step 0 or {}) of one run."""
    steps = SMOKE_STEPS if args.smoke else STEPS
    variant = run_variant(ratio, args.smoke)
    overrides = {"seed": seed, "batch_size": BATCH, "eval.every_steps": 0, "optim.warmup_steps": max(1, steps // 10),
                 "checkpoint.every_steps": steps, "tensorboard": False,
                 # The untrained encoder does not depend on the ratio (masking is off in the probes):
                 # one ratio's step-0 eval per seed is the baseline.
                 "eval.at_start": ratio == RATIOS[0]}
    workdir = os.path.join(args.workdir, "smoke" if args.smoke else "", f"mae_mask{ratio}_seed{seed}")
    final = common.run_config(variant, workdir, overrides, fresh=args.fresh)
    start = {k[5:]: v for row in read_metrics(workdir) if row["step"] == 0 for k, v in row.items()
             if k.startswith("eval/")}
    return final, start


def main():
    args = common.parse_args(__doc__)
    seeds = range(1 if args.smoke else args.seeds)
    results = {(r, s): run(args, r, s) for r in RATIOS for s in seeds}
    run_s = sum(final["run_s"] or final["wall_s"] for final, _ in results.values())
    values = {(r, k): [results[r, s][0][k] for s in seeds] for r in RATIOS for k, _ in METRICS}
    losses = {r: [results[r, s][0]["train/loss"] for s in seeds] for r in RATIOS}
    baseline = {k: [results[RATIOS[0], s][1][k] for s in seeds] for k, _ in METRICS}

    rows = [["untrained encoder"] + [common.fmt(baseline[k]) for k, _ in METRICS] + ["-"]]
    rows += [[f"{r:.0%}"] + [common.fmt(values[r, k]) for k, _ in METRICS] + [common.fmt(losses[r])]
             for r in RATIOS]
    table = common.markdown_table(
        ["mask ratio"] + [f"{name} top-1" for _, name in METRICS] + ["final train loss (MSE, hidden patches)"],
        rows)

    means = {k: [common.mean_spread(values[r, k])[0] for r in RATIOS] for k, _ in METRICS}
    best = {k: RATIOS[int(np.argmax(means[k]))] for k, _ in METRICS}
    gap = {k: FULL_RUN[k] - means[k][RATIOS.index(0.75)] for k, _ in METRICS}
    up_to_75 = means["linear_top1_image"][:RATIOS.index(0.75) + 1]
    rising = all(a < b for a, b in zip(up_to_75, up_to_75[1:]))  # 25% < 50% < 75%
    held = best["linear_top1_image"] == 0.75 and rising
    steps = SMOKE_STEPS if args.smoke else STEPS
    verdict = (
        f"{'**Reproduced at this scale**' if held else '**Not reproduced at this scale**'}: the linear probe is "
        f"best at {best['linear_top1_image']:.0%} masking and kNN at {best['knn_top1_image']:.0%}; linear-probe "
        f"accuracy by ratio " + ", ".join(f"{r:.0%} {m:.3f}" for r, m in zip(RATIOS, means["linear_top1_image"]))
        + f" ({'rising' if rising else 'not rising'} from 25% to 75%). These runs see {steps * BATCH:,} examples "
        f"({steps * BATCH / 8000:.1f} epochs), {steps * BATCH / (800 * 256):.0%} of the default run's 204,800, "
        f"which reaches linear {FULL_RUN['linear_top1_image']} / kNN {FULL_RUN['knn_top1_image']} at 75% "
        f"(experiments/README.md); this sweep's 75% runs stop {gap['linear_top1_image']:.3f} / "
        f"{gap['knn_top1_image']:.3f} below that, a measure of how far from convergence they are.")
    if not held:
        verdict += (
            " Why: a high ratio is slower to start learning features here. A run made to size this sweep (75%, "
            f"800 x 128, one seed) had a linear probe of {CALIBRATION_75[400][0]} at step 400, the untrained "
            f"encoder's level, and {CALIBRATION_75[800][0]} at step 800; at 90% this sweep's probes end at "
            f"{means['linear_top1_image'][-1]:.3f} / {means['knn_top1_image'][-1]:.3f} against the untrained "
            f"{common.mean_spread(baseline['linear_top1_image'])[0]:.3f} / "
            f"{common.mean_spread(baseline['knn_top1_image'])[0]:.3f}. So at this budget the "
            "ranking reflects how early each ratio leaves the reconstruction plateau; the default run at 75% beats "
            "every ratio here, and whether 75% wins at convergence is not settled by this sweep. MAE's linear "
            "probes also rely on a deep decoder (\"a sufficiently deep decoder is important for linear probing\", "
            "Sec. 4.1, Table 1a: 8 blocks), where this config has 1.")
    c = common.load_config(run_variant(RATIOS[0], args.smoke)).model
    setup = (f"`{CONFIG}` (ViT encoder width {c.encoder.width}, depth {c.encoder.depth}, "
             f"{c.encoder.patch_size}x{c.encoder.patch_size} patches; {c.decoder.depth}-block decoder of width "
             f"{c.decoder.width}), "
             f"{steps} steps x batch {BATCH} (warm-up {max(1, steps // 10)}), {len(seeds)} seed(s) per ratio "
             f"(mean ± half-range). Probes fit on the 8,000 training digits' frozen features, scored on the 2,000 "
             f"test digits.")

    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    x = np.array(RATIOS) * 100
    for (k, name), color in zip(METRICS, ("tab:blue", "tab:green")):
        spreads = [common.mean_spread(values[r, k])[1] for r in RATIOS]
        ax.errorbar(x, means[k], yerr=spreads, marker="o", capsize=3, color=color, label=f"{name} (MAE, {steps} steps)")
        for r in RATIOS:
            ax.scatter([r * 100] * len(seeds), values[r, k], color=color, s=8, alpha=0.5)
        ax.axhline(common.mean_spread(baseline[k])[0], color=color, ls=":", label=f"{name}, untrained encoder")
    ax.axvline(75, color="gray", ls="--", lw=1, label="MAE's choice (75%)")
    ax.set_xlabel("masking ratio (%)")
    ax.set_ylabel("test top-1 (frozen encoder)")
    ax.set_title(f"MAE masking ratio on digits ({len(seeds)} seeds)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    out = common.results_dir(args)
    common.save_figure(fig, NAME, out)
    common.write_result(NAME, "MAE masking ratio: linear probe and kNN of the frozen encoder on digits", [
        f"Command: `python -m experiments.{NAME}`. Setup: {setup}",
        table,
        f"Paper: {CLAIM}.",
        f"Verdict: {verdict}",
        f"![plot]({NAME}.png)",
        common.machine_line(run_s) + f" The sum of the {len(results)} runs' own wall times, measured while other "
        f"jobs shared the CPU. " + common.load_line(),
    ], out)


if __name__ == "__main__":
    main()
