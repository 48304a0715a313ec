"""Seeded draws the synth's model shares: delays and random subsets."""
from __future__ import annotations

import numpy as np


def lognormal(rng, count: int, floor: int, median: int, sigma: float) -> np.ndarray:
    return floor + np.round(rng.lognormal(np.log(median), sigma, count)).astype(np.int64)


def count(population: int, fraction: float) -> int:
    """About `fraction` of the population; at least one once the population has 20."""
    count = round(population * fraction)
    return min(max(count, 1) if population >= 20 else count, population)


def pick(rng, population: np.ndarray, fraction: float) -> np.ndarray:
    """A sorted random subset of about `fraction` of `population`."""
    return np.sort(rng.choice(population, size=count(population.size, fraction), replace=False))
