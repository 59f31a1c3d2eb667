"""The runner's n-gram guard bans exactly what vLLM's NoRepeatNGramLogitsProcessor bans, driven the way
vLLM's V1 and V2 model runners drive logits processors; the chooser hands each runner a class it loads."""

from __future__ import annotations

import os
import random

import pytest
import torch

from vllm import SamplingParams
from vllm.model_executor.models.deepseek_ocr import NGramPerReqLogitsProcessor, NoRepeatNGramLogitsProcessor
from vllm.v1.sample.logits_processor import BatchUpdateBuilder, MoveDirectionality

from ocr.engines import ngram
from ocr.engines.ngram import NGramGuardV1, NGramGuardV2, choose_guard, predict_v2_runner

CPU = torch.device("cpu")
ARCH = "DeepseekOCRForCausalLM"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small tensors on a shared 2-core machine: two intra-op threads made each step ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Randomized requests --------------------------------------------------------------------------------

def random_params(rng: random.Random, vocab: int) -> SamplingParams:
    """A mix of what the runner sends (30/90 with table tags, the retry's tighter guard) and edge cases:
    n = 1, window shorter than n, no guard at all, extra_args without ngram_size."""
    kind = rng.random()
    if kind < 0.1:
        return SamplingParams(temperature=0.0)
    if kind < 0.15:
        return SamplingParams(temperature=0.0, extra_args={"window_size": 5})
    n = rng.choice([1, 2, 2, 3, 3, 4, 5, 8, 20, 30])
    window = rng.choice([1, n - 1 or 1, n, n + 1, 7, 16, 40, 90, None])
    extra: dict = {"ngram_size": n}
    if window is not None:
        extra["window_size"] = window           # else vLLM's default, 100
    if rng.random() < 0.6:
        extra["whitelist_token_ids"] = rng.sample(range(vocab), rng.randint(0, 6))
    return SamplingParams(temperature=0.0, extra_args=extra)


def next_token(rng: random.Random, out: list[int], vocab: int) -> int:
    """Mostly repeats of earlier spans (what a looping model does), some fresh tokens."""
    real = [t for t in out if t >= 0]
    if len(real) > 3 and rng.random() < 0.75:
        span = rng.randint(2, min(40, len(real)))
        return real[-span]
    return rng.randrange(vocab)


class Request:
    def __init__(self, rng: random.Random, vocab: int, async_mode: bool):
        self.params = random_params(rng, vocab)
        self.out: list[int] = []
        self.prefill_steps = rng.randint(0, 3)   # chunked prefill: steps that sample nothing
        self.async_mode = async_mode
        self.pending: int | None = None          # token behind the -1 placeholder (async scheduling)


# V1: a persistent batch the way vllm/v1/worker/gpu_input_batch.py changes it --------------------------

class PersistentBatch:
    """Rows of vLLM V1's InputBatch: removals leave holes that added requests fill first
    (_register_add_request), condense() moves the last rows into the remaining holes (UNIDIRECTIONAL),
    swap_states() swaps two rows (SWAP); the real BatchUpdateBuilder records it all."""

    def __init__(self):
        self.builder = BatchUpdateBuilder()
        self.rows: list[Request | None] = []

    @property
    def num_reqs(self) -> int:
        return sum(r is not None for r in self.rows)

    def remove(self, req: Request) -> None:
        index = self.rows.index(req)
        self.rows[index] = None
        self.builder.removed_append(index)

    def add(self, req: Request) -> None:
        index = self.builder.pop_removed()
        if index is None:
            index = self.num_reqs
        if index == len(self.rows):
            self.rows.append(None)
        self.rows[index] = req
        self.builder.added.append((index, req.params, None, req.out))

    def condense(self) -> None:
        empty = self.builder.removed
        if not empty:
            return
        num_reqs = self.num_reqs
        last = num_reqs + len(empty) - 1
        while empty:
            while last in empty:
                last -= 1
            hole = self.builder.peek_removed()
            if hole >= last:
                break
            self.builder.pop_removed()
            self.rows[hole], self.rows[last] = self.rows[last], None
            self.builder.moved.append((last, hole, MoveDirectionality.UNIDIRECTIONAL))
            last -= 1
        del self.rows[num_reqs:]

    def swap(self, i: int, j: int) -> None:
        self.rows[i], self.rows[j] = self.rows[j], self.rows[i]
        self.builder.moved.append((i, j, MoveDirectionality.SWAP))


