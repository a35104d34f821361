"""Reading what corpora ship as: planning the shards of each kind, and reading one shard's members.

Planning (`plan_<kind>`, in the driver) turns the command line into work units (a tar, an h5
file, or a chunk of `FileItem`s) and the `FeatureSpec`, so class names are fixed before any worker
starts and every split of a dataset agrees on them. Reading (`read`, in a worker) yields for each
candidate example a `Raw` (unchecked bytes) or a `checks.Skip` naming a member that cannot even
be paired up; `spec.to_example` then verifies the Raw.

Archives are streamed (`tarfile` mode "r|*": plain, gz, bz2, xz) and held in memory one member at
a time; nothing is extracted, so a member named `../x` or `/etc/x` is only a key, never a path.
Members are grouped by webdataset's key rule (the name up to the first dot of its base name);
a key's group is emitted once it has an image and a caption and the archive moves on to another
key, so memory stays at about one example unless the archive interleaves keys.
"""
from __future__ import annotations

import csv
import glob
import json
import os
import re
import tarfile
from collections.abc import Iterator

from mmjax.ingest import checks
from mmjax.ingest.spec import FeatureSpec, FileItem, Raw, ShardTask, UsageError

H5_EXTS = ("h5", "hdf5")
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")
_WDS_NAME = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # webdataset: key = up to the first dot of the base name


# ------------------------------------------------------------------ inputs

def expand_braces(pattern: str) -> list[str]:
    """`shard-{00000..00009}.tar` and `{a,b}` expanded (zero padding kept), left to right."""
    match = _BRACE.search(pattern)
    if not match:
        return [pattern]
    body = match.group(1)
    rng = _RANGE.match(body)
    if rng:
        lo, hi = rng.group(1), rng.group(2)
        width = len(lo) if lo.startswith("0") and len(lo) > 1 else 0
        step = 1 if int(hi) >= int(lo) else -1
        options = [str(i).zfill(width) for i in range(int(lo), int(hi) + step, step)]
    else:
        options = body.split(",")
    head, tail = pattern[:match.start()], pattern[match.end():]
    return [p for option in options for p in expand_braces(head + option + tail)]


def expand_inputs(patterns) -> list[str]:
    """Files named by globs and brace ranges, in the order given (each glob sorted); a pattern that
    matches nothing is a UsageError."""
    out, missing = [], []
    for pattern in patterns:
        for p in expand_braces(os.path.expanduser(pattern)):
            found = sorted(glob.glob(p)) if glob.has_magic(p) else ([p] if os.path.exists(p) else [])
            (out.extend(found) if found else missing.append(p))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UsageError(f"no input files matched {missing[0]!r}{more}")
    if not out:
        raise UsageError("no input files given")
    return list(dict.fromkeys(os.path.abspath(p) for p in out))


def _file_units(items: list[FileItem], size: int) -> list[tuple[str, tuple]]:
    """FileItems in chunks of `size`: one output shard each."""
    if size < 1:
        raise UsageError(f"--examples-per-shard must be >= 1, got {size}")
    return [("files", tuple(items[i:i + size])) for i in range(0, len(items), size)]


