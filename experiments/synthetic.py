"""Synthetic data for the experiments: Symile's binary XOR triples.

Saporta et al., "Contrasting with Symile" (NeurIPS 2024), Sec. 5.1, and their
`BinaryXORDataset` (rajesh-lab/symile, experiments/datasets.py):

    a_j, b_j ~ Bernoulli(0.5),  i ~ Bernoulli(p) per example,
    c_j = (a_j XOR b_j) if i else a_j,     j = 1..d.

b is independent of a and of c separately (a XOR b is uniform whatever b is),
so any pairwise objective carries no information about b; b is a function of
(a, c) exactly when i = 1. The dependence strength p moves the information
from a pairwise term, I(a; c) (p = 0: c = a), to a purely higher-order one
(p = 1: c = a XOR b, every pair independent).
"""
from __future__ import annotations

import numpy as np


def xor_triples(rng: np.random.Generator, n: int, dim: int, p: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n samples of (a, b, c), each float32 [n, dim] of 0/1 bits, drawn as above."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p={p} is a probability, expected in [0, 1]")
    a = rng.integers(0, 2, size=(n, dim))
    b = rng.integers(0, 2, size=(n, dim))
    xor = rng.random(n) < p  # the per-example switch i: one draw for all d bits, as in the paper
    c = np.where(xor[:, None], a ^ b, a)
    return a.astype(np.float32), b.astype(np.float32), c.astype(np.float32)


def bits_to_index(bits: np.ndarray) -> np.ndarray:
    """[..., d] 0/1 -> int in [0, 2^d), the first bit most significant (the order of `all_bit_vectors`)."""
    bits = np.asarray(bits).astype(np.int64)
    return bits @ (1 << np.arange(bits.shape[-1] - 1, -1, -1))


def all_bit_vectors(dim: int) -> np.ndarray:
    """[2^d, d] float32: every candidate vector, row k the binary digits of k."""
    return ((np.arange(2 ** dim)[:, None] >> np.arange(dim - 1, -1, -1)) & 1).astype(np.float32)


def xor_bayes_accuracy(dim: int, p: float) -> float:
    """The best possible accuracy of predicting b from (a, c).

    If c != a, then i = 1 and b = a XOR c exactly. If c == a, either i = 0 (b
    uniform) or i = 1 and b = 0; P(c = a, b = 0) = 2^-d >= P(c = a, b = beta) =
    (1 - p) 2^-d for beta != 0, so guess b = 0. Accuracy = P(c != a) + 2^-d
    = p (1 - 2^-d) + 2^-d: chance (2^-d) at p = 0, 1 at p = 1.
    """
    chance = 2.0 ** -dim
    return p * (1.0 - chance) + chance
