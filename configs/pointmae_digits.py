"""Point-MAE (Pang et al., 2022) on point clouds of the embedded MNIST digits.

    python -m mmjax.main --config configs/pointmae_digits.py --workdir workdirs/pointmae

Each digit becomes 128 points on its extruded strokes (mmjax.data.points), in
16 groups of 16 (farthest point sampling + kNN); 60% of the groups are hidden
(Point-MAE's ratio), the point tower encodes the visible ones, and a 1-block
decoder with centre position embeddings predicts the 16 points of every hidden
group, scored by Chamfer-L2. Probes classify the digit from the frozen encoder.

Variants as configs/mae_digits.py (`mask`, `model`, `steps`); default mask 0.6.
"""
import ml_collections

from configs import mae_digits
from mmjax.config_utils import with_default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = mae_digits.get_config(with_default(arg, "mask", 0.6))
    with c.unlocked():
        c.data.modalities = ("points",)
        c.data.points.num_points = 128
        encoder = {k: v for k, v in dict(c.model.encoder).items() if k not in ("patch_size", "posemb")}
        c.model.modality = "points"
        c.model.encoder = dict(encoder, encoder="points", num_groups=16, group_size=16, pointnet_dim=32)
        c.eval.probe_modalities = ("points",)
    c.lock()
    return c
