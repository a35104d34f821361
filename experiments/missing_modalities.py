"""Accuracy as modalities go missing at test time, with and without modality dropout in training.

    python -m experiments.missing_modalities [--seeds 2] [--smoke]

Claim (Neverova et al., "ModDrop: adaptive multi-modal gesture recognition",
IEEE TPAMI 2016, arXiv:1501.00102, abstract and Sec. 4): training with
random dropping of whole modalities (ModDrop) makes a multi-modal classifier
robust to missing signals in one or several channels, producing meaningful
predictions from any number of available modalities.

Test-time task: classify the digit of each of the 2,000 AV-digits test
examples zero-shot against the ten text prompts, from the late fusion (mean of
the L2-normalised embeddings, `mmjax.evals.zeroshot.fused_zeroshot_metrics`)
of whichever of image, audio and points are available: all three, each pair,
each one alone. Models (`configs/bind_avdigits.py`, shortened as in
`experiments.emergent_zeroshot`, whose runs are reused where they coincide):
  anchor, drop=0     image-anchored, every modality always present;
  anchor, drop=0.5   each training example loses audio, points and text
                     independently with probability 0.5 (data.drop_prob);
  all_pairs, drop=0  every pair trained (a free extra column: exp. 4's runs).
Each model's checkpoint is restored and the test split embedded once per
modality; the subsets are fused from those embeddings.
"""
from __future__ import annotations

import itertools
import os
import time

import jax
import numpy as np

from experiments import common
from experiments.emergent_zeroshot import bind_overrides, bind_variant, bind_workdir, seeds, train_bind
from mmjax import checkpoint as ckpt_lib
from mmjax import parallel
from mmjax.data import digits
from mmjax.data.tokenizer import get_tokenizer
from mmjax.evals import zeroshot
from mmjax.evals.suite import EvalSuite
from mmjax.models import build_model
from mmjax.optim import make_optimizer
from mmjax.train import state_layout

NAME = "missing_modalities"
DROP = 0.5
MODELS = (("anchor", 0.0), ("anchor", DROP), ("all_pairs", 0.0))  # (mode, drop_prob)
INPUTS = ("image", "audio", "points")
# All non-empty subsets, largest first: the available modalities at test time.
SUBSETS = [s for k in range(len(INPUTS), 0, -1) for s in itertools.combinations(INPUTS, k)]
CHANCE = 0.1
CLAIM = ("\"the proposed ModDrop training technique ensures robustness of the classifier to missing signals in one "
         "or several channels to produce meaningful predictions from any number of available modalities\". "
         "Neverova et al., *ModDrop: adaptive multi-modal gesture recognition*, IEEE TPAMI 2016 (arXiv:1501.00102), "
         "abstract; Sec. 4 and its missing-channel tables")


