"""Expert cache budgets as people write them, checked and resolved against a store; standard library only.

    parse("25%")                          -> BudgetSpec(fraction=0.25)    # syntax only (config validation)
    resolve("2GB", total, expert_bytes)   -> Budget(bytes=total, warning="... clamped to 100 % ...")
    clamp(n, total, expert_bytes)         -> n within [one expert, every expert]   # budgets set at run time

Forms: a percent of the store's expert bytes (`25%`), a fraction (`0.25`: it has a decimal point), a size with
a decimal or binary unit (`2GB`, `1.5GiB`, `512MiB`, `64KB`, `4096B`), or a bare integer (bytes). Resolving
against a store: a budget above the store's experts is clamped to 100 % with a warning (a bigger cache would only
allocate memory nothing can fill); one below a single expert is raised to one expert with a warning, except a bare
number, which is almost always a forgotten `%` and is refused with "did you mean N%?".

No MLX here (a test imports this module with MLX blocked): `moed serve` checks budgets against the store's
manifest before it binds its socket or loads anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# longest suffix first: "MIB" must not be read as "B"
UNITS = {"KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40,
         "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "B": 1}
_NUMBER = re.compile(r"^(?:[0-9]+\.?[0-9]*|\.[0-9]+)$")
FORMS = "e.g. '25%', '0.25', '2GB', '512MiB' or a byte count"


class BudgetError(ValueError):
    """A budget that cannot be used; the message says why and what to write instead."""


@dataclass(frozen=True)
class BudgetSpec:
    """A parsed budget: either a fraction of the store's expert bytes or a size in bytes."""

    text: str
    fraction: float | None = None
    size: int | None = None
    bare: bool = False  # a bare integer: bytes without a unit

    def bytes_for(self, total_expert_bytes: int) -> int:
        if self.fraction is not None:
            return int(self.fraction * total_expert_bytes)
        assert self.size is not None
        return self.size


@dataclass(frozen=True)
class Budget:
    """A budget resolved against a store: bytes within [one expert, every expert], and why it was changed."""

    bytes: int
    warning: str | None = None


def parse(spec: str) -> BudgetSpec:
    """Check a budget's syntax (no store needed).

    Raises:
        BudgetError: not one of the forms, or not positive.
    """
    s = str(spec).strip().upper().replace(" ", "")
    unit = next((u for u in UNITS if s.endswith(u)), None)
    number = s[:-1] if s.endswith("%") else s[: -len(unit)] if unit else s
    if not _NUMBER.match(number):
        raise BudgetError(f"cache budget {spec!r}: expected {FORMS}")
    value = float(number)
    if value <= 0:
        raise BudgetError(f"cache budget {spec!r} must be positive")
    if s.endswith("%"):
        return BudgetSpec(str(spec), fraction=value / 100)
    if unit is not None:
        return BudgetSpec(str(spec), size=int(value * UNITS[unit]))
    if "." in number:
        return BudgetSpec(str(spec), fraction=value)
    return BudgetSpec(str(spec), size=int(value), bare=True)


def resolve(spec: str, total_expert_bytes: int, expert_bytes: int) -> Budget:
    """The budget in bytes for a store with `total_expert_bytes` of experts of `expert_bytes` each.

    Raises:
        BudgetError: bad syntax, or a bare number below one expert (the message asks "did you mean N%?").
    """
    parsed = parse(spec)
    want = parsed.bytes_for(total_expert_bytes)
    if want > total_expert_bytes:
        return Budget(total_expert_bytes, f"cache budget {spec!r} is {describe(want, total_expert_bytes)}, more "
                                          f"than the store holds; clamped to 100 % ({size(total_expert_bytes)})")
    if want < expert_bytes:
        if parsed.bare:
            raise BudgetError(f"cache budget {spec!r} is {want} bytes, less than one expert ({expert_bytes} bytes)"
                              f"{_did_you_mean(parsed)}")
        return Budget(expert_bytes, f"cache budget {spec!r} is {size(want)}, less than one expert; raised to one "
                                    f"expert ({describe(expert_bytes, total_expert_bytes)})")
    return Budget(want)


def clamp(budget_bytes: int, total_expert_bytes: int, expert_bytes: int) -> int:
    """A byte budget within [one expert, every expert] (budgets set at run time are not warned about)."""
    return max(expert_bytes, min(int(budget_bytes), total_expert_bytes))


def size(n: int) -> str:
    """`2.00 GB`, `11.0 MB`, `4096 bytes`."""
    return f"{n / 1e9:.2f} GB" if n >= 10**9 else f"{n / 1e6:.1f} MB" if n >= 10**5 else f"{n} bytes"


def describe(n: int, total_expert_bytes: int) -> str:
    """`2.00 GB, 18838 % of the experts`."""
    share = n / total_expert_bytes * 100 if total_expert_bytes else 0.0
    return f"{size(n)}, {share:.0f} % of the experts" if share >= 10 else \
        f"{size(n)}, {share:.2g} % of the experts"


def _did_you_mean(parsed: BudgetSpec) -> str:
    assert parsed.size is not None
    if parsed.size <= 100:
        return f"; did you mean {parsed.size}%?"
    return f"; give a unit ('{parsed.size}MB') or a percent ('25%')"


def parse_size(spec: str) -> int:
    """A size in bytes from `2GB`, `1536MiB` or a byte count (no percents: there is no whole to take them of).

    Raises:
        BudgetError: not a size.
    """
    parsed = parse(spec)
    if parsed.size is None:
        raise BudgetError(f"size {spec!r}: expected e.g. '2GB', '1536MiB' or a byte count")
    return parsed.size
