"""Image-anchored binding (ImageBind / ULIP style) over four modalities of AV-digits.

Image, spoken digit (FSDD audio), point cloud and caption of the same digit;
audio, points and text are each bound to the image with a contrastive loss and
never to each other, so audio->text zero-shot is emergent through the image.
Evaluated on the test split: zero-shot from image, audio and points to the text
prompts, and retrieval audio->image, points->image, audio->text, image->text.

    python -m mmjax.main --config configs/bind_avdigits.py --workdir workdirs/bind

Variants (`configs/bind_avdigits.py:mode=all_pairs,loss=sigmoid,model=tiny`):
  mode   anchor (default) | all_pairs
  loss   softmax (default) | sigmoid
  model  tiny (tests) | small (default)
  steps  total train steps
  drop   modality dropout probability for audio, points and text (default 0)
"""
import ml_collections

from configs.blocks import contrastive, digits, evals, trainer
from mmjax.config_utils import parse_variant

MODALITIES = ("image", "audio", "points", "text")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    v = parse_variant(arg, {"mode": "anchor", "loss": "softmax", "model": "small", "steps": 0, "drop": 0.0},
                      choices={"mode": ("anchor", "all_pairs"), "loss": ("softmax", "sigmoid"),
                               "model": tuple(digits.AV_SIZES)})
    size, tiny = digits.AV_SIZES[v.model], v.model == "tiny"

    c = trainer.cpu_run(tiny, total_steps=v.steps or size["steps"], batch_size=size["batch"])
    c.data = digits.av_data(v.model, MODALITIES)
    for m in ("audio", "points", "text"):
        c.data.drop_prob[m] = v.drop
    c.model = contrastive.model(embed_dim=size["embed"], logit_init=contrastive.LOGIT_INIT[v.loss],
                                towers=digits.tower_blocks(v.model, c.data, MODALITIES))
    c.objective = ml_collections.ConfigDict({
        "name": "bind", "anchor": "image", "modalities": ("audio", "points", "text"), "mode": v.mode,
        "pair_loss": v.loss, "weights": {}})
    c.optim = trainer.adamw(lr=2e-3, warmup_steps=trainer.cpu_warmup(tiny))
    c.eval = evals.cpu_schedule(tiny)
    c.evals = evals.entries(evals.zeroshot("image", "audio", "points"),
                            evals.retrieval("audio:image", "points:image", "audio:text", "image:text"))
    c.lock()
    return c