def run_v1(seed: int, steps: int, max_rows: int, vocab: int) -> tuple[int, int]:
    """Drives ours and vLLM's side by side through the same batch updates; returns (steps, bans)."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    ours = NGramGuardV1(None, CPU, False)
    ref = NGramPerReqLogitsProcessor(None, CPU, False)
    batch, waiting, bans = PersistentBatch(), [], 0
    for step in range(steps):
        live = [r for r in batch.rows if r is not None]
        for req in live:
            fate = rng.random()
            if fate < 0.02 or len(req.out) > 300:                  # finished
                batch.remove(req)
            elif fate < 0.035:                                     # preempted
                batch.remove(req)
                waiting.append(req)
        while batch.num_reqs < max_rows and rng.random() < 0.5:
            if waiting and rng.random() < 0.5:                     # resumed after preemption
                req = waiting.pop(rng.randrange(len(waiting)))
                if req.pending is not None:                        # the scheduler sends the real token
                    req.out[-1], req.pending = req.pending, None
                if req.async_mode:                                 # gpu_model_runner: a fresh list
                    req.out = list(req.out)
            else:
                req = Request(rng, vocab, async_mode=rng.random() < 0.5)
            batch.add(req)
        batch.condense()
        for _ in range(rng.choice([0, 0, 1, 2])):                 # _may_reorder_batch
            if batch.num_reqs >= 2:
                batch.swap(*rng.sample(range(batch.num_reqs), 2))
        update = batch.builder.get_and_reset(batch.num_reqs)
        ours.update_state(update)                                  # lists may still end in -1 here
        ref.update_state(update)
        rows = batch.rows
        for req in rows:                                           # update_async_output_token_ids
            if req.pending is not None:
                req.out[-1], req.pending = req.pending, None
        if not rows:
            continue
        logits = torch.randn(len(rows), vocab)
        got, want = ours.apply(logits.clone()), ref.apply(logits.clone())
        assert torch.equal(got, want), f"seed {seed} step {step}: rows {sorted({int(i) for i in (got != want).nonzero()[:, 0]})}"
        bans += int(torch.isinf(want).sum())
        for req in rows:                                           # sampling and bookkeeping
            if req.prefill_steps:
                req.prefill_steps -= 1
                continue
            token = next_token(rng, req.out, vocab)
            if req.async_mode:
                req.out.append(-1)
                req.pending = token
            else:
                req.out.append(token)
    return steps, bans


@pytest.mark.parametrize("seed,max_rows,vocab", [(1, 6, 12), (2, 24, 40), (3, 48, 300), (4, 12, 8)])
def test_v1_bans_exactly_what_vllms_guard_bans(seed, max_rows, vocab):
    steps, bans = run_v1(seed, steps=700, max_rows=max_rows, vocab=vocab)
    assert bans > steps        # the streams repeat enough that the guard bans on most steps


def test_v1_leaves_unguarded_rows_and_requests_alone():
    ours = NGramGuardV1(None, CPU, False)
    outs = [[3, 4, 3, 4, 3], [3, 4, 3, 4, 3], [3, 4, 3, 4, 3]]
    params = [SamplingParams(), SamplingParams(extra_args={"ngram_size": 1, "window_size": 10}),
              SamplingParams(extra_args={"ngram_size": 2, "window_size": 10})]
    builder = BatchUpdateBuilder(added=[(i, p, None, o) for i, (p, o) in enumerate(zip(params, outs))])
    ours.update_state(builder.get_and_reset(3))
    logits = torch.zeros(3, 6)
    ours.apply(logits)
    assert torch.equal(logits[:2], torch.zeros(2, 6))
    assert torch.isinf(logits[2]).tolist() == [False, False, False, False, True, False]   # 3 -> 4 seen


# V2: vLLM's own request state on the CPU ------------------------------------------------------------

@pytest.fixture
def v2_state(monkeypatch):
    """vllm.v1.worker.gpu.states.RequestState as Model Runner V2 builds it. On the CPU, is_uva_available()
    says True (platform_utils.py: `or current_platform.is_cpu()`) but pinned memory needs a CUDA driver,
    so the buffers fall back to NonUvaBuffer: plain tensors, the same fields and shapes."""
    import vllm.v1.worker.gpu.buffer_utils as buffer_utils
    from vllm.v1.worker.gpu.states import RequestState

    monkeypatch.setattr(buffer_utils, "is_uva_available", lambda: False)
    return RequestState(max_num_reqs=32, max_model_len=512, max_num_batched_tokens=512,
                        num_speculative_steps=0, vocab_size=64, device=CPU)


def flush(tensor) -> None:
    """StagedWriteTensor.apply_write (buffer_utils.py) without its Triton kernel: the same writes."""
    starts, ends = [0, *tensor._staged_write_cu_lens[:-1]], tensor._staged_write_cu_lens
    for index, start, lo, hi in zip(tensor._staged_write_indices, tensor._staged_write_starts, starts, ends):
        values = torch.tensor(tensor._staged_write_contents[lo:hi], dtype=tensor.gpu.dtype)
        if tensor.gpu.dim() == 1:
            tensor.gpu[index] = values[0]
        else:
            tensor.gpu[index, start:start + hi - lo] = values
    tensor.clear_staged_writes()


def v2_add(states, guard, req_id: str, prompt: list[int], out: list[int], params) -> int:
    """GPUModelRunner.add_requests (v1/worker/gpu/model_runner.py, add_requests): req_states.add_request
    with prefill_token_ids = prompt + output so far (a resumed request), sampler.add_request per processor,
    then req_states.apply_staged_writes() and sampler.apply_staged_writes()."""
    states.add_request(req_id, len(prompt), prompt + out, 0, 1000)
    slot = states.req_id_to_index[req_id]
    guard.add_request(slot, params)
    states.prompt_len.copy_to_uva()
    states.prefill_len.copy_to_uva()
    flush(states.total_len)
    flush(states.all_token_ids)
    guard.apply_staged_writes()
    return slot


def v2_context(slots: list[int], states):
    """Sampler.apply_sampling_params (v1/worker/gpu/sample/sampler.py) builds LogitsContext from the
    InputBatch; with no speculative decoding every request has one row, local position 0."""
    import numpy as np
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext

    idx = torch.tensor(slots, dtype=torch.int32)
    total = states.total_len.gpu[idx.long()]
    return LogitsContext(expanded_idx_mapping=idx, idx_mapping=idx, idx_mapping_np=np.array(slots, dtype=np.int32),
                         expanded_local_pos=torch.zeros(len(slots), dtype=torch.int32),
                         input_ids=states.all_token_ids.gpu[idx.long(), (total - 1).clamp(min=0).long()],
                         pos=(total - 1).clamp(min=0), seq_lens_upper_bound_np=total.numpy())


def post_update(states, slot: int, token: int) -> None:
    """_post_update_kernel (v1/worker/gpu/input_batch.py): all_token_ids[slot, total_len] = token, then
    total_len += 1, on the device."""
    total = int(states.total_len.gpu[slot])
    states.all_token_ids.gpu[slot, total] = token
    states.total_len.gpu[slot] = total + 1


def reference_row(req: Request, row: torch.Tensor) -> torch.Tensor:
    if not hasattr(req, "reference"):
        req.reference = NGramPerReqLogitsProcessor(None, CPU, False).new_req_logits_processor(req.params)
    return req.reference(req.out, row) if req.reference else row


def test_v2_bans_exactly_what_vllms_guard_bans(v2_state):
    from vllm.v1.worker.gpu.sample.logits_processor import build_custom_logits_processors

    [guard] = build_custom_logits_processors(None, v2_state, False, [NGramGuardV2])   # the real loader
    rng, vocab, steps, bans = random.Random(7), 40, 600, 0
    torch.manual_seed(7)
    live: dict[int, Request] = {}
    waiting: list[Request] = []
    serial = 0
    for step in range(steps):
        for slot, req in list(live.items()):                       # finish_requests: finished or preempted
            fate = rng.random()
            if fate < 0.03 or len(req.out) > 250:
                v2_state.remove_request(req.rid)
                del live[slot]
            elif fate < 0.05:
                v2_state.remove_request(req.rid)
                del live[slot]
                waiting.append(req)
        while len(live) < 20 and rng.random() < 0.5:
            if waiting and rng.random() < 0.5:
                req = waiting.pop()
            else:
                req = Request(rng, vocab, async_mode=False)
                req.rid, serial = f"r{serial}", serial + 1
                # the prompt repeats itself and shares tokens with the outputs: a guard reading it would differ
                req.prompt = [rng.randrange(vocab) for _ in range(rng.randint(1, 6))] * rng.randint(1, 4)
            live[v2_add(v2_state, guard, req.rid, req.prompt, req.out, req.params)] = req
        slots = list(live)
        rng.shuffle(slots)                                         # rows are reordered every step
        if not slots:
            continue
        logits = torch.randn(len(slots), vocab)
        want = torch.stack([reference_row(live[s], logits[i].clone())
                            for i, s in enumerate(slots)])
        got = guard.apply(logits.clone(), v2_context(slots, v2_state))
        assert torch.equal(got, want), f"step {step}"
        bans += int(torch.isinf(want).sum())
        for s in slots:
            req = live[s]
            if req.prefill_steps:
                req.prefill_steps -= 1
                continue
            token = next_token(rng, req.out, vocab)
            req.out.append(token)
            post_update(v2_state, s, token)
    assert bans > steps


# Loaders and the chooser ----------------------------------------------------------------------------

def test_v2_params_validator_takes_ours_and_rejects_vllms():
    """The issue's reproduction: InputProcessor builds this validator when Model Runner V2 is on."""
    from vllm.exceptions import VLLMValidationError
    from vllm.v1.worker.gpu.sample.logits_processor import build_custom_logits_processors_params_validator as check

    validate = check([NGramGuardV2])
    validate(SamplingParams(extra_args={"ngram_size": 30, "window_size": 90, "whitelist_token_ids": [5]}))
    with pytest.raises(VLLMValidationError, match="ngram_size"):
        validate(SamplingParams(extra_args={"ngram_size": 0}))
    with pytest.raises(ValueError, match="not a subclass"):
        check([NGramPerReqLogitsProcessor])
    with pytest.raises(ValueError, match="not a subclass"):
        check([NGramGuardV1])


