"""The no-repeat n-gram guard as batch-level vLLM logits processors (V1 and V2 model runners), and the
chooser that picks the one the installed vLLM's model runner loads. Same per-request `extra_args` and
semantics as vLLM's `NGramPerReqLogitsProcessor`; one set of tensor operations per step for the whole batch."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor as V1LogitsProcessor
from vllm.v1.sample.logits_processor import MoveDirectionality

from . import ngram_kernel

try:                 # vLLM >= ~0.30: Model Runner V2's own logits-processor interface
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor as V2LogitsProcessor
except ImportError:  # vLLM 0.24: Model Runner V2 ignores custom logits processors
    V2LogitsProcessor = None

log = logging.getLogger(__name__)

PAD = -1                 # history slot with no token (never read: every read is bounded by the row's length)
NO_WHITELIST = -2        # whitelist padding, never a token id
DEFAULT_WINDOW = 100     # vLLM's default window_size
TOKEN = torch.int32      # token ids in the history (V2 keeps int32 too): half the bytes compared per step
ENV_V2 = "VLLM_USE_V2_MODEL_RUNNER"


@dataclass(frozen=True)
class Guard:
    n: int
    window: int
    whitelist: tuple[int, ...]


def _raw(params: Any) -> tuple[Any, Any, Any]:
    extra = getattr(params, "extra_args", None) or {}
    return extra.get("ngram_size"), extra.get("window_size", DEFAULT_WINDOW), extra.get("whitelist_token_ids")


def validate(params: Any) -> None:
    """vLLM's checks (NGramPerReqLogitsProcessor.validate_params), with its messages."""
    n, window, whitelist = _raw(params)
    if n is None:
        return
    if not isinstance(n, int) or n <= 0:
        raise ValueError(f"`ngram_size` has to be a strictly positive integer, got {n}.")
    if not isinstance(window, int) or window <= 0:
        raise ValueError(f"`window_size` has to be a strictly positive integer, got {window}.")
    if whitelist is not None and not isinstance(whitelist, Iterable):
        raise ValueError(f"`whitelist_token_ids` has to be a sequence of integers, got {whitelist}.")


def guard_of(params: Any) -> Guard | None:
    """The request's guard, or None where it can ban nothing: no ngram_size, or n = 1 (vLLM's prefix
    slice ids[-0:] is then the whole output, which never equals an empty n-gram prefix)."""
    n, window, whitelist = _raw(params)
    if n is None or n < 2:
        return None
    return Guard(int(n), int(window), tuple(sorted({int(t) for t in whitelist or ()})))


def ban_ngrams_(logits: torch.Tensor, hist: torch.Tensor, out_len: torch.Tensor, n: torch.Tensor,
                window: torch.Tensor, whitelist: torch.Tensor, k: int) -> torch.Tensor:
    """Set to -inf, in place, every token that would complete an n-gram already in the row's window.

    hist [R, H]: each row's last H output tokens, right-aligned (column H-1 is the newest); out_len [R]:
    output length; n, window [R] (n = 0: row unguarded); whitelist [R, Kw] (NO_WHITELIST padded);
    k = max(n) - 1 over the rows, H > k. A token at column b is banned when the n-1 tokens before it equal
    the row's last n-1 tokens and its n-gram starts inside the window: b >= H - min(out_len, window) + n - 1
    (vLLM: search_start = max(0, len - window), search_end = len - n + 1)."""
    rows, width = hist.shape
    prefix = hist[:, width - k:]                                    # [R, k]: the last k tokens
    padded = torch.nn.functional.pad(hist, (k, 0), value=PAD)       # so that every column has k before it
    before = padded[:, :-1].unfold(1, k, 1)                         # [R, H, k]: the k tokens before column b
    care = torch.arange(k, device=hist.device) >= (k + 1 - n).unsqueeze(1)   # only the last n-1 of them
    same = (before == prefix.unsqueeze(1)) | ~care.unsqueeze(1)
    match = same.view(torch.uint8).amin(-1).bool()                 # [R, H]; all(-1), 5x faster on CPU
    first = width - torch.minimum(out_len, window) + n - 1
    cols = torch.arange(width, device=hist.device)
    ban = match & (cols >= first.unsqueeze(1)) & (n > 1).unsqueeze(1)
    tokens = hist
    if whitelist.shape[1]:
        ban &= ~(tokens.unsqueeze(-1) == whitelist.unsqueeze(1)).any(-1)
    tokens = tokens.clamp(min=0).long()
    # amin with the row's own values: a token listed twice, banned once, still ends at -inf; unbanned
    # logits are written back unchanged (bit for bit), with no host sync and no data-dependent shapes.
    target = logits[:rows]
    current = target.gather(1, tokens)
    target.scatter_reduce_(1, tokens, torch.where(ban, torch.full_like(current, float("-inf")), current),
                           reduce="amin")
    return logits


