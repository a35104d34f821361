"""AudioMAE ViT-B on AudioSet-2M at the paper's scale (Huang et al. 2022, "Masked Autoencoders
that Listen").

    python -m mmjax.main --config configs/pod/audiomae_vitb_audioset.py --workdir gs://.../audiomae
    python -m mmjax.main --config configs/pod/audiomae_vitb_audioset.py:data=fake,size=tiny --workdir /tmp/amae

Published targets (mAP after fine-tuning the pretrained ViT-B; facebookresearch/AudioMAE
README): 47.3 on AudioSet-2M (100 epochs, class-balanced sampling; log: mAP 0.4729 on the
19,148 eval clips) and 37.0 on AudioSet-20K (60 epochs). Fine-tuning is not implemented in
mmjax; the in-training evaluation is the kNN / ridge probe on frozen mean-pooled features.

Recipe (AudioMAE main_pretrain.py and submit_pretrain_audioset2M.sh):
  input     16 kHz clips, 128-bin log-mel (Kaldi fbank: 25 ms Hann window, 10 ms hop), 1024
            frames (10.24 s); standardised with AudioSet's statistics (mean -4.27, std 4.57 for
            Kaldi fbank; mmjax's log-mel is another scale, so recompute norm_mean / norm_std
            over AudioSet before a real run); no SpecAugment in pretraining
  encoder   ViT-B, 16x16 patches -> 64 x 8 = 512 tokens, width 768, 12 layers, 12 heads, fixed
            sin-cos positions (85.66M parameters with its 527-class head, as its log prints)
  decoder   512 wide, 8 layers, 16 heads (mae_vit_base_patch16_dec512d8b)
  masking   80% random, norm_pix_loss on the masked patches
  optimiser AdamW b2 0.95, weight decay 1e-4; batch 512 (64 GPUs x 8); lr = base lr 2e-4 x
            512 / 256 = 4e-4; 3 warm-up epochs, cosine; 32 epochs (the script runs 33)
Differences: AudioMAE's decoder attends within local (shifted) windows (decoder_mode 1), this
one globally; AudioMAE also mixes clips by random roll + magnitude ("roll_mag_aug"), not here.

Data: AudioSet-2M (about 2M ten-second clips: unbalanced + balanced train; its availability
shrinks as videos disappear), converted from its audio files and segment CSVs:
    python -m mmjax.ingest audio --csv unbalanced_train_segments.csv --audio-root /data/audioset/wav \
        --file-key YTID --label-key positive_labels --multi-label \
        --class-names class_labels_indices.csv --out $MMJAX_DATA_DIR/audioset/1.0.0 --split train
(and `--split eval` from eval_segments.csv). Clips are decoded and resampled to 16 kHz in Grain's
worker processes. Labels are multi-label (the `labels` feature): pretraining reads no label,
and the single-label probes are evaluated only with data=fake; AudioSet's mAP evaluation is
not built yet. data=fake runs the rest at these shapes.

Variants: configs/blocks/pod.py (`data=real|fake`, `size=full|tiny`, `steps`).
"""
import ml_collections

from configs.blocks import evals, masked, pod, towers, trainer

AS2M_CLIPS = 2_000_000  # approximate
BATCH = 512
EPOCHS, WARMUP_EPOCHS = 32, 3
# Kaldi fbank: 25 ms window, 10 ms hop at 16 kHz; 128 mel bins.
LOGMEL = {"sample_rate": 16_000, "n_fft": 400, "win_length": 400, "hop_length": 160, "n_mels": 128, "fmin": 0.0,
          "log_offset": 1e-6}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    v = pod.parse(arg)
    tiny = v.size == "tiny"

    c = pod.run(v, total_steps=pod.steps(EPOCHS, AS2M_CLIPS, BATCH), batch_size=BATCH, fsdp=4,
                accumulation="plain")  # a per-example mean: plain accumulation is exact
    c.data = pod.data(v, "audioset", ("audio",), train_split="train", eval_split="eval", label_field="")
    c.data.audio.logmel.update(LOGMEL)
    c.data.audio.update(num_frames=1024, norm_mean=-4.2677393, norm_std=4.5689974, gain_db=0.0,
                        time_masks=0, freq_masks=0)  # no SpecAugment in pretraining
    if tiny:
        c.data.audio.num_frames, c.data.audio.logmel.n_mels = 64, 32
    c.model = masked.model(
        "mae", "audio", mask_ratio=0.8, dtype=pod.DTYPE,
        encoder=towers.audio(pod.tower_size(v, towers.VIT_B), patch_time=16, patch_freq=16, posemb="sincos",
                             scan=True, remat="none"),
        decoder=pod.decoder(v, masked.DECODER_B))
    c.objective = masked.mae_objective(norm_pix=True)
    c.optim = trainer.adamw(lr=2e-4 * BATCH / 256, b1=0.9, b2=0.95, weight_decay=1e-4, grad_clip_norm=0.0,
                            warmup_steps=pod.steps(WARMUP_EPOCHS, AS2M_CLIPS, BATCH))
    c.eval = pod.eval_schedule(v, every_steps=20_000, batch_size=512)
    # Multi-label AudioSet has no single class per clip for the probes (see Data above).
    c.evals = evals.entries(evals.probes("audio", fewshot_shots=())) if v.data == "fake" else evals.entries()
    c.lock()
    return c
