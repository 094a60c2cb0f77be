"""Loss-curve smoothing: centred, so the drawn curve does not lag a falling loss."""

from __future__ import annotations

import pytest

from pocketlm.train.metrics import read_metrics, smooth_centered


def test_straight_line_is_kept_exactly_including_the_ends() -> None:
    line = [10.0 - 0.5 * i for i in range(30)]
    assert smooth_centered(line, 4) == pytest.approx(line)


def test_noise_is_averaged_out_in_the_interior() -> None:
    noisy = [1.0 + (0.3 if i % 2 else -0.3) for i in range(40)]
    smooth = smooth_centered(noisy, 5)  # 11-point windows: one odd sample's worth of imbalance
    assert all(abs(v - 1.0) <= 0.3 / 11 + 1e-9 for v in smooth[5:-5])
    assert smooth[0] == pytest.approx(noisy[0]) and smooth[-1] == pytest.approx(
        noisy[-1]
    )  # one side empty


def test_a_steep_drop_is_not_drawn_late() -> None:
    # loss falls fast then flattens, as in the first steps of pretraining
    loss = [8.0 * 0.7**i + 2.0 for i in range(60)]
    smooth = smooth_centered(loss, 3)
    ema, acc = [], None
    for v in loss:
        acc = v if acc is None else 0.9 * acc + 0.1 * v
        ema.append(acc)
    worst_centred = max(abs(s - v) for s, v in zip(smooth, loss))
    worst_ema = max(abs(e - v) for e, v in zip(ema, loss))
    assert worst_centred < worst_ema / 3


def test_read_metrics_skips_a_torn_last_line(tmp_path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.5}\n{"step": 2, "lo', encoding="utf-8")
    assert read_metrics(path) == [{"step": 1, "loss": 2.5}]
