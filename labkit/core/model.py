"""The kit's real model: MiniLM-L6 with a classification head for the active data, fine-tuned once locally and
cached; and fine_tune, which does the same for any supported classifier on any labelled text."""

from __future__ import annotations

import copy
import hashlib
import json
import time
import warnings
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from labkit import __version__, fast_mode
from labkit.core import assets, cache, checkpoint, data, measure, parts, settings
from labkit.core import data as data_mod
from labkit.core import train as train_mod

RECIPE = 2  # bump when the training recipe changes: every cached baseline becomes stale
# 2: train.fit (transformers' linear warm-up schedule, warm-up steps no longer rounded up to 1); labels recorded


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """A torch.device from None (CUDA when available, else CPU), 'cpu', 'cuda' or 'cuda:N'."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"Unknown device {device!r}; use None (automatic), 'cpu' or 'cuda'.") from err
    if dev.type not in {"cpu", "cuda"}:
        raise ValueError(f"Unsupported device {device!r}; use None (automatic), 'cpu' or 'cuda'.")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"Device {device!r} was asked for but no CUDA GPU is visible; use 'cpu' or None.")
    return dev


def fresh_classifier(num_labels: int = 2) -> torch.nn.Module:
    """The pretrained encoder with a new, untrained classification head."""
    assets.quiet_transformers()
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(assets.base_model_path(), num_labels=num_labels,
                                                              local_files_only=not assets.hub_allowed())


def _empty_classifier(num_labels: int) -> torch.nn.Module:
    """The base architecture with a classification head, built from its config alone (weights to be read in).

    from_pretrained would read the base encoder's weights only for the cached ones to overwrite them.
    """
    assets.quiet_transformers()
    from transformers import AutoConfig, AutoModelForSequenceClassification

    cfg = AutoConfig.from_pretrained(assets.base_model_path(), num_labels=num_labels, local_files_only=not assets.hub_allowed())
    with torch.random.fork_rng(devices=[]):  # the throwaway initial weights leave the caller's random stream alone
        return AutoModelForSequenceClassification.from_config(cfg).eval()


@dataclass(frozen=True)
class TrainConfig:
    """How the baseline is fine-tuned; any change makes a cached baseline stale."""
    train_size: int | None = None  # None: the whole training split
    epochs: int = 2
    batch_size: int = 32
    lr: float = 1e-4
    warmup: float = 0.06
    seed: int = 0
    eval_limit: int | None = None  # None: the whole test split

    def __post_init__(self) -> None:
        counts = {k: getattr(self, k) for k in ("train_size", "epochs", "batch_size", "eval_limit")}
        bad = [f"{k}={v!r}" for k, v in counts.items() if not (v is None and k in ("train_size", "eval_limit")) and
               (isinstance(v, bool) or not isinstance(v, int) or v < 1)]
        bad += [f"{k}={v!r}" for k, v, hi in (("lr", self.lr, 1), ("warmup", self.warmup, 1))
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 <= v < hi and (v > 0 or k != "lr"))]
        if bad:
            raise ValueError(f"TrainConfig: {', '.join(bad)}. train_size, epochs, batch_size and eval_limit are whole "
                             "numbers >= 1 (train_size and eval_limit may be None: all of the split), 0 < lr < 1, "
                             "0 <= warmup < 1.")

    @staticmethod
    def default() -> "TrainConfig":
        """The full recipe, or the CI-sized one when LABKIT_FAST=1."""
        return TrainConfig(train_size=2000, epochs=1) if fast_mode() else TrainConfig()


def _cache_name(config: TrainConfig) -> str:
    # The reviews keep their names (baseline, baseline-fast); another active data set adds its name and hash.
    stem = "baseline"
    if not data.is_default():
        td = data.active()
        slug = "".join(c if c.isalnum() or c in "-_" else "-" for c in td.name)[:40]
        stem = f"baseline-{slug}-{td.split_hash[:12]}"
    if config == TrainConfig():
        return stem
    if config == TrainConfig(train_size=2000, epochs=1):
        return f"{stem}-fast"
    return f"{stem}-" + hashlib.sha256(json.dumps(asdict(config), sort_keys=True).encode()).hexdigest()[:12]


def baseline_path(config: TrainConfig | None = None) -> Path:
    """Where the baseline of this recipe is (or will be) cached."""
    return cache.cache_dir() / f"{_cache_name(config or TrainConfig.default())}.safetensors"


def _expected_meta(config: TrainConfig) -> dict:
    return {"recipe": RECIPE, "config": asdict(config), "data_hash": data.split_hash(), "base_sha256": assets.BASE_SHA256,
            "labels": data.labels()}


def _train(model: torch.nn.Module, tokenizer, dataset: "data.TextData", config: TrainConfig, progress: bool,
           desc: str, precision: str = "fp32") -> dict:
    """Fine-tune `model` in place on `dataset`'s training split through train.fit; what was done, for the record."""
    rows = dataset.split("train", limit=config.train_size)
    steps = -(-len(rows) // config.batch_size) * config.epochs
    start = time.perf_counter()
    # transformers' linear warm-up and decay, AdamW with weight decay 0.01, gradient clipping at 1 (train.fit).
    # Not lean (train.fit): this runs once (`labkit prepare`, before class), where time matters more than memory.
    train_mod.fit(model, tokenizer, rows["text"], rows["label"], steps, lr=config.lr, batch_size=config.batch_size,
                  seed=config.seed, warmup=config.warmup, decay=True, weight_decay=0.01, progress=progress, desc=desc,
                  lean=False, precision=precision)
    return {"steps": steps, "train_snippets": len(rows), "train_seconds": round(time.perf_counter() - start, 1)}


def _test_record(model: torch.nn.Module, tokenizer, dataset: "data.TextData", limit: int | None) -> dict:
    """Accuracy on `dataset`'s test split (or its fixed `limit`-sized subset), with its 95% interval."""
    rows = dataset.split("test", limit)
    ci = measure.accuracy_ci(measure.predict(model, tokenizer, rows["text"]), rows["label"].to_numpy())
    return {"test_accuracy": ci["accuracy"], "test_accuracy_lo": ci["lo"], "test_accuracy_hi": ci["hi"],
            "test_snippets": ci["n"]}


def _name_labels(model: torch.nn.Module, names) -> None:
    """Give the model's config the data's label names (id2label), so its predictions read as classes."""
    model.config.id2label = dict(enumerate(names))
    model.config.label2id = {n: i for i, n in enumerate(names)}


def train_baseline(config: TrainConfig | None = None, device=None,
                   progress: bool = True) -> tuple[torch.nn.Module, dict]:
    """Fine-tune the kit's classifier on the active data's training split; the model (eval mode) and a record."""
    settings.flags(progress=progress)
    config = config or TrainConfig.default()
    dev = resolve_device(device)
    dataset = data.active()
    torch.manual_seed(config.seed)  # the new head's initial weights
    tokenizer = assets.load_tokenizer()
    model = fresh_classifier(dataset.num_labels)
    _name_labels(model, dataset.label_names)
    model = model.to(dev)
    done = _train(model, tokenizer, dataset, config, progress, "fine-tuning baseline")
    record = dict(_expected_meta(config), **done, **_test_record(model, tokenizer, dataset, config.eval_limit),
                  data_name=dataset.name, device=str(dev), threads=torch.get_num_threads(),
                  labkit_version=__version__, torch_version=torch.__version__)
    return model, record


def _load_cached(model_fn, path: Path, expected: dict, what: str) -> torch.nn.Module | None:
    """`model_fn()` filled with the cached weights at `path` if their record matches `expected`; None (after a
    warning) to rebuild them. A read-only cache that cannot be used raises instead: nothing may be rebuilt there.
    """
    try:
        meta = checkpoint.checked_meta(path)
        stale = [k for k, v in expected.items() if meta.get(k) != v]
        if stale:
            by = meta.get("labkit_version")
            raise ValueError(f"cached {what} is stale ({', '.join(stale)} changed; prepared by labkit "
                             f"{by}, this is labkit {__version__})")
        return checkpoint.read_weights_into(model_fn(), path)
    except (ValueError, FileNotFoundError, OSError) as err:
        if cache.cache_writable():
            warnings.warn(f"Rebuilding the {what}: {err}", stacklevel=3)
            return None
        raise ValueError(f"The read-only cache {cache.cache_dir()} cannot be used: {err}. Ask whoever prepared "
                         "it to run `python -m labkit prepare` again, or unset LABKIT_CACHE.") from err


def load_baseline(device=None, config: TrainConfig | None = None, retrain: bool = False,
                  progress: bool = True) -> tuple[torch.nn.Module, object]:
    """(model, tokenizer): the kit's classifier fine-tuned on the active data, from the cache or trained once."""
    settings.flags(retrain=retrain, progress=progress)
    model, tokenizer = _load_baseline(device, config, retrain, progress)
    if device is None and (config is None or config == TrainConfig.default()):
        _lend(model, tokenizer)
    return model, tokenizer


def _load_baseline(device, config: TrainConfig | None, retrain: bool, progress: bool) -> tuple[torch.nn.Module, object]:
    config = config or TrainConfig.default()
    dev = resolve_device(device)
    path = baseline_path(config)
    tokenizer = assets.load_tokenizer()
    if not retrain and path.exists():
        model = _load_cached(lambda: _empty_classifier(data.active().num_labels), path, _expected_meta(config),
                             "baseline")
        if model is not None:
            _name_labels(model, data.labels())
            return model.to(dev).eval(), tokenizer
    cache.check_writable(f"valid baseline for this labkit version ({path.name})",
                         f"Ask whoever prepared it to run `python -m labkit prepare` with "
                         f"LABKIT_CACHE={cache.cache_dir()}, or unset LABKIT_CACHE to train your own copy.")
    model, record = train_baseline(config, dev, progress)
    checkpoint.save_checkpoint(model, path, record)
    return model, tokenizer


# --- fine-tuning any supported classifier on any labelled text ----------------------------------------------------

def state_sha256(model: torch.nn.Module) -> str:
    """sha256 over a model's class name and every tensor of its state (name, dtype, shape, bytes)."""
    h = hashlib.sha256(type(model).__name__.encode())
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.view(torch.uint8).numpy().data if t.numel() else b"")
    return h.hexdigest()


