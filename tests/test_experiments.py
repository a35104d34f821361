"""Logic of the experiment scripts that can break silently: synthetic data and small in-process trainers."""
import os
import sys

import numpy as np
import pytest

# experiments/ is a folder of scripts, not an installed package (pip install -e . ships mmjax only),
# and plain `pytest` does not put the repo root on sys.path.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import synthetic  # noqa: E402


@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_xor_triples_statistics(p):
    dim, n = 3, 200_000
    a, b, c = synthetic.xor_triples(np.random.default_rng(0), n, dim, p)
    assert {a.dtype, b.dtype, c.dtype} == {np.dtype(np.float32)} and a.shape == (n, dim)
    a, b, c = (x.astype(int) for x in (a, b, c))
    # A row satisfies c = a XOR b when the switch is on, or when it is off and b = 0.
    holds = np.all(c == a ^ b, axis=1).mean()
    assert abs(holds - (p + (1 - p) * 2.0 ** -dim)) < 0.005
    # Pairwise independence of b from a and from c, bit by bit: P(b_j = 1 | x_j = v) = 1/2.
    for x in (a, c):
        for v in (0, 1):
            assert np.all(np.abs(b[x[:, 0] == v].mean(axis=0) - 0.5) < 0.01)


@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_bayes_accuracy_matches_a_counting_classifier(p):
    # The best guess of b for each (a, c), learnt by counting on one sample, scored on another.
    dim, n = 2, 200_000
    rng = np.random.default_rng(1)
    train, test = (synthetic.xor_triples(rng, n, dim, p) for _ in range(2))

    def keys(a, c):
        return synthetic.bits_to_index(np.concatenate([a, c], axis=1))
    counts = np.zeros((4 ** dim, 2 ** dim))
    np.add.at(counts, (keys(train[0], train[2]), synthetic.bits_to_index(train[1])), 1)
    guess = counts.argmax(axis=1)[keys(test[0], test[2])]
    accuracy = np.mean(guess == synthetic.bits_to_index(test[1]))
    assert abs(accuracy - synthetic.xor_bayes_accuracy(dim, p)) < 0.01


def test_bit_vector_index_round_trip():
    vectors = synthetic.all_bit_vectors(4)
    np.testing.assert_array_equal(synthetic.bits_to_index(vectors), np.arange(16))
    np.testing.assert_array_equal(vectors[5], [0, 1, 0, 1])


def test_symile_learns_xor_and_pairwise_clip_cannot():
    # The experiment's own trainer, 5 epochs at p = 1: b = a XOR c is invisible to every pair.
    from experiments import symile_xor
    assert symile_xor.run("Symile", 1.0, seed=0, epochs=5) > 0.9
    assert abs(symile_xor.run("CLIP (pairwise)", 1.0, seed=0, epochs=5) - 1 / 32) < 0.02


def test_load_config_applies_overrides_as_the_command_line_does():
    # missing_modalities rebuilds a run's model from this config to restore its checkpoint: a
    # one-element tuple, a bool or a variant lost on the way would restore a different model.
    from experiments import common
    c = common.load_config("configs/bind_avdigits.py:mode=all_pairs,drop=0.5,steps=7,model=tiny",
                           {"seed": 3, "optim.warmup_steps": 2, "evals.retrieval.pairs": ("audio:image",),
                            "tensorboard": False})
    assert (c.objective.mode, c.total_steps, c.seed, c.optim.warmup_steps, c.batch_size) == ("all_pairs", 7, 3, 2, 32)
    assert c.evals.retrieval.pairs == ("audio:image",) and c.tensorboard is False
    assert (c.data.drop_prob.audio, c.data.drop_prob.text, c.data.drop_prob.image) == (0.5, 0.5, 0.0)
    with pytest.raises(ValueError, match="did you mean 'warmup_steps'"):
        common.load_config("configs/bind_avdigits.py", {"optim.warmup_step": 2})
