"""Pod-scale configs (configs/pod): 2 steps each on fake data at tiny size through the trainer,
their full-size parameter counts from shapes alone, the fake dataset, and tools/plan.py."""
import importlib
import json
import pathlib
import sys

import jax
import numpy as np
import pytest

from mmjax import metrics, train
from mmjax.data import pipeline
from mmjax.data.modalities import MODALITIES
from mmjax.data.tokenizer import from_data_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
import plan  # noqa: E402

POD = ("mae_vitb16_in1k", "clip_vitb16", "audiomae_vitb_audioset", "pointmae_shapenet")


def _config(name, arg=""):
    return importlib.import_module(f"configs.pod.{name}").get_config(arg)


# clip_vitb16 trains the same way with data=real in tests/test_real_data.py (a converted corpus).
@pytest.mark.parametrize("name", [n for n in POD if n != "clip_vitb16"])
def test_tiny_fake_run_trains_two_steps(name, tmp_path):
    """data=fake,size=tiny through train_and_evaluate on a 2x2 (data x fsdp) mesh, with 2 accumulated
    micro-batches (GradCache for CLIP, plain for the masked models): scan, remat, bf16, FSDP."""
    config = _config(name, "data=fake,size=tiny")
    with config.unlocked():
        config.accumulation.steps = 2
    final = train.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:4])
    assert final["steps"] == 2
    losses = {r["step"]: r["train/loss"] for r in metrics.read_metrics(str(tmp_path)) if "train/loss" in r}
    assert sorted(losses) == [1, 2] and all(np.isfinite(list(losses.values())))
    assert (tmp_path / "checkpoints" / "2").is_dir()


def _block(d, m):
    """Parameters of one transformer block: q, k, v, out (kernel + bias), 2 LayerNorms, the MLP."""
    return 4 * d * d + 4 * d + 2 * 2 * d + d * m + m + m * d + d


def _vit(patch, channels, d, depth, m, positions=0, cls=True):
    return patch * patch * channels * d + d + positions * d + depth * _block(d, m) + 2 * d + (d if cls else 0)


def _encoder_params(plan_, modality):
    prefix = f"params/{modality}_encoder/"
    return sum(int(np.prod(leaf.shape)) for leaf in plan_.leaves if leaf.path.startswith(prefix))


def test_full_size_parameter_counts_from_shapes_alone():
    """The real configs at full size, through jax.eval_shape only (nothing allocated)."""
    mesh = plan.parse_mesh("data=16,fsdp=4")
    counts = {name: plan.make_plan(_config(name), mesh, activations=False) for name in POD}
    vit_b16 = _vit(16, 3, 768, 12, 3072)  # [CLS] token, fixed sin-cos positions
    assert _encoder_params(counts["mae_vitb16_in1k"], "image") == vit_b16 == 85_647_360  # ViT-B/16's ~86M
    clip = counts["clip_vitb16"]
    assert _encoder_params(clip, "image") == vit_b16 + 196 * 768  # + learned positions
    # CLIP's "63M-parameter" text transformer: 49,408 BPE ids, 77 positions, 12 blocks of width 512.
    text = 49_408 * 512 + 77 * 512 + 12 * _block(512, 2048) + 2 * 512
    assert _encoder_params(clip, "text") == text and round(text / 1e6) == 63
    assert clip.num_params == vit_b16 + 196 * 768 + text + (768 + 512) * 512 + 2  # + projections, temperature, bias
    # AudioMAE's fine-tuning log prints 85,659,407 parameters: this encoder plus a [CLS] token
    # (768) and the 527-class AudioSet head.
    audio = _encoder_params(counts["audiomae_vitb_audioset"], "audio")
    assert audio == _vit(16, 1, 768, 12, 3072, cls=False) and audio + 768 + 768 * 527 + 527 == 85_659_407
    pointnet = (3 * 128 + 128) + 2 * 128 + (128 * 256 + 256) + (512 * 512 + 512) + 2 * 512 + (512 * 384 + 384)
    point_pos = (3 * 128 + 128) + (128 * 384 + 384)
    assert _encoder_params(counts["pointmae_shapenet"], "points") == pointnet + point_pos + 12 * _block(384, 1536) + 768