def _whitelist_rows(guards: list[Guard | None]) -> list[list[int]]:
    width = max((len(g.whitelist) for g in guards if g), default=0)
    return [list(g.whitelist if g else ()) + [NO_WHITELIST] * (width - len(g.whitelist if g else ())) for g in guards]


def _to_device(data: Any, device: torch.device, pin: bool, dtype: torch.dtype = torch.long) -> torch.Tensor:
    host = torch.from_numpy(data).to(dtype) if isinstance(data, np.ndarray) else torch.tensor(data, dtype=dtype)
    if pin and device.type != "cpu":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


@dataclass
class _Row:
    guard: Guard
    out: list[int]    # vLLM's live output-token list for the request (a reference, filled in by vLLM)
    seen: int = 0     # how many of its tokens are in the device history


class NGramGuardV1(V1LogitsProcessor):
    """For vLLM's V1 model runner. update_state only rearranges rows (host bookkeeping); apply reads each
    guarded row's newest token from its output list (under async scheduling the list still ends in a -1
    placeholder at update_state time, and vLLM fills it in just before apply), shifts it into the device
    history and bans for the whole batch at once."""

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool):
        self.device = torch.device(device)
        self.pin = bool(is_pin_memory)
        sched = getattr(vllm_config, "scheduler_config", None)
        self.rows: list[_Row | None] = [None] * int(getattr(sched, "max_num_seqs", 0) or 0)
        self.hist = torch.full((len(self.rows), 0), PAD, dtype=TOKEN, device=self.device)
        self.params: tuple[torch.Tensor, ...] | None = None    # n, window, whitelist per row; None: rebuild
        self.k = 0
        self._layout_key: tuple[int, int] | None = None           # the kernel's row ends and indices, cached
        self._layout_cache: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        validate(sampling_params)

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if not batch_update:
            return
        touched = [a for a, _b, _d in batch_update.moved] + [b for _a, b, _d in batch_update.moved]
        self._grow_rows(max([batch_update.batch_size, *(a[0] + 1 for a in batch_update.added),
                             *(i + 1 for i in touched)]))
        rows = self.rows
        source = list(range(len(rows)))          # device history row that each batch row takes
        for index in batch_update.removed:
            rows[index] = None
        for index, params, _prompt, out in batch_update.added:
            guard = guard_of(params)
            rows[index] = _Row(guard, out) if guard else None
        for a, b, direction in batch_update.moved:
            if direction == MoveDirectionality.SWAP:
                rows[a], rows[b] = rows[b], rows[a]
                source[a], source[b] = source[b], source[a]
            else:
                rows[b], rows[a] = rows[a], None
                source[b] = source[a]
        if source != list(range(len(source))):
            self.hist = self.hist[_to_device(source, self.device, self.pin)]
        self._fit_history()
        self.params = None

    def _grow_rows(self, size: int) -> None:
        if size > len(self.rows):
            self.rows.extend([None] * (size - len(self.rows)))
            extra = torch.full((size - self.hist.shape[0], self.hist.shape[1]), PAD, dtype=TOKEN,
                               device=self.device)
            self.hist = torch.cat([self.hist, extra])

    def _fit_history(self) -> None:
        """Widen the history (on the left: rows stay right-aligned) to the largest window and n."""
        need = max((max(r.guard.window, r.guard.n) for r in self.rows if r), default=0)
        if need > self.hist.shape[1]:
            pad = torch.full((self.hist.shape[0], need - self.hist.shape[1]), PAD, dtype=TOKEN,
                             device=self.device)
            self.hist = torch.cat([pad, self.hist], dim=1)

    def _build_params(self, size: int) -> tuple[torch.Tensor, ...]:
        guards = [r.guard if r else None for r in self.rows[:size]]
        self.k = max((g.n for g in guards if g), default=1) - 1
        n = _to_device([g.n if g else 0 for g in guards], self.device, self.pin)
        window = _to_device([g.window if g else 0 for g in guards], self.device, self.pin)
        white = _to_device(_whitelist_rows(guards), self.device, self.pin, TOKEN).view(size, -1)
        return n, window, white

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        size = min(logits.shape[0], len(self.rows))
        if not any(self.rows[:size]):
            return logits
        if self.params is None or self.params[0].shape[0] != size:
            self.params = self._build_params(size)
        lengths, newest, stale = self._new_tokens(size)
        step = _to_device([lengths, newest], self.device, self.pin)
        hist = self.hist[:size]
        shifted = torch.cat([hist[:, 1:], step[1].to(TOKEN).unsqueeze(1)], dim=1)
        hist = torch.where((step[1] != PAD).unsqueeze(1), shifted, hist)
        if stale:
            hist[_to_device(stale, self.device, self.pin)] = self._reload(stale)
        self.hist[:size] = hist
        if ngram_kernel.usable(logits):
            width = hist.shape[1]      # row r's window is hist[r]: its "end" is width, its start width - length
            ends, rows = self._layout(size, width)
            if ngram_kernel.ban_(logits, hist, ends, ends - step[0], rows, *self.params, width):
                return logits
        return ban_ngrams_(logits, hist, step[0], *self.params, self.k)

    def _layout(self, size: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._layout_key != (size, width) or self._layout_cache is None:
            self._layout_key = (size, width)
            self._layout_cache = (torch.full((size,), width, dtype=torch.long, device=self.device),
                                  torch.arange(size, dtype=torch.int32, device=self.device))
        return self._layout_cache

    def _new_tokens(self, size: int) -> tuple[list[int], list[int], list[int]]:
        """Per guarded row: its output length, its newest token if exactly one arrived since the last step
        (else PAD), and the rows whose history must be reloaded (new, resumed, or tokens discarded)."""
        lengths, newest, stale = [0] * size, [PAD] * size, []
        for i, row in enumerate(self.rows[:size]):
            if row is None:
                continue
            length = len(row.out)
            if length == row.seen + 1 and row.out[-1] != PAD:
                newest[i] = row.out[-1]
            elif length != row.seen:
                stale.append(i)
            row.seen = lengths[i] = length
        return lengths, newest, stale

    def _reload(self, stale: list[int]) -> torch.Tensor:
        width = self.hist.shape[1]
        windows = [self.rows[i].out[-width:] for i in stale]
        return _to_device([[PAD] * (width - len(w)) + w for w in windows], self.device, self.pin, TOKEN)


if V2LogitsProcessor is not None:

    class NGramGuardV2(V2LogitsProcessor):
        """For vLLM's Model Runner V2: the token history is the runner's own (req_states.all_token_ids,
        committed tokens up to total_len, written on the device by the sampler's post-update), so apply
        gathers each row's last tokens from it; per-slot guard settings are staged in add_request and copied
        to the device in apply_staged_writes. Draft rows of speculative decoding see committed tokens only."""

        def __init__(self, vllm_config: Any, req_states: Any):
            self.req_states = req_states
            self.device = torch.device(req_states.device)
            slots = req_states.max_num_reqs
            self.n = np.zeros(slots, dtype=np.int64)           # 0: slot unguarded
            self.window = np.zeros(slots, dtype=np.int64)
            self.white = np.full((slots, 0), NO_WHITELIST, dtype=np.int32)
            self.params: tuple[torch.Tensor, ...] | None = None
            self.dirty = True

        @classmethod
        def validate_params(cls, sampling_params: Any) -> None:
            validate(sampling_params)

        def add_request(self, req_idx: int, sampling_params: Any) -> bool:
            guard = guard_of(sampling_params)
            self.n[req_idx] = guard.n if guard else 0
            self.window[req_idx] = guard.window if guard else 0
            white = guard.whitelist if guard else ()
            if len(white) > self.white.shape[1]:
                extra = np.full((len(self.n), len(white) - self.white.shape[1]), NO_WHITELIST, dtype=np.int32)
                self.white = np.concatenate([self.white, extra], axis=1)
            self.white[req_idx] = NO_WHITELIST
            self.white[req_idx, :len(white)] = white
            self.dirty = True
            return guard is not None

        def apply_staged_writes(self) -> None:
            if self.dirty:
                pin = self.device.type != "cpu"
                self.params = tuple(_to_device(a, self.device, pin, dtype) for a, dtype in
                                    ((self.n, torch.long), (self.window, torch.long), (self.white, TOKEN)))
                self.dirty = False

        def apply(self, logits: torch.Tensor, ctx: Any) -> torch.Tensor:
            k = int(self.n[ctx.idx_mapping_np].max(initial=0)) - 1
            if k < 1:
                return logits
            if self.dirty:          # add_request without a flush (not how vLLM calls us, but safe)
                self.apply_staged_writes()
            slots_np = ctx.idx_mapping_np
            width = int(max(self.window[slots_np].max(), self.n[slots_np].max()))
            state = self.req_states
            if ngram_kernel.usable(logits) and ngram_kernel.ban_(
                    logits, state.all_token_ids.gpu, state.total_len.gpu, state.prompt_len.gpu,
                    ctx.expanded_idx_mapping, *self.params, width):
                return logits
            slots = ctx.expanded_idx_mapping.long()
            total = self.req_states.total_len.gpu[slots].long()
            out_len = total - self.req_states.prompt_len.gpu[slots].long()
            cols = (total.unsqueeze(1) - width + torch.arange(width, device=slots.device)).clamp(min=0)
            hist = self.req_states.all_token_ids.gpu[slots.unsqueeze(1), cols].to(TOKEN)
            n, window, white = (p[slots] for p in self.params)
            return ban_ngrams_(logits, hist, out_len, n, window, white, k)
else:
    NGramGuardV2 = None


# The chooser ------------------------------------------------------------------------------------------

def predict_v2_runner(architecture: str | None) -> bool:
    """Whether vLLM will run Model Runner V2, by the rules of VllmConfig.use_v2_model_runner that can be
    known before the engine is built: the environment variable decides if set; V2 needs Triton; vLLM
    0.2x's V2 ran by default only for the architectures in DEFAULT_V2_MODEL_RUNNER_ARCHITECTURES
    (DeepSeek-OCR was never one). The features V2 lacks (speculative methods, pipeline parallelism with
    external_launcher, micro-batching, stock torch.compile) are ones the runner never turns on."""
    import vllm.config.vllm as vllm_config_module

    env = os.environ.get(ENV_V2)
    if env is not None:
        return bool(int(env))
    if not getattr(vllm_config_module, "HAS_TRITON", False):
        return False
    defaults = getattr(vllm_config_module, "DEFAULT_V2_MODEL_RUNNER_ARCHITECTURES", None)
    if defaults is not None and architecture not in defaults:
        return False
    return True


def vllm_guard_class() -> type:
    from vllm.model_executor.models.deepseek_ocr import NGramPerReqLogitsProcessor
    return NGramPerReqLogitsProcessor


def choose_guard(impl: str, architecture: str | None) -> tuple[type, str]:
    """The logits-processor class for `impl` ("ocr": ours, "vllm": vLLM's) that the model runner vLLM
    will use loads, and a line saying what was chosen. Where that runner has no place for it (vLLM's guard
    on V2; V2 without a logits-processor interface, as in vLLM 0.24, which would run with no guard at
    all), sets VLLM_USE_V2_MODEL_RUNNER=0 so that vLLM uses V1, and says so."""
    v2 = predict_v2_runner(architecture)
    name = "vLLM's n-gram guard" if impl == "vllm" else "the runner's n-gram guard"
    if not v2:
        return (vllm_guard_class() if impl == "vllm" else NGramGuardV1), f"{name} on the V1 model runner"
    if impl != "vllm" and NGramGuardV2 is not None:
        return NGramGuardV2, f"{name} on Model Runner V2"
    why = "vLLM's guard is a V1 logits processor" if impl == "vllm" else \
        "this vLLM's Model Runner V2 takes no custom logits processors"
    os.environ[ENV_V2] = "0"
    return (vllm_guard_class() if impl == "vllm" else NGramGuardV1), \
        f"{name} on the V1 model runner: {why}, so {ENV_V2}=0 is set"
