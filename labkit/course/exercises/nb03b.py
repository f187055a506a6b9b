"""Notebook 03b (knowledge distillation): the softened-logit loss, hidden-state matching over a layer map, which
teacher layers a student imitates; predictions of size, speed and the best temperature; a written question."""

from __future__ import annotations

from typing import Any

import torch

from labkit.core import train
from labkit.course.exercises import Mistake, attempt, close, exercise, given, prediction, written

# --- 03b.soft_loss: the softened-logit loss -------------------------------------------------------------------

# Two examples, three classes, at T = 2: the value worked out in the notebook's markdown (KL of the softened
# distributions, averaged over the examples, times T^2), checked against torch's kl_div.
GOLDEN_STUDENT = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 1.0]])
GOLDEN_TEACHER = torch.tensor([[2.0, 1.0, 0.0], [0.5, 0.5, 2.0]])
GOLDEN_T = 2.0
GOLDEN_LOSS = 0.2395483


def _soft_loss():
    def soft_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
        """KL(teacher || student) of the distributions softened by `temperature`, mean over examples, times T^2."""
        p_teacher = torch.softmax(teacher_logits / temperature, dim=-1)
        log_p_student = torch.log_softmax(student_logits / temperature, dim=-1)
        per_example = (p_teacher * (torch.log(p_teacher) - log_p_student)).sum(dim=-1)
        return per_example.mean() * temperature ** 2
    return soft_loss


def _soft_cases() -> list[tuple[torch.Tensor, torch.Tensor, float]]:
    gen = torch.Generator().manual_seed(5)
    s, t = torch.randn(6, 4, generator=gen) * 3, torch.randn(6, 4, generator=gen) * 3
    return [(GOLDEN_STUDENT, GOLDEN_TEACHER, GOLDEN_T), (s, t, 1.0), (s, t, 4.0)]


def _soft_mistake(got: Any, s: torch.Tensor, t: torch.Tensor, temp: float) -> str | None:
    if not isinstance(got, torch.Tensor) or got.numel() != 1:
        return "not_scalar"
    got = float(got)
    want = float(train.distill_loss(s, t, temp))
    if close(got, want, 1e-4):
        return None
    ls, lt = torch.log_softmax(s / temp, -1), torch.log_softmax(t / temp, -1)
    kl = lambda p_log, q_log: float((p_log.exp() * (p_log - q_log)).sum(-1).mean())  # noqa: E731
    if close(got, kl(lt, ls), 1e-4):
        return "no_t_squared"
    if close(got, kl(ls, lt) * temp ** 2, 1e-4) or close(got, kl(ls, lt), 1e-4):
        return "reversed"
    if close(got, want * s.shape[0], 1e-4) or close(got, want / s.shape[1], 1e-4):
        return "averaging"
    hard = torch.log_softmax(t, -1)
    if close(got, kl(hard, ls) * temp ** 2, 1e-4):
        return "teacher_not_softened"
    return "wrong"


@exercise("03b.soft_loss",
          "Write soft_loss(student_logits, teacher_logits, temperature) -> a scalar tensor: the distillation loss "
          "on logits of shape (batch, classes), as the section above defines it (its size must not depend on T, "
          "and it is one number per batch whatever the batch size). Checked on the worked example's golden value "
          "and against torch's own kl_div on random logits at T = 1 and T = 4.",
          _soft_loss,
          {"no_t_squared": "your loss shrinks as T grows: softened distributions differ less, so their KL (and its "
                           "gradients) fall roughly as 1/T^2. The section says what restores the size.",
           "reversed": "your KL runs the other way: it weighs by the student's probabilities. Distillation asks the "
                       "student to cover what the teacher believes, so the teacher's distribution is the weight.",
           "averaging": "your loss grows or shrinks with the batch or the number of classes: sum over the classes "
                        "of one example, then average over the examples (kl_div calls that 'batchmean').",
           "teacher_not_softened": "the teacher's logits were not divided by T: both distributions are softened "
                                   "by the same temperature, or the student chases a sharper target than it sees.",
           "not_scalar": "return one number for the whole batch (a 0-dim tensor), so it can be added to the "
                         "cross-entropy and backpropagated.",
           "wrong": "both sets of logits are divided by T before the (log-)softmax; the KL weighs the log-ratio by "
                    "the teacher's probabilities, is summed over classes and averaged over examples, then scaled."},
          kind="code",
          uses="section 2 runs it on the baseline's and a fresh student's logits for a real batch and compares it "
               "with the kit's train.distill_loss, the loss every student here is trained with.",
          ladder=("The teacher's softened probabilities are the target; the student's softened log-probabilities "
                  "are what is scored; the KL divergence between them measures how far apart they are.",
                  "The step that usually goes wrong is the scale: a higher T flattens both distributions, the KL "
                  "falls with it, and without a correction a higher T would silently mean a weaker teacher.",
                  "A smaller case, one example, two classes, T = 1: teacher p = (0.75, 0.25), student q = "
                  "(0.5, 0.5): KL = 0.75 ln(1.5) + 0.25 ln(0.5) = 0.3041 - 0.1733 = 0.1308."))
