"""The n-gram ban of ocr/engines/ngram.py as one Triton kernel launch per step on CUDA (torch and Triton only).

Why: on the H200 (vLLM 0.32, Model Runner V2, encoder CUDA graphs, 128 pages in flight) the tensor version
took 11% of the engine core's steady rate. It is some 35 small tensor operations per step, ~1 ms however
many rows (bench/ngram_bench.py: 1.04 ms at 64 rows, 1.20 ms at 128), and the engine core's one thread
issues them while the GPU waits. One launch does the same work. OCR_NGRAM_KERNEL=0 keeps the tensor
operations (for comparison)."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

log = logging.getLogger(__name__)
ENV = "OCR_NGRAM_KERNEL"
MAX_WIDTH = 8192         # one block per row holds the window (DeepSeek-OCR's runs use 90)
_kernel: Any = None


def usable(logits: torch.Tensor) -> bool:
    """The kernel can run on these logits: CUDA (or Triton's CPU interpreter, for tests), Triton present."""
    if os.environ.get(ENV, "1") == "0":
        return False
    if not (logits.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"):
        return False
    return _compiled() is not None


def _compiled() -> Any:
    global _kernel
    if _kernel is None:
        try:
            _kernel = _build()
        except ImportError:
            _kernel = False
    return _kernel or None


def _build() -> Any:
    import triton
    import triton.language as tl

    @triton.jit
    def ban_kernel(logits_ptr, logits_stride, vocab, tok_ptr, tok_stride, end_ptr, start_ptr, slot_ptr, n_ptr,
                   window_ptr, white_ptr, white_stride, num_white, width, BLOCK: tl.constexpr):
        # One program per logits row. The row's tokens are tok[slot, start:end] (prompt before start);
        # column c of its window is token end - width + c, so column width - 1 is the newest.
        row = tl.program_id(0)
        slot = tl.load(slot_ptr + row).to(tl.int64)
        n = tl.load(n_ptr + slot).to(tl.int64)
        end = tl.load(end_ptr + slot).to(tl.int64)
        out_len = end - tl.load(start_ptr + slot).to(tl.int64)
        if (n >= 2) & (out_len >= n):
            window = tl.load(window_ptr + slot).to(tl.int64)
            base = tok_ptr + slot * tok_stride + end - width
            cols = tl.arange(0, BLOCK)
            first = width - tl.minimum(out_len, window) + n - 1
            ban = (cols < width) & (cols >= first)
            for j in range(0, n - 1):        # the n-1 tokens before a column equal the last n-1 tokens
                before = tl.load(base + cols - 1 - j, mask=ban, other=0)
                newest = tl.load(base + width - 1 - j)
                ban = ban & (before == newest)
            token = tl.load(base + cols, mask=ban, other=0).to(tl.int64)
            ban = ban & (token >= 0) & (token < vocab)     # never a write outside the row
            for w in range(0, num_white):
                ban = ban & (token != tl.load(white_ptr + slot * white_stride + w).to(tl.int64))
            tl.store(logits_ptr + row.to(tl.int64) * logits_stride + token,
                     tl.full([BLOCK], float("-inf"), tl.float32), mask=ban)

    def launch(logits: torch.Tensor, tokens: torch.Tensor, end: torch.Tensor, start: torch.Tensor,
               slots: torch.Tensor, n: torch.Tensor, window: torch.Tensor, white: torch.Tensor,
               width: int) -> torch.Tensor:
        rows, num_white = slots.shape[0], white.shape[1]
        if rows and width:
            ban_kernel[(rows,)](logits, logits.stride(0), logits.shape[1], tokens, tokens.stride(0), end, start,
                                slots, n, window,
                                white if num_white else n, white.stride(0) if num_white else 0, num_white, width,
                                BLOCK=triton.next_power_of_2(width))
        return logits

    return launch


def ban_(logits: torch.Tensor, tokens: torch.Tensor, end: torch.Tensor, start: torch.Tensor, slots: torch.Tensor,
         n: torch.Tensor, window: torch.Tensor, white: torch.Tensor, width: int) -> bool:
    """Set to -inf, in place, what ngram.ban_ngrams_ sets, for logits row r of request slot slots[r]:
    tokens [S, L] (each slot's prompt and output; its output is tokens[s, start[s]:end[s]]); n, window
    [S] (n < 2: unguarded); white [S, Kw] (padded with a value that is no token id); width >= every
    guarded slot's max(window, n). Unbanned logits are left untouched. False (logits untouched) where the
    kernel does not take the call (width over MAX_WIDTH, rows not contiguous), or cannot be built or
    launched here: then it is off for this process, with one warning."""
    global _kernel
    launch = _compiled()
    if launch is None or width > MAX_WIDTH or logits.stride(1) != 1 or tokens.stride(1) != 1:
        return False             # the tensor operations take these (a huge window_size, strided rows)
    try:
        launch(logits, tokens, end, start, slots, n, window, white, width)
    except Exception as exc:     # a Triton that cannot compile here: a compile error comes before any write
        _kernel = False
        log.warning("n-gram guard: the Triton kernel failed (%s: %s); using tensor operations",
                    type(exc).__name__, exc)
        return False
    return True