def _folder_sha256(folder: Path) -> str:
    """sha256 over a model folder's config and weight files (names and contents)."""
    h = hashlib.sha256()
    files = sorted(p for p in folder.iterdir() if p.is_file() and
                   (p.name == "config.json" or p.suffix in {".safetensors", ".bin", ".pt", ".pth"}))
    for p in files:
        h.update(f"{p.name}\0{cache.file_sha256(p)}\0".encode())
    return h.hexdigest()


def tokenizer_sha256(tokenizer) -> str:
    """sha256 of what a tokenizer does: its full definition (fast tokenizers) or its vocabulary, and its class."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # Padding and truncation are per-call settings that the last call leaves behind, not the tokenizer.
        spec = json.dumps({k: v for k, v in json.loads(backend.to_str()).items()
                           if k not in {"padding", "truncation"}}, sort_keys=True)
    else:
        spec = json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(f"{type(tokenizer).__name__}\0{tokenizer.pad_token}\0{spec}".encode()).hexdigest()


def _is_local(where: str | Path) -> bool:
    """Offline, every name is a local folder (it must be there); online, a name that is not one is a Hub id."""
    return Path(where).expanduser().exists() or not assets.hub_allowed()


def model_config(where: str | Path, num_labels: int, new_head: bool = False):
    """The config of the model saved at `where` (a folder; a Hub id only with HF_HUB_OFFLINE=0), after checking
    that labkit supports its family and that a classifier's label count is `num_labels` (or `new_head`)."""
    assets.quiet_transformers()
    from transformers import AutoConfig

    if _is_local(where):
        where = assets.check_model_folder(where, tokenizer=False)  # the tokenizer may be passed apart
    try:
        cfg = AutoConfig.from_pretrained(str(where), local_files_only=not assets.hub_allowed())
    except (OSError, ValueError) as err:
        raise ValueError(f"{where} holds no model configuration ({err}); save the model there with "
                         "model.save_pretrained(folder).") from err
    if not any(cfg.model_type in f.model_types for f in parts.FAMILIES):
        raise ValueError(f"labkit does not support the model family {cfg.model_type!r} ({where}). Supported "
                         f"families: {parts.SUPPORTED}. Fine-tune one of those (e.g. distilbert-base-uncased), or "
                         f"add an entry to labkit.core.parts.FAMILIES.")
    classifier = any(a.endswith("ForSequenceClassification") for a in (cfg.architectures or []))
    if classifier and cfg.num_labels != num_labels and not new_head:
        raise ValueError(f"{where} is a classifier with {cfg.num_labels} labels, but the data has {num_labels} "
                         "classes. Pass new_head=True to replace its output layer with a new one for these classes "
                         "(trained from scratch), or fine-tune it on data with the same classes.")
    return cfg


