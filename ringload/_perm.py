"""Keyed pseudo-random functions and bijections over index ranges, for the plan.

``_mix`` and ``_derive`` are keyed 64-bit hashes (splitmix64 rounds); ``_Perm`` is a keyed
bijection on [0, n): a stored permutation for small n, a Feistel network with cycle walking
for large n, so a plan over 10^10 samples needs O(1) memory.
"""

from __future__ import annotations

import numpy as np

from ._rng import _splitmix64

# Domains up to this size get an explicit (stored) permutation; larger ones a Feistel network.
_EXPLICIT_MAX = 1 << 20

# Six rounds: Luby-Rackoff needs four for a pseudo-random permutation; two spare.
_FEISTEL_ROUNDS = 6
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)
_SH29 = np.uint64(29)
_M64 = (1 << 64) - 1
_S_ROUNDS = 6  # the stream tag of the Feistel round keys (plan's tags: 1 to 6)


def _u64(x: int) -> np.uint64:
    return np.uint64(x & _M64)


def _mix(key: int, x: np.ndarray) -> np.ndarray:
    """Keyed hash of a uint64 array: a fixed pseudo-random function per key."""
    with np.errstate(over="ignore"):
        return _splitmix64(_splitmix64(x ^ _u64(key)) + _u64(key >> 7 | key << 57))


def _derive(*parts: int) -> int:
    """One 64-bit key from a tuple of ints (seed, epoch, stream, ...)."""
    h = 0x243F6A8885A308D3
    with np.errstate(over="ignore"):
        for p in parts:
            h = int(_splitmix64(np.array([(h ^ (p & _M64))], dtype=np.uint64))[0])
            h = (h * 0x9E3779B97F4A7C15 + 1) & _M64
    return h


class _Perm:
    """Keyed pseudo-random bijection on [0, n).

    Small domains store the permutation (argsort of keyed hashes: exactly a random
    permutation up to the hash). Large ones use a Feistel network on the smallest number
    of bits that covers n (unbalanced when that number is odd), with cycle walking to stay
    inside [0, n): O(1) memory, both directions cheap for any array of points, and fewer
    than two network passes per point on average (the domain is < 2n).
    """

    def __init__(self, n: int, key: int):
        self.n = int(n)
        self._fwd = self._inv = None
        if self.n <= _EXPLICIT_MAX:
            h = _mix(key, np.arange(self.n, dtype=np.uint64))
            self._fwd = np.argsort(h, kind="stable").astype(np.int64)
            self._inv = np.empty(self.n, dtype=np.int64)
            self._inv[self._fwd] = np.arange(self.n, dtype=np.int64)
        else:
            bits = (self.n - 1).bit_length()
            self._lo_bits = bits - bits // 2
            # Round r splits its input into (hi, lo) with hi of width[r] bits; widths
            # alternate, and an even number of rounds ends where it started.
            self._width = [bits // 2 if r % 2 == 0 else self._lo_bits for r in range(_FEISTEL_ROUNDS)]
            self._keys = [_u64(_derive(key, _S_ROUNDS, r)) for r in range(_FEISTEL_ROUNDS)]

    @staticmethod
    def _round(x: np.ndarray, k: np.uint64, width: int) -> np.ndarray:
        # Multiply-xorshift-multiply of (x ^ k), keeping the top `width` bits (the best
        # mixed ones). In place: the Feistel rounds dominate plan construction.
        if width == 0:
            return np.zeros_like(x)
        z = x ^ k
        with np.errstate(over="ignore"):
            z *= _MUL1
            z ^= z >> _SH29
            z *= _MUL2
        z >>= np.uint64(64 - width)
        return z

    def _enc(self, x: np.ndarray) -> np.ndarray:
        lo_bits = np.uint64(self._lo_bits)
        hi, lo = x >> lo_bits, x & np.uint64((1 << self._lo_bits) - 1)
        for k, w in zip(self._keys, self._width):
            f = self._round(lo, k, w)
            f ^= hi
            hi, lo = lo, f
        hi <<= lo_bits
        hi |= lo
        return hi

    def _dec(self, x: np.ndarray) -> np.ndarray:
        lo_bits = np.uint64(self._lo_bits)
        hi, lo = x >> lo_bits, x & np.uint64((1 << self._lo_bits) - 1)
        for k, w in zip(reversed(self._keys), reversed(self._width)):
            f = self._round(hi, k, w)
            f ^= lo
            hi, lo = f, hi
        hi <<= lo_bits
        hi |= lo
        return hi

    def _walk(self, x: np.ndarray, step) -> np.ndarray:
        y = step(np.asarray(x, dtype=np.int64).astype(np.uint64))
        n = np.uint64(self.n)
        out = y >= n
        while out.any():
            idx = np.flatnonzero(out)
            y[idx] = step(y[idx])
            out[idx] = y[idx] >= n
        return y.astype(np.int64)

    def fwd(self, x) -> np.ndarray:
        """Image of positions ``x`` (int64 array in [0, n))."""
        if self._fwd is not None:
            return self._fwd[x]
        return self._walk(x, self._enc)

    def inv(self, y) -> np.ndarray:
        """Preimage: ``inv(fwd(x)) == x``."""
        if self._inv is not None:
            return self._inv[y]
        return self._walk(y, self._dec)


