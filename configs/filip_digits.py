"""FILIP (Yao et al. 2022) on the embedded MNIST digits: token-wise late interaction.

Each image patch and caption token is projected into the shared space and
L2-normalised (model.project_tokens); an image-caption score is the mean,
over one side's valid tokens, of the best cosine among the other side's
(FILIP's token-wise maximum similarity), and the loss is CLIP's softmax on
those scores. Zero-shot is reported both ways: by the global embeddings
(which share the per-token projection) and by the token-wise score of each
image against each class's prompts, averaged over the prompts
(`zeroshot_tokenwise_top1_image`); retrieval uses the global embeddings.

    python -m mmjax.main --config configs/filip_digits.py --workdir workdirs/filip

Variants (`configs/filip_digits.py:global_weight=1.0,model=tiny`):
  global_weight  0 (default): FILIP's loss alone; w > 0: FILIP + w * CLIP's global loss
  model          tiny (tests) | small (default)
  steps          total train steps
"""
import ml_collections

from configs.blocks import contrastive, digits, evals, trainer
from mmjax.config_utils import parse_variant
from mmjax.data.config import data_config

MODALITIES = ("image", "text")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    v = parse_variant(arg, {"global_weight": 0.0, "model": "small", "steps": 0},
                      choices={"model": ("tiny", "small")})
    if v.global_weight < 0:
        raise ValueError(f"config variant global_weight={v.global_weight}: expected >= 0")
    size, tiny = digits.SIZES[v.model], v.model == "tiny"

    c = trainer.cpu_run(tiny, total_steps=v.steps or size["steps"], batch_size=32 if tiny else 256)
    c.data = data_config("digits_captions", MODALITIES)
    # Word-level BPE tokens (<= 8 per caption) are what a patch can align to; UTF-8 bytes
    # would give 32 tokens of single letters and a 2x larger token-token matrix.
    c.data.text.tokenizer, c.data.text.max_len = "bpe", 16
    c.model = contrastive.model(embed_dim=size["embed"], towers=digits.tower_blocks(v.model, c.data, MODALITIES),
                                project_tokens=True)
    filip = {"name": "filip", "modalities": MODALITIES}
    if v.global_weight:
        c.objective = contrastive.weighted_sum({**filip, "weight": 1.0},
                                               {"name": "softmax", "modalities": MODALITIES, "weight": v.global_weight})
    else:
        c.objective = ml_collections.ConfigDict(filip)
    c.optim = trainer.adamw(lr=2e-3, warmup_steps=trainer.cpu_warmup(tiny))
    c.eval = evals.cpu_schedule(tiny, aliases=evals.CLIP_ALIASES)
    c.evals = evals.entries(evals.zeroshot("image"), evals.zeroshot_tokenwise("image"),
                            evals.retrieval("image:text", "text:image"))
    c.lock()
    return c