def _from_folder(where: str | Path, num_labels: int, new_head: bool, seed: int) -> tuple[torch.nn.Module, str]:
    """A classifier loaded from a local folder (or the hub, when allowed), and the key of what was loaded."""
    from transformers import AutoModelForSequenceClassification

    folder, local = Path(where).expanduser(), _is_local(where)
    src = str(folder) if local else str(where)
    cfg = model_config(where, num_labels, new_head)
    classifier = any(a.endswith("ForSequenceClassification") for a in (cfg.architectures or []))
    torch.manual_seed(seed)  # a new head starts from the same weights every time
    model = AutoModelForSequenceClassification.from_pretrained(
        src, num_labels=num_labels, ignore_mismatched_sizes=classifier and new_head,
        local_files_only=not assets.hub_allowed())
    key = f"folder:{folder.resolve()}:{_folder_sha256(folder)}" if local else f"hub:{where}:{state_sha256(model)}"
    return model, key


def _with_new_head(model: torch.nn.Module, num_labels: int, seed: int) -> torch.nn.Module:
    """A copy of a classifier whose output layer has `num_labels` outputs (new weights); every other weight kept."""
    cfg = copy.deepcopy(model.config)
    cfg.num_labels = num_labels
    torch.manual_seed(seed)
    new = type(model)(cfg)
    shapes = {k: v.shape for k, v in new.state_dict().items()}
    new.load_state_dict({k: v for k, v in model.state_dict().items() if shapes.get(k) == v.shape}, strict=False)
    return new.to(next(model.parameters()).device)


