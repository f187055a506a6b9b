"""Real measurements: accuracy on held-out text, agreement, latency (median/p90), serialized bytes."""

from __future__ import annotations

import functools
import statistics
import tempfile
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from labkit import fast_mode
from labkit.core import assets, data, memory, parts
from labkit.core.machine import cpu_name


def _logits(out) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else (out[0] if isinstance(out, (tuple, list)) else out)


@torch.inference_mode()
def predict(model: torch.nn.Module, tokenizer, texts, batch_size: int = 32) -> np.ndarray:
    """Predicted labels for a list of texts (length-bucketed batches, no gradients)."""
    texts = list(texts)
    model.eval()
    dev = parts.device_of(model)
    preds = np.empty(len(texts), dtype=np.int64)
    for batch in data.batches(texts, None, tokenizer, batch_size):
        logits = _logits(model(**parts.feed(model, batch.to(dev).inputs)))
        preds[batch.rows] = logits.argmax(-1).cpu().numpy()
    if memory.tight():
        memory.trim()  # batches of odd lengths leave holes in the heap that the next model's batches cannot reuse
    return preds


def predictions(model, tokenizer, split: str = "test", limit: int | None = None) -> np.ndarray:
    """Predicted labels on a split (or its fixed `limit`-sized subset)."""
    return predict(model, tokenizer, data.split(split, limit)["text"])


def accuracy(model, tokenizer, split: str = "test", limit: int | None = None) -> float:
    """Fraction of correct labels on a held-out split."""
    df = data.split(split, limit)
    return float((predict(model, tokenizer, df["text"]) == df["label"].to_numpy()).mean())


def agreement(preds: np.ndarray, reference: np.ndarray) -> float:
    """Fraction of inputs where a compressed model predicts what the baseline predicts."""
    preds, reference = np.asarray(preds), np.asarray(reference)
    if preds.shape != reference.shape:
        raise ValueError(f"Predictions of shape {preds.shape} cannot be compared with {reference.shape}; "
                         "compute both on the same split and limit.")
    return float((preds == reference).mean())


Z95 = 1.959963984540054  # the two-sided 95% quantile of the normal distribution


