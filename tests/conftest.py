import os

from labkit.core import assets, model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LABKIT_FAST", "1")

import pytest
import torch


@pytest.fixture(scope="session")
def tokenizer():
    return assets.load_tokenizer()


@pytest.fixture()
def tiny_model():
    """A small, randomly initialised BERT classifier: fast, and not the one we ship."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, num_labels=2)
    return BertForSequenceClassification(cfg).eval()


@pytest.fixture(scope="session")
def baseline():
    """The cached baseline (fast mode in CI: trained once, about a minute, then loaded from the cache)."""
    return model.load_baseline(progress=False)
