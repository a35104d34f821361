"""Towers: output contract, scan/remat equivalence, masking, config errors."""
import chex
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmjax.models import ENCODERS, MODELS, build_model, layers
from mmjax.models.encoders import TokenEncoder, build_encoder
from mmjax.models.text import TextTransformer
from mmjax.models.towers import ContrastiveModel
from mmjax.models.vit import ViT

TINY = dict(width=32, depth=2, num_heads=2, mlp_dim=64)


def init(model, *args):
    """Jitted init: one compile instead of hundreds of eager op dispatches."""
    return jax.jit(model.init)(jax.random.key(0), *args)


def apply(model, variables, *args):
    return jax.jit(model.apply)(variables, *args)


def _unstack_scan_params(params):
    """Scanned encoder params {'blocks': [L, ...]} -> the loop layout {'block_00': ..., ...}."""
    flat = flax.traverse_util.flatten_dict(params)
    out = {}
    for path, v in flat.items():
        if "blocks" in path:
            i = path.index("blocks")
            for layer in range(v.shape[0]):
                out[path[:i] + (f"block_{layer:02d}",) + path[i + 1:]] = v[layer]
        else:
            out[path] = v
    return flax.traverse_util.unflatten_dict(out)


@pytest.mark.parametrize("pool", ["mean", "max", "tok"])
def test_vit_output_contract(pool):
    model = ViT(patch_size=7, pool=pool, **TINY)
    x = jax.random.normal(jax.random.key(0), (3, 28, 28, 1))
    out = apply(model, init(model, x), x)
    chex.assert_shape(out["pooled"], (3, 32))
    chex.assert_shape(out["tokens"], (3, 16, 32))
    chex.assert_tree_all_finite(out)


@pytest.mark.parametrize("remat", ["none", "full"])
def test_scan_matches_layer_loop(remat):
    """nn.scan over layers computes exactly what the unrolled stack computes."""
    x = jax.random.normal(jax.random.key(0), (2, 28, 28, 1))
    scanned = ViT(patch_size=7, scan=True, remat=remat, **TINY)
    looped = ViT(patch_size=7, scan=False, **TINY)
    params = init(scanned, x)["params"]
    y_scan = apply(scanned, {"params": params}, x)
    y_loop = apply(looped, {"params": _unstack_scan_params(params)}, x)
    np.testing.assert_allclose(y_scan["pooled"], y_loop["pooled"], atol=1e-5)

    def loss(p, m):
        return jnp.sum(m.apply({"params": p}, x)["pooled"] ** 2)
    grad = jax.jit(jax.grad(loss), static_argnums=1)
    g_scan = _unstack_scan_params(grad(params, scanned))
    g_loop = grad(_unstack_scan_params(params), looped)
    chex.assert_trees_all_close(g_scan, g_loop, atol=1e-5)


def test_text_causal_eot_pool_ignores_padding_and_future():
    model = TextTransformer(vocab_size=50, max_len=8, causal=True, pool="eot", eot_id=2, **TINY)
    # Padding with id 0 after the eot; the second row also has a real token 0
    # before its eot (as CLIP's "!"), which must stay valid.
    text = jnp.array([[1, 5, 6, 2, 0, 0, 0, 0], [1, 7, 0, 9, 10, 2, 0, 0]])
    variables = init(model, text)
    out = apply(model, variables, text)
    chex.assert_shape(out["tokens"], (2, 8, 32))
    # pooled is the EOT token (last non-pad position)
    np.testing.assert_allclose(out["pooled"][0], out["tokens"][0, 3], atol=1e-6)
    np.testing.assert_allclose(out["pooled"][1], out["tokens"][1, 5], atol=1e-6)
    # Padding after the eot is ignored.
    out_pad = apply(model, variables, text.at[0, 5].set(17))
    np.testing.assert_allclose(out_pad["pooled"][0], out["pooled"][0], atol=1e-6)
    # Causal: changing a later token leaves earlier tokens untouched.
    changed = text.at[1, 4].set(11)
    out2 = apply(model, variables, changed)
    np.testing.assert_allclose(out2["tokens"][1, :4], out["tokens"][1, :4], atol=1e-6)
    assert not np.allclose(out2["pooled"][1], out["pooled"][1])


def test_text_mean_pool_bidirectional():
    model = TextTransformer(vocab_size=50, max_len=6, causal=False, pool="mean", eot_id=2, **TINY)
    text = jnp.array([[1, 5, 6, 2, 0, 0]])
    variables = init(model, text)
    out = apply(model, variables, text)
    np.testing.assert_allclose(out["pooled"][0], out["tokens"][0, :4].mean(0), atol=1e-6)
    # Bidirectional: the first token sees later ones.
    out2 = apply(model, variables, text.at[0, 2].set(9))
    assert not np.allclose(out2["tokens"][0, 0], out["tokens"][0, 0])


