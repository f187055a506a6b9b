"""Bad input to labkit's settings, cache, checkpoints and classroom check: each refused with the fix named, or
handled. Tiny random models only; every cache is a temporary folder (LABKIT_CACHE)."""

from __future__ import annotations

import grp
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import torch

import labkit
from labkit.classroom import hub
from labkit.core import assets, cache, checkpoint, data, memory, model, settings
from labkit.course import checks
from labkit.lab import labels
from labkit.lm import weightonly
from labkit.quant import affine, quantize

ROOT = Path(__file__).resolve().parents[1]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture()
def tmp_cache(tmp_path, monkeypatch) -> Path:
    """An empty, writable cache of this test's own."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("LABKIT_CACHE", str(folder))
    monkeypatch.delenv("LABKIT_CACHE_READONLY", raising=False)
    return folder


# --- environment variables: each accepts its documented values and refuses the rest ------------------------------

ENV_CASES = [
    pytest.param("LABKIT_FAST", "2", labkit.fast_mode, r"LABKIT_FAST='2': use 1 or 0 .*or unset it", id="fast-2"),
    pytest.param("LABKIT_FAST", "garbage", labkit.fast_mode, r"LABKIT_FAST='garbage': use 1 or 0", id="fast-garbage"),
    pytest.param("LABKIT_CACHE_READONLY", "garbage", cache.cache_writable, r"LABKIT_CACHE_READONLY='garbage': use 1",
                 id="readonly-garbage"),
    pytest.param("LABKIT_CACHE", " ", cache.cache_dir, r"is blank: set it to an absolute folder", id="cache-blank"),
    pytest.param("LABKIT_CACHE", "cache", cache.cache_dir, r"relative path.*give an absolute one", id="cache-relative"),
    pytest.param("LABKIT_CACHE", "/tmp/x ", cache.cache_dir, r"ends with a space: remove it", id="cache-trailing-space"),
    pytest.param("LABKIT_USER_DIR", "  ", checks.progress, r"LABKIT_USER_DIR.*blank: set it", id="user-dir-blank"),
    pytest.param("LABKIT_LANG", "fr", labels.language, r"LABKIT_LANG='fr': use zh .* or en", id="lang-fr"),
    pytest.param("LABKIT_LEAN", "maybe", memory.tight, r"LABKIT_LEAN='maybe': use 1 or 0", id="lean-maybe"),
    pytest.param("MEM_LIMIT", "2 gigs", memory.tight, r"MEM_LIMIT='2 gigs'.*e.g. '2G'", id="mem-limit-words"),
    pytest.param("MEM_LIMIT", "-1G", memory.tight, r"MEM_LIMIT='-1G'.*e.g. '2G'", id="mem-limit-negative"),
    pytest.param("MEM_LIMIT", "nanG", memory.tight, r"MEM_LIMIT='nanG'.*e.g. '2G'", id="mem-limit-nan"),
    pytest.param("HF_HUB_OFFLINE", "maybe", assets.hub_allowed, r"HF_HUB_OFFLINE='maybe': use 1 or 0",
                 id="hf-offline-maybe"),
]


@pytest.mark.parametrize("name, value, call, fix", ENV_CASES)
def test_a_bad_environment_value_is_refused_with_the_values_it_takes(monkeypatch, name, value, call, fix):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=fix):
        call()


@pytest.mark.parametrize("environ, fix", [
    pytest.param({"LABKIT_DATA": "  "}, r"LABKIT_DATA.*blank: set it to reviews, bbc or a CSV path", id="data-blank"),
    pytest.param({"LABKIT_DATA": "reviews", "LABKIT_TEXT_COLUMN": " "}, r"LABKIT_TEXT_COLUMN.*set it to the CSV's",
                 id="text-column-blank"),
    pytest.param({"LABKIT_DATA": "reviews", "LABKIT_LABEL_COLUMN": "\t"}, r"LABKIT_LABEL_COLUMN.*unset it for 'label'",
                 id="label-column-blank"),
])
def test_a_blank_data_setting_is_refused_before_any_file_is_read(environ, fix):
    with pytest.raises(ValueError, match=fix):
        data.from_env(environ)


@pytest.mark.parametrize("value, want", [("1", True), ("yes", True), (" ON ", True), ("TRUE", True), ("0", False),
                                         ("off", False), ("No", False), ("", False)])
def test_a_switch_takes_every_documented_spelling(monkeypatch, value, want):
    monkeypatch.setenv("LABKIT_FAST", value)
    assert labkit.fast_mode() is want


def test_documented_values_are_read_as_meant(monkeypatch, tmp_path):
    env = {"LABKIT_CACHE": "~/somewhere", "LABKIT_LANG": "zh_CN.UTF-8", "LABKIT_LEAN": "no", "MEM_LIMIT": "1.5G",
           "HF_HUB_OFFLINE": "0", "JPY_SESSION_NAME": " "}
    got = settings.check(env)
    assert got["LABKIT_CACHE"] == Path.home() / "somewhere"
    assert got["LABKIT_LANG"] == "zh" and got["LABKIT_LEAN"] is False and got["MEM_LIMIT"] == int(1.5 * 1024 ** 3)
    assert got["HF_HUB_OFFLINE"] is False and got["JPY_SESSION_NAME"] is None
    assert settings.check({})["LABKIT_CACHE"] == Path.home() / ".cache" / "labkit"


@pytest.mark.parametrize("command", ["prepare", "tour"])
def test_the_command_line_refuses_a_bad_setting_in_one_line_before_any_work(monkeypatch, capsys, command):
    from labkit.__main__ import main

    monkeypatch.setenv("LABKIT_FAST", "2")
    with pytest.raises(SystemExit) as done:
        main([command])
    err = capsys.readouterr().err
    assert done.value.code == 2 and "LABKIT_FAST='2': use 1 or 0" in err and "Traceback" not in err


# --- boolean arguments: True or False, nothing that merely looks like one ----------------------------------------

def _inplace_calls(tiny, tok):
    """Every public function that takes `inplace`, called with the model (the check comes before any work)."""
    from labkit.dynamic import gradual, tokens
    from labkit.dynamic import int8 as dynamic_int8
    from labkit.lm import kernels, quantized, w8a8
    from labkit.prune import recovery, structured, unstructured
    from labkit.quant import calibrate, floats, int8, quantize
    from labkit.sparse import layers

    return {
        "quantize.to_int8": lambda v: quantize.to_int8(tiny, inplace=v),
        "int8.dynamic_int8": lambda v: int8.dynamic_int8(tiny, inplace=v),
        "dynamic.int8.dynamic_int8": lambda v: dynamic_int8.dynamic_int8(tiny, inplace=v),
        "floats.to_precision": lambda v: floats.to_precision(tiny, "fp16", inplace=v),
        "calibrate.calibrate": lambda v: calibrate.calibrate(tiny, tok, ["a"], inplace=v),
        "unstructured.magnitude": lambda v: unstructured.magnitude(tiny, 0.5, inplace=v),
        "unstructured.two_four": lambda v: unstructured.two_four(tiny, inplace=v),
        "structured.structured": lambda v: structured.structured(tiny, inplace=v),
        "recovery.recover": lambda v: recovery.recover(tiny, tok, 1, inplace=v),
        "tokens.token_pruning": lambda v: tokens.token_pruning(tiny, 0.5, 1, inplace=v),
        "gradual.prune_finetune": lambda v: gradual.prune_finetune(tiny, tok, 0.5, 1, inplace=v),
        "layers.to_sparse": lambda v: layers.to_sparse(tiny, 0.5, inplace=v),
        "quantized.quantize_model": lambda v: quantized.quantize_model(tiny, inplace=v),
        "quantized.map_weights": lambda v: quantized.map_weights(tiny, lambda w: w, inplace=v),
        "kernels.int4_kernel": lambda v: kernels.int4_kernel(tiny, inplace=v),
        "w8a8.w8a8": lambda v: w8a8.w8a8(tiny, inplace=v),
        "w8a8.smooth": lambda v: w8a8.smooth(tiny, {}, inplace=v),
        "model.fine_tune": lambda v: model.fine_tune(tiny, tok, inplace=v),
    }


@pytest.mark.parametrize("value", [pytest.param("no", id="inplace-no"), pytest.param(1, id="inplace-1"),
                                   pytest.param(None, id="inplace-none"), pytest.param("yes", id="inplace-yes")])
def test_inplace_must_be_true_or_false_everywhere(tiny_model, tokenizer, value):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    for name, call in _inplace_calls(tiny_model, tokenizer).items():
        with pytest.raises(TypeError, match=r"inplace must be True or False.*pass inplace=True or inplace=False"):
            call(value)
    assert all(torch.equal(before[k], v) for k, v in tiny_model.state_dict().items()), "the input model changed"


def test_every_public_function_with_inplace_is_checked(tiny_model, tokenizer):
    import importlib
    import inspect

    tested = set(_inplace_calls(tiny_model, tokenizer))
    found = set()
    for path in (ROOT / "labkit").rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        if name.endswith("__main__") or "exercises" in name:
            continue
        mod = importlib.import_module(name)
        for fn_name, fn in vars(mod).items():
            if (callable(fn) and not fn_name.startswith("_") and getattr(fn, "__module__", None) == name
                    and inspect.isfunction(fn) and "inplace" in inspect.signature(fn).parameters):
                found.add(f"{name.split('.')[-1]}.{fn_name}" if name != "labkit.dynamic.int8"
                          else f"dynamic.int8.{fn_name}")
    assert found - {"parts.cpu_view"} <= tested, f"not tested: {sorted(found - tested)}"


@pytest.mark.parametrize("call, fix", [
    pytest.param(lambda m: quantize.to_int8(m, embeddings="no"),
                 r"embeddings must be True or False", id="embeddings-no"),
    pytest.param(lambda m: affine.qrange(8, "symmetric", restricted=1),
                 r"restricted must be True or False", id="restricted-1"),
    pytest.param(lambda m: weightonly.rtn(torch.ones(2, 4), 4, 2, half="no"),
                 r"half must be True or False", id="half-no"),
    pytest.param(lambda m: model.load_baseline(retrain="no"), r"retrain must be True or False", id="retrain-no"),
    pytest.param(lambda m: assets.data_path(fetch="no"), r"fetch must be True or False", id="fetch-no"),
])
def test_other_switches_of_the_api_are_strict(tiny_model, call, fix):
    with pytest.raises(TypeError, match=fix):
        call(tiny_model)


def test_numpy_booleans_are_booleans():
    import numpy as np

    assert settings.flag(np.bool_(True), "inplace") is True and settings.flag(False, "inplace") is False


# --- the cache: a file is not a folder; what is written can be read by the class ---------------------------------

def test_a_file_as_the_cache_is_not_writable_and_says_why(tmp_path, monkeypatch):
    f = tmp_path / "not-a-folder"
    f.write_text("x")
    monkeypatch.setenv("LABKIT_CACHE", str(f))
    monkeypatch.delenv("LABKIT_CACHE_READONLY", raising=False)
    assert cache.cache_writable() is False
    assert f"LABKIT_CACHE={f} is a file: point it at a folder" in cache.read_only_reason()
    with pytest.raises(ValueError, match=r"is a file: point it at a folder \(or unset LABKIT_CACHE"):
        cache.check_writable("baseline", "")
    assert f.read_text() == "x"


def test_a_file_as_the_cache_is_refused_before_training(tmp_path, monkeypatch, tiny_model, tokenizer):
    f = tmp_path / "not-a-folder"
    f.write_text("x")
    monkeypatch.setenv("LABKIT_CACHE", str(f))
    monkeypatch.delenv("LABKIT_CACHE_READONLY", raising=False)
    td = data.from_frame(pd.DataFrame({"text": [f"snippet {i} {'good' if i % 2 else 'bad'}" for i in range(40)],
                                       "label": [i % 2 for i in range(40)]}))
    for call in (lambda: model.load_baseline(progress=False), lambda: model.fine_tune(tiny_model, tokenizer, td)):
        with pytest.raises(ValueError, match=r"is a file: point it at a folder"):
            call()


@pytest.mark.parametrize("umask", [0o077, 0o022, 0o002])
def test_checkpoints_and_their_folders_are_readable_by_all_whatever_the_umask(tmp_cache, tiny_model, umask):
    old = os.umask(umask)
    try:
        path = tmp_cache / "deep" / "er" / "m.safetensors"
        checkpoint.save_checkpoint(tiny_model, path, {"what": "test"})
    finally:
        os.umask(old)
    assert _mode(path) == _mode(path.with_suffix(".json")) == 0o644
    assert _mode(tmp_cache) == _mode(tmp_cache / "deep") == _mode(tmp_cache / "deep" / "er") == 0o755
    assert not list(path.parent.glob(".*.tmp")), "a temporary file was left behind"


def test_an_existing_folder_of_the_user_keeps_its_mode(tmp_path, monkeypatch):
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    monkeypatch.setenv("LABKIT_CACHE", str(mine / "cache"))
    cache.atomic_write_bytes(mine / "cache" / "f.bin", b"x")
    assert _mode(mine) == 0o700 and _mode(mine / "cache") == 0o755


def _own_group() -> str:
    return grp.getgrgid(os.getgid()).gr_name


def test_prepare_group_makes_the_cache_the_groups_and_later_writes_follow(tmp_cache, tiny_model):
    checkpoint.save_checkpoint(tiny_model, tmp_cache / "m.safetensors", {})
    assert cache.share(_own_group()) == []
    for p in (tmp_cache / "m.safetensors", tmp_cache / "m.json"):
        assert _mode(p) == 0o664 and p.stat().st_gid == os.getgid()
    assert _mode(tmp_cache) == 0o2775
    old = os.umask(0o077)
    try:
        cache.atomic_write_bytes(tmp_cache / "sub" / "later.bin", b"x")
    finally:
        os.umask(old)
    assert _mode(tmp_cache / "sub") == 0o2775 and _mode(tmp_cache / "sub" / "later.bin") == 0o664


@pytest.mark.parametrize("group, fix", [pytest.param("no-such-group-34", r"groupadd no-such-group-34", id="group-none"),
                                        pytest.param(" ", r"name a group of this machine", id="group-blank")])
def test_prepare_group_refuses_a_group_that_is_not_there(tmp_cache, group, fix):
    tmp_cache.mkdir()
    with pytest.raises(ValueError, match=fix):
        cache.share(group)


def test_prepare_refuses_an_unknown_group_before_any_work(tmp_cache, capsys):
    from labkit.__main__ import main

    with pytest.raises(SystemExit) as done:
        main(["prepare", "--group", "no-such-group-34"])
    assert done.value.code == 2 and "groupadd no-such-group-34" in capsys.readouterr().err
    assert not tmp_cache.exists()


# --- checkpoint records: refused, with the file and the fix named -------------------------------------------------

def _checkpoint(folder: Path, tiny) -> Path:
    path = folder / "m.safetensors"
    checkpoint.save_checkpoint(tiny, path, {"what": "test"})
    return path


RECORDS = [
    pytest.param(lambda p: p.with_suffix(".json").write_text("[1, 2]"), ValueError,
                 r"m\.json holds a JSON list, not a checkpoint record.*delete .* and rebuild", id="record-list"),
    pytest.param(lambda p: p.with_suffix(".json").write_text("{not json"), ValueError,
                 r"m\.json is not valid JSON.*delete", id="record-not-json"),
    pytest.param(lambda p: p.with_suffix(".json").write_bytes(b"\xff\xfe"), ValueError,
                 r"m\.json is not valid JSON.*delete", id="record-binary"),
    pytest.param(lambda p: p.with_suffix(".json").write_text('{"bytes": 3}'), ValueError,
                 r"has no sha256 of its weights.*delete", id="record-no-sha"),
    pytest.param(lambda p: p.with_suffix(".json").write_text('{"sha256": 5}'), ValueError,
                 r"has no sha256 of its weights \(saw 5\).*delete", id="record-sha-number"),
    pytest.param(lambda p: p.write_bytes(p.read_bytes()[:-10]), ValueError,
                 r"does not match the sha256.*delete it and rebuild it", id="weights-truncated"),
    pytest.param(lambda p: (p.unlink(), p.mkdir()), ValueError, r"is a folder, not a checkpoint file: delete it",
                 id="weights-folder"),
]


@pytest.mark.parametrize("spoil, error, fix", RECORDS)
def test_a_bad_checkpoint_record_is_refused_with_the_file_and_fix(tmp_path, tiny_model, spoil, error, fix):
    path = _checkpoint(tmp_path, tiny_model)
    spoil(path)
    for call in (checkpoint.checked_meta, checkpoint.read_checkpoint):
        with pytest.raises(error, match=fix):
            call(path)


@pytest.mark.parametrize("path, meta, error, fix", [
    pytest.param("m.safetensors", ["a"], TypeError, r"meta must be a dict", id="save-meta-list"),
    pytest.param("m.safetensors", {"t": torch.ones(1)}, TypeError, r"JSON values only.*float\(x\) or x.tolist\(\)",
                 id="save-meta-tensor"),
    pytest.param("m.json", {}, ValueError, r"ends in .safetensors.*pass .*m\.safetensors", id="save-suffix-json"),
    pytest.param("m.pt", {}, ValueError, r"ends in .safetensors", id="save-suffix-pt"),
])
def test_a_checkpoint_that_cannot_be_saved_right_is_refused_before_writing(tmp_path, tiny_model, path, meta, error,
                                                                             fix):
    with pytest.raises(error, match=fix):
        checkpoint.save_checkpoint(tiny_model, tmp_path / path, meta)
    assert list(tmp_path.iterdir()) == [], "something was written"


def test_a_checkpoint_path_may_be_a_string(tmp_path, tiny_model):
    path = str(tmp_path / "m.safetensors")
    checkpoint.save_checkpoint(tiny_model, path, {"note": 1})
    assert checkpoint.read_checkpoint(path)[1]["note"] == 1


def test_a_forged_record_over_a_pickle_is_refused_before_safetensors_reads_it(tmp_path, tiny_model):
    import hashlib

    path = tmp_path / "m.safetensors"
    torch.save(tiny_model.state_dict(), path)
    path.with_suffix(".json").write_text(json.dumps({"sha256": hashlib.sha256(path.read_bytes()).hexdigest()}))
    for call in (checkpoint.checked_meta, checkpoint.read_checkpoint,
                 lambda p: checkpoint.read_weights_into(tiny_model, p)):
        with pytest.raises(ValueError, match=r"is not a safetensors file.*delete it and rebuild"):
            call(path)


# --- hub check: says what is actually wrong -----------------------------------------------------------------------

def _hub_check(monkeypatch, capsys) -> tuple[int, str]:
    monkeypatch.setenv("LABKIT_CACHE_READONLY", "0")  # hub.main sets it to 1 for its process: restored afterwards
    code = hub.main(["check"])
    out = capsys.readouterr()
    return code, out.out + out.err


def _spoil_missing(cache_root: Path, path: Path) -> None:
    cache_root.mkdir()


def _spoil_list(cache_root: Path, path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"x")
    path.with_suffix(".json").write_text("[]")


def _spoil_owner_only(cache_root: Path, path: Path) -> None:
    _spoil_list(cache_root, path)
    path.chmod(0o600)


@pytest.mark.parametrize("spoil, fix", [
    pytest.param(lambda root, path: None, r"the cache folder .* does not exist.*Run `.*prepare", id="hub-no-folder"),
    pytest.param(lambda root, path: root.write_text("x"), r"is a file, not a folder: point LABKIT_CACHE",
                 id="hub-cache-file"),
    pytest.param(_spoil_missing, r"is missing from .*not\s+prepared with these settings.*Run `.*prepare",
                 id="hub-no-baseline"),
    pytest.param(_spoil_list, r"holds a JSON list, not a checkpoint record.*delete", id="hub-record-list"),
    pytest.param(_spoil_owner_only, r"can be read by its owner only \(mode 0600, owner \w+.*prepare`? .*--group",
                 id="hub-owner-only"),
])
def test_hub_check_names_what_is_wrong(tmp_cache, monkeypatch, capsys, spoil, fix):
    spoil(tmp_cache, model.baseline_path())
    code, text = _hub_check(monkeypatch, capsys)
    assert code == 1 and "read-only" not in text and "Traceback" not in text
    assert re.search(fix, text, re.S), text


@pytest.fixture()
def prepared_copy(monkeypatch):
    """A cache in a folder every user can reach, holding a copy of the shared baseline (never changed itself)."""
    src = model.baseline_path()
    try:
        checkpoint.checked_meta(src)
    except (OSError, ValueError) as err:
        pytest.skip(f"no prepared baseline to copy here ({err})")
    base = Path(tempfile.mkdtemp(prefix="labkit-class-"))
    try:
        base.chmod(0o755)  # the test's own temporary folder: other users must reach the cache inside it
        root = base / "cache"
        monkeypatch.setenv("LABKIT_CACHE", str(root))
        monkeypatch.delenv("LABKIT_CACHE_READONLY", raising=False)
        dst = model.baseline_path()
        cache.make_dirs(root)
        for p in (src, src.with_suffix(".json")):
            shutil.copyfile(p, dst.parent / p.name)
            (dst.parent / p.name).chmod(0o600)  # as checkpoints used to be written
        yield root
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_hub_check_passes_a_cache_prepared_for_a_group(prepared_copy, monkeypatch, capsys):
    code, text = _hub_check(monkeypatch, capsys)
    assert code == 1 and "owner only" in text
    assert cache.share(_own_group()) == []
    code, text = _hub_check(monkeypatch, capsys)
    assert code == 0 and "learners read the prepared baseline" in text and "mode 0664" in text, text


def _become_nobody() -> None:
    os.setgroups([])  # none of root's groups either: only what every user may read
    os.setgid(65534)
    os.setuid(65534)


def _python_for_nobody() -> str:
    """A Python interpreter the user nobody may run (this one may live in root's home)."""
    for exe in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
        real = Path(exe).resolve()
        if real.is_file() and all(p.stat().st_mode & 0o001 for p in real.parents) and real.stat().st_mode & 0o001:
            return exe
    pytest.skip("no Python interpreter here that another user may run")


def test_prepare_group_verifies_and_shares_a_cache_written_0600(prepared_copy, monkeypatch, capsys):
    import labkit.__main__ as cli

    monkeypatch.setattr(cli.slm, "prepare_decoded", lambda: (_ for _ in ()).throw(ValueError("not installed here")))
    assert cli.main(["prepare", "--group", _own_group()]) == 0
    out = capsys.readouterr().out
    assert "verified baseline" in out and f"group {_own_group()}, group-writable" in out
    assert {_mode(p) for p in prepared_copy.iterdir()} == {0o664} and _mode(prepared_copy) == 0o2775


def test_prepare_group_on_a_read_only_cache_is_refused_before_any_work(prepared_copy, monkeypatch, capsys):
    import labkit.__main__ as cli

    monkeypatch.setenv("LABKIT_CACHE_READONLY", "1")
    with pytest.raises(SystemExit) as done:
        cli.main(["prepare", "--group", _own_group()])
    err = capsys.readouterr().err
    assert done.value.code == 2 and "cannot be written (LABKIT_CACHE_READONLY is set): run prepare as its owner" in err


def test_mem_limit_zero_means_no_limit(monkeypatch):
    monkeypatch.setenv("MEM_LIMIT", "0")
    monkeypatch.delenv("LABKIT_LEAN", raising=False)
    assert settings.mem_limit() is None and hub.usage() is None


def _as_nobody(code: str, env: dict) -> subprocess.CompletedProcess:
    """Run Python `code` (stdlib and labkit's settings and cache only) as the user nobody, as a learner's kernel
    on a shared machine runs."""
    return subprocess.run([_python_for_nobody(), "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, **env, PYTHONPATH=str(ROOT), HOME="/tmp"), preexec_fn=_become_nobody)


@pytest.mark.skipif(os.geteuid() != 0, reason="reading as another user needs root to become that user")
def test_a_prepared_cache_is_read_by_another_user(prepared_copy):
    assert cache.share() == []
    read_all = ("import os\nn = 0\n"
                "for top, _, files in os.walk(os.environ['LABKIT_CACHE']):\n"
                "    for f in files:\n"
                "        n += len(open(os.path.join(top, f), 'rb').read(16)) > 0\n"
                "print('read', n)")
    done = _as_nobody(read_all, {"LABKIT_CACHE": str(prepared_copy)})
    assert done.returncode == 0 and "read 2" in done.stdout, done.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="reading as another user needs root to become that user")
def test_an_unreadable_checkpoint_names_its_mode_and_owner(prepared_copy):
    path = model.baseline_path()  # still 0600, as checkpoints were written before
    code = f"from pathlib import Path\nfrom labkit.core import cache\nprint(cache.unreadable(Path({str(path)!r})))"
    done = _as_nobody(code, {"LABKIT_CACHE": str(prepared_copy)})
    assert f"{path} cannot be read by user nobody (mode 0600, owner root" in done.stdout, done.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="another user's view needs root to become that user")
def test_a_cache_another_user_cannot_reach_or_write_says_why(tmp_path):
    base = Path(tempfile.mkdtemp(prefix="labkit-closed-"))
    try:
        base.chmod(0o755)
        (base / "closed").mkdir(mode=0o700)
        (base / "theirs").mkdir(mode=0o755)
        code = ("from labkit.core import cache\n"
                "try:\n    cache.cache_dir()\nexcept PermissionError as err:\n    print(err)\n")
        done = _as_nobody(code, {"LABKIT_CACHE": str(base / "closed" / "cache")})
        assert f"{base / 'closed'} is closed to user nobody (mode 0700, owner root" in done.stdout, done.stderr
        assert "Point LABKIT_CACHE at a folder every learner can reach" in done.stdout
        code = "from labkit.core import cache\nprint(cache.cache_writable(), cache.read_only_reason())"
        done = _as_nobody(code, {"LABKIT_CACHE": str(base / "theirs")})
        assert done.stdout.startswith("False") and "cannot be written by user nobody (mode 0755, owner root" in \
            done.stdout, done.stderr
    finally:
        shutil.rmtree(base, ignore_errors=True)
