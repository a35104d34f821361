"""Start-up checks of config values (mmjax.validate) and the CLI's one-line errors and exit codes."""
import importlib
import os
import re
import subprocess
import sys

import pytest

from mmjax import validate
from mmjax.config_utils import apply_overrides
from mmjax.errors import EXIT_CONFIG, EXIT_ERROR, ConfigError
from test_config import CONFIG_NAMES, ROOT  # every shipped config, listed once

MISSING = "/nonexistent/mmjax-run"
VALID = r"; valid: \[.*"


def _config(name: str = "clip_digits", variant: str = "model=tiny", overrides=()):
    config = importlib.import_module(f"configs.{name}").get_config(variant)
    apply_overrides(config, overrides)
    return config


@pytest.mark.parametrize("name, overrides, line", [
    # sizes, steps and cadences
    ("clip_digits", ["batch_size=0"], r"config.batch_size=0: must be an integer > 0"),
    ("clip_digits", ["batch_size=-4"], r"config.batch_size=-4: must be an integer > 0"),
    ("clip_digits", ["total_steps=0"], r"config.total_steps=0: must be an integer > 0"),
    ("clip_digits", ["log_every_steps=0"], r"config.log_every_steps=0: must be an integer > 0"),
    ("clip_digits", ["eval.batch_size=0"], r"config.eval.batch_size=0: must be an integer > 0"),
    ("clip_digits", ["eval.every_steps=-1"], r"config.eval.every_steps=-1: must be an integer >= 0 \(0: off\)"),
    ("clip_digits", ["checkpoint.every_steps=0"], r"config.checkpoint.every_steps=0: must be an integer > 0"),
    ("clip_digits", ["accumulation.steps=0"], r"config.accumulation.steps=0: must be an integer > 0"),
    ("clip_digits", ["data.num_workers=-2"], r"config.data.num_workers=-2: must be an integer >= 0, or -1 .*"),
    ("clip_digits", ["guard.max_consecutive_skips=0"], r"config.guard.max_consecutive_skips=0: must be an integer > 0"),
    ("clip_digits", ["profile.num_steps=0"], r"config.profile.num_steps=0: must be an integer > 0"),
    ("clip_digits", ["profile.start_step=-2"], r"config.profile.start_step=-2: must be a step >= 0, or -1 \(off\)"),
    ("clip_digits", ["mesh.fsdp=0"], r"config.mesh.fsdp=0: must be an integer > 0, or -1 .*"),
    ("clip_digits", ["mesh.fsdp=-1"], r"config.mesh=\{'data': -1, 'fsdp': -1, 'tensor': 1\}: "
                                      r"at most one axis may be -1"),
    # learning rate and optimiser
    ("clip_digits", ["optim.lr=1e999"], r"config.optim.lr=inf: must be a finite number > 0"),
    ("clip_digits", ["optim.lr=-1"], r"config.optim.lr=-1.0: must be a finite number > 0"),
    ("clip_digits", ["optim.lr=0"], r"config.optim.lr=0.0: must be a finite number > 0"),
    ("clip_digits", ["optim.warmup_steps=-1"], r"config.optim.warmup_steps=-1: must be an integer >= 0"),
    ("clip_digits", ["optim.weight_decay=-0.1"], r"config.optim.weight_decay=-0.1: must be a finite number >= 0"),
    ("clip_digits", ["optim.b2=1"], r"config.optim.b2=1.0: must be a number in \[0, 1\)"),
    ("clip_digits", ["optim.name=adam"], r"config.optim.name='adam': unknown optimizer \(did you mean 'adamw'\?\)"
                                         r"; valid: \['adamw', 'sgd'\]"),
    ("clip_digits", ["optim.schedule=cos"], r"config.optim.schedule='cos': unknown schedule "
                                            r"\(did you mean 'cosine'\?\)" + VALID),
    # registry names
    ("clip_digits", ["objective.name=infonce"], r"config.objective.name='infonce': unknown objective" + VALID
                                                + "'softmax'.*"),
    ("clip_digits", ["data.name=nope"], r"config.data.name='nope': unknown dataset" + VALID + "'digits_captions'.*"),
    ("clip_digits", ["model.towers.text.encoder=txt"], r"config.model.towers.text.encoder='txt': unknown encoder"
                                                       r" \(did you mean 'text'\?\)" + VALID),
    ("clip_digits", ["evals.zeroshot.type=zeroshoot"], r"config.evals.zeroshot.type='zeroshoot': unknown evaluator"
                                                       r" \(did you mean 'zeroshot'\?\)" + VALID + r"'none'\]"),
    ("clip_digits", ["accumulation.mode=exact"], r"config.accumulation.mode='exact': unknown accumulation mode"
                                                 r"; valid: \['gradcache', 'plain'\]"),
    ("clip_digits", ["guard.non_finite=ignore"], r"config.guard.non_finite='ignore': unknown guard mode"
                                                 r"; valid: \['skip', 'stop'\]"),
    ("clip_digits", ["wandb.mode=on"], r"config.wandb.mode='on': unknown wandb mode"
                                       r"; valid: \['online', 'offline', 'disabled'\]"),
    ("clip_digits", ["data.text.tokenizer=bytez"], r"config.data.text.tokenizer='bytez': unknown tokenizer"
                                                   r" \(did you mean 'bytes'\?\)" + VALID),
    # patch sizes, heads and groups against what they cut
    ("clip_digits", ["model.towers.image.patch_size=5"], r"config.model.towers.image.patch_size=5 does not divide "
                                                         r"config.data.image.shape\[0\]=28 and "
                                                         r"config.data.image.shape\[1\]=28"),
    ("clip_digits", ["model.towers.image.patch_size=0"], r"config.model.towers.image.patch_size=0: must be an "
                                                         r"integer > 0"),
    ("clip_digits", ["model.towers.text.num_heads=3"], r"config.model.towers.text.width=32 does not split into "
                                                       r"num_heads=3 heads"),
    ("mae_digits", ["model.encoder.patch_size=5"], r"config.model.encoder.patch_size=5 does not divide "
                                                   r"config.data.image.shape\[0\]=28 and "
                                                   r"config.data.image.shape\[1\]=28"),
    ("audiomae_fsdd", ["model.encoder.patch_freq=10"], r"config.model.encoder.patch_freq=10 does not divide "
                                                       r"config.data.audio.logmel.n_mels=64"),
    ("multimae_avdigits", ["model.modalities.audio.patch=(7, 16)"], r"config.model.modalities.audio.patch\[0\]=7 "
                                                                    r"does not divide config.data.audio.num_frames=96"),
    ("pointmae_digits", ["model.encoder.num_groups=200"], r"config.model.encoder.num_groups=200 exceeds "
                                                          r"config.data.points.num_points=128"),
    # paths
    ("clip_digits", [f"init_from.workdir={MISSING}"], rf"config.init_from.workdir='{MISSING}': no such directory.*"),
    ("clip_digits", [f"model.reference.init_from={MISSING}"], rf"config.model.reference.init_from='{MISSING}': "
                                                              r"no such directory.*"),
    ("clip_digits", ["data.name=tfds"], r"data.tfds: set name .* or dir .*"),
    ("clip_digits", ["data.name=tfds", f"data.tfds.dir={MISSING}"], rf"data.tfds.dir='{MISSING}' is not a prepared "
                                                                    r"dataset directory .*"),
    ("clip_digits", ["data.name=tfds", "data.tfds.name=mnist", f"data.data_dir={MISSING}"],
     rf"data.tfds.name='mnist': no such TFDS dataset under data.data_dir={MISSING} .*"),
])
def test_a_bad_value_is_one_line_naming_the_field_and_the_valid_values(name, overrides, line):
    variant = "model=tiny" if name in ("clip_digits", "mae_digits", "audiomae_fsdd", "pointmae_digits") else ""
    assert validate.problems(_config(name, variant)) == []  # the same config without the override is fine
    with pytest.raises(ConfigError) as e:
        validate.check(_config(name, variant, overrides))
    assert len(e.value.problems) == 1 and re.fullmatch(line, e.value.problems[0]), e.value.problems


