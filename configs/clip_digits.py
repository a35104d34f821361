"""Image-text contrastive pretraining on the embedded MNIST digits with captions.

The main job: `python -m mmjax.main --config configs/clip_digits.py --workdir <dir>`.
Variants: `configs/clip_digits.py:loss=sigmoid,model=tiny`, keys:
  loss   softmax (CLIP InfoNCE) | sigmoid (SigLIP) | dcl (decoupled; objective.vmf_sigma
         gives DCLW) | hard_negative (Robinson et al.; objective.beta, tau_plus) |
         sigmoid_chunked (SigLIP as a ring over the data devices) | softmax_gathered
  model  tiny (tests) | small (default, ~5 min on a 2-core CPU) | base
  steps  total train steps (default depends on model)
Single fields: `--config.optim.lr=3e-4`, `--config.batch_size=128`, ...
"""
import ml_collections

from mmjax.config_utils import parse_variant
from mmjax.data.pipeline import default_data_config

# (width, depth, heads, mlp, patch, embed_dim, steps) per size; 28x28 digits.
MODEL_SIZES = {
    "tiny": dict(width=32, depth=1, heads=2, mlp=64, patch=7, embed=32, steps=20),
    "small": dict(width=128, depth=3, heads=4, mlp=256, patch=7, embed=128, steps=600),
    "base": dict(width=256, depth=6, heads=8, mlp=1024, patch=4, embed=256, steps=3000),
}
# SigLIP initialises t' = log 10, b = -10; CLIP t = 1/0.07 (and so do CLIP's variants).
CLIP_INIT, SIGLIP_INIT = (1 / 0.07, 0.0), (10.0, -10.0)
LOGIT_INIT = {"softmax": CLIP_INIT, "sigmoid": SIGLIP_INIT, "dcl": CLIP_INIT, "hard_negative": CLIP_INIT,
              "sigmoid_chunked": SIGLIP_INIT, "softmax_gathered": CLIP_INIT}
# The losses' own knobs, at their papers' defaults, so that `--config.objective.<knob>` can set them.
LOSS_FIELDS = {"dcl": {"vmf_sigma": None}, "hard_negative": {"beta": 1.0, "tau_plus": 0.1}}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = parse_variant(arg, {"loss": "softmax", "model": "small", "steps": 0},
                            choices={"loss": tuple(LOGIT_INIT), "model": tuple(MODEL_SIZES)})
    size = MODEL_SIZES[variant.model]
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.total_steps = variant.steps or size["steps"]
    c.batch_size = 256
    c.log_every_steps = 50
    c.tensorboard = True

    c.data = default_data_config()

    c.model = ml_collections.ConfigDict()
    c.model.embed_dim = size["embed"]
    c.model.logit_scale_init, c.model.logit_bias_init = LOGIT_INIT[variant.loss]
    c.model.dtype = "float32"
    # Contrastive-family options (mmjax.models.towers.ContrastiveModel), all off here:
    # per-token projections (FILIP), a frozen reference tower (CWCL) restored from a
    # finished run's workdir, learned stand-ins for absent modalities (Symile).
    c.model.project_tokens = False
    c.model.reference = ml_collections.ConfigDict({"modality": "", "init_from": ""})
    c.model.missing_embeddings = ()
    c.model.param_dtype = "float32"
    tower = dict(width=size["width"], depth=size["depth"], num_heads=size["heads"], mlp_dim=size["mlp"],
                 scan=False, remat="none", posemb="learn")
    c.model.towers = ml_collections.ConfigDict({
        "image": dict(encoder="vit", patch_size=size["patch"], pool="mean", **tower),
        # vocab_size and eot_id come from the tokenizer (config.data.tokenizer).
        "text": dict(encoder="text", causal=True, pool="eot", **tower),
    })
    # The text tower's context follows the tokenizer's length unless overridden.
    c.model.towers.text.max_len = c.data.get_ref("text_len")

    c.objective = ml_collections.ConfigDict({"name": variant.loss, "modalities": ("image", "text"),
                                             **LOSS_FIELDS.get(variant.loss, {})})

    c.optim = ml_collections.ConfigDict(dict(
        name="adamw", lr=2e-3, warmup_steps=100, schedule="cosine", min_lr_ratio=0.0,
        b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.05, grad_clip_norm=1.0,
        # No decay for biases, norms, embeddings, the class token and the temperature.
        no_decay_regex=r"(bias|scale|embedding|pos_embedding|cls|log_logit_scale)$",
        freeze_regex=""))

    # Warm start (mmjax.checkpoint.warm_start): on a fresh start, the top-level params named here
    # (e.g. ("image_encoder", "image_proj")) come from the latest checkpoint of the run in `workdir`.
    c.init_from = ml_collections.ConfigDict({"workdir": "", "params": ()})

    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    # (regex on the param path, PartitionSpec); first match wins, rest replicated
    # or, with mesh.fsdp > 1, sharded over 'fsdp' above fsdp_min_size elements.
    # tensor_parallel: add parallel.TENSOR_PARALLEL_RULES (heads and MLP units over 'tensor').
    c.sharding = ml_collections.ConfigDict({"rules": (), "fsdp_min_size": 2**18, "tensor_parallel": False})
    # Gradient accumulation (mmjax.accumulate): `steps` micro-batches per step, 1 = off; "gradcache"
    # is exact for contrastive losses, "plain" averages micro-batch gradients (masked modelling).
    c.accumulation = ml_collections.ConfigDict({"steps": 1, "mode": "gradcache"})

    c.checkpoint = ml_collections.ConfigDict({"every_steps": 200, "keep": 3, "async_save": True})
    c.eval = ml_collections.ConfigDict({
        "every_steps": 200, "batch_size": 512, "retrieval_ks": (1, 5, 10),
        "zeroshot_modalities": ("image",),
        "zeroshot_tokenwise": False,  # also FILIP's token-wise zero-shot (needs model.project_tokens)
        "zeroshot_multilinear": (),  # "a+b": the class by <a, b, prompt> (Symile)
        "probe_modalities": (),  # kNN, linear and few-shot probes on frozen features (train split -> test)
        "few_shot_ways": 5, "few_shot_shots": (1, 5),
        "at_start": False,  # also evaluate the untrained model (logged at step 0)
        "retrieval_pairs": ("image:text", "text:image"),  # query:key
        # The short names of the final line.
        "aliases": {"zeroshot_top1": "zeroshot_top1_image", "i2t_r1": "r1_image_text", "t2i_r1": "r1_text_image",
                    "i2t_r5": "r5_image_text", "t2i_r5": "r5_text_image"},
    })
    # Test hook: SIGKILL this process right after step N (-1: never).
    c.debug = ml_collections.ConfigDict({"sigkill_after_step": -1})

    if variant.model == "tiny":
        c.batch_size, c.log_every_steps = 32, 1
        c.optim.warmup_steps = 2
        c.checkpoint.every_steps, c.eval.every_steps, c.eval.batch_size = 5, 0, 256
    c.lock()
    return c