def wilson(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval of an accuracy of `correct` out of `n` (sound near 0 and 1, unlike +-1.96 SE)."""
    if n < 1 or not 0 <= correct <= n:
        raise ValueError(f"need 0 <= correct <= n and n >= 1, got correct={correct}, n={n}.")
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


class Accuracy(dict):
    """An accuracy with its 95% interval: the dict {accuracy, lo, hi, n} that prints as every readout in the kit
    shows it, '0.830 [0.806, 0.852] (n=1276)'."""

    def __str__(self) -> str:
        return f"{self['accuracy']:.3f} [{self['lo']:.3f}, {self['hi']:.3f}] (n={self['n']})"


def accuracy_ci(preds, labels) -> Accuracy:
    """Accuracy of predictions against labels, with its 95% Wilson interval and the number of snippets."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    if preds.shape != labels.shape:
        raise ValueError(f"{preds.shape} predictions for {labels.shape} labels; use the same split and limit.")
    k, n = int((preds == labels).sum()), len(labels)
    lo, hi = wilson(k, n)
    return Accuracy(accuracy=k / n, lo=lo, hi=hi, n=n)


def paired(preds_a, preds_b, labels) -> dict:
    """Is model A more accurate than B on the same snippets? Difference, its 95% interval, McNemar's exact p.

    Only the snippets where exactly one model is right carry information; McNemar's exact test asks whether they
    could have split between A and B like a fair coin's tosses. The interval is Wald's for paired proportions."""
    labels = np.asarray(labels)
    a_right, b_right = np.asarray(preds_a) == labels, np.asarray(preds_b) == labels
    if a_right.shape != b_right.shape:
        raise ValueError("paired() needs both models' predictions on the same snippets.")
    from scipy.stats import binomtest

    n = len(labels)
    only_a, only_b = int((a_right & ~b_right).sum()), int((~a_right & b_right).sum())
    diff = (only_a - only_b) / n
    se = np.sqrt(max(only_a + only_b - n * diff * diff, 0.0)) / n
    p = 1.0 if only_a + only_b == 0 else float(binomtest(only_a, only_a + only_b, 0.5).pvalue)
    return {"difference": diff, "lo": diff - Z95 * se, "hi": diff + Z95 * se, "p_value": p,
            "only_a_right": only_a, "only_b_right": only_b, "n": n}


def detectable_difference(n: int, discordant: float = 0.1) -> float:
    """Roughly the smallest accuracy difference a paired test on `n` snippets can show (95%, 80% power).

    `discordant` is the fraction of snippets where two models disagree; a readout compares the difference it
    reports with this to say whether the subset is big enough."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}.")
    return float((Z95 + 0.8416) * np.sqrt(discordant / n))


def format_accuracy(ci: dict) -> str:
    """'0.830 [0.806, 0.852] (n=1276)': an accuracy as every table and readout in the kit shows it."""
    return str(Accuracy(ci))


def footprint(model: torch.nn.Module, seq_len: int | None = None) -> pd.DataFrame:
    """Where the bytes and the multiply-adds are: one row per part (embeddings, each block, head), at `seq_len`.

    Parts are found by module type, not by a family's attribute names: an nn.Embedding is an embedding table,
    and a Linear's multiply-adds per snippet are in x out x tokens (seq_len defaults to the median snippet's).
    Attention's own products (QK^T and AV, 2 x tokens^2 x hidden per block) are left out: about 1% at this length."""
    if seq_len is None:
        seq_len = median_tokens()
    rows: dict[str, dict] = {}

    def part(name: str) -> str:
        bits = name.split(".")
        for i, b in enumerate(bits[:-1]):
            if b.isdigit():  # the first numbered container is the stack of blocks
                return f"block {b}"
        return "embeddings" if "embed" in name else "head"

    for name, mod in model.named_modules():
        own = [p for p in mod.parameters(recurse=False)]
        if not own:
            continue
        row = rows.setdefault(part(name), {"params": 0, "bytes": 0, "macs_per_snippet": 0})
        row["params"] += sum(p.numel() for p in own)
        row["bytes"] += sum(p.numel() * p.element_size() for p in own)
        if isinstance(mod, torch.nn.Linear):
            # a head works on one pooled vector per snippet, a block's Linear on every token
            tokens = seq_len if part(name).startswith("block") else 1
            row["macs_per_snippet"] += mod.in_features * mod.out_features * tokens
    df = pd.DataFrame.from_dict(rows, orient="index")
    df["share_of_bytes"] = df["bytes"] / df["bytes"].sum()
    df["share_of_macs"] = df["macs_per_snippet"] / max(1, df["macs_per_snippet"].sum())
    return df


@lru_cache(maxsize=1)
def median_tokens() -> int:
    """Word pieces in the median test snippet ([CLS] and [SEP] included), the length a typical input has."""
    tok = assets.load_tokenizer()
    lengths = [len(ids) for ids in tok(list(data.split("test")["text"]))["input_ids"]]
    return int(np.median(lengths))


