"""Which config keys each stage reads: make reruns a stage only when one of them changes.

`pipeline.config.load_config(name, stage=...)` returns a TrackedDict that records every key path the stage reads;
the paths are merged into build/<model>/cfg/<stage>.keys.json, and `python -m pipeline.stamp config` writes the
stage's config slice from them.
"""
from __future__ import annotations

import atexit
import json
import sys
from pathlib import Path

import yaml

from .atomic import write_text_if_changed
from . import stages
from .paths import ModelPaths


# the stages that record their reads: the per-model stages of pipeline/stages.py
STAGES = tuple(s.name for s in stages.STAGES if s.kind != "tool")
PRIVATE = ("_source", "_path")          # set by load_config, not config keys


def keys_file(build_dir: Path, stage: str) -> Path:
    return Path(build_dir) / "cfg" / f"{stage}.keys.json"


class Reads:
    """The key paths (tuples of keys) one stage read from one model's config in this process."""

    def __init__(self, stage: str, path: Path):
        self.stage, self.path = stage, path
        self.paths: set[tuple] = set()
        self.saved: frozenset = frozenset()
        self.root: dict = {}

    def save(self) -> None:
        """Merge into the keys file (union with earlier runs, plus the values this run saw); writes only when
        the file's text changes."""
        paths = frozenset(self.paths)
        if paths == self.saved and self.path.exists():
            return
        old = read_keys(self.path) or []
        text = keys_text(self.stage, set(old) | paths, entries(self.root, paths))
        write_text_if_changed(self.path, text)
        self.saved = paths


def normalize(paths) -> list[tuple]:
    """Sorted key paths without the ones a shorter recorded path already covers (reading a section reads all)."""
    found = set(map(tuple, paths))
    keep = [p for p in found if not any(p[:i] in found for i in range(len(p)))]
    return sorted(keep, key=path_sort_key)


def path_sort_key(path) -> str:
    return json.dumps(list(path), default=str)


ABSENT = object()


def lookup(node, path, private=PRIVATE):
    """The value at a key path (dicts by key, lists by index) as plain data, or ABSENT; the root () is the
    config without its private keys. Reading through it records nothing."""
    for depth, key in enumerate(path):
        if isinstance(node, dict):
            if depth == 0 and key in private:
                return ABSENT
            if not dict.__contains__(node, key) and not isinstance(key, str) and dict.__contains__(node, str(key)):
                key = str(key)                    # a JSON copy of the value has string keys
            if not dict.__contains__(node, key):
                return ABSENT
            node = dict.__getitem__(node, key)
        elif isinstance(node, list) and type(key) is int and -len(node) <= key < len(node):
            node = node[key]
        else:
            return ABSENT
    if not path and isinstance(node, dict):
        node = {k: v for k, v in dict.items(node) if k not in private}
    return _plain(node)


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in dict.items(value)}
    return [_plain(v) for v in value] if isinstance(value, list) else value


def entries(cfg: dict, paths) -> list[list]:
    """[[path, value], ...] for the normalized key paths (a missing key is [path]), as JSON gives them back."""
    out = []
    for path in normalize(paths):
        value = lookup(cfg, path)
        out.append([list(path)] if value is ABSENT else [list(path), value])
    return json.loads(json.dumps(out, default=str))


def json_lines(items) -> str:
    return "[\n" + ",\n".join("  " + json.dumps(i, sort_keys=True, default=str) for i in items) + "\n]"


def keys_text(stage: str, paths, last_run: list[list]) -> str:
    keys = json_lines(list(p) for p in normalize(paths))
    return f'{{"stage": {json.dumps(stage)}, "keys": {keys},\n "last_run": {json_lines(last_run)}}}\n'


def read_keys(path: Path) -> list[tuple] | None:
    """The key paths of a keys file, or None when it is missing or unreadable (then the whole config counts)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return [tuple(p) for p in data["keys"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_last_run(path: Path) -> list[list]:
    """[[path, value] | [path], ...]: what the stage's latest recorded run read, and the values it saw."""
    try:
        return list(json.loads(Path(path).read_text(encoding="utf-8"))["last_run"])
    except (OSError, ValueError, KeyError, TypeError):
        return []


