"""mmjax.ingest end to end: real-format corpora (tests/real_formats.py) -> TFDS ArrayRecord dirs,
read back with `tfds.builder_from_directory(out).as_data_source(split)` as training reads them."""
import io
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import tensorflow_datasets as tfds
from PIL import Image

import real_formats as rf
from mmjax.ingest import checks, cli, writer


def convert(built, out, *extra, split="train"):
    rc = cli.main([*built.args, "--out", str(out), "--split", split, "--workers", "1", *extra])
    assert rc == 0
    return str(out)


def read_split(out, split="train") -> dict:
    """{key: example} as the pipeline reads it: raw bytes, deserialised with NumPy only."""
    builder = tfds.builder_from_directory(str(out))
    raw = builder.as_data_source(split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    examples = [builder.info.features.deserialize_example_np(raw[i]) for i in range(len(raw))]
    out = {ex["key"].decode(): ex for ex in examples}
    assert len(out) == len(examples), "keys are unique"
    return out


def reported(out, split="train") -> dict:
    with open(os.path.join(out, f"ingest_report_{split}.json")) as f:
        report = json.load(f)
    assert report["skipped"] == len(report["members"]) == sum(report["skipped_by_reason"].values())
    return {m["member"]: m["reason"] for m in report["members"]}


def check_image(data: bytes, expected: dict):
    decoded = np.asarray(Image.open(io.BytesIO(data)))
    assert decoded.shape == expected["pixels"].shape
    diff = np.abs(decoded.astype(int) - expected["pixels"]).mean()
    assert diff < 2.0 if expected["lossy"] else diff == 0


def files_named(root, fragment) -> list[str]:
    return [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if fragment in f]


# ------------------------------------------------------------------ one test per kind

def test_webdataset_tars_with_corrupt_members(tmp_path, monkeypatch):
    built = rf.write_webdataset(str(tmp_path / "src"), n=120, num_shards=3)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)  # a member extracted relative to cwd would land here
    out = tmp_path / "nested" / "cc3m"
    assert cli.main([*built.args, "--out", str(out), "--workers", "2"]) == 0
    got = read_split(out)
    assert sorted(got) == sorted(built.records)
    for key, ex in got.items():
        want = built.records[key]
        check_image(ex["image"], want)
        assert ex["caption"].decode() == want["caption"]
        assert ex["json"].decode() == want["json"]
    assert reported(out) == built.skipped
    info = tfds.builder_from_directory(str(out)).info
    assert info.splits["train"].num_shards == 3 and info.file_format == tfds.core.FileFormat.ARRAY_RECORD
    # `../evil.jpg` is only a key: nothing of it exists on disk, in or around out.
    assert not files_named(tmp_path, "evil") and not os.path.exists("/etc/passwd.txt")
    assert not os.path.exists(tmp_path / "nested" / "evil.jpg")


def test_webdataset_with_class_labels_from_json_or_cls_members(tmp_path):
    """--label-key: a class label per example, from a .json field or webdataset's <key>.cls."""
    built = rf.write_webdataset(str(tmp_path / "src"), n=40, num_shards=2, corrupt=False)
    names = tmp_path / "classes.txt"
    names.write_text("\n".join(rf.mnist.CLASS_NAMES))
    out = convert(built, tmp_path / "json", "--label-key", "label", "--class-names", str(names))
    got = read_split(out)
    assert {k: int(ex["label"]) for k, ex in got.items()} == {k: r["label"] for k, r in built.records.items()}
    assert tfds.builder_from_directory(out).info.features["label"].names == list(rf.mnist.CLASS_NAMES)
    # ImageNet-style shards: <key>.cls holds the class index; a class outside the names is skipped.
    images, labels, captions = rf.digits(6)
    tar_path = tmp_path / "cls" / "shard-00000.tar"
    tar_path.parent.mkdir()
    with rf.tarfile.open(tar_path, "w") as tar:
        for i in range(6):
            rf.add_member(tar, f"{i:03d}.png", rf.encode(images[i], "PNG"))
            rf.add_member(tar, f"{i:03d}.txt", captions[i].encode())
            rf.add_member(tar, f"{i:03d}.cls", str(int(labels[i]) if i else 12).encode())
    out = cli.main(["webdataset", str(tar_path), "--out", str(tmp_path / "cls_out"), "--workers", "1",
                    "--label-key", "cls", "--class-names", str(names)])
    got = read_split(tmp_path / "cls_out")
    assert out == 0 and {k: int(ex["label"]) for k, ex in got.items()} == {f"{i:03d}": int(labels[i]) for i in range(1, 6)}
    assert reported(tmp_path / "cls_out") == {"000.png": "unknown_label"}
    assert cli.main([*built.args, "--out", str(tmp_path / "x"), "--label-key", "label"]) == 2  # names missing


def test_csv_table(tmp_path):
    built = rf.write_csv(str(tmp_path / "src"), n=90)
    out = convert(built, tmp_path / "out", "--examples-per-shard", "40")
    got = read_split(out)
    assert sorted(got) == sorted(built.records)
    for key, ex in got.items():
        check_image(ex["image"], built.records[key])
        assert ex["caption"].decode() == built.records[key]["caption"]
        assert json.loads(ex["json"])["filepath"] == key
    assert reported(out) == built.skipped
    assert tfds.builder_from_directory(out).info.splits["train"].num_shards == 3  # 93 rows / 40


