"""The monitor's rule: roll back only a candidate more than the threshold worse than production."""

from __future__ import annotations

import pytest

from components.monitor import relative_drop, should_roll_back


@pytest.mark.parametrize(
    ("candidate", "production", "rolled_back"),
    [
        (0.425, 0.50, True),  # 15% worse
        (0.475, 0.50, False),  # 5% worse: no false alarm
        (0.45, 0.50, False),  # exactly at the 10% threshold: within it
        (0.4499, 0.50, True),  # just past it
        (0.60, 0.50, False),  # better
        (0.0, 0.0, False),  # nothing to lose
        (0.3 * 0.9, 0.3, False),  # rounding at the threshold is not an alarm
    ],
)
def test_rollback_rule(candidate: float, production: float, rolled_back: bool) -> None:
    assert should_roll_back(candidate, production, threshold=0.10) is rolled_back


def test_relative_drop() -> None:
    assert relative_drop(0.425, 0.5) == pytest.approx(0.15)
    assert relative_drop(0.55, 0.5) == pytest.approx(-0.1)
    assert should_roll_back(0.425, 0.5, threshold=0.2) is False
    assert should_roll_back(0.49, 0.5, threshold=0.0) is True
