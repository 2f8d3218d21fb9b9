"""The spatial sizes a network takes: every registered network has a :class:`SizeRule` as ``model.size_rule``, which
its forward checks and which ``train.py`` checks before a run (crops, validation and test sizes)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SizeRule:
    """Input heights H and widths W (px) a network accepts: H a multiple of ``multiple[0]`` and W of
    ``multiple[1]``, both at least ``minimum``, H at most ``max_height`` (None: no bound). ``reason``: what in the
    network imposes the rule (shown in messages)."""

    multiple: tuple[int, int] = (1, 1)
    minimum: int = 1
    max_height: int | None = None
    reason: str = ""

    def __post_init__(self) -> None:
        """ValueError naming the field when the rule cannot be applied (``SizeRule(8)`` for ``SizeRule((8, 8))``)."""
        pair = self.multiple
        if not (isinstance(pair, tuple) and len(pair) == 2 and all(_positive_int(m) for m in pair)):
            raise ValueError(f"SizeRule multiple={pair!r}: expected a pair (rows, cols) of positive integers, "
                             "e.g. (8, 8)")
        if not _positive_int(self.minimum):
            raise ValueError(f"SizeRule minimum={self.minimum!r}: expected a positive integer")
        if self.max_height is not None and not _positive_int(self.max_height):
            raise ValueError(f"SizeRule max_height={self.max_height!r}: expected a positive integer or None")

    def __str__(self) -> str:
        """The rule in words, e.g. 'H and W each a multiple of 4, H <= 256 (two stride-2 down-samplings)'."""
        rows, cols = self.multiple
        if rows == cols:
            parts = [f"H and W each a multiple of {rows}"] if rows > 1 else []
        else:
            parts = [f"H a multiple of {rows} and W a multiple of {cols}"]
        if self.minimum > 1:
            parts.append(f"H and W >= {self.minimum}")
        if self.max_height is not None:
            parts.append(f"H <= {self.max_height}")
        return (", ".join(parts) or "any H and W") + (f" ({self.reason})" if self.reason else "")

    def accepts(self, height: int, width: int) -> bool:
        """Whether an input of ``height`` x ``width`` px runs through the network."""
        rows, cols = self.multiple
        return (height % rows == 0 and width % cols == 0 and min(height, width) >= max(self.minimum, 1)
                and (self.max_height is None or height <= self.max_height))

    def check(self, height: int, width: int, what: str) -> None:
        """ValueError '``what`` is HxW; it must have ``<the rule>``' unless the rule accepts ``height`` x ``width``."""
        if not self.accepts(height, width):
            raise ValueError(f"{what} is {height}x{width}; it must have {self}")


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
