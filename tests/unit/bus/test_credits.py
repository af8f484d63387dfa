"""Credits as people see them, and what an account can still reserve."""
from decimal import Decimal

from bus.credits import MICRO, available, credits


def test_micro_credits_show_as_exact_decimal_credits():
    assert credits(1_500_000) == Decimal("1.5") and f"{credits(1_500_000):f}" == "1.5"
    assert f"{credits(100 * MICRO):f}" == "100" and float(credits(100 * MICRO)) == 100.0
    assert f"{credits(1):f}" == "0.000001" and credits(0) == 0


def test_what_is_left_is_deposits_less_holds_and_spending():
    assert available(deposited=10, held=3, spent=4) == 3
    assert available(0, 0, 0) == 0
