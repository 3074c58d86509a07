"""Labelled sets for `make accuracy`: an ImageFolder tree or a `file,label` CSV, read into (file, class index) pairs.

A class is named by its index ("281"), by a stable id the family gives (`label_ids`, e.g. the WordNet id
"n02123045"), or by its name (`labels`), case-insensitively: the whole name ("tabby, tabby cat") or one of its
comma-separated synonyms ("tabby cat") when exactly one class has it. Files are found with the family's own
`find_sources`, so a tree holds exactly the files `make infer` would take.
"""
from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import InputError

SHOWN = 3          # bad names or files quoted in an error line


def _few(items: list) -> str:
    head = ", ".join(str(x) for x in items[:SHOWN])
    return head + (f" and {len(items) - SHOWN} more" if len(items) > SHOWN else "")


class ClassNames:
    """How a labelled set may name the n classes of a head: index, family id, whole name or unique synonym."""

    def __init__(self, n: int, names: list[str] | None, ids: list[str] | None):
        self.n, self.names, self.ids = n, names, ids
        self.by_id = {s.lower(): i for i, s in enumerate(ids or [])}
        self.by_name: dict[str, list[int]] = {}
        self.by_synonym: dict[str, list[int]] = {}
        for i, name in enumerate(names or []):
            self.by_name.setdefault(name.strip().lower(), []).append(i)
            for syn in {s.strip().lower() for s in name.split(",") if s.strip()}:
                self.by_synonym.setdefault(syn, []).append(i)

    def lookup(self, text: str) -> int | None:
        """The class index `text` names, None when it names none; InputError when it names several."""
        key = text.strip().lower()
        if key.isdigit():
            return int(key) if int(key) < self.n else None
        if key in self.by_id:
            return self.by_id[key]
        hits = self.by_name.get(key) or self.by_synonym.get(key) or []
        if len(hits) > 1:
            raise InputError(f"label '{text}' names {len(hits)} classes ("
                             + ", ".join(f"{i} '{self.names[i]}'" for i in hits[:SHOWN])
                             + "); name the class by its index" + (" or id" if self.ids else ""))
        return hits[0] if hits else None

    def accepted(self) -> str:
        """What names are accepted, for an error line."""
        out = [f"a class index 0..{self.n - 1}"]
        if self.ids:
            out.append(f"a class id such as '{self.ids[0]}'")
        if self.names:
            out.append(f"a class name such as '{self.names[0]}' or one of its comma-separated synonyms "
                       "(case-insensitive)")
        else:
            out.append("(this model has no class names: name classes by index)")
        return ", ".join(out)


@dataclass
class LabeledSet:
    path: Path                 # the tree or the CSV, as given
    kind: str                  # "imagefolder" or "csv"
    files: list[Path]
    labels: list[int]

    @property
    def root(self) -> Path:
        return self.path if self.kind == "imagefolder" else self.path.parent

    def rel(self, f: Path) -> str:
        return str(f.relative_to(self.root)) if f.is_relative_to(self.root) else str(f)

    def list_sha256(self) -> str:
        """sha256 of the (file, label) list: one 'relative path<TAB>class index' line per file, in set order."""
        h = hashlib.sha256()
        for f, y in zip(self.files, self.labels):
            h.update(f"{self.rel(f)}\t{y}\n".encode())
        return h.hexdigest()


def read_set(input_arg: str, cfg: dict, family, names: ClassNames) -> LabeledSet:
    """INPUT as a labelled set: a folder is an ImageFolder tree, a .csv file a labels file; one line when wrong."""
    path = Path(input_arg).expanduser().resolve()
    if path.is_dir():
        return _imagefolder(path, cfg, family, names)
    if path.is_file() and path.suffix.lower() == ".csv":
        return _labels_csv(path, names)
    raise InputError(f"INPUT {input_arg} is not a labelled set; give a folder with one sub-folder per class "
                     "(ImageFolder) or a labels CSV with rows file,label")


def _imagefolder(root: Path, cfg: dict, family, names: ClassNames) -> LabeledSet:
    files = family.find_sources(str(root), cfg)
    loose = [f.name for f in files if f.parent == root]
    if loose:
        raise InputError(f"INPUT {root} has files outside class folders ({_few(loose)}); an ImageFolder tree keeps "
                         "each file in the folder of its class")
    folders = sorted({f.relative_to(root).parts[0] for f in files})
    classes = {d: names.lookup(d) for d in folders}
    bad = [d for d, c in classes.items() if c is None]
    if bad:
        raise InputError(f"class folder(s) {_few([repr(d) for d in bad])} in {root} map to no class of "
                         f"{cfg['name']}; name each folder by {names.accepted()}")
    return LabeledSet(root, "imagefolder", files, [classes[f.relative_to(root).parts[0]] for f in files])


def _labels_csv(path: Path, names: ClassNames) -> LabeledSet:
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = [(n, r) for n, r in enumerate(csv.reader(f), 1) if any(c.strip() for c in r)]
    if rows and _is_header(rows[0][1], path.parent, names):
        rows = rows[1:]
    short = [n for n, r in rows if len(r) < 2 or not r[0].strip()]
    if not rows or short:
        raise InputError(f"labels file {path} " + (f"rows {_few(short)} lack a file or a label" if short else
                         "has no rows") + "; write one row per file: file,label (an optional header first)")
    files = [_resolve(path.parent, r[0]) for _, r in rows]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise InputError(f"labels file {path} names {len(missing)} file(s) that do not exist: {_few(missing)}; "
                         f"paths are relative to {path.parent}")
    texts = [",".join(r[1:]).strip() for _, r in rows]      # an unquoted name keeps its commas
    labels = [names.lookup(t) for t in texts]
    bad = [f"row {n} '{t}'" for (n, _), t, y in zip(rows, texts, labels) if y is None]
    if bad:
        raise InputError(f"labels file {path}: {len(bad)} label(s) name no class of the head: {_few(bad)}; "
                         f"give {names.accepted()}")
    return LabeledSet(path, "csv", files, labels)


def _resolve(folder: Path, cell: str) -> Path:
    p = Path(cell.strip()).expanduser()
    return p if p.is_absolute() else folder / p


def _is_header(row: list[str], folder: Path, names: ClassNames) -> bool:
    """A first row is a header when it names neither an existing file nor a class (e.g. `file,label`)."""
    if len(row) < 2:
        return False
    try:
        label = names.lookup(",".join(row[1:]))
    except InputError:
        label = -1
    return label is None and not _resolve(folder, row[0]).is_file()
