"""Near-duplicates: datasketch MinHash signatures over word n-grams, an LSH band index, one record kept per cluster.

Signatures come from datasketch (its affine32 scheme, seeded permutations) and the band layout (b bands of r
rows) from datasketch's ``MinHashLSH`` parameter optimisation for the threshold. The index itself is a sorted
array per band, built one band at a time, rather than ``MinHashLSH``'s dict of sets: that one measured ~3 KB
per record (3 GB at 1M records) and 3k inserts/s on one core, against ~130 bytes per record here while a band is
sorted (on top of the 512-byte signatures, which any MinHash index needs). Records sharing a band bucket are
candidates; a candidate pair counts when its estimated Jaccard (the fraction of equal signature values) reaches
the threshold; clusters are the connected components, and the earliest record of each is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dschat.clean.text import conversation_tokens, ngram_hashes, normalise, token_hashes

MINHASH_SEED = 1


@dataclass(frozen=True)
class NearDuplicate:
    """A dropped record, the kept record of its cluster, and their estimated Jaccard similarity."""

    index: int
    kept: int
    jaccard: float


class Signer:
    """MinHash signatures (uint32[num_perm]) of conversations' word n-gram sets."""

    def __init__(self, ngram: int, num_perm: int):
        from datasketch import MinHash

        self.ngram = ngram
        self.template = MinHash(num_perm=num_perm, seed=MINHASH_SEED, hashfunc=int)

    def shingles(
        self, messages: list[dict], tokenised: tuple[list[str], np.ndarray] | None = None
    ) -> np.ndarray:
        """32-bit hashes of the word n-grams of the user and assistant turns (``tokenised``: precomputed)."""
        hashes = (tokenised or conversation_tokens(messages))[1]
        if not len(hashes):  # punctuation only: the normalised text itself is the one token
            hashes = token_hashes([normalise("\n".join(m["content"] for m in messages))])
        return (ngram_hashes(hashes, self.ngram) >> np.uint64(32)).astype(np.uint32)

    def sign(self, conversations: list[list[dict]], tokenised: list | None = None) -> np.ndarray:
        """One signature row per conversation (``tokenised``: their ``conversation_tokens``, when computed)."""
        from datasketch import MinHash

        out = np.empty((len(conversations), len(self.template.hashvalues)), np.uint32)
        sketch = MinHash(
            seed=MINHASH_SEED,
            hashfunc=int,
            permutations=self.template.permutations,
            scheme=self.template.scheme,
        )
        for row, messages in enumerate(conversations):
            sketch.clear()  # one sketch reused: its permutations are the costly part to build
            shingles = self.shingles(messages, tokenised[row] if tokenised is not None else None)
            sketch.update_batch(shingles.tolist())  # Python ints: datasketch calls hashfunc on each
            out[row] = sketch.hashvalues
        return out


def band_layout(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) that datasketch's MinHashLSH picks for this threshold."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    return lsh.b, lsh.r


def find_near_duplicates(signatures: np.ndarray, threshold: float) -> list[NearDuplicate]:
    """Every record to drop (all but the earliest of each cluster), in index order."""
    count, num_perm = signatures.shape
    if count < 2:
        return []
    bands, rows = band_layout(threshold, num_perm)
    parent = np.arange(count)
    mix = np.random.RandomState(7).randint(1, 2**62, size=rows, dtype=np.int64).astype(np.uint64) * 2 + 1
    for band in range(bands):
        block = signatures[:, band * rows : (band + 1) * rows].astype(np.uint64)
        keys = (block * mix).sum(axis=1, dtype=np.uint64)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        same = np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1]) + 1  # positions whose bucket began earlier
        if not len(same):
            continue
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        heads = order[starts[np.searchsorted(starts, same, side="right") - 1]]
        members = order[same]
        similar = (signatures[members] == signatures[heads]).mean(axis=1) >= threshold
        for a, b in zip(heads[similar], members[similar]):
            _union(parent, int(a), int(b))
    roots = np.array([_find(parent, i) for i in range(count)])
    dropped = np.flatnonzero(roots != np.arange(count))
    jaccard = (signatures[dropped] == signatures[roots[dropped]]).mean(axis=1)
    return [NearDuplicate(int(i), int(roots[i]), float(j)) for i, j in zip(dropped, jaccard)]


def _find(parent: np.ndarray, i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return int(i)


def _union(parent: np.ndarray, a: int, b: int) -> None:
    """Join two clusters under the smaller index, so each cluster's root is its earliest record."""
    ra, rb = _find(parent, a), _find(parent, b)
    if ra != rb:
        parent[max(ra, rb)] = min(ra, rb)
