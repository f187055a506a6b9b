"""Each targeted hint of notebook 03b's exercises, reached by the mistake it names (test_checks.py runs the table);
the references against torch's kl_div, the worked example and the kit's own distillation code."""

import torch
from torch.nn import functional as F

from labkit.core import train
from labkit.course import checks
from labkit.course.exercises.nb03b import GOLDEN_LOSS, GOLDEN_STUDENT, GOLDEN_T, GOLDEN_TEACHER, golden_hidden
from labkit.prune import distill


def _kl(p_log, q_log):
    return (p_log.exp() * (p_log - q_log)).sum(-1).mean()


def _no_t_squared(s, t, temp):
    return _kl(torch.log_softmax(t / temp, -1), torch.log_softmax(s / temp, -1))


def _reversed(s, t, temp):
    return _kl(torch.log_softmax(s / temp, -1), torch.log_softmax(t / temp, -1)) * temp ** 2


def _summed(s, t, temp):
    return _no_t_squared(s, t, temp) * temp ** 2 * s.shape[0]


def _teacher_hard(s, t, temp):
    return _kl(torch.log_softmax(t, -1), torch.log_softmax(s / temp, -1)) * temp ** 2


def _per_example(s, t, temp):
    p = torch.log_softmax(t / temp, -1)
    return (p.exp() * (p - torch.log_softmax(s / temp, -1))).sum(-1) * temp ** 2


def _pairs(student, teacher, mask, pairs, masked=True):
    real = mask.bool()
    pick = (lambda h: h[real]) if masked else (lambda h: h)
    return sum(((pick(student[i]) - pick(teacher[j])) ** 2).mean() for i, j in pairs) / len(pairs)


def _ratio(student, teacher):
    return (len(teacher) - 1) // (len(student) - 1)


def _padding(student, teacher, mask):
    k = _ratio(student, teacher)
    return _pairs(student, teacher, mask, [(i, k * i) for i in range(1, len(student))], masked=False)


def _first_layers(student, teacher, mask):
    return _pairs(student, teacher, mask, [(i, i) for i in range(1, len(student))])


def _embeddings(student, teacher, mask):
    k = _ratio(student, teacher)
    return _pairs(student, teacher, mask, [(i, k * i) for i in range(len(student))])


def _off_by_one(student, teacher, mask):
    k = _ratio(student, teacher)
    return _pairs(student, teacher, mask, [(i, k * i - 1) for i in range(1, len(student))])


def _per_layer(student, teacher, mask):
    k = _ratio(student, teacher)
    return torch.stack([_pairs(student, teacher, mask, [(i, k * i)]) for i in range(1, len(student))])


MISTAKES = [
    ("03b.soft_loss", "no_t_squared", lambda: _no_t_squared),
    ("03b.soft_loss", "reversed", lambda: _reversed),
    ("03b.soft_loss", "averaging", lambda: _summed),
    ("03b.soft_loss", "teacher_not_softened", lambda: _teacher_hard),
    ("03b.soft_loss", "not_scalar", lambda: _per_example),
    ("03b.hidden_loss", "padding", lambda: _padding),
    ("03b.hidden_loss", "first_layers", lambda: _first_layers),
    ("03b.hidden_loss", "embeddings", lambda: _embeddings),
    ("03b.hidden_loss", "off_by_one", lambda: _off_by_one),
    ("03b.hidden_loss", "not_scalar", lambda: _per_layer),
    ("03b.two_layer_map", "first_layers", lambda: (1, 2)),
    ("03b.two_layer_map", "from_zero", lambda: (2, 5)),
]


def test_soft_loss_matches_the_golden_value_torchs_kl_div_and_the_kits_loss():
    soft_loss = checks.solution("03b.soft_loss")
    got = soft_loss(GOLDEN_STUDENT, GOLDEN_TEACHER, GOLDEN_T)
    torch_kl = F.kl_div(F.log_softmax(GOLDEN_STUDENT / GOLDEN_T, -1), F.softmax(GOLDEN_TEACHER / GOLDEN_T, -1),
                        reduction="batchmean") * GOLDEN_T ** 2
    assert abs(float(got) - GOLDEN_LOSS) < 1e-6 and torch.allclose(got, torch_kl)
    assert torch.allclose(train.distill_loss(GOLDEN_STUDENT, GOLDEN_TEACHER, GOLDEN_T), torch_kl)


def test_the_soft_loss_is_zero_when_the_student_copies_the_teacher():
    logits = torch.randn(4, 3)
    assert float(checks.solution("03b.soft_loss")(logits, logits, 3.0)) < 1e-6


def test_the_reference_hidden_loss_is_the_kits():
    for student, teacher, mask in (golden_hidden(), golden_hidden(8, 3, 6)):
        assert torch.allclose(checks.solution("03b.hidden_loss")(student, teacher, mask),
                              distill.hidden_loss(student, teacher, mask))


def test_the_layer_map_ends_on_the_teachers_last_layer():
    assert distill.layer_map(3, 6) == [2, 4, 6] and distill.layer_map(2, 6) == [3, 6]
    assert tuple(distill.layer_map(2, 6)) == checks.solution("03b.two_layer_map")
