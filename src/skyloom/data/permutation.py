"""A seeded permutation of [0, n) computed per index, so a loader's memory does not grow with the corpus.

Storing a shuffle of every source costs 8 bytes per window on every rank (2.3 GB for a 2.4T-token source);
instead position i of the order is computed when it is needed:

* **Feistel network** on [0, 4^h) with 4^h ≥ n: the index splits into two h-bit halves and goes through
  `ROUNDS` rounds of `(l, r) → (r, l ⊕ F(r, key_i))`. Each round is invertible whatever F is, so the whole
  network is a bijection of [0, 4^h); F is the splitmix64 finaliser mixed with a per-round key.
* **Cycle walking** maps it onto [0, n): an image ≥ n is pushed through the network again until it lands
  below n. Following a bijection's cycle from a point below n always comes back below n, so this is a
  bijection of [0, n); since 4^h < 4n, fewer than 4 passes are needed on average.
* **Keys** come from `numpy.random.SeedSequence(entropy)`: (seed, source, epoch) give an unrelated order.

Memory is O(1) in n; evaluation is vectorised over a batch of positions (uint64 arithmetic, wrapping).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ROUNDS = 6
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray, key: np.uint64, mask: np.uint64) -> np.ndarray:
    """The round function: splitmix64's finaliser of x ⊕ key, cut to the half width."""
    z = x ^ key
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return (z ^ (z >> np.uint64(31))) & mask


class IndexPermutation:
    """A bijection of [0, n) keyed by `entropy` (non-negative ints); `perm[i]` or `perm.take(array)`."""

    def __init__(self, n: int, entropy: Sequence[int]):
        if n < 1:
            raise ValueError(f"a permutation needs n ≥ 1, got {n}")
        if n > 2**64:
            raise ValueError(f"n = {n} does not fit the 64-bit Feistel network")
        self.n = int(n)
        half = max(1, ((self.n - 1).bit_length() + 1) // 2)  # 2·half bits cover n − 1
        self._half = np.uint64(half)
        self._mask = np.uint64((1 << half) - 1)
        self._keys = np.random.SeedSequence(list(entropy)).generate_state(ROUNDS, dtype=np.uint64)

    def __len__(self) -> int:
        return self.n

    def _network(self, x: np.ndarray) -> np.ndarray:
        left, right = x >> self._half, x & self._mask
        for key in self._keys:
            left, right = right, left ^ _mix(right, key, self._mask)
        return (left << self._half) | right

    def take(self, positions: np.ndarray | Sequence[int]) -> np.ndarray:
        """The permuted values at `positions` (each in [0, n)), as uint64."""
        x = np.asarray(positions, dtype=np.uint64).reshape(-1)
        if x.size and int(x.max()) >= self.n:
            raise IndexError(f"position {int(x.max())} is outside the permutation of {self.n}")
        if self.n == 1:
            return np.zeros_like(x)
        limit = np.uint64(self.n - 1)
        x = self._network(x)
        out = x > limit
        while out.any():  # cycle walking: < 4 passes expected, every element ends below n
            x[out] = self._network(x[out])
            out = x > limit
        return x

    def __getitem__(self, position: int) -> int:
        return int(self.take([position])[0])