def read_class_names(path: str) -> tuple[tuple[str, ...], dict[str, str]]:
    """(names, aliases) from a file: one name a line, or AudioSet's class_labels_indices.csv
    (index,mid,display_name), whose display names become the names and whose mids are aliases
    (the label column of AudioSet's segment CSVs holds mids)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise UsageError(f"--class-names {path}: {e.strerror or e}") from None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    aliases = {}
    header = [c.strip() for c in next(csv.reader(lines[:1]), [])]
    if "mid" in header and "display_name" in header:
        rows = list(csv.DictReader(lines, skipinitialspace=True))
        if "index" in header:
            rows.sort(key=lambda r: int(r["index"]))
        mids = [r["mid"].strip() for r in rows]
        display = [r["display_name"].strip() for r in rows]
        names = display if len(set(display)) == len(display) else mids
        aliases = {m: n for m, n in zip(mids, names)}
    else:
        names = lines
    return validate_class_names(names, f"--class-names {path}"), aliases


def validate_class_names(names, where: str) -> tuple[str, ...]:
    names = tuple(names)
    if not names:
        raise UsageError(f"{where}: no class names")
    bad = [n for n in names if not n or n != n.strip() or "\n" in n]
    if bad:
        raise UsageError(f"{where}: class name {bad[0]!r} is empty, padded or spans lines")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UsageError(f"{where}: class names repeated: {dup[:5]}")
    return names


def _ext(path: str) -> str:
    return os.path.splitext(path)[1][1:].lower()


def _class_folders(root: str) -> list[str]:
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def _files_under(folder: str, exts) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        out.extend(os.path.join(dirpath, f) for f in sorted(filenames) if _ext(f) in exts)
    return out


def _root(path: str, what: str) -> str:
    if not os.path.isdir(path):
        raise UsageError(f"{what} {path!r} is not a directory")
    return os.path.abspath(path)


def _open_text(path: str, what: str):
    try:
        return open(path, encoding="utf-8", newline="")
    except OSError as e:
        raise UsageError(f"{what} {path}: {e.strerror or e}") from None


# ------------------------------------------------------------------ planning, one function per kind
# Each returns (units, spec): a unit is (ShardTask.source, ShardTask.inputs), one per output shard.

Plan = tuple[list[tuple[str, tuple]], FeatureSpec]


def plan_webdataset(shards, label_key: str = "", class_names_file: str = "") -> Plan:
    """One output shard per tar, in the order given; with `label_key` ("cls": the <key>.cls member,
    else a .json field) a class label too, named by --class-names."""
    if bool(label_key) != bool(class_names_file):
        raise UsageError("--label-key and --class-names go together: a labelled corpus needs its class names")
    names = read_class_names(class_names_file)[0] if class_names_file else ()
    return [("tar", (p,)) for p in expand_inputs(shards)], FeatureSpec("image_text", names, label_key=label_key)


def plan_csv(csv_path: str, images_root: str, img_key: str, caption_key: str, sep: str,
             examples_per_shard: int) -> Plan:
    """open_clip's CsvDataset table (or .jsonl with the same keys): image path + caption per row."""
    (csv_path,) = expand_inputs([csv_path])
    root = _root(images_root, "--images-root") if images_root else ""
    items = []
    with _open_text(csv_path, "--csv") as f:
        if csv_path.endswith(".jsonl"):
            rows = []
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append((n, json.loads(line)))
                    except ValueError:
                        rows.append((n, None))
        else:
            reader = csv.DictReader(f, delimiter=sep)
            columns = reader.fieldnames or []
            for k, flag in ((img_key, "--img-key"), (caption_key, "--caption-key")):
                if k not in columns:
                    raise UsageError(f"--csv {csv_path} has no column {k!r} ({flag}); columns: {columns[:10]} "
                                     f"(separator {sep!r}, set --sep)")
            rows = [(n, row) for n, row in enumerate(reader, 2)]
    for n, row in rows:
        where = f"{os.path.basename(csv_path)}:{n}"
        if not isinstance(row, dict) or not isinstance(row.get(img_key), str) or not row.get(img_key):
            items.append(FileItem(where, ""))
            continue
        caption = row.get(caption_key)
        items.append(FileItem(row[img_key], os.path.abspath(os.path.join(root, row[img_key])),
                              caption=caption if isinstance(caption, str) else None,
                              json=json.dumps(row, ensure_ascii=False, default=str)))
    if not items:
        raise UsageError(f"--csv {csv_path} has no rows")
    return _file_units(items, examples_per_shard), FeatureSpec("image_text")


def plan_imagefolder(root: str, class_names_file: str, examples_per_shard: int) -> Plan:
    """torchvision ImageFolder: ROOT/<class>/**/<image>; classes are the sorted folder names."""
    root = _root(root, "imagefolder ROOT")
    folders = _class_folders(root)
    names = read_class_names(class_names_file)[0] if class_names_file else validate_class_names(folders, root)
    items = [FileItem(os.path.relpath(p, root).replace(os.sep, "/"), p, labels=(cls,))
             for cls in folders for p in _files_under(os.path.join(root, cls), checks.IMAGE_FORMATS)]
    if not items:
        raise UsageError(f"imagefolder {root}: no images in class folders (ROOT/<class>/<image>)")
    return _file_units(items, examples_per_shard), FeatureSpec("image_class", names)