def _check_soft_loss(answer: Any) -> str | None:
    found = [_soft_mistake(attempt(answer, s.clone(), t.clone(), temp), s, t, temp) for s, t, temp in _soft_cases()]
    wrong = [m for m in found if m is not None]
    order = ("not_scalar", "no_t_squared", "reversed", "averaging", "teacher_not_softened", "wrong")
    return min(wrong, key=order.index) if wrong else None


# --- 03b.hidden_loss: hidden-state matching over a layer map -------------------------------------------------------

def golden_hidden(seed: int = 7, student_layers: int = 2, teacher_layers: int = 4):
    """Tiny hidden states as transformers returns them (embeddings first): batch 2, 3 tokens, width 4; the second
    example's last token is padding, its states set large so that counting it shows."""
    gen = torch.Generator().manual_seed(seed)
    student = tuple(torch.randn(2, 3, 4, generator=gen) for _ in range(student_layers + 1))
    teacher = tuple(torch.randn(2, 3, 4, generator=gen) for _ in range(teacher_layers + 1))
    for h in student + teacher:
        h[1, 2] = 10 * torch.randn(4, generator=gen)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    return student, teacher, mask


def _hidden_loss():
    def hidden_loss(student_hidden, teacher_hidden, mask: torch.Tensor) -> torch.Tensor:
        """Mean over student layers i = 1..m of the MSE, over real tokens, to teacher layer k*i (k = ratio)."""
        m, n = len(student_hidden) - 1, len(teacher_hidden) - 1
        k = n // m
        real = mask.bool()
        total = 0.0
        for i in range(1, m + 1):
            s = student_hidden[i][real]
            t = teacher_hidden[k * i][real]
            total = total + ((s - t) ** 2).mean()
        return total / m
    return hidden_loss


def _mse_over(student, teacher, pairs, real=None) -> float:
    sel = (lambda h: h[real]) if real is not None else (lambda h: h)
    return float(sum(((sel(student[i]) - sel(teacher[j])) ** 2).mean() for i, j in pairs) / len(pairs))


def _hidden_mistake(got: Any, student, teacher, mask) -> str | None:
    if not isinstance(got, torch.Tensor) or got.numel() != 1:
        return "not_scalar"
    got, real = float(got), mask.bool()
    m, n = len(student) - 1, len(teacher) - 1
    k = n // m
    if close(got, _mse_over(student, teacher, [(i, k * i) for i in range(1, m + 1)], real), 1e-4):
        return None
    if close(got, _mse_over(student, teacher, [(i, k * i) for i in range(1, m + 1)]), 1e-4):
        return "padding"
    if close(got, _mse_over(student, teacher, [(i, i) for i in range(1, m + 1)], real), 1e-4):
        return "first_layers"
    if close(got, _mse_over(student, teacher, [(i, k * i) for i in range(m + 1)], real), 1e-4):
        return "embeddings"
    if close(got, _mse_over(student, teacher, [(i, k * i - 1) for i in range(1, m + 1)], real), 1e-4):
        return "off_by_one"
    return "wrong"


