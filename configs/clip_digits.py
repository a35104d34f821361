"""Image-text contrastive pretraining on the embedded MNIST digits with captions.

The main job: `python -m mmjax.main --config configs/clip_digits.py --workdir <dir>`.
Variants: `configs/clip_digits.py:loss=sigmoid,model=tiny`, keys:
  loss   softmax (CLIP InfoNCE) | sigmoid (SigLIP) | dcl (decoupled; objective.vmf_sigma
         gives DCLW) | hard_negative (Robinson et al.; objective.beta, tau_plus) |
         sigmoid_chunked (SigLIP as a ring over the data devices) | softmax_gathered
  model  tiny (tests) | small (default, ~5 min on a 2-core CPU) | base
  steps  total train steps (default depends on model)
Single fields: `--config.optim.lr=3e-4`, `--config.batch_size=128`, ...

Recipe: a ViT over 7x7-pixel patches (4x4 at `base`) and a causal byte-level text
transformer, mean / end-of-text pooled and projected to a shared space; the loss's own
logit init (CLIP's temperature 1/0.07, SigLIP's 10 and bias -10); AdamW at 2e-3 with 100
warm-up steps and cosine decay, batch 256. Evaluated on the test split every 200 steps:
zero-shot from the image against the ten class prompts, and image<->text retrieval.
"""
import ml_collections

from configs.blocks import contrastive, digits, evals, trainer
from mmjax.config_utils import parse_variant
from mmjax.data.config import data_config

MODALITIES = ("image", "text")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    v = parse_variant(arg, {"loss": "softmax", "model": "small", "steps": 0},
                      choices={"loss": tuple(contrastive.LOGIT_INIT), "model": tuple(digits.SIZES)})
    size, tiny = digits.SIZES[v.model], v.model == "tiny"

    c = trainer.cpu_run(tiny, total_steps=v.steps or size["steps"], batch_size=32 if tiny else 256)
    c.data = data_config("digits_captions", MODALITIES)
    c.model = contrastive.model(embed_dim=size["embed"], logit_init=contrastive.LOGIT_INIT[v.loss],
                                towers=digits.tower_blocks(v.model, c.data, MODALITIES))
    c.objective = contrastive.objective(v.loss, MODALITIES)
    c.optim = trainer.adamw(lr=2e-3, warmup_steps=trainer.cpu_warmup(tiny))
    c.eval = evals.cpu_schedule(tiny, aliases=evals.CLIP_ALIASES)
    c.evals = evals.entries(evals.zeroshot("image"), evals.retrieval("image:text", "text:image"))
    c.lock()
    return c
