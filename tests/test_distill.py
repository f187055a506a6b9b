"""Distillation (labkit.prune.distill): students built from a teacher, train.fit's loss_fn, the students' cache."""

import pytest
import torch

from labkit.core import data, train
from labkit.prune import distill


@pytest.fixture()
def teacher():
    """A tiny random BERT classifier of 4 blocks (the kit's tokenizer's vocabulary)."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=160, num_labels=2)
    return BertForSequenceClassification(cfg).eval()


def test_a_student_from_the_lower_blocks_copies_them_and_one_from_scratch_does_not(teacher):
    lower, scratch = distill.student(teacher, 2, "lower"), distill.student(teacher, 2, "scratch")
    assert lower.config.num_hidden_layers == 2 and teacher.config.num_hidden_layers == 4
    name = "bert.encoder.layer.1.attention.self.query.weight"
    assert torch.equal(lower.state_dict()[name], teacher.state_dict()[name])
    assert not torch.equal(scratch.state_dict()[name], teacher.state_dict()[name])
    assert lower.state_dict()[name].data_ptr() != teacher.state_dict()[name].data_ptr()  # a copy, not shared
    with pytest.raises(ValueError, match="init"):
        distill.student(teacher, 2, "upper")


def test_the_layer_map_is_refused_where_depths_do_not_divide():
    with pytest.raises(ValueError, match="evenly"):
        distill.layer_map(4, 6)


def test_fit_trains_with_a_loss_fn_and_leaves_the_teacher_alone(teacher, tokenizer):
    small = distill.student(teacher, 2, "lower")
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    rows = data.split("train", limit=16)
    history = train.fit(small, tokenizer, rows["text"], rows["label"], 2, lr=1e-3, batch_size=8,
                        loss_fn=distill.distillation(teacher, 2.0))
    assert len(history) == 2 and all(r["loss"] > 0 for r in history)
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
    name = "bert.encoder.layer.1.output.dense.weight"
    assert not torch.equal(small.state_dict()[name], before[name])


def test_a_teacher_and_a_loss_fn_together_are_refused(teacher, tokenizer):
    with pytest.raises(ValueError, match="not both"):
        train.fit(teacher, tokenizer, ["a"], [0], 1, teacher=teacher, loss_fn=distill.distillation(teacher))


def test_labels_only_is_the_plain_cross_entropy(teacher, tokenizer):
    batch = tokenizer(["a fine film", "dull"], padding=True, return_tensors="pt")
    labels = torch.tensor([1, 0])
    plain = teacher(**batch, labels=labels).loss
    assert torch.allclose(distill.distillation(teacher, alpha=1, beta=0)(teacher, dict(batch), labels), plain)
    # the student is its own teacher: nothing to imitate, only the labels' half of the loss is left
    assert torch.allclose(distill.distillation(teacher)(teacher, dict(batch), labels), 0.5 * plain, atol=1e-6)


def test_a_trained_student_is_cached_and_loaded_again(teacher, tokenizer, tmp_path, monkeypatch):
    monkeypatch.setattr(distill, "student_path", lambda key: tmp_path / f"student-{key['init']}.safetensors")
    first = distill.trained_student(teacher, tokenizer, 2, "lower", True, steps=1)
    assert (tmp_path / "student-lower.safetensors").exists()
    again = distill.trained_student(teacher, tokenizer, 2, "lower", True, steps=1)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in first.state_dict().items())