def test_v1_loader_and_validator_take_ours():
    from vllm.exceptions import VLLMValidationError
    from vllm.v1.sample.logits_processor import build_logitsprocs, validate_logits_processors_parameters
    from vllm.config import VllmConfig

    procs = build_logitsprocs(VllmConfig(), CPU, False, False, [NGramGuardV1])
    assert any(isinstance(p, NGramGuardV1) for p in procs.non_argmax_invariant)
    with pytest.raises(VLLMValidationError, match="window_size"):
        validate_logits_processors_parameters([NGramGuardV1], SamplingParams(extra_args={"ngram_size": 3,
                                                                                         "window_size": -1}))


@pytest.mark.parametrize("env", [None, "0", "1"])
@pytest.mark.parametrize("triton", [False, True])
def test_prediction_matches_vllms_own_decision(monkeypatch, env, triton):
    import vllm.config.vllm as vllm_config_module
    from vllm.config import VllmConfig

    if env is None:
        monkeypatch.delenv(ngram.ENV_V2, raising=False)
    else:
        monkeypatch.setenv(ngram.ENV_V2, env)
    monkeypatch.setattr(vllm_config_module, "HAS_TRITON", triton)
    if env == "1" and not triton:                  # vLLM refuses the forced V2 itself
        with pytest.raises(ValueError, match="requires Triton"):
            VllmConfig()
        assert predict_v2_runner(ARCH) is True
        return
    assert predict_v2_runner(ARCH) is VllmConfig().use_v2_model_runner


