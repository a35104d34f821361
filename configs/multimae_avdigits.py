"""MultiMAE (Bachmann et al., 2022) over the image and the spoken digit of AV-digits.

    python -m mmjax.main --config configs/multimae_avdigits.py --workdir workdirs/multimae

One shared encoder over 49 image tokens (4x4-pixel patches of the 28x28
digit) and 48 audio tokens (8x16 patches of the 96x64 log-mel spectrogram),
each with its own linear patch embedding, sincos grid position and learned
modality embedding. Per example a Dirichlet(alpha=1) sample splits the
`keep` visible tokens between the modalities (MultiMAE keeps 98 of 588; here
24 of 97 by default), the encoder sees only those, and one small decoder per
modality (cross-attention to all visible tokens, then self-attention)
reconstructs its hidden patches: MSE per modality, summed. Probes classify
the digit from the frozen encoder given one modality alone.

Variants (`configs/multimae_avdigits.py:keep=32,alpha=0.5,model=tiny`):
  keep   visible tokens over both modalities (default: 24, tiny 12)
  alpha  Dirichlet concentration (default 1.0, MultiMAE's)
  model  tiny (tests) | small (default)
  steps  total train steps
"""
import ml_collections

from configs import clip_digits
from mmjax.config_utils import parse_variant

MODELS = {
    "tiny": dict(width=32, depth=1, heads=2, mlp=64, dec_width=32, keep=12, steps=10, batch=32),
    "small": dict(width=128, depth=3, heads=4, mlp=256, dec_width=64, keep=24, steps=800, batch=128),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    v = parse_variant(arg, {"keep": 0, "alpha": 1.0, "model": "small", "steps": 0}, choices={"model": tuple(MODELS)})
    size = MODELS[v.model]
    c = clip_digits.get_config(f"model={'tiny' if v.model == 'tiny' else 'small'}")
    with c.unlocked():
        c.total_steps = v.steps or size["steps"]
        c.batch_size = size["batch"]
        c.data.name, c.data.modalities = "av_digits", ("image", "audio")
        c.model = ml_collections.ConfigDict({
            "kind": "multimae", "num_keep": v.keep or size["keep"], "alpha": v.alpha,
            "dtype": "float32", "param_dtype": "float32",
            "modalities": {"image": {"patch": (4, 4), "channels": 1}, "audio": {"patch": (8, 16), "channels": 1}},
            "encoder": dict(width=size["width"], depth=size["depth"], num_heads=size["heads"], mlp_dim=size["mlp"],
                            scan=False, remat="none"),
            "decoder": dict(width=size["dec_width"], depth=1, num_heads=2, mlp_dim=2 * size["dec_width"]),
        })
        c.objective = ml_collections.ConfigDict({"name": "mae", "norm_pix": False, "weights": {}})
        c.optim.lr, c.optim.weight_decay, c.optim.b2 = 1.5e-3, 0.05, 0.95  # MAE's AdamW betas, as mae_digits
        c.optim.no_decay_regex = c.optim.no_decay_regex.replace(")$", "|mask_token)$")
        c.eval.zeroshot_modalities, c.eval.retrieval_pairs, c.eval.aliases = (), (), {}
        c.eval.probe_modalities, c.eval.at_start = ("image", "audio"), True
    c.lock()
    return c