def test_imagefolder(tmp_path):
    built = rf.write_imagefolder(str(tmp_path / "src"), n=80)
    got = read_split(convert(built, tmp_path / "out"))
    features = tfds.builder_from_directory(str(tmp_path / "out")).info.features
    assert tuple(features["label"].names) == tuple(sorted(rf.mnist.CLASS_NAMES))
    assert sorted(got) == sorted(built.records)
    for key, ex in got.items():
        check_image(ex["image"], built.records[key])
        assert features["label"].names[ex["label"]] == rf.mnist.CLASS_NAMES[built.records[key]["label"]]
        assert key.split("/")[0] == rf.mnist.CLASS_NAMES[built.records[key]["label"]]
    assert reported(str(tmp_path / "out")) == built.skipped


@pytest.mark.parametrize("multi_label", [False, True])
def test_audio_with_label_csv(tmp_path, multi_label):
    built = rf.write_audio(str(tmp_path / "src"), num_clips=24, multi_label=multi_label)
    out = convert(built, tmp_path / "out")
    got = read_split(out)
    features = tfds.builder_from_directory(out).info.features
    assert sorted(got) == sorted(built.records)
    for key, ex in got.items():
        want = built.records[key]
        wave, rate = soundfile.read(io.BytesIO(ex["audio"]), dtype="float32")
        assert rate == 8000 and np.abs(wave - want["wave"]).max() <= 1 / 32768
        if multi_label:
            assert [features["labels"].feature.names[i] for i in ex["labels"]] == want["labels"]
        else:
            assert features["label"].names[ex["label"]] == want["label"]
    assert reported(out) == built.skipped


def test_point_clouds(tmp_path):
    built = rf.write_points(str(tmp_path / "src"), n=30)
    out = convert(built, tmp_path / "out")
    got = read_split(out)
    names = tfds.builder_from_directory(out).info.features["label"].names
    assert sorted(got) == sorted(built.records)
    for key, ex in got.items():
        want = built.records[key]
        assert ex["points"].dtype == np.float32 and ex["points"].shape == want["points"].shape
        np.testing.assert_allclose(ex["points"], want["points"], atol=0 if want["exact"] else 1e-5)
        assert names[ex["label"]] == rf.mnist.CLASS_NAMES[want["label"]]
    assert reported(out) == built.skipped


def test_point_h5_files(tmp_path):
    h5py = pytest.importorskip("h5py")
    clouds = np.random.default_rng(0).normal(size=(7, 50, 3)).astype(np.float32)
    clouds[3, 4, 0] = np.inf
    path = tmp_path / "ply_data_train0.h5"
    with h5py.File(path, "w") as f:
        f["data"], f["label"] = clouds, np.array([[0], [1], [2], [1], [0], [2], [1]], np.uint8)
    (tmp_path / "shape_names.txt").write_text("airplane\nbathtub\nbed\n")
    out = str(tmp_path / "out")
    assert cli.main(["points", str(path), "--out", out, "--workers", "1"]) == 0
    got = read_split(out)
    assert sorted(got) == [f"ply_data_train0.h5/{i}" for i in (0, 1, 2, 4, 5, 6)]
    np.testing.assert_array_equal(got["ply_data_train0.h5/5"]["points"], clouds[5])
    assert tfds.builder_from_directory(out).info.features["label"].names == ["airplane", "bathtub", "bed"]
    assert reported(out) == {"ply_data_train0.h5#3": "non_finite_points"}


@pytest.mark.parametrize("data, ext, reason", [
    (rf.encode(rf.digits()[0][0], "PNG"), "jpg", "format_mismatch"),
    (rf.encode(rf.digits()[0][0], "PNG")[:-30], "png", "undecodable_image"),
    (rf.truncated_jpeg(rf.digits()[0][0]), "jpg", "undecodable_image"),
    (b"%!PS-Adobe-3.0 EPSF-3.0\n", "jpg", "not_an_image"),
    (b"", "png", "empty"),
])
def test_image_checks(data, ext, reason):
    with pytest.raises(checks.Skip) as e:
        checks.image(data, ext)
    assert e.value.reason == reason


@pytest.mark.parametrize("text, n", [("OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n", 3),
                                     ("OFF3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n", 3),
                                     ("OFF 2 0 0\n0 0 0\n1 1 1\n", 2)])
def test_off_headers(text, n):
    assert checks.points(text.encode(), "off").shape == (n, 3)


def test_truncated_archive_keeps_what_came_before(tmp_path):
    built = rf.write_webdataset(str(tmp_path / "src"), n=20, num_shards=1, corrupt=False)
    path = tmp_path / "src" / "shard-00000.tar"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    out = convert(built, tmp_path / "out")
    got, skipped = read_split(out), reported(out)
    assert 0 < len(got) < 20 and set(got) < set(built.records)
    assert list(skipped.values()) == ["bad_archive"]


