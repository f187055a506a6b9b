"""Each targeted hint of notebook 05's exercises, reached by the mistake it names (tests/test_checks.py runs the table)."""


import torch

from labkit.course import checks


def _keep(cls=True, pad=True, order=True, dim=1, full_shape=True):
    def keep_top_tokens(hidden, scores, mask, keep):
        ranked = scores.masked_fill(mask == 0, float("-inf")) if pad else scores.clone()
        if cls:
            ranked[:, 0] = float("inf")
        idx = ranked.topk(keep if full_shape else keep - 1, dim=1).indices
        if order:
            idx = idx.sort(dim=1).values
        if dim == 1:
            kept = hidden.gather(1, idx[..., None].expand(-1, -1, hidden.shape[-1]))
        else:  # gathered along the features: the wrong numbers come back
            kept = hidden.gather(2, idx[..., None].expand(-1, -1, hidden.shape[-1]) % hidden.shape[-1])
        return kept, idx
    return keep_top_tokens


def _cubic(power=3, clamp=True, linear=False, inside_out=False):
    def cubic_schedule(step, total, final):
        t = (min(step, total) if clamp else step) / total
        if linear:
            return final * t
        if inside_out:
            return final * (1 - t) ** power
        return final * (1 - (1 - t) ** power)
    return cubic_schedule


MISTAKES = [
    ("05.batch_width", "shortest_row", lambda: 3),
    ("05.batch_width", "sum", lambda: 11),
    ("05.batch_width", "round_down", lambda: 7),
    ("05.batch_width", "full", lambda: 26),
    ("05.half_way_step", "linear", lambda: 50),
    ("05.half_way_step", "just_before", lambda: 20),
    ("05.keep_top_tokens", "cls_dropped", lambda: _keep(cls=False)),
    ("05.keep_top_tokens", "padding_kept", lambda: _keep(pad=False)),
    ("05.keep_top_tokens", "order", lambda: _keep(order=False)),
    ("05.keep_top_tokens", "gather", lambda: _keep(dim=2)),
    ("05.keep_top_tokens", "shape", lambda: _keep(full_shape=False)),
    ("05.cubic_schedule", "not_final", lambda: _cubic(inside_out=True)),
    ("05.cubic_schedule", "linear", lambda: _cubic(linear=True)),
    ("05.cubic_schedule", "square", lambda: _cubic(power=2)),
    ("05.cubic_schedule", "past_total", lambda: _cubic(clamp=False)),
]


def test_ranking_in_place_is_caught_as_a_mutation():
    def in_place(hidden, scores, mask, keep):
        scores[:, 0] = float("inf")
        return _keep()(hidden, scores, mask, keep)
    assert checks.diagnose("05.keep_top_tokens", in_place) == checks.get("05.keep_top_tokens").hint("mutated")


def test_a_bool_mask_is_as_good_as_a_01_mask():
    hidden, scores = torch.randn(2, 5, 3), torch.rand(2, 5)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    ref = checks.solution("05.keep_top_tokens")
    for a, b in zip(ref(hidden, scores, mask, 2), ref(hidden, scores, mask.bool(), 2)):
        assert torch.equal(a, b)
