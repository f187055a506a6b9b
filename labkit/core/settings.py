"""The one place labkit reads its settings: environment variables, parsed strictly, and boolean arguments.

Each variable accepts the values below and refuses anything else with a ValueError that names the variable, what
it saw and what to set instead; unset (or set to the empty string) means the default. Every read happens at the
call, so a notebook may change a variable between cells.

| variable | accepted values | default |
| --- | --- | --- |
| LABKIT_FAST | a switch: 1/0, true/false, yes/no, on/off | off |
| LABKIT_CACHE | an absolute folder (~ is expanded) | ~/.cache/labkit |
| LABKIT_CACHE_READONLY | a switch | off (the cache is written where it can be) |
| LABKIT_USER_DIR | an absolute folder | ~/.cache/labkit-user |
| LABKIT_LANG | en or zh (also locale forms: zh_CN, zh-TW.UTF-8, en_US) | en |
| LABKIT_LEAN | a switch | on where MEM_LIMIT or the cgroup limit is under 4 GiB |
| LABKIT_DATA | reviews, bbc, or a CSV/TSV path | the reviews |
| LABKIT_TEXT_COLUMN, LABKIT_LABEL_COLUMN | a column name | text, label |
| MEM_LIMIT | bytes, or a number with K, M, G or T (JupyterHub sets it) | none |
| JPY_SESSION_NAME | the notebook's path (Jupyter sets it) | none |
| HF_HUB_OFFLINE | a switch; 0 lets labkit download a model from the Hugging Face Hub | offline |
| LABKIT_GRADED | a switch (an nbgrader release's first cell sets it) | off: self-study, references shown |

Nothing here imports the rest of labkit.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

_ON, _OFF = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
SWITCH_VALUES = "1 or 0 (also true/false, yes/no, on/off)"
_UNITS = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}  # JupyterHub's ByteSpecification


def flag(value: object, name: str) -> bool:
    """`value` if it is True or False; a TypeError naming `name` otherwise ('no', 1 and None are not booleans)."""
    # `inplace='no'` is truthy: accepting it would change the caller's model when they asked for a copy.
    numpy_bool = type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_")
    if value is True or value is False or numpy_bool:
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__}): pass {name}=True or "
                    f"{name}=False.")


def flags(**named: object) -> None:
    """`flag` for each keyword: `flags(inplace=inplace)` at the top of a function that takes boolean arguments."""
    for name, value in named.items():
        flag(value, name)


def with_flags(fn: Callable[..., T], *names: str) -> Callable[..., T]:
    """`fn`, with its boolean arguments `names` checked by `flag` at each call (for code a lesson shows as is)."""
    sig = inspect.signature(fn)
    defaults = {n: sig.parameters[n].default for n in names}

    @functools.wraps(fn)
    def checked(*args, **kwargs):
        given = sig.bind_partial(*args, **kwargs).arguments
        for n in names:
            flag(given.get(n, defaults[n]), n)
        return fn(*args, **kwargs)
    return checked


def raw(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The variable `name` as set, or None when unset or empty (a shell's `NAME=` means unset)."""
    value = (os.environ if environ is None else environ).get(name)
    return value if value else None


def switch(name: str, default: bool | None, environ: Mapping[str, str] | None = None) -> bool | None:
    """An on/off variable: True for 1/true/yes/on, False for 0/false/no/off (any case), `default` when unset."""
    value = raw(name, environ)
    if value is None:
        return default
    said = value.strip().lower()
    if said in _ON or said in _OFF:
        return said in _ON
    raise ValueError(f"{name}={value!r}: use {SWITCH_VALUES}, or unset it.")


def folder(name: str, default: Path, environ: Mapping[str, str] | None = None) -> Path:
    """A folder variable: an absolute path (~ expanded), `default` when unset; blank or relative is refused."""
    value = raw(name, environ)
    if value is None:
        return default
    if not value.strip():
        raise ValueError(f"{name}={value!r} is blank: set it to an absolute folder, e.g. {name}={default}, or unset "
                         "it.")
    if value != value.strip():
        raise ValueError(f"{name}={value!r} starts or ends with a space: remove it ({name}={value.strip()!r}).")
    path = Path(value).expanduser()
    if not path.is_absolute():
        # A relative path names another folder in every working folder (a notebook runs in notebooks/, the
        # command line at the root): two caches, each trained on its own.
        raise ValueError(f"{name}={value!r} is a relative path, which means another folder in each working folder: "
                         f"give an absolute one, e.g. {name}={Path(value).absolute()}.")
    return path


def fast(environ: Mapping[str, str] | None = None) -> bool:
    """LABKIT_FAST: smaller data and fewer steps, the same code path."""
    return bool(switch("LABKIT_FAST", False, environ))


def cache_path(environ: Mapping[str, str] | None = None) -> Path:
    """LABKIT_CACHE: the cache folder, default ~/.cache/labkit."""
    return folder("LABKIT_CACHE", Path.home() / ".cache" / "labkit", environ)


