"""CWCL (Srinivasa et al., NeurIPS 2023) on the embedded MNIST digits: CLIP with continuous targets.

CLIP's one-hot target over the batch becomes a distribution: query i's target
for candidate j is proportional to w_ij = (1 + cos(r_i, r_j)) / 2, with r the
embeddings of a frozen reference (images of the same digit weigh in as partial
positives).

setup=locked (default, the paper's): the image tower and projection come from
a finished CLIP run and stay frozen (config.init_from + optim.freeze_regex, as
LiT); the text tower learns from scratch to align to it, and the targets are
the locked image embeddings' own similarities (objective.reference="image"):

    python -m mmjax.main --config configs/clip_digits.py --workdir workdirs/clip_digits
    python -m mmjax.main --config configs/cwcl_digits.py --workdir workdirs/cwcl

(--config.init_from.workdir=... names another CLIP run of the same `model` size.)
`loss=softmax` is the same locked setup with CLIP's one-hot targets: the
paper's baseline. Measured (600 steps of 256, locked tower from the CLIP job,
whose own zero-shot is 0.9685): CWCL 0.968, one-hot 0.9695 zero-shot top-1;
both reach the tower's ceiling, so no gain for CWCL shows on the digits.

setup=reference: both towers train from scratch and a third, frozen image tower
(model.reference, params["reference"], stop-gradient) gives the targets; it
starts from model.reference.init_from (a CLIP run) or, unset, stays random.
Caveat (measured): a 200-step CLIP reference has cosines 0.85 within a digit
and 0.64 across, so w is 0.93 vs 0.82 and the targets are near uniform; the two
towers then collapse to loss = log(batch) (200 steps at batch 64: zero-shot 0.108).

Variants (`configs/cwcl_digits.py:setup=reference,model=tiny`):
  setup      locked (default) | reference
  loss       cwcl (default) | softmax (setup=locked only: the one-hot baseline)
  reference  image (default) | text: the modality of the frozen tower (setup=reference)
  model      tiny (tests) | small (default)
  steps      total train steps
"""
import ml_collections

from configs.blocks import contrastive, digits, evals, trainer
from mmjax.config_utils import parse_variant
from mmjax.data.config import data_config

MODALITIES = ("image", "text")
LOCKED = ("image_encoder", "image_proj")  # the image tower LiT / the paper keep frozen


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    v = parse_variant(arg, {"setup": "locked", "loss": "cwcl", "reference": "image", "model": "small", "steps": 0},
                      choices={"setup": ("locked", "reference"), "loss": ("cwcl", "softmax"),
                               "reference": ("image", "text"), "model": ("tiny", "small")})
    if v.setup == "reference" and v.loss != "cwcl":
        raise ValueError("cwcl_digits: setup=reference trains both towers with CWCL; loss=softmax is clip_digits")
    size, tiny, locked = digits.SIZES[v.model], v.model == "tiny", v.setup == "locked"

    # CLIP's digits recipe (configs/clip_digits.py) at this size ...
    c = trainer.cpu_run(tiny, total_steps=v.steps or size["steps"], batch_size=32 if tiny else 256)
    c.data = data_config("digits_captions", MODALITIES)
    c.model = contrastive.model(embed_dim=size["embed"], towers=digits.tower_blocks(v.model, c.data, MODALITIES),
                                reference="" if locked else v.reference)
    # ... with CWCL's targets: the locked image tower's own similarities, or the reference tower's.
    c.objective = contrastive.objective(v.loss, MODALITIES, **({"reference": "image"} if locked and v.loss == "cwcl"
                                                               else {}))
    if locked:  # the image tower and projection of a finished CLIP run, frozen
        c.init_from.workdir, c.init_from.params = "workdirs/clip_digits", LOCKED
    freeze = rf"^({'|'.join(LOCKED)})/" if locked else r"^reference/"
    c.optim = trainer.adamw(lr=2e-3, warmup_steps=trainer.cpu_warmup(tiny), freeze_regex=freeze)
    c.eval = evals.cpu_schedule(tiny, aliases=evals.CLIP_ALIASES)
    c.evals = evals.entries(evals.zeroshot("image"), evals.retrieval("image:text", "text:image"))
    c.lock()
    return c
