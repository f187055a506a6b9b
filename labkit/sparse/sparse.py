"""Sparse weights as the tour measures them: FFN layers pruned to 90%, run as CSR, stored in their smallest format.

The formats live in `formats`, the CSR layers in `layers`; this module gathers the names the pipelines use.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from labkit import fast_mode
from labkit.core import data, measure, results
from labkit.sparse.formats import VALUES
from labkit.sparse.layers import SparseLinear, saved_bytes, to_sparse

__all__ = ["SparseLinear", "to_sparse", "tour"]


def tour(model: nn.Module, tokenizer, reference: np.ndarray, limit: int | None = None) -> list[results.Result]:
    """Rows for the main job: FFN layers at 90% sparsity stored in their best format and run as CSR, timed beside
    `model`. Accuracy on 200 test (and validation) snippets in fast mode, or the first `limit` (tests); the same code
    path."""
    limit = (200 if fast_mode() else None) if limit is None else limit
    ref = results.reference_on(model, tokenizer, reference, limit)
    labels = data.split("test", limit)["label"].to_numpy()
    rows, models = [], []
    for values in VALUES:
        sparse_model = to_sparse(model, 0.9, "ffn", values=values)
        sizes = {fmt: saved_bytes(sparse_model, fmt, values) for fmt in ("csr", "csr_min", "bitmask", "coo_min")}
        best = min(sizes, key=sizes.get)
        preds = measure.predictions(sparse_model, tokenizer, "test", limit)
        ci = measure.accuracy_ci(preds, labels)
        val = results.validation_accuracy(sparse_model, tokenizer, limit)
        rows.append(results.Result(
            name=f"sparse: FFN 90% magnitude, {best} {values}", accuracy=ci["accuracy"], accuracy_lo=ci["lo"],
            accuracy_hi=ci["hi"], snippets=ci["n"], agreement=measure.agreement(preds, ref), size_bytes=sizes[best],
            val_accuracy=val["accuracy"], val_accuracy_lo=val["lo"], val_accuracy_hi=val["hi"],
            val_snippets=val["n"], notes="no fine-tuning; run with torch CSR matmul; size = bytes of the saved .npz"))
        models.append(sparse_model)
    return results.timed_group(rows, models, model, tokenizer)