def test_contrastive_model_embeddings_and_dtypes():
    towers = {"image": dict(encoder="vit", patch_size=7, **TINY),
              "text": dict(encoder="text", vocab_size=50, max_len=8, eot_id=2, **TINY)}
    model = ContrastiveModel(towers=towers, embed_dim=16, logit_scale_init=10.0, logit_bias_init=-10.0,
                             dtype="bfloat16", param_dtype="float32")
    batch = {"image": jnp.ones((2, 28, 28, 1)), "text": jnp.array([[1, 4, 2, 0, 0, 0, 0, 0]] * 2)}
    variables = init(model, batch)
    out = apply(model, variables, batch)
    for m in ("image", "text"):
        chex.assert_shape(out["embeddings"][m], (2, 16))
        assert out["embeddings"][m].dtype == jnp.float32
        np.testing.assert_allclose(np.linalg.norm(out["embeddings"][m], axis=-1), 1.0, rtol=1e-5)
        assert out["tokens"][m].dtype == jnp.bfloat16
    chex.assert_trees_all_equal_dtypes(variables["params"], jax.tree_util.tree_map(
        lambda x: jnp.zeros((), jnp.float32), variables["params"]))
    np.testing.assert_allclose(out["logit_scale"], 10.0, rtol=1e-6)
    np.testing.assert_allclose(out["logit_bias"], -10.0)
    # A batch without text encodes only the image.
    only_image = apply(model, variables, {"image": batch["image"]})
    assert set(only_image["embeddings"]) == {"image"}


def test_bad_tower_config_lists_valid_fields():
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['widht'\].*valid: \[.*'width'"):
        build_encoder("image", {"encoder": "vit", "widht": 3}, "float32", "float32")
    with pytest.raises(ValueError, match=r"valid: \['audio', 'points', 'text', 'vit'\]"):
        build_encoder("image", {"encoder": "resnet"}, "float32", "float32")
    with pytest.raises(ValueError, match="unknown remat policy"):
        init(ViT(patch_size=7, remat="some", **TINY), jnp.ones((1, 28, 28, 1)))


def test_an_encoder_registered_outside_mmjax_is_a_tower():
    """A project's encoder needs its class and one registration line, no edit of mmjax."""
    @ENCODERS.register("test_mlp")
    class VectorMLP(TokenEncoder):  # feature vector [B, F] -> one token
        width: int = 8
        dtype: jnp.dtype = jnp.float32
        param_dtype: jnp.dtype = jnp.float32

        @nn.compact
        def __call__(self, x, mask=None):
            h = nn.Dense(self.width, dtype=self.dtype, param_dtype=self.param_dtype)(x)
            return {"pooled": h, "tokens": h[:, None]}

    try:
        towers = {"image": dict(encoder="vit", patch_size=14, **TINY), "vector": dict(encoder="test_mlp", width=8)}
        model = ContrastiveModel(towers=towers, embed_dim=16)
        batch = {"image": jnp.ones((2, 28, 28, 1)), "vector": jnp.ones((2, 5))}
        out = apply(model, init(model, batch), batch)
        chex.assert_shape(out["embeddings"]["vector"], (2, 16))
        assert out["token_masks"]["vector"].shape == (2, 1) and out["token_masks"]["vector"].all()  # the default
        assert model.modalities == ("image", "vector")
    finally:
        ENCODERS.unregister("test_mlp")


def test_every_model_kind_says_what_it_embeds():
    tiny_vit = dict(encoder="vit", patch_size=7, **TINY)
    decoder = {"width": 32, "depth": 1, "num_heads": 2, "mlp_dim": 64}
    common = {"dtype": "float32", "param_dtype": "float32"}
    configs = {
        "contrastive": {"towers": {"image": tiny_vit, "audio": dict(encoder="audio", **TINY)}, "embed_dim": 8,
                        "logit_scale_init": 10.0, "logit_bias_init": 0.0},
        "mae": {"modality": "image", "encoder": tiny_vit, "mask_ratio": 0.75, "decoder": decoder},
        "data2vec": {"modality": "image", "encoder": tiny_vit, "mask_ratio": 0.75, "decoder": decoder},
        "simmim": {"modality": "image", "encoder": tiny_vit, "mask_ratio": 0.6, "masking": "block",
                   "mask_cell": (1, 1)},
        "multimae": {"modalities": {"image": {"patch": (7, 7)}, "audio": {"patch": (8, 8)}}, "encoder": TINY,
                     "decoder": decoder, "num_keep": 8, "alpha": 1.0},
    }
    assert sorted(configs) == MODELS.names()
    for kind, cfg in configs.items():
        model = build_model(ml_collections.ConfigDict({"kind": kind, **common, **cfg}))
        want = ["audio", "image"] if kind in ("contrastive", "multimae") else ["image"]
        assert isinstance(model.modalities, tuple) and sorted(model.modalities) == want, kind
    with pytest.raises(ValueError, match=r"model.kind='clip'; valid: \['contrastive', 'data2vec'"):
        build_model(ml_collections.ConfigDict({"kind": "clip"}))


def test_sincos_posemb_matches_formula():
    pe = layers.posemb_sincos_1d(5, 8)
    pos, i = 3, 1
    omega = 1.0 / 10_000 ** (i / 4)
    np.testing.assert_allclose(pe[pos, i], np.sin(pos * omega), rtol=1e-6)
    np.testing.assert_allclose(pe[pos, 4 + i], np.cos(pos * omega), rtol=1e-6)
    assert layers.posemb_sincos_2d(2, 3, 8).shape == (6, 8)
