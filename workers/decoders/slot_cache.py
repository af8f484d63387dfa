"""A fixed-capacity KV cache of rows: one row per running sequence, each at its own length.

All layers' keys and values live in one buffer ``kv`` of shape [layers, 2, rows,
kv_heads, length, head_dim], allocated once for a geometry (rows x length) and
reallocated only when a joining sequence needs more rows or a longer row than
it has. Running sequences hold rows 0..n-1, compact: when some leave, the last
rows move into the holes, so a decode step always covers a prefix of the rows.
Row r's tokens sit in columns 0..length_r-1 (no padding on the left), and
``ids[r]``/``pos[r]`` on the device hold its next input token and the column
it goes to, which a decode step reads and advances without the host.

Budget: rows x length x bytes per token stays within the KV budget, rows a power
of two (at least ``MIN_ROWS``, at most ``max_rows``), length a multiple of
``COLUMN_STEP``; a lone sequence gets its row whatever the budget says.
"""
from __future__ import annotations

import torch

COLUMN_STEP = 256  # row lengths grow by this much: few reallocations, little waste
MIN_ROWS = 8  # rows allocated at least: a batch grows without reallocating at once


def round_up(n: int, step: int) -> int:
    return -(-n // step) * step


def pow2(n: int) -> int:
    """The smallest power of two >= n."""
    return 1 << max(n - 1, 0).bit_length()


class SlotCache:
    """The rows, their device-side inputs and the host's view of their lengths."""

    def __init__(self, layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
                 device: str, max_rows: int, budget_bytes: int) -> None:
        self.shape = (layers, 2, kv_heads, head_dim)
        self.dtype, self.device = dtype, device
        self.max_rows, self.budget_bytes = max_rows, budget_bytes
        self.bytes_per_token = 2 * layers * kv_heads * head_dim * dtype.itemsize
        self.kv: torch.Tensor | None = None
        self.rows = self.length = 0  # the allocated geometry
        self.ids = torch.zeros(max_rows, dtype=torch.long, device=device)
        self.pos = torch.zeros(max_rows, dtype=torch.long, device=device)
        self.lengths: list[int] = []  # each used row's next column (its pos), host side
        self.needs: list[int] = []  # the columns each used row may fill at most

    def __len__(self) -> int:
        return len(self.lengths)

    def geometry(self, rows: int, need: int, force: bool = False) -> tuple[int, int] | None:
        """The geometry for ``rows`` rows of up to ``need`` columns: the current one
        grown where needed if that fits the budget, else the tightest that does; None
        when none does (unless ``force``: a lone sequence always runs)."""
        length, wanted = round_up(need, COLUMN_STEP), min(self.max_rows, pow2(rows))
        tight = min(self.max_rows, max(MIN_ROWS, wanted))
        for r, n in ((max(tight, self.rows), max(length, self.length)), (tight, length),
                     (wanted, length)):
            if r * n * self.bytes_per_token <= self.budget_bytes:
                return r, n
        return (wanted, length) if force else None

    @torch.inference_mode()
    def reserve(self, rows: int, need: int) -> bool:
        """Make room for ``rows`` rows of up to ``need`` columns (the used rows kept);
        whether the buffer was reallocated."""
        rows_, length = self.geometry(rows, need, force=True)
        if (rows_, length) == (self.rows, self.length):
            return False
        layers, two, heads, dim = self.shape
        # Zeros, not empty: masked columns are still read, and 0 x NaN would be NaN.
        kv = torch.zeros((layers, two, rows_, heads, length, dim), dtype=self.dtype,
                         device=self.device)
        if len(self) and self.kv is not None:
            n, cols = len(self), min(length, self.length)
            kv[:, :, :n, :, :cols] = self.kv[:, :, :n, :, :cols]
        self.kv, self.rows, self.length = kv, rows_, length
        return True

    @torch.inference_mode()
    def add(self, lengths: list[int], needs: list[int]) -> None:
        """Count the rows after the used ones as used: their first ``lengths[i]`` columns
        hold a prompt (written by a prefill), their next token comes from ``set_ids``."""
        start = len(self)
        self.pos[start:start + len(lengths)] = torch.tensor(lengths, device=self.device)
        self.lengths += lengths
        self.needs += needs

    @torch.inference_mode()
    def drop_tail(self, start: int, kept: list[int]) -> None:
        """Keep of the rows from ``start`` on only ``kept`` (ascending), in their order."""
        if kept == list(range(start, len(self))):
            return
        end = start + len(kept)
        if kept:
            src = torch.tensor(kept, device=self.device)
            self.kv[:, :, start:end] = self.kv[:, :, src]
            self.ids[start:end], self.pos[start:end] = self.ids[src], self.pos[src]
        self.lengths = self.lengths[:start] + [self.lengths[r] for r in kept]
        self.needs = self.needs[:start] + [self.needs[r] for r in kept]

    @torch.inference_mode()
    def set_ids(self, tokens: dict[int, int]) -> None:
        """Override the next input token of some rows."""
        if tokens:
            rows = torch.tensor(list(tokens), device=self.device)
            self.ids[rows] = torch.tensor(list(tokens.values()), device=self.device)

    @torch.inference_mode()
    def advance(self, b: int, tokens: torch.Tensor) -> None:
        """A step ran for rows 0..b-1 and made ``tokens`` [b]: they are the rows' next
        inputs, one column further on (device side, no sync; the host follows)."""
        self.ids[:b].copy_(tokens)
        self.pos[:b] += 1
        self.lengths = [n + 1 for n in self.lengths]

    @torch.inference_mode()
    def keep(self, keep: list[int]) -> list[int]:
        """Keep the used rows ``keep`` (ascending); the last ones move into the holes.
        Returns the old index of each row in its new order."""
        n = len(keep)
        kept = set(keep)
        holes = [r for r in range(n) if r not in kept]
        movers = [r for r in keep if r >= n]
        order = list(range(n))
        if movers:
            src = torch.tensor(movers, device=self.device)
            dst = torch.tensor(holes, device=self.device)
            cols = max(self.lengths[r] for r in movers) + 1
            self.kv[:, :, dst, :, :cols] = self.kv[:, :, src, :, :cols]
            self.ids[dst], self.pos[dst] = self.ids[src], self.pos[src]
            for hole, mover in zip(holes, movers):
                order[hole] = mover
        self.lengths = [self.lengths[r] for r in order]
        self.needs = [self.needs[r] for r in order]
        return order

    def clear(self) -> None:
        """Forget every row (the buffer stays for the next ones)."""
        self.lengths, self.needs = [], []
