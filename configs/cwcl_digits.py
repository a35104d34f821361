"""CWCL (Srinivasa et al. 2023) on the embedded MNIST digits: CLIP with continuous targets.

CLIP's one-hot target over the batch becomes a distribution: query i's target
for candidate j is proportional to w_ij = (1 + cos(r_i, r_j)) / 2, with r the
embeddings of a frozen reference tower (model.reference; images of the same
digit weigh in as partial positives). The reference is a second image tower +
projection whose params (params["reference"]) never train: its output has no
gradient and optim.freeze_regex keeps the optimiser off it. It starts from a
finished run's image tower, e.g. the main CLIP job's:

    python -m mmjax.main --config configs/clip_digits.py --workdir workdirs/clip_digits
    python -m mmjax.main --config configs/cwcl_digits.py --workdir workdirs/cwcl \
        --config.model.reference.init_from=workdirs/clip_digits

(the same `model` size in both). Without init_from the reference is a frozen
random tower, whose similarities carry little beyond pixel overlap.

Caveat (measured): the targets are only as sharp as the reference space is
spread. A 200-step CLIP reference has cosines 0.85 within a digit and 0.64
across, so w is 0.93 vs 0.82 and the targets are near uniform; both towers,
trained from scratch here (the paper trains one tower against a frozen one),
then collapse to loss = log(batch) (200 steps at batch 64: zero-shot 0.108).

Variants (`configs/cwcl_digits.py:model=tiny`):
  reference  image (default) | text: the modality of the frozen tower
  model      tiny (tests) | small (default)
  steps      total train steps
"""
import ml_collections

from configs import clip_digits
from mmjax.config_utils import parse_variant


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    v = parse_variant(arg, {"reference": "image", "model": "small", "steps": 0},
                      choices={"reference": ("image", "text"), "model": ("tiny", "small")})
    c = clip_digits.get_config(f"model={v.model},steps={v.steps}")
    with c.unlocked():
        c.model.reference.modality = v.reference
        c.optim.freeze_regex = r"^reference/"
        c.objective = ml_collections.ConfigDict({"name": "cwcl", "modalities": ("image", "text")})
    c.lock()
    return c
