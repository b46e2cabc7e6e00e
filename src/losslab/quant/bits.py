"""Weight bit widths: the range the quantization methods accept, and ``--bits`` parsing. Imports no torch.

:data:`BITS_RANGE` is the one statement of the range: the method configs check ``bits`` against it
(:class:`losslab.quant.methods.QuantMethod`) and :func:`parse_bits` checks ``--bits`` against it, so the
command line can refuse ``--bits 9`` while it parses its arguments, before torch is imported::

    parse_bits("8,4,3")        # [8, 4, 3]
    parse_bits(("8,4", "3"))   # [8, 4, 3]  (a repeated flag)
    parse_bits("9")            # ConfigError: --bits 9 is out of range: allowed 2 <= bits <= 8
"""

from __future__ import annotations

from collections.abc import Sequence

from losslab.errors import ConfigError

__all__ = ["BITS_RANGE", "parse_bits", "parse_override"]

BITS_RANGE: tuple[int, int] = (2, 8)
"""(lowest, highest) weight bit width of the quantization methods (both inclusive)."""


def parse_bits(values: str | int | Sequence[str | int], flag: str = "--bits") -> list[int]:
    """``"8,4,3"`` or ``("8,4", "3")`` → [8, 4, 3]; each an integer in :data:`BITS_RANGE`.

    Raises :class:`ConfigError` naming ``flag``, the bad value and the allowed range for a non-integer, a width
    out of range, or no width at all.
    """
    low, high = BITS_RANGE
    items = [values] if isinstance(values, str | int) else list(values)
    bits: list[int] = []
    for value in items:
        for part in str(value).split(","):
            if not part.strip():
                continue
            try:
                b = int(part)
            except ValueError:
                raise ConfigError(
                    f"{flag} {part.strip()!r} is not an integer: give whole bit widths from {low} to {high}, "
                    f"e.g. {flag} 8,4,3"
                ) from None
            if not low <= b <= high:
                raise ConfigError(f"{flag} {b} is out of range: allowed {low} <= bits <= {high}")
            bits.append(b)
    if not bits:
        raise ConfigError(f"{flag} is empty: give at least one bit width from {low} to {high}, e.g. {flag} 4")
    return bits


def parse_override(text: str) -> tuple[str, str, int]:
    """``"*.fc2=rtn:8"`` (``--override``) → (pattern, method name, bits), the width checked as :func:`parse_bits`
    does; a ConfigError names the value and the expected shape."""
    pattern, eq, spec = text.partition("=")
    name, colon, bits = spec.partition(":")
    if not (eq and colon and pattern and name and bits.strip()):
        raise ConfigError(f"--override {text!r} must look like PATTERN=METHOD:BITS, e.g. --override '*.fc2=rtn:8'")
    widths = parse_bits(bits, flag=f"--override {text!r}: bits")
    if len(widths) != 1:
        raise ConfigError(f"--override {text!r} takes one bit width, e.g. --override '{pattern}={name}:8'")
    return pattern, name, widths[0]