def latency_texts(batch_size: int) -> list[str]:
    """The real snippets timed at a batch size: a fixed sample of the test split (median length at batch 1)."""
    pool = list(data.split("test").sample(frac=1.0, random_state=data.SEED)["text"].head(max(32, batch_size)))
    if batch_size == 1:  # the median-length snippet of the first 32 (fewer on a small data set)
        pool = pool[:32]
        return [sorted(pool, key=len)[len(pool) // 2]]
    return pool[:batch_size]


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


# Slider and dashboard points: each is timed once, then cached. Five interleaved rounds, as in the tour, with
# the per-round min-max shown beside the speed-up so a learner sees how far to trust it; at 2 warm-ups and 7
# rounds a fresh dashboard point took 5-10 s on 2 busy cores, too long for a slider.
SLIDER_WARMUP, SLIDER_REPEATS = 1, 5


def latency(model, tokenizer, batch_size: int = 32, warmup: int | None = None, repeats: int | None = None,
            texts: list[str] | None = None) -> dict:
    """Time forward passes on real snippets: warm-up, then `repeats` runs; median and p90 in ms."""
    return compare_latency({"model": model}, tokenizer, batch_size, warmup, repeats, texts)["model"]


def compare_latency(models: dict, tokenizer=None, batch_size: int = 32, warmup: int | None = None,
                    repeats: int | None = None, texts: list[str] | None = None) -> dict[str, dict]:
    """Time several models side by side, interleaved run by run, so drift on the machine hits all equally.

    Without a tokenizer, `models` holds functions of no arguments (a matmul on the CPU): each call is timed."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    warmup = (2 if fast_mode() else 5) if warmup is None else warmup
    repeats = (5 if fast_mode() else 20) if repeats is None else repeats
    runs, devices, shape = {}, {}, {}
    if tokenizer is None:
        if not all(callable(fn) and not isinstance(fn, torch.nn.Module) for fn in models.values()):
            raise ValueError("Without a tokenizer, compare_latency times functions of no arguments; pass the "
                             "tokenizer to time models.")
        runs = dict(models)
        devices = {name: torch.device("cpu") for name in models}
    else:
        texts = texts or latency_texts(batch_size)
        enc = dict(tokenizer(texts, padding=True, truncation=True, max_length=data.MAX_LENGTH, return_tensors="pt"))
        shape = {"batch_size": len(texts), "seq_len": int(enc["input_ids"].shape[1])}
        for name, m in models.items():
            m.eval()
            devices[name] = parts.device_of(m)
            inputs = parts.feed(m, {k: v.to(devices[name]) for k, v in enc.items()})
            runs[name] = functools.partial(m, **inputs)
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for i in range(warmup + repeats):
            for name, run in runs.items():
                _sync(devices[name])
                t0 = time.perf_counter()
                run()
                _sync(devices[name])
                if i >= warmup:
                    times[name].append((time.perf_counter() - t0) * 1000)
    out = {}
    for name, ts in times.items():
        dev = devices[name]
        out[name] = {"median_ms": statistics.median(ts), "p90_ms": float(np.percentile(ts, 90)), **shape,
                     "repeats": repeats, "warmup": warmup, "threads": torch.get_num_threads(), "times_ms": ts,
                     "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name()}
    return out


def speedups(timing: dict[str, dict], baseline: str) -> dict[str, dict]:
    """Each model's speed-up over `baseline` from one `compare_latency` run: ratio of medians, min-max per round.

    Round i ran every model back to back, so baseline_i / model_i compares like with like; the spread of those
    per-round ratios shows how far one run's speed-up can be trusted on this machine at this moment."""
    if baseline not in timing:
        raise ValueError(f"No timing named {baseline!r}; names are {list(timing)}.")
    base = timing[baseline]
    out = {}
    for name, rec in timing.items():
        ratios = [b / t for b, t in zip(base["times_ms"], rec["times_ms"])]
        out[name] = {"speedup": base["median_ms"] / rec["median_ms"], "lo": min(ratios), "hi": max(ratios),
                     "rounds": len(ratios)}
    return out


def format_range(lo: float | None, hi: float | None) -> str:
    """'[0.93, 1.12]': a speed-up's min-max over interleaved rounds, as tables show it ('' where not timed)."""
    return "" if lo is None or hi is None or pd.isna(lo) or pd.isna(hi) else f"[{lo:.2f}, {hi:.2f}]"


def serialized_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's weights as saved: safetensors where it can hold them, else torch's own format."""
    state = model.state_dict()
    if all(isinstance(v, torch.Tensor) and not v.is_quantized for v in state.values()):
        from safetensors.torch import save_file

        # safetensors refuses tensors that share memory; the artifact stores each once anyway.
        seen, unique = set(), {}
        for k, v in state.items():
            key = (v.data_ptr(), v.dtype, tuple(v.shape))
            if key not in seen:
                seen.add(key)
                unique[k] = v.detach().cpu().contiguous()
        return _file_bytes(lambda path: save_file(unique, str(path)))
    # Quantized modules keep packed int8 weights that only torch's format holds; this is only measured, never loaded.
    return _file_bytes(lambda path: _torch_save(state, path))


def _torch_save(state: dict, path: Path) -> None:
    with open(path, "wb") as f:  # a file object, not a name: the archive's inner folder is then named as always
        torch.save(state, f)


def _file_bytes(write) -> int:
    """The size of the file `write(path)` makes, in a temporary folder. Written to disk, not to a bytes object: an
    in-memory artifact needs about twice its size while it is built (0.38 GB for the 0.19 GB float64 baseline)."""
    with tempfile.TemporaryDirectory(prefix="labkit-size-") as folder:
        path = Path(folder) / "artifact"
        write(path)
        return path.stat().st_size