MAX_UNKNOWN = 0.5  # a tokenizer that knows fewer than half of the data's word pieces is not this model's


def check_vocabulary(tokenizer, texts, n: int = 256) -> float:
    """The share of the first `n` texts' word pieces that `tokenizer` makes [UNK]; a ValueError over MAX_UNKNOWN."""
    unk, texts = getattr(tokenizer, "unk_token_id", None), [str(t) for t in list(texts)[:n]]
    if unk is None or not texts:
        return 0.0  # byte-level tokenizers have no unknown token: every text can be spelled
    ids = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=data_mod.MAX_LENGTH)["input_ids"]
    share = sum(i.count(unk) for i in ids) / max(1, sum(len(i) for i in ids))
    if share > MAX_UNKNOWN:
        raise ValueError(f"The tokenizer turns {share:.0%} of the training texts' word pieces into "
                         f"{tokenizer.unk_token} ({len(tokenizer)} tokens in its vocabulary): a model would train on "
                         "noise. Pass the tokenizer the model was pretrained with (saved beside it with "
                         "tokenizer.save_pretrained(folder)), not a placeholder or another language's.")
    return share


def check_pair(model: torch.nn.Module, tokenizer, texts=None) -> None:
    """A ValueError unless `tokenizer` can feed `model`: ids inside its embedding table, and a pad token; with
    `texts`, also one that knows most of their word pieces (at most MAX_UNKNOWN of them [UNK])."""
    table = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > table:
        raise ValueError(f"The tokenizer has {len(tokenizer)} tokens but the model's embedding table has {table} rows: "
                         "they do not belong together. Pass the tokenizer saved with this model "
                         "(AutoTokenizer.from_pretrained(its folder)), or, for a tokenizer you extended on purpose, "
                         "model.resize_token_embeddings(len(tokenizer)) first.")
    if tokenizer.pad_token is None:
        raise ValueError("The tokenizer has no pad token, so texts of different lengths cannot share a batch. Set "
                         "one (e.g. tokenizer.pad_token = tokenizer.unk_token) or use the model's own tokenizer.")
    if texts is not None:
        check_vocabulary(tokenizer, texts)