def plan_audio(csv_path: str, audio_root: str, file_key: str, label_key: str, multi_label: bool,
               class_names_file: str, sep: str, examples_per_shard: int) -> Plan:
    """Audio files listed in a CSV with their label(s). AudioSet's segment CSVs work as shipped:
    `#` comment lines, the header as a comment (`# YTID, start_seconds, end_seconds,
    positive_labels`), spaces after the separators and labels quoted as "/m/09x0r,/m/05zppz"."""
    (csv_path,) = expand_inputs([csv_path])
    root = _root(audio_root, "--audio-root") if audio_root else ""
    header, items = None, []
    with _open_text(csv_path, "--csv") as f:
        for n, row in enumerate(csv.reader(f, delimiter=sep, skipinitialspace=True), 1):
            if not row or not "".join(row).strip():
                continue
            comment = row[0].lstrip().startswith("#")
            if header is None:
                cells = [c.strip() for c in ([row[0].lstrip().lstrip("#")] + row[1:])]
                if file_key in cells and label_key in cells:
                    header = cells
                elif not comment:
                    raise UsageError(f"--csv {csv_path}: header {cells[:10]} lacks --file-key {file_key!r} "
                                     f"or --label-key {label_key!r} (separator {sep!r}, set --sep)")
                continue
            if comment:
                continue
            values = dict(zip(header, (c.strip() for c in row)))
            name, value = values.get(file_key), values.get(label_key)
            if not name or value is None:
                items.append(FileItem(f"{os.path.basename(csv_path)}:{n}", ""))
                continue
            labels = tuple(x.strip() for x in value.split(",") if x.strip()) if multi_label else (value,)
            items.append(FileItem(name, os.path.abspath(os.path.join(root, name)), labels=labels))
    if header is None:
        raise UsageError(f"--csv {csv_path}: no header with columns {file_key!r} and {label_key!r}")
    good = [it for it in items if it.path]
    if not good:
        raise UsageError(f"--csv {csv_path} has no rows")
    if class_names_file:
        names, aliases = read_class_names(class_names_file)
        items = [it._replace(labels=tuple(aliases.get(x, x) for x in it.labels)) if it.path else it for it in items]
    else:
        names = validate_class_names(sorted({x for it in good for x in it.labels}), f"--csv {csv_path} labels")
    return _file_units(items, examples_per_shard), FeatureSpec("audio", names, multi_label)


def plan_points(inputs, class_names_file: str, split: str, examples_per_shard: int) -> Plan:
    """Point clouds: ROOT/<class>/**/<file>.{npy,txt,off} (if ROOT/<class>/<split>/ exists, as in
    ModelNet40's OFF release, only that subfolder), and .h5 files given as inputs (one shard each;
    `data` [K, N, 3] and integer `label` [K]; class names from --class-names, else a
    shape_names.txt beside the first h5 file, else the label indices)."""
    paths = expand_inputs(inputs)
    h5_files = [p for p in paths if os.path.isfile(p) and _ext(p) in H5_EXTS]
    roots = [p for p in paths if os.path.isdir(p)]
    other = sorted(set(paths) - set(h5_files) - set(roots))
    if other:
        raise UsageError(f"points: {other[0]!r} is neither a class-folder ROOT nor an .h5 file")
    items, folders = [], set()
    for root in roots:
        for cls in _class_folders(root):
            folder = os.path.join(root, cls)
            if os.path.isdir(os.path.join(folder, split)):
                folder = os.path.join(folder, split)
            found = _files_under(folder, checks.POINT_EXTS)
            if found:
                folders.add(cls)
            items += [FileItem(os.path.relpath(p, root).replace(os.sep, "/"), p, labels=(cls,)) for p in found]
    if h5_files:
        _h5py()
    if class_names_file:
        names = read_class_names(class_names_file)[0]
    elif folders:
        names = validate_class_names(sorted(folders), "points class folders")
    elif h5_files:
        shape_names = os.path.join(os.path.dirname(h5_files[0]), "shape_names.txt")
        names = (read_class_names(shape_names)[0] if os.path.isfile(shape_names)
                 else tuple(str(i) for i in range(_max_h5_label(h5_files) + 1)))
    else:
        raise UsageError(f"points {inputs}: no point files (ROOT/<class>/<file>.npy|txt|off) and no .h5 files")
    units = [("h5", (p,)) for p in h5_files] + (_file_units(items, examples_per_shard) if items else [])
    return units, FeatureSpec("points", names)


def _h5py():
    try:
        import h5py
    except ImportError:
        raise UsageError("reading .h5 point files needs h5py, which is not installed: pip install h5py") from None
    return h5py


def _max_h5_label(paths) -> int:
    h5py = _h5py()
    top = 0
    for p in paths:
        with h5py.File(p, "r") as f:
            if "label" in f and f["label"].size:
                top = max(top, int(f["label"][()].max()))
    return top


# ------------------------------------------------------------------ reading one shard

def read(task: ShardTask) -> Iterator[Raw | checks.Skip]:
    reader = {"tar": _read_tar, "files": _read_files, "h5": _read_h5}[task.source]
    for inp in task.inputs:
        yield from reader(inp)


