"""MAE ViT-B/16 on ImageNet-1k at the paper's scale (He et al. 2022, "Masked Autoencoders Are
Scalable Vision Learners").

    python -m mmjax.main --config configs/pod/mae_vitb16_in1k.py --workdir gs://.../mae_vitb16
    python -m mmjax.main --config configs/pod/mae_vitb16_in1k.py:data=fake,size=tiny --workdir /tmp/mae  # CPU

Published targets (ViT-B/16, 1600 epochs, normalised-pixel targets):
  83.6 ImageNet top-1 after fine-tuning (paper Table 3; facebookresearch/mae FINETUNE.md:
       reference checkpoint 83.664, four fine-tuning seeds 83.63 / 83.66 / 83.52 / 83.46)
  68.0 ImageNet top-1 by linear probing (FINETUNE.md, "paper (TF/TPU)" row; 67.8 in PyTorch)
Both need the paper's downstream protocols (100 epochs of fine-tuning with layer decay 0.65,
mixup/cutmix, drop path 0.1; 90 epochs of LARS linear probing on the [CLS] feature), which
mmjax does not implement: the in-training evaluation here is the kNN / ridge probe of
mmjax.evals on frozen [CLS] features, a monitor, not the published metric.

Recipe (paper Table 8 / facebookresearch/mae PRETRAIN.md and models_mae.py):
  encoder   ViT-B/16: width 768, 12 layers, 12 heads, MLP 3072, [CLS] token, fixed 2-D
            sin-cos position embedding; 224x224 RGB -> 196 patches
  decoder   512 wide, 8 layers, 16 heads (MLP 2048), sin-cos positions
  masking   75% random, loss on masked patches only, per-patch normalised pixels (norm_pix)
  optimiser AdamW b1 0.9, b2 0.95, weight decay 0.05; batch 4096; lr = base lr 1.5e-4 x
            4096 / 256 = 2.4e-3; cosine decay after 40 warm-up epochs; 1600 epochs
  data      random resized crop (scale 0.2-1.0) + horizontal flip only
Differences: the augmentation is mmjax's (random resized crop of data.image.crop_scale, no flip);
tokens are initialised from a normal (std 0.02) as MAE's are, but the patch embedding is
flax's default convolution init rather than MAE's xavier_uniform on its flattened kernel.

Data: TFDS `imagenet2012` (train 1,281,167 / validation 50,000) under data.data_dir, prepared
once from the manually downloaded archives: `tfds build imagenet2012 --file_format=array_record
--data_dir=$MMJAX_DATA_DIR --manual_dir=...`. JPEGs are decoded in Grain's worker processes and
normalised with ImageNet's mean / std. data=fake runs everything else at these shapes.

Variants: configs/blocks/pod.py (`data=real|fake`, `size=full|tiny`, `steps`).
"""
import ml_collections

from configs.blocks import evals, masked, pod, towers, trainer

IN1K_TRAIN = 1_281_167
BATCH = 4096
EPOCHS, WARMUP_EPOCHS = 1600, 40


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    v = pod.parse(arg)
    tiny = v.size == "tiny"

    # Gradient accumulation, if the per-device batch does not fit: MAE's loss is a mean over
    # examples, so plain accumulation is exact (mmjax.accumulate).
    c = pod.run(v, total_steps=pod.steps(EPOCHS, IN1K_TRAIN, BATCH), batch_size=BATCH, fsdp=4, accumulation="plain")
    c.data = pod.data(v, "imagenet2012", ("image",), train_split="train", eval_split="validation",
                      image_shape=(32, 32, 3) if tiny else (224, 224, 3))
    c.data.image.crop_scale, c.data.image.max_shift = (0.2, 1.0), 0
    c.data.image.mean, c.data.image.std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # MAE's (torchvision's)
    c.model = masked.model(
        "mae", "image", mask_ratio=0.75, dtype=pod.DTYPE,
        encoder=towers.vit(pod.tower_size(v, towers.VIT_B), patch_size=8 if tiny else 16, pool="tok", posemb="sincos",
                           scan=True, remat="none"),
        decoder=pod.decoder(v, masked.DECODER_B),
        channels=3)  # RGB: the pixel head predicts 16 x 16 x 3 values per patch
    c.objective = masked.mae_objective(norm_pix=True)
    c.optim = trainer.adamw(lr=1.5e-4 * BATCH / 256, b1=0.9, b2=0.95, weight_decay=0.05, grad_clip_norm=0.0,
                            warmup_steps=pod.steps(WARMUP_EPOCHS, IN1K_TRAIN, BATCH))
    c.eval = pod.eval_schedule(v, every_steps=25_000, batch_size=1024)
    c.evals = evals.entries(evals.probes("image", fewshot_shots=()))
    c.lock()
    return c
