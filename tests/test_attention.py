"""The attention core the encoder blocks use (layers.dot_product_attention) against NumPy."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.models.layers import _padded_attention, dot_product_attention


def _reference(q, k, v, mask):
    """softmax(q k^T / sqrt(d)) v per head in float64; masked logits get -1e30."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    logits = np.where(np.asarray(mask) != 0, logits, -1e30)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", p, v)


def test_matches_reference_with_flax_padding_and_causal_masks():
    rng = np.random.default_rng(0)
    b, n, h, d = 2, 7, 3, 8
    q, k, v = (rng.standard_normal((b, n, h, d)).astype(np.float32) for _ in range(3))
    valid = np.arange(n)[None, :] < np.array([[4], [7]])  # example 0 has 3 padding tokens
    # flax builds float 0/1 masks; padding queries attend to nothing (uniform weights, finite).
    mask = nn.combine_masks(nn.make_attention_mask(valid, valid), nn.make_causal_mask(jnp.zeros((b, n))))
    out = jax.jit(dot_product_attention)(q, k, v, mask)
    np.testing.assert_allclose(out, _reference(q, k, v, mask), rtol=1e-5, atol=1e-5)
    # The same as flax's own attention core, which the block used before.
    np.testing.assert_allclose(out, nn.dot_product_attention(q, k, v, mask=mask), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dot_product_attention(q, k, v), _reference(q, k, v, np.ones((1, 1, n, n))),
                               rtol=1e-5, atol=1e-5)


def test_padded_attention_for_cudnn_matches_unpadded():
    # The GPU path pads odd lengths (ViT-B/16: 197, CLIP text: 77) for cuDNN; its
    # padding logic is checked here through the XLA implementation on CPU.
    rng = np.random.default_rng(2)
    b, n, h, d = 2, 5, 2, 8
    q, k, v = (rng.standard_normal((b, n, h, d)).astype(np.float32) for _ in range(3))
    valid = np.arange(n)[None, :] < np.array([[3], [5]])
    # Padding masked as keys, as the towers do: every query row keeps a valid key.
    mask = nn.combine_masks(nn.make_attention_mask(np.ones_like(valid), valid), nn.make_causal_mask(valid))
    for m in (None, mask.astype(bool)):
        ref = _reference(q, k, v, np.ones((1, 1, n, n)) if m is None else m)
        out = jax.jit(_padded_attention, static_argnums=(4,))(q, k, v, m, "xla")
        assert out.shape == (b, n, h, d)
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_bfloat16_softmax_is_taken_in_float32():
    # Logits of tens, whose softmax weights a bf16 softmax (8 significant bits)
    # gets wrong by several percent: flax's bf16 core is off by 0.074 here, a
    # float32 softmax only by the bf16 rounding of inputs and output (~0.011).
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 16, 2, 64)).astype(np.float32) * s for s in (4.0, 4.0, 1.0))
    bf = [jnp.asarray(a, jnp.bfloat16) for a in (q, k, v)]
    out = dot_product_attention(*bf)
    ref = _reference(*(np.asarray(a, np.float32) for a in bf), np.ones((1, 1, 16, 16)))
    assert out.dtype == jnp.bfloat16
    assert np.max(np.abs(np.asarray(out, np.float32) - ref)) < 0.03