def test_embeddings(config, workdir: str) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Restores `workdir`'s latest checkpoint and embeds the config's test split once per modality.

    Returns ({m: [N, E]} for INPUTS, labels [N], class embeddings [10, E] from
    the prompt ensemble), exactly as the trainer's eval suite computes them.
    """
    mesh = parallel.make_mesh(config.mesh)
    tokenizer = get_tokenizer(config.data.tokenizer, config.data.text_len, config.data.tokenizer_path or None)
    model = build_model(config.model, tokenizer)
    suite = EvalSuite.from_config(config, model, tokenizer, mesh)
    # The checkpoint holds the whole training state; restore it into the trainer's layout.
    tx, _ = make_optimizer(config.optim, config.total_steps)
    _, abstract_state, shardings = state_layout(config, model, tx, mesh, suite.batches[0], jax.random.key(0))
    ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), every_steps=1, keep=1 << 30)
    params = ckpt.restore_state(ckpt.latest_step(), ckpt_lib.abstract_like(abstract_state, shardings))["params"]
    ckpt.close()
    mask = np.concatenate([b["mask"] for b in suite.batches])
    labels = np.concatenate([b["label"] for b in suite.batches])[mask]
    z = {m: suite.embed_all(params, suite.batches, m)[mask] for m in INPUTS}
    prompts = suite.embed_all(params, [suite.prompt_batch], "text")[:suite.num_prompts]
    classes = zeroshot.prompt_ensemble(prompts.reshape(len(digits.CLASS_NAMES), -1, prompts.shape[-1]))
    return z, labels, classes


def evaluate_subsets(args, mode: str, drop: float, seed: int, final: dict) -> dict[tuple[str, ...], float]:
    """Fused zero-shot top-1 of every subset for one trained model."""
    config = common.load_config(bind_variant(mode, drop, args.smoke), bind_overrides(seed, args.smoke))
    z, labels, classes = test_embeddings(config, bind_workdir(args, mode, drop, seed))
    top1 = {s: zeroshot.fused_zeroshot_metrics(z, s, labels, classes, topk=(1,))["zeroshot_top1"] for s in SUBSETS}
    # A single modality is the trainer's own zero-shot metric: agreement checks the restore end to end.
    for m in INPUTS:
        if abs(top1[(m,)] - final[f"zeroshot_top1_{m}"]) > 1e-6:
            raise AssertionError(f"{mode} drop={drop} seed={seed}: restored {m} zero-shot {top1[(m,)]} != "
                                 f"the run's final eval {final[f'zeroshot_top1_{m}']}")
    return top1


def label(mode: str, drop: float) -> str:
    return f"{mode}, drop {drop:g}"


def main():
    args = common.parse_args(__doc__)
    acc = {}  # (mode, drop) -> {subset: [top-1 per seed]}
    trained = evaluated = 0.0
    for mode, drop in MODELS:
        acc[mode, drop] = {s: [] for s in SUBSETS}
        for seed in seeds(args):
            final = train_bind(args, mode, drop, seed)
            trained += final["run_s"] or final["wall_s"]
            start = time.time()
            for s, v in evaluate_subsets(args, mode, drop, seed, final).items():
                acc[mode, drop][s].append(v)
            evaluated += time.time() - start
    n = len(seeds(args))

    mean = {key: {s: common.mean_spread(v)[0] for s, v in table.items()} for key, table in acc.items()}
    rows = [[" + ".join(s)] + [common.fmt(acc[key][s]) for key in MODELS] for s in SUBSETS]

    def drop_from_all(key, k):  # mean accuracy lost going from all three modalities to subsets of size k
        return mean[key][SUBSETS[0]] - np.mean([mean[key][s] for s in SUBSETS if len(s) == k])
    rows += [[f"*loss from all 3 to {k} (mean over subsets)*"] + [f"{drop_from_all(key, k):+.3f}" for key in MODELS]
             for k in (2, 1)]
    table = common.markdown_table(["available at test time"] + [label(*key) for key in MODELS], rows)

    base, moddrop = ("anchor", 0.0), ("anchor", DROP)
    gains = {s: mean[moddrop][s] - mean[base][s] for s in SUBSETS}
    robust = drop_from_all(moddrop, 1) < drop_from_all(base, 1) - 0.01
    better_missing = np.mean([gains[s] for s in SUBSETS if len(s) < len(INPUTS)])
    verdict = (
        f"{'**Reproduced at this scale**' if robust and better_missing > 0 else '**Not reproduced at this scale**'}: "
        f"with dropout {DROP:g} the accuracy lost from all three modalities to one is "
        f"{drop_from_all(moddrop, 1):+.3f} vs. {drop_from_all(base, 1):+.3f} without; averaged over the six "
        f"incomplete subsets, ModDrop changes accuracy by {better_missing:+.3f} (per subset: "
        + ", ".join(f"{'+'.join(s)} {g:+.3f}" for s, g in gains.items() if len(s) < len(INPUTS)) + ").")
    setup = (f"`configs/bind_avdigits.py` as in `experiments.emergent_zeroshot` "
             f"({bind_overrides(0, args.smoke)['checkpoint.every_steps']} steps, batch "
             f"{common.load_config(bind_variant('anchor', 0.0, args.smoke)).batch_size}), {n} seed(s) per model "
             f"(mean ± half-range); dropout applies to audio, points and text in training only. Zero-shot top-1 of "
             f"the fused embedding against the ten digit prompts on the 2,000 test examples (chance {CHANCE}).")

    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.8))
    x = np.arange(len(SUBSETS))
    width = 0.8 / len(MODELS)
    for i, (key, color) in enumerate(zip(MODELS, ("tab:blue", "tab:red", "tab:gray"))):
        offset = (i - (len(MODELS) - 1) / 2) * width
        ax.bar(x + offset, [mean[key][s] for s in SUBSETS], width, color=color, label=label(*key),
               yerr=[common.mean_spread(acc[key][s])[1] for s in SUBSETS], capsize=2)
    ax.axhline(CHANCE, color="gray", ls="--", lw=1, label="chance")
    ax.set_xticks(x, ["+".join(s) for s in SUBSETS], rotation=20, ha="right")
    ax.set_ylabel("fused zero-shot top-1 (test)")
    ax.set_ylim(0, 1)
    ax.set_title(f"AV-digits: modalities available at test time ({n} seeds)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    out = common.results_dir(args)
    common.save_figure(fig, NAME, out)
    common.write_result(NAME, "Missing modalities at test time, with and without modality dropout (ModDrop)", [
        f"Command: `python -m experiments.{NAME}`. Setup: {setup}",
        table,
        f"Paper: {CLAIM}.",
        f"Verdict: {verdict}",
        "How modality dropout acts in this codebase: an absent modality's pairs are skipped by the binding loss "
        "(`present` flags), so dropout only removes training pairs. There is no fusion network whose co-adaptation "
        "to all channels it could break: the test-time fusion is a fixed, parameter-free mean of towers that were "
        "each trained against the image alone, so one modality by itself is already what its tower was trained "
        "on. ModDrop's mechanism, a fusion layer learning not to depend on any one channel, has nothing to act on; "
        "what remains is the cost of fewer training pairs at a short schedule.",
        f"![plot]({NAME}.png)",
        common.machine_line(trained + evaluated) + f" The {len(MODELS) * n} runs' own wall times ("
        f"{n} of them new here; the others are `experiments.emergent_zeroshot`'s runs, "
        f"reused) plus {evaluated / 60:.1f} min of restoring and fusing, measured while other jobs shared the "
        f"CPU. " + common.load_line(),
    ], out)


if __name__ == "__main__":
    main()
