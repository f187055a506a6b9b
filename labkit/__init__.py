"""labkit: a hands-on lab kit for making a text classifier smaller and faster."""

import os as _os

# The kit never reaches a model hub unless the learner opts in; set this before transformers loads.
_os.environ.setdefault("HF_HUB_OFFLINE", "1")
_os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

__version__ = "0.1.0"


def fast_mode() -> bool:
    """True when LABKIT_FAST=1: smaller data and fewer steps, the same code path (used by CI)."""
    return _os.environ.get("LABKIT_FAST", "0").strip().lower() in {"1", "true", "yes", "on"}
