"""Kubernetes resource quantities with exact arithmetic.

The grammar is Kubernetes' own (``k8s.io/apimachinery/pkg/api/resource``)::

    quantity        ::= signedNumber suffix
    signedNumber    ::= [+-] number
    number          ::= digits | digits "." digits | digits "." | "." digits
    suffix          ::= binarySI | decimalExponent | decimalSI
    binarySI        ::= Ki | Mi | Gi | Ti | Pi | Ei
    decimalSI       ::= m | "" | k | M | G | T | P | E
    decimalExponent ::= ("e" | "E") signedNumber      (an integer exponent)

Values are kept as exact :class:`fractions.Fraction`, so ``4Gi`` is exactly
4294967296 and ``1500m`` is exactly 3/2.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

import attrs

from vmpod.errors import SpecError

__all__ = ["ACCEPTED_QUANTITY", "Quantity", "parse_quantity"]

_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}

_QUANTITY_RE = re.compile(
    r"""
    (?P<sign>[+-])?
    (?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)
    (?:
        (?P<binary>Ki|Mi|Gi|Ti|Pi|Ei)
      | [eE](?P<exponent>[+-]?[0-9]+)
      | (?P<decimal>m|k|M|G|T|P|E)
    )?
    """,
    re.VERBOSE,
)

#: Human description of the accepted syntax, used in error messages.
ACCEPTED_QUANTITY = (
    "a Kubernetes quantity: a number with an optional suffix Ki Mi Gi Ti Pi Ei, "
    "k M G T P E, m, or a decimal exponent such as 1e3"
)

# Exponents this large are never meaningful for a VM and would make Fraction
# arithmetic (and memory) explode on hostile input.
_MAX_EXPONENT = 64
# Likewise for the number of digits (Python also refuses to convert more than
# 4300 digits to an int, with a ValueError).
_MAX_DIGITS = 100


@attrs.frozen(eq=False)
class Quantity:
    """A Kubernetes quantity: ``text`` as written and its exact ``value``.

    Two quantities are equal when their values are equal (``1Gi == 1024Mi``).
    """

    text: str
    value: Fraction = attrs.field(repr=False)

    @classmethod
    def parse(cls, text: str) -> Quantity:
        """Parse ``text``; raises :class:`~vmpod.errors.SpecError` (with an empty path) when invalid."""
        return parse_quantity(text)

    @classmethod
    def from_int(cls, value: int) -> Quantity:
        """The quantity of a plain integer (bytes, cores...)."""
        return cls(str(value), Fraction(value))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Quantity):
            return self.value == other.value
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.value)

    def __str__(self) -> str:
        return self.text

    @property
    def is_integer(self) -> bool:
        """True when the value is a whole number."""
        return self.value.denominator == 1

    def ceil(self) -> int:
        """The value rounded up to a whole number, as Kubernetes' ``Value()`` does."""
        return math.ceil(self.value)

    def milli(self) -> int:
        """The value in thousandths, rounded up, as Kubernetes' ``MilliValue()`` does (CPU)."""
        return math.ceil(self.value * 1000)


def parse_quantity(text: object) -> Quantity:
    """Parse a quantity from a string (or an int/float written unquoted in YAML)."""
    if isinstance(text, bool):
        raise SpecError("", "not a quantity", value=text, accepted=ACCEPTED_QUANTITY)
    if isinstance(text, int):
        return Quantity(str(text), Fraction(text))
    if isinstance(text, float):
        if not math.isfinite(text):
            raise SpecError("", "not a quantity", value=text, accepted=ACCEPTED_QUANTITY)
        text = repr(text)
    if not isinstance(text, str):
        raise SpecError("", "not a quantity", value=text, accepted=ACCEPTED_QUANTITY)
    stripped = text.strip()
    match = _QUANTITY_RE.fullmatch(stripped)
    if match is None:
        raise SpecError("", "not a quantity", value=text, accepted=ACCEPTED_QUANTITY)
    if len(match["number"]) > _MAX_DIGITS or len(match["exponent"] or "") > 10:
        raise SpecError("", "quantity has too many digits", value=text,
                        accepted=f"at most {_MAX_DIGITS} digits")
    number = Fraction(match["number"] if not match["number"].endswith(".") else match["number"][:-1])
    if match["sign"] == "-":
        number = -number
    if match["binary"]:
        value = number * (1024 ** _BINARY[match["binary"]])
    else:
        exponent = (int(match["exponent"]) if match["exponent"] is not None
                    else _DECIMAL[match["decimal"] or ""])
        if abs(exponent) > _MAX_EXPONENT:
            raise SpecError("", "quantity exponent out of range", value=text,
                            accepted=f"exponents from -{_MAX_EXPONENT} to {_MAX_EXPONENT}")
        value = number * Fraction(10) ** exponent
    return Quantity(stripped, value)
