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

from configs import clip_digits
from mmjax.config_utils import parse_variant

MODELS = {
    "tiny": dict(width=32, depth=1, heads=2, mlp=64, embed=32, steps=10, batch=32, points=64, groups=8, k=8),
    # Sized for a 2-core CPU: fwd+bwd at B=128 measured 0.08 s image, 0.12 s audio,
    # 0.08 s text (16 BPE tokens), 0.18 s points (128 points, 16 groups of 16).
    "small": dict(width=128, depth=3, heads=4, mlp=256, embed=128, steps=800, batch=128, points=128, groups=16, k=16),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    v = parse_variant(arg, {"mode": "anchor", "loss": "softmax", "model": "small", "steps": 0, "drop": 0.0},
                      choices={"mode": ("anchor", "all_pairs"), "loss": ("softmax", "sigmoid"),
                               "model": tuple(MODELS)})
    size = MODELS[v.model]
    c = clip_digits.get_config(f"loss={v.loss},model={'tiny' if v.model == 'tiny' else 'small'}")
    with c.unlocked():
        c.total_steps = v.steps or size["steps"]
        c.batch_size = size["batch"]
        c.data.name = "av_digits"
        c.data.modalities = ("image", "audio", "points", "text")
        for m in ("audio", "points", "text"):
            c.data.drop_prob[m] = v.drop
        c.data.points.num_points = size["points"]
        # BPE learnt on the captions: every caption is <= 8 tokens, so 16 holds it
        # at half the cost of 32 bytes.
        c.data.tokenizer, c.data.text_len = "bpe", 16

        tower = dict(width=size["width"], depth=size["depth"], num_heads=size["heads"], mlp_dim=size["mlp"],
                     scan=False, remat="none")
        c.model.embed_dim = size["embed"]
        # 96 frames x 64 mels in 16x16 patches: 6 x 4 = 24 tokens.
        c.model.towers.audio = dict(encoder="audio", patch_time=16, patch_freq=16, posemb="factorized",
                                    pool="mean", **tower)
        # pointnet_dim 32: the per-point MLP runs on B*G*K points and dominates the CPU cost.
        c.model.towers.points = dict(encoder="points", num_groups=size["groups"], group_size=size["k"], pointnet_dim=32,
                                     pool="mean", **tower)

        c.objective = ml_collections.ConfigDict({
            "name": "bind", "anchor": "image", "modalities": ("audio", "points", "text"), "mode": v.mode,
            "pair_loss": v.loss, "weights": {}})

        c.eval.zeroshot_modalities = ("image", "audio", "points")
        c.eval.retrieval_pairs = ("audio:image", "points:image", "audio:text", "image:text")
        c.eval.aliases = {}
    c.lock()
    return c
