"""Numbers as the command line and the logs print them."""

from __future__ import annotations

import math

__all__ = ["GPA", "significant"]

#: GPa per eV/Å³ (``1 / ase.units.GPa``), for the stresses the logs and commands print.
GPA = 160.21766208


def significant(value: float, digits: int = 3) -> str:
    """Return ``value`` to ``digits`` significant digits, trailing zeros kept, no exponent.

    ``5.0`` prints as ``"5.00"`` beside ``"4.35"`` (``:.3g`` gives ``"5"``), ``131.4`` as
    ``"131"`` (``:#.3g`` gives ``"131."``) and ``1234`` as ``"1230"`` (``:.3g`` gives
    ``"1.23e+03"``). Values below ``10**-(digits + 1)`` in magnitude, zero, and values
    that are not finite print as ``:.{digits}g`` does.

    Parameters
    ----------
    value : float
    digits : int, default=3

    Returns
    -------
    str
    """
    value = float(value)
    if value == 0.0 or not math.isfinite(value) or abs(value) < 10.0**-(digits + 1):
        return f"{value:.{digits}g}"
    exponent = math.floor(math.log10(abs(value)))
    decimals = digits - 1 - exponent
    rounded = round(value, decimals)
    if rounded != 0.0 and math.floor(math.log10(abs(rounded))) > exponent:  # 99.96 → 100
        decimals -= 1
    return f"{rounded:.{max(decimals, 0)}f}"