def cache_readonly(environ: Mapping[str, str] | None = None) -> bool:
    """LABKIT_CACHE_READONLY: never write to the cache (a shared, prepared one)."""
    return bool(switch("LABKIT_CACHE_READONLY", False, environ))


def user_dir(environ: Mapping[str, str] | None = None) -> Path:
    """LABKIT_USER_DIR: where a learner's own files go (exercise progress), default ~/.cache/labkit-user."""
    return folder("LABKIT_USER_DIR", Path.home() / ".cache" / "labkit-user", environ)


def lang(environ: Mapping[str, str] | None = None) -> str:
    """LABKIT_LANG: "zh" or "en" (locale forms such as zh_CN.UTF-8 or en_US count as their language)."""
    value = raw("LABKIT_LANG", environ)
    if value is None:
        return "en"
    code = value.strip().lower().replace("-", "_").split(".")[0].split("_")[0]
    if code in ("zh", "en"):
        return code
    raise ValueError(f"LABKIT_LANG={value!r}: use zh (Chinese labels) or en (English), or unset it.")


def lean(environ: Mapping[str, str] | None = None) -> bool | None:
    """LABKIT_LEAN: True or False when set, None to decide from the memory limit."""
    return switch("LABKIT_LEAN", None, environ)


def data_spec(environ: Mapping[str, str] | None = None) -> str | None:
    """LABKIT_DATA: 'reviews', 'bbc' or a CSV/TSV path, None when unset (blank is refused)."""
    value = raw("LABKIT_DATA", environ)
    if value is not None and not value.strip():
        raise ValueError(f"LABKIT_DATA={value!r} is blank: set it to reviews, bbc or a CSV path, or unset it.")
    return value.strip() if value else None


def column(role: str, environ: Mapping[str, str] | None = None) -> str:
    """LABKIT_TEXT_COLUMN or LABKIT_LABEL_COLUMN (`role` 'text' or 'label'): the CSV's column, default `role`."""
    name = f"LABKIT_{role.upper()}_COLUMN"
    value = raw(name, environ)
    if value is None:
        return role
    if not value.strip():
        raise ValueError(f"{name}={value!r} is blank: set it to the CSV's {role} column, or unset it for '{role}'.")
    return value


def parse_bytes(size: str | int, name: str | None = None) -> int:
    """Bytes of a JupyterHub memory size: an integer, or a number with K, M, G or T (powers of 1024)."""
    text = str(size).strip()
    if text.isdigit():
        return int(text)
    number, unit = text[:-1], text[-1:].upper()
    try:
        if unit not in _UNITS:
            raise ValueError
        value = float(number)
        if not value >= 0 or value == float("inf"):  # NaN, negative and infinite sizes are no sizes
            raise ValueError
        return int(value * _UNITS[unit])
    except ValueError:
        said = f"{name}={size!r}" if name else f"Memory size {size!r}"
        raise ValueError(f"{said}: give bytes or a number with K, M, G or T, e.g. '2G'.") from None


def mem_limit(environ: Mapping[str, str] | None = None) -> int | None:
    """MEM_LIMIT in bytes (JupyterHub and Binder set it), None when unset or 0 (a spawner's "no limit")."""
    value = raw("MEM_LIMIT", environ)
    return (parse_bytes(value, "MEM_LIMIT") or None) if value is not None else None


def session_name(environ: Mapping[str, str] | None = None) -> str | None:
    """JPY_SESSION_NAME: the running notebook's path as Jupyter tells its kernels, None outside one."""
    value = raw("JPY_SESSION_NAME", environ)
    return value.strip() if value and value.strip() else None


def graded(environ: Mapping[str, str] | None = None) -> bool:
    """LABKIT_GRADED: this kernel runs a graded release, so no reference solution is shown (labkit.course.release)."""
    return bool(switch("LABKIT_GRADED", False, environ))


def check(environ: Mapping[str, str] | None = None) -> dict[str, object]:
    """Every variable above, parsed: a command line calls it first, so a bad value stops it before any work."""
    return {"LABKIT_FAST": fast(environ), "LABKIT_CACHE": cache_path(environ),
            "LABKIT_CACHE_READONLY": cache_readonly(environ), "LABKIT_USER_DIR": user_dir(environ),
            "LABKIT_LANG": lang(environ), "LABKIT_LEAN": lean(environ), "LABKIT_DATA": data_spec(environ),
            "LABKIT_TEXT_COLUMN": column("text", environ), "LABKIT_LABEL_COLUMN": column("label", environ),
            "MEM_LIMIT": mem_limit(environ), "JPY_SESSION_NAME": session_name(environ),
            "HF_HUB_OFFLINE": not hub_allowed(environ), "LABKIT_GRADED": graded(environ)}


def hub_allowed(environ: Mapping[str, str] | None = None) -> bool:
    """True only when HF_HUB_OFFLINE is set to off (0/false/no/off): the user opted in to the Hugging Face Hub."""
    return switch("HF_HUB_OFFLINE", True, environ) is False
