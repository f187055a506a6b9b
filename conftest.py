"""The fast tier: `pytest -m "not slow"` (make test-fast) leaves out what takes long, for everyday work.

Slow is a notebook (nbval), a browser test, or a test that needs the trained baseline or the small language model;
a test can also say so itself with @pytest.mark.slow. `make test` runs everything.
"""

import pytest

SLOW_FIXTURES = {"baseline", "slm_model", "real_slm"}


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a notebook, a browser test, or a test on the trained models "
                                       "(left out by -m 'not slow')")


def pytest_collection_modifyitems(config, items):
    for item in items:
        notebook = item.path.suffix == ".ipynb"
        browser = "browser" in item.path.parts
        heavy = SLOW_FIXTURES & set(getattr(item, "fixturenames", ()))
        if notebook or browser or heavy:
            item.add_marker(pytest.mark.slow)