def fine_tuned_dir() -> Path:
    """Where fine_tune caches its models: <labkit cache>/fine-tuned/."""
    return cache.cache_dir() / "fine-tuned"


def fine_tune(model_or_path, tokenizer, data: "data.TextData | None" = None, config: TrainConfig | None = None,
              device=None, inplace: bool = False, new_head: bool = False, retrain: bool = False,
              progress: bool = True, precision: str = "fp32") -> tuple[torch.nn.Module, dict]:
    """(model, record): a supported classifier fine-tuned on `data` (the active data by default), cached.

    `model_or_path` is a model object (copied unless `inplace`) or a local folder saved with save_pretrained
    (a folder that is not a classifier gets a new head; the hub only with HF_HUB_OFFLINE=0). `tokenizer` is
    the tokenizer object or its folder (with its tokenizer files); one that turns more than half of the training
    texts' word pieces into [UNK] is refused. The result is cached (atomic, sha256-checked safetensors) under a key
    of the model, the data's split hash, the tokenizer and the settings: a second call loads it, no training.
    `new_head=True` replaces the output layer of a classifier whose label count differs from the data's.
    `precision="bf16"` trains under bf16 autocast (fp16 on CUDA, with a GradScaler); the weights stay fp32.
    """
    settings.flags(inplace=inplace, new_head=new_head, retrain=retrain, progress=progress)

    dataset = data_mod.active() if data is None else data
    if not isinstance(dataset, data_mod.TextData):
        raise ValueError(f"data must be a labkit TextData (data.from_csv/from_frame/from_dataset/bbc_news), got "
                         f"{type(dataset).__name__}.")
    config = config or TrainConfig.default()
    if isinstance(model_or_path, (str, Path)) and _is_local(model_or_path):
        assets.check_model_folder(model_or_path, tokenizer=False)  # said first: a missing model, not its tokenizer
    tok = assets.tokenizer_from(tokenizer)
    k = dataset.num_labels
    if isinstance(model_or_path, (str, Path)):
        model, key = _from_folder(model_or_path, k, new_head, config.seed)
        dev = resolve_device(device)
    elif isinstance(model_or_path, torch.nn.Module):
        parts.require_not_meta(model_or_path)
        parts.check_classifier(model_or_path)
        check_pair(model_or_path, tok)
        have = model_or_path.config.num_labels
        if have != k and not new_head:
            raise ValueError(f"The model has {have} labels but the data has {k} classes "
                             f"({', '.join(dataset.label_names)}). "
                             "Pass new_head=True to give it a new output layer for these classes, or fine-tune it on "
                             "data with the same classes.")
        key = f"object:{state_sha256(model_or_path)}"
        dev = resolve_device(device) if device is not None else next(model_or_path.parameters()).device
        if have != k:
            model = _with_new_head(model_or_path, k, config.seed)
        else:
            model = model_or_path if inplace else parts.clone(model_or_path)
    else:
        raise ValueError(f"model_or_path must be a model folder or a transformers classifier, got "
                         f"{type(model_or_path).__name__}.")
    parts.check_classifier(model)
    check_pair(model, tok, dataset.split("train", limit=config.train_size)["text"])
    _name_labels(model, dataset.label_names)
    model = model.to(dev)
    train_mod.autocast(dev, precision)  # an unknown precision, or fp16 off CUDA: refused before any work
    expected = {"recipe": RECIPE, "config": asdict(config), "data_hash": dataset.split_hash, "model_key": key,
                "tokenizer_sha256": tokenizer_sha256(tok), "labels": list(dataset.label_names)}
    if precision != "fp32":  # fp32 leaves the key as it was, so models cached before this option stay valid
        expected["precision"] = precision
    digest = hashlib.sha256(json.dumps(expected, sort_keys=True).encode()).hexdigest()[:16]
    slug = "".join(c if c.isalnum() or c in "-_" else "-" for c in dataset.name)[:40]
    path = fine_tuned_dir() / f"{slug}-{digest}.safetensors"
    if not retrain and path.exists():
        if _load_cached(lambda: model, path, expected, "fine-tuned model") is not None:
            meta = json.loads(path.with_suffix(".json").read_text())
            return model.eval(), dict(meta, path=str(path), cached=True)
    cache.check_writable(f"fine-tuned model for this model, data and settings ({path.name})",
                         "Point LABKIT_CACHE at a writable folder (or unset LABKIT_CACHE_READONLY), or ask whoever "
                         "prepared the cache to run this fine_tune there.")
    done = _train(model, tok, dataset, config, progress, f"fine-tuning on {dataset.name}", precision)
    record = dict(expected, **done, **_test_record(model, tok, dataset, config.eval_limit), data_name=dataset.name,
                  model_class=type(model).__name__, device=str(dev), threads=torch.get_num_threads(),
                  labkit_version=__version__, torch_version=torch.__version__)
    meta = checkpoint.save_checkpoint(model, path, record)
    return model.eval(), dict(meta, path=str(path), cached=False)


