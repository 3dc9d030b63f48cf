"""Seeds derived from integers, one purpose at a time.

Kept at the bottom of the layers so that tasks (the train split's sampling), noise (candidates'
seeds) and engines (sampling) take the same function without any of them reaching into another.
"""

import hashlib


def derive_seed(purpose: bytes, *parts: int) -> int:
    """A 62-bit seed from integers, for one purpose: unrelated seeds for other parts or another purpose.
    Every seed thickets derives (a candidate's, an ES perturbation's, a split's) comes from here."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8, person=purpose).digest()
    return int.from_bytes(digest, "little") >> 2