def test_every_problem_is_listed_at_once():
    config = _config(overrides=["batch_size=0", "optim.lr=1e999", "objective.name=infonce", "total_steps=0",
                                "model.towers.image.patch_size=5", "evals.retrieval.type=none"])
    with pytest.raises(ConfigError) as e:
        validate.check(config)
    fields = [p.split("=")[0] for p in e.value.problems]
    assert fields == ["config.batch_size", "config.total_steps", "config.optim.lr",
                      "config.model.towers.image.patch_size", "config.objective.name"]  # evals type "none" is fine
    assert str(e.value) == "\n".join(e.value.problems)


@pytest.mark.parametrize("name", sorted(CONFIG_NAMES))
def test_every_shipped_config_passes(name, tmp_path, monkeypatch):
    """Default variants, given that the finished runs they start from exist (cwcl_digits' locked tower)."""
    config = importlib.import_module(name).get_config()
    monkeypatch.chdir(tmp_path)
    for path in ("init_from.workdir", "model.reference.init_from"):
        if validate.get(config, path, ""):
            os.makedirs(validate.get(config, path))
    validate.check(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # checked, not created


def test_workdir_must_be_a_directory_that_can_be_created(tmp_path):
    config = _config()
    afile = tmp_path / "file"
    afile.write_text("")
    assert validate.problems(config, str(afile)) == [f"--workdir={str(afile)!r}: is a file, not a directory"]
    under = afile / "sub" / "run"
    assert validate.problems(config, str(under)) == [f"--workdir={str(under)!r}: cannot be created: {afile} is a file"]
    assert validate.problems(config, str(tmp_path / "a" / "b")) == [] and not (tmp_path / "a").exists()


def test_workdir_in_a_read_only_directory(tmp_path, monkeypatch):
    """Writability is os.access on the nearest existing parent. The tests run as root, whom os.access
    lets write anywhere, so here os.access answers "read-only" for that one directory."""
    read_only = tmp_path / "ro"
    read_only.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: p != str(read_only) and real_access(p, mode))
    workdir = str(read_only / "runs" / "new")
    assert validate.problems(_config(), workdir) == [f"--workdir={workdir!r}: {read_only} is not writable"]