def save_reads(cfg) -> None:
    """Record what this stage read so far (idempotent; also runs at exit). A plain dict is ignored."""
    if isinstance(cfg, TrackedDict):
        cfg._reads.save()


_PENDING: list[Reads] = []


def discard_reads() -> None:
    """Forget the unsaved reads of this process: a stage that ends with an error records nothing at exit."""
    _PENDING.clear()


@atexit.register
def _save_at_exit() -> None:
    if getattr(sys, "last_value", None) is not None or getattr(sys, "last_exc", None) is not None:
        return                               # the process ends with a traceback: not a successful run
    for reads in _PENDING:
        try:
            reads.save()
        except OSError:
            pass


class TrackedDict(dict):
    """A config (section) that is a real dict and notes each key path read from it into a Reads.

    Item access, .get and `in` note the key (a list value counts as one value); iterating, len, items, values,
    copies, repr, ==, json.dumps and yaml of a section note the whole section. Nested sections are TrackedDicts
    themselves; lists are plain lists. Copies (copy, deepcopy, pickle) are plain dicts."""

    __slots__ = ("_reads", "_at")

    def _note(self, key) -> None:
        if not (self._at == () and key in PRIVATE):
            self._reads.paths.add(self._at + (key,))

    def _note_all(self) -> None:
        self._reads.paths.add(self._at)

    def __getitem__(self, key):
        try:
            value = dict.__getitem__(self, key)
        except KeyError:
            self._note(key)
            raise
        if type(value) is not TrackedDict:
            self._note(key)
        return value

    def get(self, key, default=None):
        return self[key] if dict.__contains__(self, key) else (self._note(key), default)[1]

    def __contains__(self, key):
        found = dict.__contains__(self, key)
        self._note(key)
        return found

    def pop(self, key, *default):
        self._note(key)
        return dict.pop(self, key, *default)

    def setdefault(self, key, default=None):
        self._note(key)
        return dict.setdefault(self, key, default)

    def __iter__(self):
        self._note_all()
        return dict.__iter__(self)

    def __len__(self):
        self._note_all()
        return dict.__len__(self)

    def __reversed__(self):
        self._note_all()
        return dict.__reversed__(self)

    def keys(self):
        self._note_all()
        return dict.keys(self)

    def values(self):
        self._note_all()
        return dict.values(self)

    def items(self):
        self._note_all()
        return dict.items(self)

    def __repr__(self):
        self._note_all()
        return dict.__repr__(self)

    def __eq__(self, other):
        self._note_all()
        return dict.__eq__(self, other)

    def __ne__(self, other):
        self._note_all()
        return dict.__ne__(self, other)

    __hash__ = None

    def copy(self):
        self._note_all()
        return dict(dict.items(self))

    __copy__ = copy

    def __deepcopy__(self, memo):
        import copy

        self._note_all()
        return {copy.deepcopy(k, memo): copy.deepcopy(v, memo) for k, v in dict.items(self)}

    def __reduce_ex__(self, protocol):
        self._note_all()
        return dict, (dict(dict.items(self)),)

    def __or__(self, other):
        return self.copy() | other

    def __ror__(self, other):
        self._note_all()
        return dict(other) | dict(dict.items(self))


def _track(value, reads: Reads, at: tuple):
    if not isinstance(value, dict):
        return value
    out = TrackedDict()
    out._reads, out._at = reads, at
    for k, v in value.items():
        dict.__setitem__(out, k, _track(v, reads, at + (k,)))
    return out


for _representer in (yaml.representer.SafeRepresenter, yaml.representer.Representer):
    _representer.add_representer(TrackedDict, yaml.representer.SafeRepresenter.represent_dict)


def track(cfg: dict, stage: str) -> "TrackedDict":
    """The config as `stage` sees it: every key path it reads is recorded (saved at exit or by save_reads)."""
    reads = Reads(stage, keys_file(ModelPaths(cfg["name"]).build, stage))
    _PENDING.append(reads)
    reads.root = _track(cfg, reads, ())
    return reads.root