def test_plan_bytes_match_hand_computation():
    """FSDP over 4 (tiny configs shard every leaf with a dimension divisible by 4): per-device
    bytes = total / 4 for such leaves, total for the rest; Adam keeps two of each plus counters."""
    tiny_clip = _config("clip_vitb16", "data=fake,size=tiny")
    p = plan.make_plan(tiny_clip, plan.parse_mesh("data=2,fsdp=4"), activations=False)
    params = [leaf for leaf in p.leaves if leaf.path.startswith("params/")]
    total = sum(4 * int(np.prod(leaf.shape)) for leaf in params)
    device = sum(4 * int(np.prod(leaf.shape)) // (4 if any(d % 4 == 0 for d in leaf.shape) else 1)
                 for leaf in params)
    assert device < total / 2  # most of the model is sharded
    assert p.groups["params"] == (total, device)
    counters = [leaf for leaf in p.leaves if leaf.path.startswith("opt_state/") and leaf.path.endswith("count")]
    assert p.groups["optimizer state"][1] == 2 * device + sum(leaf.device_bytes for leaf in counters)
    kernel = next(leaf for leaf in p.leaves if leaf.path == "params/image_encoder/patch_embed/kernel")
    assert kernel.shape == (8, 8, 3, 32) and kernel.device_bytes == 8 * 8 * 3 * 8 * 4
    assert p.micro_batch == 16 // 8
    # Tensor parallelism: the MLP's hidden units split over 'tensor' (rules name trailing dims).
    with tiny_clip.unlocked():
        tiny_clip.sharding.tensor_parallel = True
    p = plan.make_plan(tiny_clip, plan.parse_mesh("data=1,fsdp=2,tensor=2"), activations=False)
    fc1 = next(leaf for leaf in p.leaves if leaf.path == "params/image_encoder/encoder/blocks/mlp/fc1/kernel")
    assert fc1.shape == (2, 32, 64) and tuple(fc1.spec) == (None, None, "tensor")
    assert fc1.device_bytes == 2 * 32 * 32 * 4


def test_plan_activations_follow_remat_and_accumulation():
    mesh = plan.parse_mesh("data=2,fsdp=2")

    def saved(remat, steps):
        tiny_clip = _config("clip_vitb16", "data=fake,size=tiny")
        with tiny_clip.unlocked():
            for tower in tiny_clip.model.towers.values():
                tower.remat = remat
            tiny_clip.accumulation.steps = steps
        return plan.make_plan(tiny_clip, mesh).activation_bytes
    full, none, none_acc = saved("full", 1), saved("none", 1), saved("none", 2)
    assert 0 < full < none and none_acc < none  # remat keeps less; half the rows keep less


def test_plan_cli_on_the_pod_mesh(capsys):
    plan.main(["--config", str(ROOT / "configs/pod/clip_vitb16.py"), "--mesh", "data=64,fsdp=4", "--top", "3"])
    out = capsys.readouterr().out
    num_params = _vit(16, 3, 768, 12, 3072) + 196 * 768 + 49_408 * 512 + 77 * 512 + 12 * _block(512, 2048) + 1024 \
        + (768 + 512) * 512 + 2
    assert "(256 devices); batch 32768 = 128 per device" in out and f"{num_params / 1e6:.2f}M params" in out
    for row in ("params", "optimizer state", "activations (remat full, bfloat16)", "total per device"):
        assert row in out
    assert out.count(" MiB  ") == 3


def test_fake_examples_have_the_planned_shapes_and_resume_exactly():
    """Every modality at the shapes pipeline.input_specs (and so tools/plan.py) promises, fixed per
    record, and a restored Grain iterator continues with the same batches."""
    data = _config("clip_vitb16", "data=fake,size=tiny").data
    with data.unlocked():
        data.modalities = tuple(MODALITIES.names())  # the fake dataset makes every registered modality
    tok = from_data_config(data)
    make = lambda: pipeline.make_train_iterator(data, global_batch_size=8, seed=0, tokenizer=tok,  # noqa: E731
                                                shard_index=0, shard_count=1)
    it = make()
    first = next(it)
    state = json.loads(json.dumps(it.get_state()))
    second = next(it)
    shapes = pipeline.input_specs(data, tok)
    assert set(shapes.pop("present")) == set(first["present"]) == set(MODALITIES.names())
    for key, (shape, dtype) in shapes.items():
        assert first[key].shape == (8, *shape) and first[key].dtype == dtype, key
    assert (first["text"] == tok.eot_id).any(axis=1).all() and first["audio_mask"].any(axis=1).all()
    np.testing.assert_allclose(np.linalg.norm(first["points"], axis=-1).max(axis=1), 1.0, rtol=1e-6)
    resumed = make()
    resumed.set_state(state)
    again = next(resumed)
    for key in ("image", "text", "audio", "points", "label"):
        np.testing.assert_array_equal(again[key], second[key])
    assert not np.array_equal(first["image"], second["image"])
    evals = pipeline.make_eval_batches(data, split=data.eval_split, batch_size=16, tokenizer=tok)
    assert len(evals) == 2 and evals[0]["mask"].all()  # 32 eval records
