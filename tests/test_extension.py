"""Extending mmjax from outside its source: a new modality, a dataset that provides it beside
images, an encoder for it and an evaluator, all registered in this file, then a contrastive
model trained and evaluated on them by the unchanged trainer and evaluation CLI code.

This is the proof that none of the four needs a core edit (issue 11): the only mmjax names
used are the registries and the base classes they take.
"""
import dataclasses
import pathlib
import sys

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import train
from mmjax.data.datasets import DATASETS, Dataset
from mmjax.data.datasets.mnist import load_raw
from mmjax.data.modalities import MODALITIES, Modality
from mmjax.data.transforms import BadInput, BadRecordError
from mmjax.evals.base import EVAL, EVALUATORS, TRAIN, Evaluator, Needs
from mmjax.evaluate import evaluate_checkpoint
from mmjax.models.encoders import ENCODERS, TokenEncoder

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from configs.blocks import contrastive, evals, towers, trainer  # noqa: E402
from mmjax.data.config import data_config  # noqa: E402

DIM = 32


def _mnist():
    images, labels = load_raw()
    return images, labels


# ---------------------------------------------------------------- a new modality
class Vector(Modality):
    """A fixed-length feature vector (e.g. precomputed embeddings, sensor readings): float32 [dim]."""

    name = "vector"
    encoder = "mlp"

    @classmethod
    def default_config(cls):
        return {"dim": DIM, "noise": 0.1}  # Gaussian noise added in training (its augmentation)

    def specs(self):
        return {"vector": ((self.cfg.dim,), np.float32)}

    def validate(self, value):
        if not isinstance(value, np.ndarray) or value.shape != (self.cfg.dim,):
            raise BadInput(f"has shape {getattr(value, 'shape', None)}, expected ({self.cfg.dim},)")
        if not np.isfinite(value).all():
            raise BadInput("has non-finite values")
        return value

    def __call__(self, value, rng, flags):
        value = value.astype(np.float32)
        if self.augmenting:
            value = value + self.cfg.noise * rng.standard_normal(value.shape).astype(np.float32)
        return {"vector": value}

    def fake(self, rng, flags, class_names=()):
        return {"vector": rng.standard_normal(self.cfg.dim).astype(np.float32)}


# ---------------------------------------------------------------- a new dataset
class DigitVectors(Dataset):
    """Embedded MNIST images beside a feature vector of each: a fixed random projection of its pixels."""

    name = "digit_vectors"
    fields = {"image": "pixels", "vector": "features"}
    prompt_templates = ("digit {name}",)
    SIZES = {"train": 1024, "test": 256}

    @property
    def class_names(self):
        return tuple(str(d) for d in range(10))

    def open_split(self, split):
        self._check_split(split, self.SIZES)
        images, labels = _mnist()
        start = 0 if split == "train" else self.SIZES["train"]
        rows = range(start, start + self.SIZES[split])
        projection = np.random.default_rng(0).standard_normal((28 * 28, DIM)) / 28.0
        records = [{"pixels": images[i][..., None], "label": int(labels[i]),
                    "features": (images[i].reshape(-1) / 255.0 @ projection).astype(np.float32)} for i in rows]
        return self.validated(records, split)


# ---------------------------------------------------------------- an encoder for it
class MLPEncoder(TokenEncoder):
    """x [B, D] -> a residual MLP; one token (the vector itself) so pooled == the only token."""

    width: int = 32
    depth: int = 2
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask=None):
        h = nn.Dense(self.width, dtype=self.dtype, param_dtype=self.param_dtype)(x)
        for _ in range(self.depth):
            h = h + nn.Dense(self.width, dtype=self.dtype, param_dtype=self.param_dtype)(nn.gelu(h))
        h = nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype)(h)
        return {"pooled": h, "tokens": h[:, None, :]}


# ---------------------------------------------------------------- an evaluator
@dataclasses.dataclass
class NearestCentroid(Evaluator):
    """Accuracy of the nearest class mean of the train split's frozen embeddings."""

    modalities: tuple[str, ...]

    def needs(self):
        return Needs(embeddings=tuple((m, s) for m in self.modalities for s in (TRAIN, EVAL)))

    def __call__(self, features):
        out = {}
        for m in self.modalities:
            train_x, test_x = features.embeddings[m, TRAIN], features.embeddings[m, EVAL]
            classes = np.unique(features.labels[TRAIN])
            centroids = np.stack([train_x[features.labels[TRAIN] == c].mean(0) for c in classes])
            predicted = classes[np.argmax(test_x @ centroids.T, axis=1)]
            out[f"centroid_top1_{m}"] = float(np.mean(predicted == features.labels[EVAL]))
        return out


@pytest.fixture(scope="module")
def registered():
    """The four components registered for this module's tests, and unregistered after."""
    entries = [(MODALITIES, "vector", Vector), (DATASETS, "digit_vectors", DigitVectors),
               (ENCODERS, "mlp", MLPEncoder), (EVALUATORS, "centroid", NearestCentroid)]
    for registry, name, obj in entries:
        registry.register(name, obj)
    yield
    for registry, name, _ in entries:
        registry.unregister(name)


def make_config(steps: int):
    """A contrastive image <-> vector recipe, composed from the config blocks as configs/*.py are."""
    modalities = ("image", "vector")
    c = trainer.cpu_run(True, total_steps=steps, batch_size=64)
    c.data = data_config("digit_vectors", modalities)
    size = towers.CPU["tiny"]
    c.model = contrastive.model(embed_dim=32, towers={"image": towers.vit(size, patch_size=7),
                                                      "vector": {"encoder": "mlp", "width": 32, "depth": 2}})
    c.objective = contrastive.objective("softmax", modalities)
    c.optim = trainer.adamw(lr=3e-3, warmup_steps=10)
    c.eval = evals.cpu_schedule(True)
    c.evals = evals.entries(evals.retrieval("vector:image", "image:vector"),
                            {"centroid": {"type": "centroid", "modalities": ("vector", "image")}})
    c.tensorboard = False
    c.lock()
    return c


def test_new_modality_dataset_encoder_and_evaluator_train_and_evaluate(registered, tmp_path):
    config = make_config(steps=150)
    assert config.data.vector.dim == DIM  # the modality's own config block, from its registration
    final = train.train_and_evaluate(config, str(tmp_path))
    # Instance-level retrieval of an image from its own vector and back: the two towers start
    # independent, so untrained R@10 is chance, 10/256 = 0.04 (150 steps reach about 0.3).
    assert final["r10_vector_image"] > 0.15 and final["r10_image_vector"] > 0.15, final
    # The registered evaluator ran on train and eval features of both modalities (chance 0.1).
    assert final["centroid_top1_image"] > 0.15 and final["centroid_top1_vector"] > 0.15, final
    # The standalone evaluator restores the run and finds the same numbers.
    again = evaluate_checkpoint(config, str(tmp_path))
    for key in ("r1_vector_image", "centroid_top1_vector"):
        assert again[key] == pytest.approx(final[key], abs=1e-6)


def test_new_dataset_validates_its_new_modality(registered):
    config = make_config(steps=1)
    dataset = DATASETS.get("digit_vectors")(config.data)
    records = dataset.open_split("test")
    assert records[3]["features"].shape == (DIM,)
    bad = [{"pixels": np.zeros((28, 28, 1), np.uint8), "label": 1, "features": np.full(DIM, np.nan, np.float32)}]
    with pytest.raises(BadRecordError, match=r"digit_vectors/test example 0: field 'features' \(vector\) has "
                                             r"non-finite values"):
        dataset.validated(bad, "test")[0]