@exercise("03b.hidden_loss",
          "Write hidden_loss(student_hidden, teacher_hidden, mask) -> a scalar tensor. The hidden states are tuples "
          "as transformers returns them with output_hidden_states=True (the embeddings' output first, then one "
          "tensor (batch, tokens, width) per layer); mask is the attention mask (batch, tokens), 1 for a real "
          "token. Match each student layer to its teacher layer by the section's mapping, score each pair by the "
          "mean squared error over the real tokens, and average over the pairs. Checked on tiny golden states "
          "(a 2-layer student of a 4-layer teacher, and a 3-layer one of a 6-layer teacher, with padding).",
          _hidden_loss,
          {"padding": "your loss counts the padding positions. A pad token's hidden state means nothing (the "
                      "attention never reads it), so matching it teaches noise; pick the real tokens first.",
           "first_layers": "you matched student layer i to teacher layer i: a 3-layer student then imitates the "
                           "teacher's first half, and nothing asks its last layer to look like the teacher's last.",
           "embeddings": "you also matched the embeddings' output (position 0 of both tuples). It is not a layer, "
                         "and the mapping counts layers from 1.",
           "off_by_one": "your teacher index is one too low: position 0 of the tuple is the embeddings, so teacher "
                         "layer j sits at position j, not j - 1.",
           "not_scalar": "return one number (a 0-dim tensor), the average over the matched pairs.",
           "wrong": "for each student layer from 1 to m: its teacher layer by the mapping, both restricted to the "
                    "real tokens, their mean squared difference; then the mean over the m pairs."},
          kind="code",
          uses="section 2 runs it on a real batch (the baseline and a 3-layer student from its lower layers) and "
               "compares it with the kit's prune.distill.hidden_loss, which trains every distilled student here.",
          ladder=("Each student layer is asked to produce what one teacher layer produces for the same tokens: "
                  "a regression of hidden states, scored by the mean squared error.",
                  "Two steps usually go wrong: the index (the tuple starts with the embeddings, so layer j is at "
                  "position j) and the padding (only the positions where the mask is 1 are text).",
                  "A smaller case: a 1-layer student of a 2-layer teacher, one example of two tokens, the second "
                  "padding, width 1: student states (e, [1.0, 9.0]), teacher (e, x, [3.0, -5.0]): only the first "
                  "token counts, (1 - 3)^2 = 4.0."))
def _check_hidden_loss(answer: Any) -> str | None:
    found = []
    for args in (golden_hidden(), golden_hidden(8, 3, 6)):
        student, teacher, mask = args
        try:
            got = attempt(answer, tuple(h.clone() for h in student), tuple(h.clone() for h in teacher), mask.clone())
        except (IndexError, RuntimeError) as err:
            raise Mistake("wrong", str(err)) from err
        found.append(_hidden_mistake(got, student, teacher, mask))
    wrong = [m for m in found if m is not None]
    order = ("not_scalar", "padding", "first_layers", "embeddings", "off_by_one", "wrong")
    return min(wrong, key=order.index) if wrong else None


# --- 03b.two_layer_map: which teacher layers a 2-layer student imitates ---------------------------------------------

@exercise("03b.two_layer_map",
          "A 2-layer student of the 6-layer baseline: which teacher layers do its layers 1 and 2 imitate under this "
          "lesson's mapping? A tuple of two layer numbers, counted from 1.",
          lambda: (3, 6),
          {"first_layers": "(1, 2) are the layers the student was copied from, not the ones it should end up "
                           "imitating: its last layer feeds the classifier, so it should look like the teacher's "
                           "last.",
           "from_zero": "layers are counted from 1 here; the embeddings' output is not a layer.",
           "wrong": "spread the student's layers evenly over the teacher's, ending on the teacher's last layer."},
          ladder=("The mapping spreads the student's layers evenly over the teacher's depth.",
                  "The student's last layer feeds the same classifier head, so it is matched to the teacher's "
                  "last layer, not to the layer it was copied from.",
                  "A smaller case: a 2-layer student of a 4-layer teacher imitates layers (2, 4)."))
def _check_two_layer_map(answer: Any) -> str | None:
    try:
        got = tuple(int(x) for x in given(answer))
    except TypeError as err:
        raise Mistake("wrong_type", "a tuple of two layer numbers, e.g. (2, 4)") from err
    if got == (3, 6):
        return None
    if got == (1, 2):
        return "first_layers"
    if got in ((2, 5), (2, 6)):
        return "from_zero"
    return "wrong"


prediction("03b.size_ratio_3", "the 3-layer student's bytes on disk as a fraction of the 6-layer baseline's",
           unit="x")
prediction("03b.speedup_3_b32", "the batch-32 speedup of the 3-layer student over the 6-layer baseline", unit="x")
prediction("03b.best_temperature", "the temperature (2 or 4) at which the distilled 3-layer student scores best "
           "on the validation split")
written("03b.teacher_verdict", "The 3-layer students with and without the teacher: what do the paired difference "
        "and its interval allow you to claim, and why does the teacher's signal help a student from the lower "
        "layers differently from one trained from scratch?", points=2)
