"""Point-MAE on ShapeNet-55 at the paper's scale (Pang et al. 2022, "Masked Autoencoders for
Point Cloud Self-supervised Learning").

    python -m mmjax.main --config configs/pod/pointmae_shapenet.py --workdir gs://.../pointmae
    python -m mmjax.main --config configs/pod/pointmae_shapenet.py:data=fake,size=tiny --workdir /tmp/pmae

Published targets (fine-tuned from this pretraining; Pang-Yatian/Point-MAE README):
  93.80 ModelNet40 accuracy, 1k points (94.04 with 8k points)
  85.18 ScanObjectNN PB_T50_RS (hardest); 90.02 OBJ_BG, 88.29 OBJ_ONLY
Fine-tuning is not implemented in mmjax; the in-training evaluation is the kNN / ridge probe on
frozen mean-pooled features.

Recipe (Point-MAE cfgs/pretrain.yaml):
  input     1024 points per shape, normalised to the unit sphere; 64 groups of 32 (FPS + kNN)
  encoder   width 384, 12 layers, 6 heads, MLP 1536, mini-PointNet group embedding (dim 256)
  decoder   width 384, 4 layers, 6 heads, centre-MLP positions
  masking   60% random groups, Chamfer-L2 on the masked groups
  optimiser AdamW (b2 0.999), lr 1e-3, weight decay 0.05; batch 128; cosine after 10 warm-up
            epochs; 300 epochs
  data      PointcloudScaleAndTranslate: anisotropic scale in [2/3, 3/2] (translation, +-0.2,
            is not in mmjax's point augmentations)
Differences: LayerNorm for BatchNorm in the mini-PointNet, positions added once rather than
before every block, no drop path (Point-MAE: 0.1); see mmjax.models.point.

Data: ShapeNet-55 (Point-BERT's shapenet_pc/*.npy, 8,192 points each, sorted into one folder
per synset; 41,952 training shapes in the Point-BERT split list, a number not checked against
the list here), converted once:
    python -m mmjax.ingest points /data/shapenet55/train --out $MMJAX_DATA_DIR/shapenet55/1.0.0 --split train
(and the test folder with `--split test`). data=fake runs the rest at these shapes.

Variants: configs/blocks/pod.py (`data=real|fake`, `size=full|tiny`, `steps`).
"""
import ml_collections

from configs.blocks import evals, masked, pod, towers, trainer

SHAPENET55_TRAIN = 41_952
BATCH = 128
EPOCHS, WARMUP_EPOCHS = 300, 10
POINT_MAE = dict(width=384, depth=12, num_heads=6, mlp_dim=1536)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    v = pod.parse(arg)
    tiny = v.size == "tiny"

    c = pod.run(v, total_steps=pod.steps(EPOCHS, SHAPENET55_TRAIN, BATCH), batch_size=BATCH, fsdp=4,
                accumulation="plain")  # Chamfer-L2 is a mean over equally many masked groups per shape
    c.data = pod.data(v, "shapenet55", ("points",), train_split="train", eval_split="test")
    c.data.points.update(num_points=128 if tiny else 1024, rotation_deg=0.0, scale_low=2 / 3, scale_high=3 / 2,
                         jitter_sigma=0.0, dropout_max=0.0)
    c.model = masked.model(
        "mae", "points", mask_ratio=0.6, dtype=pod.DTYPE,
        encoder=towers.points(pod.tower_size(v, POINT_MAE), num_groups=16 if tiny else 64,
                              group_size=8 if tiny else 32, pointnet_dim=32 if tiny else 256, scan=True, remat="none"),
        decoder=pod.decoder(v, towers.decoder(width=384, depth=4, num_heads=6, mlp_dim=1536)))
    c.objective = masked.mae_objective(norm_pix=False)  # Chamfer-L2 on the masked groups
    c.optim = trainer.adamw(lr=1e-3, b1=0.9, b2=0.999, weight_decay=0.05, grad_clip_norm=0.0,
                            warmup_steps=pod.steps(WARMUP_EPOCHS, SHAPENET55_TRAIN, BATCH))
    c.eval = pod.eval_schedule(v, every_steps=5_000, batch_size=512)
    c.evals = evals.entries(evals.probes("points", fewshot_shots=()))
    c.lock()
    return c