@pytest.mark.parametrize("impl", ["ocr", "vllm"])
@pytest.mark.parametrize("env", [None, "0", "1"])
@pytest.mark.parametrize("triton", [False, True])
def test_each_runner_loads_the_class_it_is_given(monkeypatch, impl, env, triton):
    """Whatever the chooser returns is a class the model runner vLLM then uses accepts, and the guard is
    never dropped: vLLM's V1-only guard turns V2 off."""
    import vllm.config.vllm as vllm_config_module
    from vllm.config import VllmConfig
    from vllm.v1.sample.logits_processor import _load_custom_logitsprocs
    from vllm.v1.worker.gpu.sample.logits_processor import build_custom_logits_processors_params_validator

    monkeypatch.setattr(vllm_config_module, "HAS_TRITON", triton)
    if env is None:
        monkeypatch.delenv(ngram.ENV_V2, raising=False)
    else:
        monkeypatch.setenv(ngram.ENV_V2, env)
    cls, line = choose_guard(impl, ARCH)
    if os.environ.get(ngram.ENV_V2) == "1" and not triton:
        return                                     # vLLM refuses to start: test_prediction_matches_...
    if VllmConfig().use_v2_model_runner:
        build_custom_logits_processors_params_validator((cls,))
        assert cls is NGramGuardV2 and "Model Runner V2" in line
    else:
        assert _load_custom_logitsprocs((cls,)) == [cls]
        assert cls is (NGramPerReqLogitsProcessor if impl == "vllm" else NGramGuardV1)
    if impl == "vllm" and (env == "1" or (env is None and triton)):
        assert os.environ[ngram.ENV_V2] == "0" and f"{ngram.ENV_V2}=0" in line


