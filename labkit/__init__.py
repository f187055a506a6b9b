"""labkit: a hands-on lab kit for making a text classifier smaller and faster."""

from labkit.core import settings as _settings

# Importing labkit changes nothing outside it (no environment variables are set): labkit.core.model loads its
# model and tokenizer with local_files_only=True instead, so the kit itself never reaches a model hub.
# The root imports only the settings (labkit.core.settings, which imports nothing of labkit).

# The one version: pyproject.toml reads it (`dynamic = ["version"]`).
__version__ = "0.1.0"


def fast_mode() -> bool:
    """True when LABKIT_FAST=1: smaller data and fewer steps, the same code path (used by CI); a value that is no
    switch (LABKIT_FAST=2) is a ValueError."""
    return _settings.fast()