# ------------------------------------------------------------------ resume, splits, errors, Beam

def test_resume_rewrites_only_the_missing_shard(tmp_path):
    built = rf.write_webdataset(str(tmp_path / "src"), n=60, num_shards=3, corrupt=False)
    out = convert(built, tmp_path / "out")
    before = read_split(out)
    shards = sorted(p for p in os.listdir(out) if ".array_record-" in p)
    state = os.path.join(out, writer.STATE_DIR, "train")
    stamp = {p: os.stat(os.path.join(out, p)).st_mtime_ns for p in shards}
    stamp_json = {p: os.stat(os.path.join(state, p + ".json")).st_mtime_ns for p in shards}
    os.remove(os.path.join(out, shards[1]))
    os.remove(os.path.join(state, shards[1] + ".json"))
    convert(built, tmp_path / "out")
    after = read_split(out)
    assert sorted(after) == sorted(before)
    for key in before:
        assert all(np.array_equal(before[key][f], after[key][f]) for f in before[key])
    for p in (shards[0], shards[2]):
        assert os.stat(os.path.join(out, p)).st_mtime_ns == stamp[p]
        assert os.stat(os.path.join(state, p + ".json")).st_mtime_ns == stamp_json[p]
    assert os.path.exists(os.path.join(out, shards[1]))
    assert not [f for f in os.listdir(state) if ".tmp" in f]


def test_two_splits_share_one_dir_and_must_agree(tmp_path, capsys):
    out = tmp_path / "digits"
    train = rf.write_webdataset(str(tmp_path / "tars"), n=40, num_shards=2, corrupt=False)
    test = rf.write_csv(str(tmp_path / "csv"), n=30, corrupt=False)
    convert(train, out)
    convert(test, out, split="test")
    info = tfds.builder_from_directory(str(out)).info
    assert {s: info.splits[s].num_examples for s in info.splits} == {"train": 40, "test": 30}
    assert len(read_split(out, "test")) == 30 and len(read_split(out, "train")) == 40
    # Rerunning train with other inputs needs --overwrite.
    other = rf.write_webdataset(str(tmp_path / "tars2"), n=10, num_shards=1, corrupt=False)
    assert cli.main([*other.args, "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    convert(other, out, "--overwrite")
    assert tfds.builder_from_directory(str(out)).info.splits["train"].num_examples == 10
    # ClassLabel names that differ between splits are an error.
    folders = tmp_path / "folders"
    rf.write_imagefolder(str(folders / "train"), n=20, corrupt=False)
    rf.write_imagefolder(str(folders / "test"), n=20, corrupt=False)
    os.rename(folders / "test" / "zero", folders / "test" / "nought")
    assert cli.main(["imagefolder", str(folders / "train"), "--out", str(tmp_path / "f")]) == 0
    capsys.readouterr()
    assert cli.main(["imagefolder", str(folders / "test"), "--out", str(tmp_path / "f"), "--split", "test"]) == 2
    err = capsys.readouterr().err.strip()
    assert "ClassLabel names" in err and len(err.splitlines()) == 1


def test_cli_errors_are_one_line_and_exit_2(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    built = rf.write_imagefolder(str(tmp_path / "src"), n=10, corrupt=False)
    cases = [
        (["webdataset", str(tmp_path / "none-{000..003}.tar"), "--out", str(tmp_path / "o")], "no input files matched"),
        ([*built.args, "--out", str(blocker / "sub")], "cannot be created"),
        ([*built.args, "--out", str(tmp_path / "o"), "--no-such-option"], "unrecognized arguments"),
        (["csv", "--csv", str(blocker), "--out", str(tmp_path / "o")], "has no column"),
    ]
    for argv, message in cases:
        assert exit_code(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    proc = subprocess.run([sys.executable, "-m", "mmjax.ingest", "points", str(tmp_path / "nowhere"), "--out",
                           str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"mmjax.ingest: error: no input files matched {str(tmp_path / 'nowhere')!r}"]


def exit_code(argv) -> int:
    try:
        return cli.main(argv)
    except SystemExit as e:  # argparse's own errors
        return e.code


def test_tasks_are_picklable(tmp_path):
    built = rf.write_imagefolder(str(tmp_path / "src"), n=10, corrupt=False)
    units, spec = cli.plan(cli.build_parser().parse_args([*built.args, "--out", str(tmp_path / "o")]))
    tasks = writer.make_tasks(units, spec, str(tmp_path / "o"), "digits", "train")
    assert pickle.loads(pickle.dumps(tasks)) == tasks


def test_beam_direct_runner_matches_the_pool(tmp_path):
    pytest.importorskip("apache_beam")
    built = rf.write_webdataset(str(tmp_path / "src"), n=60, num_shards=2)
    pool = read_split(convert(built, tmp_path / "pool"))
    out = convert(built, tmp_path / "beam", "--runner", "beam", "--beam-options", "--runner=DirectRunner")
    beam = read_split(out)
    assert sorted(beam) == sorted(pool)
    for key in pool:
        assert all(np.array_equal(pool[key][f], beam[key][f]) for f in pool[key])
    assert reported(out) == built.skipped