def _cli(workdir, *flags):
    return subprocess.run([sys.executable, "-m", "mmjax.main", "--config=configs/clip_digits.py:model=tiny",
                           f"--workdir={workdir}", *flags], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_cli_bad_values_exit_2_with_one_line_each_and_no_workdir(tmp_path):
    workdir = tmp_path / "new"
    proc = _cli(workdir, "--config.batch_size=0", "--config.optim.lr=-1")
    assert proc.returncode == EXIT_CONFIG, proc.stderr
    assert proc.stderr.splitlines() == ["error: config.batch_size=0: must be an integer > 0",
                                        "error: config.optim.lr=-1.0: must be a finite number > 0"]
    assert not workdir.exists()


def test_cli_runtime_error_is_one_line_with_the_traceback_in_the_log(tmp_path):
    """A mesh the devices do not fit fails in the trainer, after the start-up checks."""
    workdir = tmp_path / "new"
    proc = _cli(workdir, "--config.mesh.data=3")
    log = workdir / "logs" / "error.log"
    assert proc.returncode == EXIT_ERROR, proc.stderr
    # The first line is the error; the trace of it is only in the log. (Lines after it would be other
    # threads' shutdown noise, e.g. orbax's cleanup when the trainer leaves its checkpoint manager open.)
    assert re.fullmatch(rf"error: ValueError: mesh \{{'data': 3, .*\}} needs 3 devices, have \d+ \(full traceback: "
                        rf"{re.escape(str(log))}; rerun with --debug to print it\)", proc.stderr.splitlines()[0]), \
        proc.stderr
    assert proc.stderr.count("ValueError: mesh") == 1, proc.stderr
    text = log.read_text()
    assert text.startswith("=== ") and "--config.mesh.data=3" in text.splitlines()[0]
    assert "Traceback (most recent call last)" in text and "ValueError: mesh" in text
