"""Point-MAE (Pang et al., 2022) on point clouds of the embedded MNIST digits.

    python -m mmjax.main --config configs/pointmae_digits.py --workdir workdirs/pointmae

Each digit becomes 128 points on its extruded strokes (mmjax.data.points), in
16 groups of 16 (farthest point sampling + kNN); 60% of the groups are hidden
(Point-MAE's ratio), the point tower encodes the visible ones, and a 1-block
decoder with centre position embeddings predicts the 16 points of every hidden
group, scored by Chamfer-L2. Probes classify the digit from the frozen encoder.

Variants (`configs/pointmae_digits.py:mask=0.5,model=tiny`):
  mask   masking ratio (default 0.6, Point-MAE's)
  model  tiny (tests) | small (default)
  steps  total train steps
"""
import ml_collections

from configs.blocks import evals, masked, towers, trainer
from mmjax.config_utils import parse_variant
from mmjax.data.config import data_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    v = parse_variant(arg, {"mask": 0.6, "model": "small", "steps": 0}, choices={"model": tuple(masked.CPU_SIZES)})
    masked.check_mask_ratio(v.mask)
    size, tiny = masked.CPU_SIZES[v.model], v.model == "tiny"

    c = trainer.cpu_run(tiny, total_steps=v.steps or size["steps"], batch_size=size["batch"])
    c.data = data_config("digits_captions", ("points",))
    c.data.points.num_points = 128
    c.model = masked.model("mae", "points", mask_ratio=v.mask,
                           encoder=towers.points(towers.CPU[v.model], num_groups=16, group_size=16, pointnet_dim=32),
                           decoder=towers.decoder(size["decoder_width"]))
    c.objective = masked.mae_objective(norm_pix=False)  # Chamfer-L2 for points
    c.optim = trainer.adamw(**masked.MAE_ADAMW, warmup_steps=trainer.cpu_warmup(tiny))
    c.eval = evals.cpu_schedule(tiny, at_start=True)
    c.evals = evals.entries(evals.probes("points"))
    c.lock()
    return c
