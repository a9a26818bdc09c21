"""PURE: binomial and multinomial draws from a random.Random, for bootstraps without numpy.

A bootstrap resample of n queries that fall into a few classes is a multinomial draw of the
class counts; drawn as one binomial per class, each in O(1) expected time (Hörmann's BTRS
transformed rejection for n·p >= 10, the geometric waiting-time method below), a resample
costs a few microseconds at any n.
"""
from __future__ import annotations

import math
import random


def binomial(rng: random.Random, n: int, p: float) -> int:
    """One Binomial(N, P) variate."""
    if n <= 0 or p <= 0.0:
        return 0
    if p >= 1.0:
        return n
    if p > 0.5:
        return n - binomial(rng, n, 1.0 - p)
    if n * p < 10.0:
        return _by_waiting_times(rng, n, p)
    return _btrs(rng, n, p)


def _by_waiting_times(rng: random.Random, n: int, p: float) -> int:
    """Successes = how many geometric gaps between them fit in N trials (expected N·P + 1 steps)."""
    scale = math.log1p(-p)
    successes, trial = 0, 0
    while True:
        trial += math.floor(math.log(1.0 - rng.random()) / scale) + 1
        if trial > n:
            return successes
        successes += 1


def _btrs(rng: random.Random, n: int, p: float) -> int:
    """W. Hörmann, "The generation of binomial random variates", J. Statist. Comput. Simul. 46
    (1993), algorithm BTRS; for P <= 0.5 and N·P >= 10."""
    q = 1.0 - p
    spq = math.sqrt(n * p * q)
    b = 1.15 + 2.53 * spq
    a = -0.0873 + 0.0248 * b + 0.01 * p
    c = n * p + 0.5
    v_r = 0.92 - 4.2 / b
    alpha = (2.83 + 5.1 / b) * spq
    lpq = math.log(p / q)
    m = math.floor((n + 1) * p)
    h = math.lgamma(m + 1) + math.lgamma(n - m + 1)
    while True:
        u = rng.random() - 0.5
        v = rng.random()
        us = 0.5 - abs(u)
        if us <= 0.0:
            continue
        k = math.floor((2 * a / us + b) * u + c)
        if k < 0 or k > n:
            continue
        if us >= 0.07 and v <= v_r:
            return k
        if v <= 0.0:
            continue
        v = math.log(v * alpha / (a / (us * us) + b))
        if v <= h - math.lgamma(k + 1) - math.lgamma(n - k + 1) + (k - m) * lpq:
            return k


def multinomial(rng: random.Random, counts: list[int]) -> list[int]:
    """A resample of sum(COUNTS) items with replacement, as how many of each class it drew.
    The largest class is drawn last: it takes what is left, without a draw of its own."""
    remaining_items = remaining_weight = sum(counts)
    drawn = [0] * len(counts)
    for index in sorted(range(len(counts)), key=counts.__getitem__):
        count = counts[index]
        if remaining_items == 0:
            break
        if count == remaining_weight:
            drawn[index] = remaining_items
            break
        if count:
            drawn[index] = got = binomial(rng, remaining_items, count / remaining_weight)
            remaining_items -= got
            remaining_weight -= count
    return drawn
