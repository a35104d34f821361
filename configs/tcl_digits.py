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

from configs import clip_digits
from mmjax.config_utils import parse_variant


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    v = parse_variant(arg, {"intra_weight": 1.0, "model": "small", "steps": 0},
                      choices={"model": ("tiny", "small")})
    c = clip_digits.get_config(f"model={v.model},steps={v.steps}")
    with c.unlocked():
        c.data.second_view = ("image",)
        c.objective = ml_collections.ConfigDict({"name": "sum", "terms": (
            {"name": "softmax", "modalities": ("image", "text"), "weight": 1.0},
            {"name": "simclr", "modality": "image", "weight": v.intra_weight})})
    c.lock()
    return c
