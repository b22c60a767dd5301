"""CB-Stream / focal / CE token weights (docs/method.md §4) on hand-checked numbers."""

from __future__ import annotations

import math

import pytest
import torch
from streampro.trainer.sft_config import StreamProSFTConfig
from streampro.trainer.sft_trainer import cb_stream_class_weights, focal_class_weights, stream_token_weights

SIL, RESP = 10, 11  # stand-in decision token ids
IGNORE = -100


def test_class_weights_match_method_worked_numbers():
    # docs/method.md §4: 500 silence / 10 response tokens → ŵ_sil ≈ 0.0402, ŵ_resp ≈ 1.9598.
    w = cb_stream_class_weights((500, 10), 0.9999)
    assert w.tolist() == pytest.approx((0.0402, 1.9598), abs=5e-5)
    assert float(w.sum()) == pytest.approx(2.0)  # Σ ŵ_k = |S|
    # The method's second example (docs/method.md §4) says 5,000 / 50 → 0.0248 / 1.9752, but its own formula gives
    # 0.02503 / 1.97497 (40-digit Decimal arithmetic: E_sil = 3934.7, E_resp = 49.877), so the
    # printed pair is off by 2.3e-4; we follow the formula and hold the pair to that "≈".
    w = cb_stream_class_weights((5000, 50), 0.9999)
    assert w.tolist() == pytest.approx((0.025034462, 1.974965538), rel=1e-6)
    assert w.tolist() == pytest.approx((0.0248, 1.9752), abs=3e-4)


def test_class_weights_follow_the_formula():
    beta, n = 0.99, (7, 3)
    e = [(1 - beta**k) / (1 - beta) for k in n]
    inv = [1 / x for x in e]
    expected = [v / sum(inv) * 2 for v in inv]
    assert cb_stream_class_weights(n, beta).tolist() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("counts", [(42, 0), (0, 3)])
def test_a_batch_holding_one_decision_class(counts):
    w = cb_stream_class_weights(counts, 0.9999)
    present = [c > 0 for c in counts]
    assert w.tolist() == [1.0 if p else 0.0 for p in present]  # weight 1, absent class out of the sum
    assert torch.isfinite(w).all()


def test_no_decision_tokens_never_divides_by_zero():
    assert cb_stream_class_weights((0, 0)).tolist() == [0.0, 0.0]
    assert focal_class_weights((0, 0)).tolist() == [0.0, 0.0]


def _hand_batch():
    # One row: [sil, sil, sil, resp, text, text, pad]; log p_i chosen by hand.
    targets = torch.tensor([[SIL, SIL, SIL, RESP, 5, 6, IGNORE]])
    log_probs = torch.log(torch.tensor([[0.9, 0.8, 0.5, 0.2, 0.6, 0.7, 1.0]]))
    mask = targets != IGNORE
    return targets, log_probs.masked_fill(~mask, 0.0), mask


def test_cb_stream_token_weights():
    targets, log_probs, mask = _hand_batch()
    w, counts = stream_token_weights(targets, log_probs, mask, (SIL, RESP), "cb_stream", cb_beta=0.9999, text_weight=2.0)
    assert counts.tolist() == [3, 1]
    ws, wr = cb_stream_class_weights((3, 1), 0.9999).tolist()
    assert w[0].tolist() == pytest.approx([ws, ws, ws, wr, 2.0, 2.0, 0.0])


def test_focal_matches_its_formula_on_a_hand_case():
    targets, log_probs, mask = _hand_batch()
    gamma = 2.0
    w, _ = stream_token_weights(targets, log_probs, mask, (SIL, RESP), "focal", focal_gamma=gamma)
    # α_c = (decision tokens / n_c) / classes present: 4 decision tokens, 3 silence, 1 response, 2 classes.
    a_sil, a_resp = (4 / 3) / 2, (4 / 1) / 2
    p = [0.9, 0.8, 0.5, 0.2]
    expected = [a_sil * (1 - p[0]) ** gamma, a_sil * (1 - p[1]) ** gamma, a_sil * (1 - p[2]) ** gamma,
                a_resp * (1 - p[3]) ** gamma, 1.0, 1.0, 0.0]  # language tokens weight 1
    assert w[0].tolist() == pytest.approx(expected, rel=1e-5)
    loss = (w * -log_probs).sum() / mask.sum()
    by_hand = (sum(e * -math.log(q) for e, q in zip(expected[:4], p)) - math.log(0.6) - math.log(0.7)) / 6
    assert float(loss) == pytest.approx(by_hand, rel=1e-5)


def test_focal_keeps_the_modulation_gradient():
    targets, log_probs, mask = _hand_batch()
    log_probs = log_probs.clone().requires_grad_(True)
    w, _ = stream_token_weights(targets, log_probs, mask, (SIL, RESP), "focal", focal_gamma=2.0)
    (w * -log_probs).sum().backward()
    # d/dl [-(1 - e^l)^γ · l] at p = 0.5 for silence: α · [ γ(1-p)^{γ-1} p l − (1-p)^γ ]
    a, p, l = (4 / 3) / 2, 0.5, math.log(0.5)
    assert float(log_probs.grad[0, 2]) == pytest.approx(a * (2 * (1 - p) * p * l - (1 - p) ** 2), rel=1e-5)


def test_ce_weights_are_the_mask():
    targets, log_probs, mask = _hand_batch()
    w, _ = stream_token_weights(targets, log_probs, mask, (SIL, RESP), "ce")
    assert w[0].tolist() == [1, 1, 1, 1, 1, 1, 0]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"loss_type": "dice"}, "loss_type must be one of"),
        ({"cb_beta": 1.0}, "cb_beta must be in"),
        ({"max_length": 512}, "max_length must be None"),
        ({"remove_unused_columns": True}, "remove_unused_columns must be False"),
    ],
)
def test_config_rejects_bad_values(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        StreamProSFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, **kwargs)
