"""What the decode loop adds to the block tables of `emu3_lm.blocks`.

The image/video block grammar and its tables (`FREE`, `image_table`, `video_table`,
`frame_table`, `extract_codes`, `block_tokens`, `VisualIds`) live in `emu3_lm.blocks`: a table
holds, per generated position, the token forced there or FREE where a visual token is sampled.
Forced tokens are written without computing any logits; at FREE positions only the visual slice
of the lm_head is computed and sampled. Here: a batch of tables, and where sampling ends.
"""

from __future__ import annotations

import numpy as np
from emu3_lm.blocks import FREE


def stack_tables(tables: list[np.ndarray], pad: int) -> np.ndarray:
    """Rows of different lengths as one [B, N] table, each row continued with forced `pad`."""
    n = max(len(t) for t in tables)
    out = np.full((len(tables), n), pad, dtype=np.int64)
    for i, t in enumerate(tables):
        out[i, : len(t)] = t
    return out


def last_free(table: np.ndarray) -> int:
    """Index of the last FREE position over all rows (-1 when none): no step after it needs logits."""
    free = np.nonzero((table == FREE).any(axis=0))[0]
    return int(free[-1]) if len(free) else -1
