"""The exercises' texts in the learner's language: questions, targeted hints, graduated hints, a prediction's unit.

The English in labkit/course/exercises/ stays the source. Its Chinese lives in `i18n/zh/exercises/<prefix>.json`,
one file per notebook prefix (the part of the key before the first dot), keyed "<key>|<field>" with the field
`question`, `unit`, `hint:<mistake>` or `ladder:<i>`: {"en": digest of the English, "zh": "..."}. `text` gives the
Chinese only under LABKIT_LANG=zh and only while its digest matches the English: a stale entry is never shown.
`problems` names what is missing, stale or orphaned; `write_skeletons` adds empty entries for a translator to fill.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from labkit.course.exercises import PREDICTIONS, REGISTRY, WRITTEN, load_all
from labkit.lab.labels import language

ROOT = Path(__file__).resolve().parents[2]  # the repository: labkit/course/ is two levels down
EXERCISES_DIR = ROOT / "i18n" / "zh" / "exercises"
# A unit that is a symbol reads the same in both languages: only units in words are translated.
SYMBOL_UNITS = ("", "x", "%", "ms", "MB")

_cache: dict[Path, tuple[int, dict]] = {}


def digest(source: str) -> str:
    """The hash a translation records of the English it was made from (16 hex digits of sha256)."""
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def compare(wanted: dict[str, str], found: dict) -> tuple[list[str], list[tuple[str, str]], list[str]]:
    """A keyed translation table against the English it translates: (names with no Chinese, (name, digest to set)
    of those translated from other English, names that translate nothing any more). The notebooks' cells and the
    exercises' texts are both checked with it."""
    missing, changed = [], []
    for name, english in wanted.items():
        entry = found.get(name)
        if not isinstance(entry, dict) or not str(entry.get("zh", "")).strip():
            missing.append(name)
        elif entry.get("en") != digest(english):
            changed.append((name, digest(english)))
    return missing, changed, [name for name in found if name not in wanted]


def prefix(key: str) -> str:
    """The notebook prefix of an exercise key: "02" for "02.linear_quantize"."""
    return key.split(".")[0]


def english_texts() -> dict[str, str]:
    """Every exercise text a learner can be shown, keyed "<key>|<field>", in English (the registries' own)."""
    load_all()
    texts = {}
    for k, e in REGISTRY.items():
        texts[f"{k}|question"] = e.question
        texts |= {f"{k}|hint:{m}": h for m, h in e.hints.items()}
        texts |= {f"{k}|ladder:{i}": h for i, h in enumerate(e.ladder)}
    for k, p in PREDICTIONS.items():
        texts[f"{k}|question"] = p.question
        if p.unit.strip() not in SYMBOL_UNITS:
            texts[f"{k}|unit"] = p.unit
    for k, w in WRITTEN.items():
        texts[f"{k}|question"] = w.question
    return texts


def file_of(prefix_: str, directory: Path | None = None) -> Path:
    return (directory or EXERCISES_DIR) / f"{prefix_}.json"


def read(path: Path) -> dict:
    """A translation file's entries; raises ValueError when it is not a JSON object."""
    found = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(found, dict):
        raise ValueError(f"{path} is not a JSON object")
    return found


def _entries(prefix_: str, directory: Path | None) -> dict:
    """One prefix's entries, read once per change of the file; {} when it is missing or unreadable."""
    path = file_of(prefix_, directory)
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        return {}
    if path not in _cache or _cache[path][0] != stamp:
        try:
            _cache[path] = (stamp, read(path))
        except (OSError, ValueError):
            _cache[path] = (stamp, {})  # a broken file is `check`'s to name; the learner reads English
    return _cache[path][1]


def text(key: str, field: str, english: str, directory: Path | None = None) -> str:
    """Exercise `key`'s `field` in the learner's language: the Chinese where it is current, else `english`."""
    if not english or language() != "zh":
        return english
    entry = _entries(prefix(key), directory).get(f"{key}|{field}")
    if isinstance(entry, dict) and entry.get("en") == digest(english) and str(entry.get("zh", "")).strip():
        return entry["zh"]
    return english


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def _by_prefix(texts: dict[str, str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for name, english in texts.items():
        out.setdefault(prefix(name.split("|")[0]), {})[name] = english
    return out


def problems(directory: Path | None = None, texts: dict[str, str] | None = None) -> list[str]:
    """Every exercise text with no Chinese or changed since translated, and every entry whose text is gone."""
    directory = directory or EXERCISES_DIR
    groups = _by_prefix(english_texts() if texts is None else texts)
    found_problems = []
    for p, wanted in sorted(groups.items()):
        path = file_of(p, directory)
        try:
            found = read(path) if path.is_file() else {}
        except ValueError as err:
            found_problems.append(f"{_rel(path)} cannot be read: {err}")
            continue
        missing, changed, orphans = compare(dict(sorted(wanted.items())), found)
        found_problems += [f"exercise text {name} has no Chinese in {_rel(path)}" for name in missing]
        found_problems += [f"exercise text {name} changed since it was translated: update its \"zh\" and set its "
                           f"\"en\" to {new} in {_rel(path)}" for name, new in changed]
        found_problems += [f"{_rel(path)}: {name} is no exercise text any more: remove it" for name in sorted(orphans)]
    if directory.is_dir():
        found_problems += [f"{_rel(path)} translates no exercise (no key starts with {path.stem}.): remove it"
                           for path in sorted(directory.glob("*.json")) if path.stem not in groups]
    return found_problems


def write(path: Path, entries: dict) -> None:
    """Write a translation file in the one format (sorted keys, ensure_ascii=False, indent 1), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps(entries, sort_keys=True, ensure_ascii=False, indent=1) + "\n")
    os.replace(tmp, path)


def write_skeletons(prefix_: str | None = None, directory: Path | None = None,
                    texts: dict[str, str] | None = None) -> list[Path]:
    """Add {"en": digest, "zh": ""} for every text missing from its file (all prefixes, or one); entries already
    there stay as they are. Returns the files written."""
    groups = _by_prefix(english_texts() if texts is None else texts)
    if prefix_ is not None and prefix_ not in groups:
        raise ValueError(f"no exercise has the prefix {prefix_!r}; known: {', '.join(sorted(groups))}")
    written_ = []
    for p in sorted(groups) if prefix_ is None else [prefix_]:
        path = file_of(p, directory)
        found = read(path) if path.is_file() else {}
        missing = {name: {"en": digest(english), "zh": ""} for name, english in groups[p].items() if name not in found}
        if missing:
            write(path, found | missing)
            written_.append(path)
    return written_