@lru_cache(maxsize=2)
def _shared(config: TrainConfig, data_hash: str) -> tuple[torch.nn.Module, object, np.ndarray]:

    model, tokenizer = _load_baseline(None, config, False, False)  # the sliders' own copy: not lent
    return model, tokenizer, measure.predictions(model, tokenizer, data.QUICK_SPLIT, data.QUICK_LIMIT)


def shared_baseline() -> tuple[torch.nn.Module, object, np.ndarray]:
    """(model, tokenizer, its predictions on the quick validation subset), loaded once per process for sliders.

    Shared by every slider function: never modify it; compression functions work on copies. Where the notebook has
    loaded the baseline itself (`load_baseline()`) and not changed it since, the sliders use that one (`_lent`): a
    second copy costs 0.09 GB, and a classroom hub gives a kernel and Jupyter 1-2 GB.
    """
    key = (TrainConfig.default(), data.split_hash())  # one per data set: data.use() switches it
    return _lent(key) or _shared(*key)


_LENT: dict[tuple, dict] = {}  # (config, data hash) -> the model load_baseline last returned, and its fingerprint


def _fingerprint(model: torch.nn.Module) -> tuple:
    """What an in-place change alters: each tensor's identity, version counter and sum (`.data` edits skip the
    counter), and whether any module is in training mode (dropout on). Milliseconds for the 91 MB baseline."""
    with torch.no_grad():
        tensors = tuple((name, id(t), t._version, t.dtype, str(t.device), float(t.sum(dtype=torch.float64)))
                        for name, t in model.state_dict(keep_vars=True).items() if t.is_floating_point())
    return tensors, any(m.training for m in model.modules())


def _lend(model: torch.nn.Module, tokenizer) -> None:
    """Offer the baseline `load_baseline` just returned to the sliders, as long as it stays unchanged."""
    import weakref

    _LENT[(TrainConfig.default(), data.split_hash())] = {"model": weakref.ref(model), "tokenizer": tokenizer,
                                                         "fingerprint": _fingerprint(model), "predictions": None}


def _lent(key: tuple) -> tuple[torch.nn.Module, object, np.ndarray] | None:
    """The lent baseline for `key` if it is still alive and unchanged since it was loaded, else None (for good)."""
    entry = _LENT.get(key)
    model = entry["model"]() if entry else None
    if model is None or _fingerprint(model) != entry["fingerprint"]:
        _LENT.pop(key, None)  # changed or gone: the sliders load their own copy from now on
        return None
    if entry["predictions"] is None:

        entry["predictions"] = measure.predictions(model, entry["tokenizer"], data.QUICK_SPLIT, data.QUICK_LIMIT)
    return model, entry["tokenizer"], entry["predictions"]


def baseline_record(config: TrainConfig | None = None) -> dict:
    """The metadata of the cached baseline (accuracy, steps, training time, sha256)."""
    path = baseline_path(config).with_suffix(".json")
    if not path.is_file():
        raise FileNotFoundError(f"No cached baseline at {path}; run labkit.core.model.load_baseline() first.")
    return json.loads(path.read_text())