def _read_files(item: FileItem) -> Iterator[Raw | checks.Skip]:
    if not item.path:
        yield checks.Skip("bad_row", "row lacks the file column or does not parse", item.key)
        return
    data, path = None, item.path
    candidates = [path] + ([f"{path}.{e}" for e in checks.AUDIO_EXTS] if not _ext(path) else [])
    for path in candidates:  # AudioSet's YTID column names the file without its extension
        try:
            with open(path, "rb") as f:
                data = f.read()
            break
        except OSError as e:
            error = e
    if data is None:
        yield checks.Skip("missing_file", f"{type(error).__name__}: {error.strerror or error}", item.key)
        return
    if not data:
        yield checks.Skip("empty", "0 bytes", item.key)
        return
    yield Raw(member=item.key, key=item.key, media=data, ext=_ext(path), caption=item.caption,
              json=item.json if item.json else None, labels=item.labels)


def _read_h5(path: str) -> Iterator[Raw | checks.Skip]:
    h5py = _h5py()
    name = os.path.basename(path)
    try:
        with h5py.File(path, "r") as f:
            data, labels = f["data"][()], f["label"][()].reshape(-1)
    except Exception as e:  # OSError (not HDF5), KeyError (no data/label)
        yield checks.Skip("unparseable_points", f"{type(e).__name__}: {e}", name)
        return
    if len(data) != len(labels):
        yield checks.Skip("unparseable_points", f"{len(data)} clouds but {len(labels)} labels", name)
        return
    for i, (cloud, label) in enumerate(zip(data, labels)):
        yield Raw(member=f"{name}#{i}", key=f"{name}/{i}", points=cloud, labels=(int(label),))


def _role(ext: str) -> str | None:
    if ext in checks.WEBDATASET_IMAGE_EXTS:
        return "image"
    return {"txt": "caption", "json": "json", "cls": "cls"}.get(ext)


def _complete(raw: Raw) -> bool:
    return raw.media is not None and (raw.caption is not None or raw.json is not None)


_COMPRESSED = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd")  # gzip, bzip2, xz, zstd


def _ended_properly(fileobj, offset: int) -> bool:
    """Whether a plain tar has its zero end block where the members stop. tarfile's stream mode
    takes a file cut at a block boundary for a complete archive; a compressed one cut short
    already fails in its decompressor."""
    fileobj.seek(0)
    if fileobj.read(6).startswith(_COMPRESSED):
        return True
    fileobj.seek(offset)
    block = fileobj.read(tarfile.BLOCKSIZE)
    return len(block) == tarfile.BLOCKSIZE and not block.strip(b"\0")


def _read_tar(path: str) -> Iterator[Raw | checks.Skip]:
    groups: dict[str, Raw] = {}
    previous = None
    name = ""
    try:
        with open(path, "rb") as fileobj, tarfile.open(fileobj=fileobj, mode="r|*") as tar:
            for info in tar:
                name = info.name
                if not info.isreg():
                    kind = ("directory" if info.isdir() else "symlink" if info.issym() else
                            "hard link" if info.islnk() else "device or fifo")
                    yield checks.Skip("not_regular", kind, name)
                    continue
                match = _WDS_NAME.match(name)
                role = _role(match.group(2).lower()) if match else None
                if role is None:
                    continue  # other webdataset fields (.npz, ...) are not converted
                key = match.group(1)
                if previous is not None and key != previous and _complete(groups.get(previous, Raw("", ""))):
                    yield groups.pop(previous)
                previous = key
                data = tar.extractfile(info).read()
                if not data:
                    yield checks.Skip("empty", "0 bytes", name)
                    continue
                raw = groups.setdefault(key, Raw(member=name, key=key))
                if role == "cls":  # webdataset's class index (ImageNet shards); used with --label-key cls
                    groups.setdefault(key, Raw(member=name, key=key)).labels = (data,)
                    continue
                field = {"image": "media", "caption": "caption", "json": "json"}[role]
                if getattr(raw, field) is not None:
                    yield checks.Skip("duplicate_member", f"key {key!r} already has its {role}", name)
                    continue
                setattr(raw, field, data)
                if role == "image":
                    raw.member, raw.ext = name, match.group(2).lower()
                elif not raw.caption_member:
                    raw.caption_member = name
            if not _ended_properly(fileobj, tar.offset):
                raise tarfile.ReadError("no end-of-archive marker: the file is cut short")
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:  # e.g. a tar cut short mid-member
        yield checks.Skip("bad_archive", f"{type(e).__name__}: {e} (after member {name!r})",
                          os.path.basename(path))
    yield from groups.values()
