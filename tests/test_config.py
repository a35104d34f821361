"""Config variants and overrides: typed, validated, with the valid keys in every error; configs
composed from configs/blocks, never from one another."""
import ast
import importlib
import pathlib
import sys

import pytest

from mmjax.config_utils import apply_overrides, split_overrides

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
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
    apply_overrides(config, ["optim.lr=1", "batch_size=64", "tensorboard=false", "evals.retrieval.ks=(1, 3)",
                             "optim.schedule=linear", "mesh.data=2"])
    assert config.optim.lr == 1.0 and isinstance(config.optim.lr, float)
    assert (config.batch_size, config.tensorboard, config.evals.retrieval.ks) == (64, False, (1, 3))
    assert (config.optim.schedule, config.mesh.data) == ("linear", 2)
    # the text context follows the tokenizer length through a field reference
    apply_overrides(config, ["data.text.max_len=20"])
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


def _modules(folder: str) -> list[pathlib.Path]:
    return sorted((ROOT / folder).glob("*.py"))


def _is_config(path: pathlib.Path) -> bool:
    tree = ast.parse(path.read_text())
    return any(isinstance(node, ast.FunctionDef) and node.name == "get_config" for node in tree.body)


CONFIGS = [p for p in _modules("configs") + _modules("configs/pod") if _is_config(p)]
CONFIG_NAMES = {".".join(p.relative_to(ROOT).with_suffix("").parts) for p in CONFIGS}


def _imports(path: pathlib.Path) -> set[str]:
    """Dotted names `path` imports: modules, and module.name for `from module import name`."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return out


def test_no_config_imports_another_config_or_the_objectives():
    """Each config stands alone, composed from configs/blocks helpers (which are not configs), and
    names losses by string: configs never import mmjax.objectives (the objective validates)."""
    assert len(CONFIGS) >= 16 and not any(_is_config(p) for p in _modules("configs/blocks"))
    for path in CONFIGS + _modules("configs/blocks"):
        imports = _imports(path)
        others = sorted(imports & (CONFIG_NAMES - {".".join(path.relative_to(ROOT).with_suffix("").parts)}))
        assert not others, f"{path.relative_to(ROOT)} imports the config(s) {others}"
        objectives = sorted(name for name in imports if name.split(".")[:2] == ["mmjax", "objectives"])
        assert not objectives, f"{path.relative_to(ROOT)} imports {objectives}"


@pytest.mark.parametrize("name", sorted(CONFIG_NAMES))
def test_every_config_builds_locked_and_rejects_unknown_variant_keys(name):
    module = importlib.import_module(name)
    config = module.get_config()
    assert config.is_locked and {"data", "model", "objective", "optim", "eval", "evals"} <= set(config.keys())
    assert all("type" in entry for entry in config.evals.values())
    with pytest.raises(ValueError, match=r"unknown config key 'nope' in the config variant.*valid keys: \['"):
        module.get_config("nope=1")
