"""Config variants and overrides: typed, validated, with the valid keys in every error."""
import pathlib
import sys

import pytest

from mmjax.config_utils import apply_overrides, split_overrides, with_default

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from configs import clip_digits  # noqa: E402


def test_variant_selects_loss_model_steps_and_rejects_unknowns():
    config = clip_digits.get_config("loss=sigmoid,model=tiny,steps=7")
    assert (config.objective.name, config.total_steps, config.model.logit_bias_init) == ("sigmoid", 7, -10.0)
    with pytest.raises(ValueError, match=r"unknown config key 'los'.*did you mean 'loss'.*valid keys: \['loss', 'model', 'steps'\]"):
        clip_digits.get_config("los=sigmoid")
    with pytest.raises(ValueError, match=r"valid: \['softmax', 'sigmoid', 'dcl'"):
        clip_digits.get_config("loss=hinge")
    with pytest.raises(ValueError, match=r"steps='many': expected int"):
        clip_digits.get_config("steps=many")


def test_overrides_are_typed():
    config = clip_digits.get_config("model=tiny")
    apply_overrides(config, ["optim.lr=1", "batch_size=64", "tensorboard=false", "eval.retrieval_ks=(1, 3)",
                             "optim.schedule=linear", "mesh.data=2"])
    assert config.optim.lr == 1.0 and isinstance(config.optim.lr, float)
    assert (config.batch_size, config.tensorboard, config.eval.retrieval_ks) == (64, False, (1, 3))
    assert (config.optim.schedule, config.mesh.data) == ("linear", 2)
    # the text context follows the tokenizer length through a field reference
    apply_overrides(config, ["data.text_len=20"])
    assert config.model.towers.text.max_len == 20


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=0.1", r"unknown config key 'lrr' in config.optim \(did you mean 'lr'\?\); valid keys: \['b1'"),
    ("batch_size=1.5", r"config batch_size='1.5': expected int"),
    ("tensorboard=maybe", r"expected bool"),
    ("optim=3", r"config optim is a group of fields \(\['b1'"),
    ("seed.x=3", r"config.seed is a value, not a group"),
    ("lr", r"expected --config.<key>=<value>"),
])
def test_bad_overrides_fail_with_valid_keys(override, message):
    with pytest.raises(ValueError, match=message):
        apply_overrides(clip_digits.get_config("model=tiny"), [override])


def test_split_overrides_keeps_other_flags_in_order():
    rest, overrides = split_overrides(["prog", "--config=c.py:x", "--config.a.b=1", "--workdir=w", "--config.c=2"])
    assert rest == ["prog", "--config=c.py:x", "--workdir=w"]
    assert overrides == ["a.b=1", "c=2"]


def test_with_default_adds_a_key_only_when_missing():
    assert with_default("", "mask", 0.8) == "mask=0.8"
    assert with_default("model=tiny", "mask", 0.8) == "model=tiny,mask=0.8"
    assert with_default("model=tiny,mask=0.5", "mask", 0.8) == "model=tiny,mask=0.5"
    assert with_default(None, "mask", 0.6) == "mask=0.6"
