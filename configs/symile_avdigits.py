"""Symile (Saporta et al. 2024) on AV-digits: one contrastive loss over image, audio and caption.

A triple scores by the multilinear inner product sum_d x_d y_d z_d of the
three embeddings, and each modality in turn picks its example's pair of the
other two out of negatives: "n" (default) shuffles the other modalities' rows
(O(B) candidates), "n_squared" takes every combination (B^2). Evaluated on the
test split: Symile's zero-shot, the caption class given image and audio by
the multilinear product <image, audio, prompt> (`zeroshot_multilinear_top1_image_audio`);
zero-shot from image or audio alone and retrieval audio->image, image->text,
audio->text by pairwise cosines of the same embeddings (which Symile does not
train: it scores triples).

    python -m mmjax.main --config configs/symile_avdigits.py --workdir workdirs/symile

With modality dropout (`drop` > 0, audio and text) an absent modality is not
dropped from the loss: it takes a learned "missing" embedding, as in Symile's
missing-data experiments (model.missing_embeddings).

Data, towers and schedule are configs/bind_avdigits.py's at the same size, without points.

Variants (`configs/symile_avdigits.py:negatives=n_squared,drop=0.3,model=tiny`):
  negatives  n (default) | n_squared
  drop       modality dropout probability for audio and text (default 0)
  model      tiny (tests) | small (default)
  steps      total train steps
"""
import ml_collections

from configs.blocks import contrastive, digits, evals, trainer
from mmjax.config_utils import parse_variant

MODALITIES = ("image", "audio", "text")
DROPPED = ("audio", "text")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    v = parse_variant(arg, {"negatives": "n", "drop": 0.0, "model": "small", "steps": 0},
                      choices={"negatives": ("n", "n_squared"), "model": tuple(digits.AV_SIZES)})
    if not 0.0 <= v.drop < 1.0:
        raise ValueError(f"config variant drop={v.drop}: expected a probability in [0, 1)")
    size, tiny = digits.AV_SIZES[v.model], v.model == "tiny"

    c = trainer.cpu_run(tiny, total_steps=v.steps or size["steps"], batch_size=size["batch"])
    c.data = digits.av_data(v.model, MODALITIES)
    for m in DROPPED:
        c.data.drop_prob[m] = v.drop
    c.model = contrastive.model(embed_dim=size["embed"], towers=digits.tower_blocks(v.model, c.data, MODALITIES),
                                missing_embeddings=DROPPED if v.drop else ())
    c.objective = ml_collections.ConfigDict({"name": "symile", "modalities": MODALITIES, "negatives": v.negatives,
                                             "seed": 0})
    c.optim = trainer.adamw(lr=2e-3, warmup_steps=trainer.cpu_warmup(tiny))
    c.eval = evals.cpu_schedule(tiny)
    c.evals = evals.entries(evals.zeroshot("image", "audio"),
                            evals.zeroshot_multilinear("image+audio"),  # Symile's own: the caption given the other two
                            evals.retrieval("audio:image", "image:text", "audio:text"))
    c.lock()
    return c
