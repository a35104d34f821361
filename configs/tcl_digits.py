"""TCL-style (Yang et al. 2022) triple contrast on the embedded MNIST digits: CLIP + SimCLR.

Every training image comes twice, independently augmented (data.second_view:
"image" and "image_view2", each from its own generator seeded per example, so
a resumed run sees the same views); both go through the one image tower. The
loss is CLIP's image-text InfoNCE plus `intra_weight` times SimCLR's NT-Xent
between the two views (TCL's intra-modal term; its temperature is the shared
learned one, 1 / logit_scale). Evaluation sees one view, as usual.

    python -m mmjax.main --config configs/tcl_digits.py --workdir workdirs/tcl

Variants (`configs/tcl_digits.py:intra_weight=0.5,model=tiny`):
  intra_weight  weight of the image-image term (default 1, TCL's equal weights)
  model         tiny (tests) | small (default)
  steps         total train steps
"""
import ml_collections

from configs.blocks import contrastive, digits, evals, trainer
from mmjax.config_utils import parse_variant
from mmjax.data.config import data_config

MODALITIES = ("image", "text")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    v = parse_variant(arg, {"intra_weight": 1.0, "model": "small", "steps": 0},
                      choices={"model": ("tiny", "small")})
    size, tiny = digits.SIZES[v.model], v.model == "tiny"

    c = trainer.cpu_run(tiny, total_steps=v.steps or size["steps"], batch_size=32 if tiny else 256)
    c.data = data_config("digits_captions", MODALITIES, second_view=("image",))
    c.model = contrastive.model(embed_dim=size["embed"], towers=digits.tower_blocks(v.model, c.data, MODALITIES))
    c.objective = contrastive.weighted_sum(
        {"name": "softmax", "modalities": MODALITIES, "weight": 1.0},
        {"name": "simclr", "modality": "image", "weight": v.intra_weight})
    c.optim = trainer.adamw(lr=2e-3, warmup_steps=trainer.cpu_warmup(tiny))
    c.eval = evals.cpu_schedule(tiny, aliases=evals.CLIP_ALIASES)
    c.evals = evals.entries(evals.zeroshot("image"), evals.retrieval("image:text", "text:image"))
    c.lock()
    return c
