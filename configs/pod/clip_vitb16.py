"""CLIP ViT-B/16 on LAION-400M at OpenCLIP's scale (Radford et al. 2021; Cherti et al. 2023).

    python -m mmjax.main --config configs/pod/clip_vitb16.py --workdir gs://.../clip_vitb16
    python -m mmjax.main --config configs/pod/clip_vitb16.py:data=fake,size=tiny --workdir /tmp/clip  # CPU

Published targets, ImageNet-1k zero-shot top-1 of ViT-B/16 at 224 px:
  67.07 OpenCLIP on LAION-400M, 32 epochs (open_clip docs/PRETRAINED.md; 67.1 in its README)
  68.3  OpenAI CLIP on its private WIT-400M, as OpenCLIP measures it (68.6 in the CLIP paper)
The number needs ImageNet's 1000 class names and CLIP's 80 prompt templates, which the
evaluation suite does not have (its prompts are the digits'); the in-training evaluation here
is image<->text retrieval R@K on the held-out split.

Recipe (CLIP paper, Tables 19-20, as open_clip's defaults reproduce it; the tables themselves
were not in the searchable corpus, open_clip's PRETRAINED.md and README were):
  image     ViT-B/16: width 768, 12 layers, 12 heads, MLP 3072, [CLS] pooling, learned positions
  text      width 512, 12 layers, 8 heads, MLP 2048, causal, context 77, CLIP's BPE (49,408 ids),
            end-of-text pooling: the "63M-parameter" text transformer of the paper
  embedding 512; learned temperature from 1/0.07, capped at 100
  optimiser AdamW b1 0.9, b2 0.98, eps 1e-6, weight decay 0.2 (not on gains, biases, embeddings,
            the temperature); lr 5e-4, 2,000 warm-up steps, cosine
  batch     32,768 (CLIP; OpenCLIP's B/16 run used 33,792 = 176 GPUs x 192), 32 epochs of
            400M pairs = 12.8B samples seen
Gradient accumulation: `--config.accumulation.steps=k` fits the same global batch on k times
fewer devices and is exact for the contrastive loss (GradCache, mmjax.accumulate).

Data: LAION-400M (img2dataset's webdataset tars: <key>.jpg + .txt + .json), converted once to
ArrayRecord and read by name under data.data_dir:
    python -m mmjax.ingest webdataset '/data/laion400m-wds/{00000..41407}.tar' \
        --out $MMJAX_DATA_DIR/laion400m/1.0.0 --split train    # --runner beam for a cluster
and a held-out set of shards the same way with `--split validation`. Unlabelled pairs: the
in-training evaluation is image<->text retrieval R@K. OpenAI's BPE vocabulary
(bpe_simple_vocab_16e6.txt.gz) is read from data.text.tokenizer_path; data=fake runs at these
shapes with the embedded BPE vocabulary (598 ids): the text tower then has 24.99M fewer
embedding parameters than the real one. tools/plan.py sizes the real vocabulary.

Variants: configs/blocks/pod.py (`data=real|fake`, `size=full|tiny`, `steps`).
"""
import ml_collections

from configs.blocks import contrastive, evals, pod, towers, trainer

LAION400M_PAIRS = 400_000_000
BATCH = 32_768
EPOCHS = 32
OPENAI_BPE = "bpe_simple_vocab_16e6.txt.gz"
# CLIP's pixel normalisation (open_clip OPENAI_DATASET_MEAN / _STD)
OPENAI_MEAN, OPENAI_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
CLIP_TEXT_B = dict(width=512, depth=12, num_heads=8, mlp_dim=2048)  # CLIP's "63M-parameter" text transformer
MODALITIES = ("image", "text")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    v = pod.parse(arg)
    tiny = v.size == "tiny"

    c = pod.run(v, total_steps=pod.steps(EPOCHS, LAION400M_PAIRS, BATCH), batch_size=BATCH, fsdp=4)
    c.data = pod.data(v, "laion400m", MODALITIES, train_split="train", eval_split="validation", label_field="",
                      image_shape=(32, 32, 3) if tiny else (224, 224, 3))
    c.data.text.update(tokenizer="bpe", max_len=16 if tiny else 77,
                       tokenizer_path="" if v.data == "fake" else OPENAI_BPE)
    c.data.image.crop_scale, c.data.image.max_shift = (0.9, 1.0), 0  # open_clip's RandomResizedCrop scale
    c.data.image.mean, c.data.image.std = OPENAI_MEAN, OPENAI_STD
    c.model = contrastive.model(
        embed_dim=32 if tiny else 512, logit_init=contrastive.CLIP_INIT, dtype=pod.DTYPE, towers={
            "image": towers.vit(pod.tower_size(v, towers.VIT_B), patch_size=8 if tiny else 16, pool="tok",
                                scan=True, remat="full"),
            "text": towers.text(pod.tower_size(v, CLIP_TEXT_B), max_len=c.data.text.get_ref("max_len"),
                                scan=True, remat="full"),
        })
    c.objective = contrastive.objective("softmax", MODALITIES)
    c.optim = trainer.adamw(lr=5e-4, b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.2, warmup_steps=2000,
                            grad_clip_norm=0.0)
    # Zero-shot needs ImageNet's class names and CLIP's prompts (see above): retrieval only.
    c.eval = pod.eval_schedule(v, every_steps=10_000, batch_size=1024)
    c.evals = evals.entries(evals.retrieval("image:text", "text:image"))
    c.lock()
    return c