def test_vllm_024_rules(monkeypatch):
    """vLLM 0.24 (read from its wheel): V2 by default only for DEFAULT_V2_MODEL_RUNNER_ARCHITECTURES, and
    its V2 sampler has no custom logits processors, so a forced V2 would run with no guard: V1 instead."""
    import vllm.config.vllm as vllm_config_module

    monkeypatch.setattr(vllm_config_module, "HAS_TRITON", True)
    monkeypatch.setattr(vllm_config_module, "DEFAULT_V2_MODEL_RUNNER_ARCHITECTURES",
                        frozenset({"LlamaForCausalLM", "Qwen3ForCausalLM"}), raising=False)
    monkeypatch.delenv(ngram.ENV_V2, raising=False)
    assert choose_guard("ocr", ARCH)[0] is NGramGuardV1 and ngram.ENV_V2 not in os.environ
    monkeypatch.setenv(ngram.ENV_V2, "1")
    monkeypatch.setattr(ngram, "NGramGuardV2", None)
    cls, line = choose_guard("ocr", ARCH)
    assert cls is NGramGuardV1 and os.environ[ngram.ENV_V2] == "0" and "=0 is set" in line


def ours_on_one_row(n: int, window: int, out: list[int], vocab: int = 5) -> torch.Tensor:
    guard = NGramGuardV1(None, CPU, False)
    params = SamplingParams(extra_args={"ngram_size": n, "window_size": window})
    guard.update_state(BatchUpdateBuilder(added=[(0, params, None, out)]).get_and_reset(1))
    return guard.apply(torch.zeros(1, vocab))[0]


@pytest.mark.parametrize("n,window,out,banned", [
    (1, 10, [1, 1, 1], []),              # n = 1: vLLM's prefix slice ids[-0:] is the whole output
    (3, 2, [1, 2, 1, 2], []),            # window shorter than n
    (3, 3, [1, 2, 2, 2], [2]),           # a window of exactly n holds one n-gram: the last n tokens
    (3, 3, [2, 1, 2, 1, 2], []),
    (4, 90, [1, 1, 1], []),              # output shorter than n
    (3, 4, [1, 2, 3, 1, 2], []),         # the earlier 1 2 -> 3 starts outside the window
    (3, 5, [1, 2, 3, 1, 2], [3]),
])
def test_edge_cases_ban_what_vllm_bans(n, window, out, banned):
    want = NoRepeatNGramLogitsProcessor(n, window)(list(out), torch.zeros(5))
    assert torch.isinf(want).nonzero().flatten().tolist() == banned
    assert torch.equal(ours_on_one_row(n, window, list(out)), want)


def test_bench_checks_every_timed_step(tmp_path):
    """bench/ngram_bench.py (run on GPUs by hand) runs here on a small case and finds no difference."""
    import importlib.util
    import json
    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("ngram_bench", ROOT / "bench" / "ngram_bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    assert bench.main(["--rows", "8", "--ngram", "4", "--window", "20", "--steps", "40", "--warmup", "2",
                       "--vocab", "64", "--json", str(out)]) == 0
    [case] = json.loads(out.read_text())["results"]
    assert case["mismatched_steps"] == 0 and case["banned_per_step"] > 0
    assert set(case["ms_per_step"]) == {"vllm", "ours_v1", "ours_v2"}


@pytest.mark.parametrize("flags,triton,want", [
    ([], False, "NGramGuardV1"),
    ([], True, "NGramGuardV2"),
    (["--ngram-impl", "vllm"], False, "NGramPerReqLogitsProcessor"),
    (["--ngram-impl", "vllm"], True, "NGramPerReqLogitsProcessor"),
])
def test_engine_kwargs_carry_the_chosen_guard(monkeypatch, flags, triton, want):
    """--ngram-impl reaches LLM(logits_processors=...) and the engine's log lines; vLLM's guard on a
    machine where V2 would run turns V2 off before the engine is built."""
    import vllm.config.vllm as vllm_config_module
    from ocr.config import parse_config
    from ocr.engines.vllm import Platform, engine_kwargs

    monkeypatch.setattr(vllm_config_module, "HAS_TRITON", triton)
    monkeypatch.delenv(ngram.ENV_V2, raising=False)
    cfg = parse_config(["--input-dir", ".", "--output-dir", "/tmp/x", *flags])
    kw, notes = engine_kwargs(cfg, Platform("cuda", fp8_kv=True, capability=(9, 0)))
    assert [c.__name__ for c in kw["logits_processors"]] == [want]
    assert any("n-gram guard on" in n for n in notes)
    assert os.environ.get(ngram.ENV_V2) == ("0" if flags and triton else None)
    off = parse_config(["--input-dir", ".", "--output-dir", "/tmp/x", "--ngram-size", "0", *flags])
    assert "logits_processors" not in engine_kwargs(off, Platform("cpu", fp8_kv=False))[0]
