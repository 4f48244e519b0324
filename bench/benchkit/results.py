"""Figures collected during a run, by row (a system), metric and round, and their summaries.

A figure measured once per round is a ``Series`` (round number → value); a ratio of two series
is taken round by round, then summarised, so that "the median of 3 rounds" of a ratio is the
median of three ratios. Distributions (revocation delays) are plain lists.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

Series = dict[int, float]


@dataclass(frozen=True)
class Summary:
    """Median, minimum and maximum of ``n`` values."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Summary | None:
        values = [v for v in values if not math.isnan(v)]
        if not values:
            return None
        return cls(statistics.median(values), min(values), max(values), len(values))


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1) of ``values``; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


@dataclass
class Results:
    series: dict[tuple[str, str], Series] = field(default_factory=lambda: defaultdict(dict))
    samples: dict[tuple[str, str], list[float]] = field(default_factory=lambda: defaultdict(list))

    def add(self, row: str, metric: str, round_: int, value: float) -> None:
        self.series[row, metric][round_] = value

    def extend(self, row: str, metric: str, values: list[float]) -> None:
        self.samples[row, metric].extend(values)

    def get(self, row: str, metric: str) -> Series:
        return self.series.get((row, metric), {})

    def has(self, row: str, metric: str) -> bool:
        return bool(self.get(row, metric))

    def summary(self, row: str, metric: str) -> Summary | None:
        return Summary.of(list(self.get(row, metric).values()))

    def ratio(self, top: tuple[str, str], bottom: tuple[str, str]) -> Summary | None:
        """Round-by-round ``top / bottom`` over the rounds both have, summarised."""
        a, b = self.get(*top), self.get(*bottom)
        return Summary.of([a[r] / b[r] for r in sorted(a.keys() & b.keys()) if b[r]])

    def to_json(self) -> dict[str, Any]:
        """Every figure, NaN (undefined) as None."""
        return {
            "series": [
                {
                    "row": row,
                    "metric": metric,
                    "rounds": {str(k): _plain(v) for k, v in values.items()},
                }
                for (row, metric), values in sorted(self.series.items())
            ],
            "samples": [
                {"row": row, "metric": metric, "values": values}
                for (row, metric), values in sorted(self.samples.items())
            ],
        }


def _plain(value: float) -> float | None:
    return None if math.isnan(value) else value
