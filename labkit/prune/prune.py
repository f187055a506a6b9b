"""Pruning as the tour and the pipelines run it: magnitude and 2:4 zeros, structured cuts, recovery.

Each lives in its own module (`unstructured`, `structured`, `recovery`); this one gathers them under one name and
measures them for `python -m labkit tour`.
"""

from __future__ import annotations

import time

import numpy as np
from torch import nn

from labkit import fast_mode
from labkit.core import results
from labkit.prune.recovery import recover
from labkit.prune.structured import shape_summary, structured, structured_blocks
from labkit.prune.unstructured import magnitude, sparsity_of, two_four

__all__ = ["magnitude", "recover", "shape_summary", "sparsity_of", "structured", "structured_blocks", "tour",
           "two_four"]


def tour(model: nn.Module, tokenizer, reference: np.ndarray, limit: int | None = None,
         steps: int | None = None) -> list[results.Result]:
    """Rows for `python -m labkit tour`: 50% global magnitude (zeros, no speed) and structured pruning, each
    recovered, timed beside `model`. `limit` (test snippets) and `steps` (recovery batches) shrink it for tests.

    A family whose heads cannot be cut out (DeBERTa-v2) gets the magnitude row only, the structured one skipped
    with the reason (`results.skip_row`), decided before any training."""
    steps = (20 if fast_mode() else 60) if steps is None else steps
    cut = True
    try:
        structured_blocks(model)
    except ValueError as err:
        results.skip_row("prune: structured (heads and FFN neurons)", str(err))
        cut = False
    # Each pruned copy is new here, so it is trained in place: no second copy while it trains.
    models = {f"prune: 50% global magnitude +{steps} steps": recover(magnitude(model, 0.5, "global"), tokenizer,
                                                                     steps, inplace=True)}
    notes = {f"prune: 50% global magnitude +{steps} steps": "zeros in dense tensors: same bytes, same speed as fp32"}
    if cut:
        t0 = time.perf_counter()
        small = recover(structured(model, heads=1 / 3, ffn=0.7), tokenizer, steps, inplace=True)
        kept, shape = shape_summary(small).iloc[0], shape_summary(model).iloc[0]
        name = (f"prune: {kept['heads']}/{shape['heads']} heads, {kept['ffn_neurons']}/{shape['ffn_neurons']} FFN "
                f"+{steps} steps")
        models[name] = small
        notes[name] = f"structured: smaller Linear layers ({time.perf_counter() - t0:.0f} s)"
    return results.evaluate_group(models, tokenizer, results.reference_on(model, tokenizer, reference, limit), model,
                                  notes, limit=limit)
