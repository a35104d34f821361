"""The layering of DESIGN.md, checked on the source: who may import whom, and one train step.

These are the rules that keep a component's knowledge in its own module (issue 11): models,
data and evaluators never import the losses; a particular dataset is imported only by its own
module (and the registry that lists it); evaluation and the scripts share the builders in
mmjax/step.py, not the trainer; exactly one `train_step` exists.
"""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCES = sorted(p for folder in ("mmjax", "configs", "tools", "benchmarks", "experiments")
                 for p in (ROOT / folder).rglob("*.py") if "peers" not in p.parts)
DATASET_MODULES = {p.stem for p in (ROOT / "mmjax/data/datasets").glob("*.py")} - {"__init__", "base"}


def imports(path: pathlib.Path) -> set[str]:
    """Every module `path` imports, absolute, with `from a import b` also giving a.b."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{alias.name}" for alias in node.names}
    return out


def rel(path: pathlib.Path) -> str:
    return path.relative_to(ROOT).as_posix()


def offenders(sources, forbidden) -> dict[str, list[str]]:
    return {rel(p): sorted(m for m in imports(p) if forbidden(m)) for p in sources
            if any(forbidden(m) for m in imports(p))}


def under(prefix: str):
    return [p for p in SOURCES if rel(p).startswith(prefix)]


@pytest.mark.parametrize("layer, forbidden", [
    ("mmjax/models/", ("mmjax.objectives", "mmjax.data", "mmjax.checkpoint", "mmjax.evals", "mmjax.train")),
    ("mmjax/data/", ("mmjax.objectives", "mmjax.models", "mmjax.evals", "mmjax.train", "mmjax.step")),
    ("mmjax/evals/", ("mmjax.objectives", "mmjax.train", "mmjax.step")),
    ("mmjax/objectives/", ("mmjax.data", "mmjax.evals", "mmjax.train", "mmjax.step")),
    ("configs/", ("mmjax.objectives", "mmjax.models", "mmjax.train")),
])
def test_layers_import_only_downwards(layer, forbidden):
    found = offenders(under(layer), lambda m: m.startswith(forbidden))
    assert not found, f"{layer} must not import {forbidden}: {found}"


def test_base_modules_import_no_component():
    base = [ROOT / f"mmjax/{name}.py" for name in ("registry", "batch_keys", "similarity", "parallel", "metrics",
                                                   "config_utils")]
    found = offenders(base, lambda m: m.startswith(("mmjax.models", "mmjax.objectives", "mmjax.data", "mmjax.evals")))
    assert not found, found


def test_a_dataset_module_is_imported_only_by_itself_and_the_registry():
    def is_dataset_module(m):
        parts = m.split(".")
        return parts[:3] == ["mmjax", "data", "datasets"] and len(parts) > 3 and parts[3] in DATASET_MODULES

    allowed = {"mmjax/data/datasets/__init__.py"}
    # The embedded MNIST source is shared by the two datasets built from it.
    shared = {"mmjax/data/datasets/digits.py": {"mnist"}, "mmjax/data/datasets/avdigits.py": {"mnist"}}
    found = {}
    for path in SOURCES:
        name = rel(path)
        if name in allowed:
            continue
        own = {path.stem} | shared.get(name, set()) if name.startswith("mmjax/data/datasets/") else set()
        bad = sorted(m for m in imports(path) if is_dataset_module(m) and m.split(".")[3] not in own)
        if bad:
            found[name] = bad
    # tools/train_bpe.py fits the embedded vocabulary to the MNIST captions: that is its job.
    found.pop("tools/train_bpe.py", None)
    assert not found, found


def test_one_train_step_and_evaluate_does_not_import_the_trainer():
    defs = [rel(p) for p in SOURCES for node in ast.walk(ast.parse(p.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "train_step"]
    assert defs == ["mmjax/step.py"], defs
    scripts = [ROOT / "mmjax/evaluate.py", *under("tools/"), *under("benchmarks/"), *under("experiments/")]
    found = offenders(scripts, lambda m: m == "mmjax.train" or m.startswith("mmjax.train."))
    assert not found, f"scripts share mmjax.step, not the trainer: {found}"
