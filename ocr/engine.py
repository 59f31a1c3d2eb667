"""DeepSeek-OCR in an in-process vLLM engine: the engine recipe, platform defaults, continuous batching."""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import dataclasses

from . import large_mode
from .config import UsageError
from .models import DEEPSEEK_OCR, PROMPTS, Checkpoint, inspect as inspect_model  # noqa: F401  (PROMPTS re-exported)
from .records import EngineOutput, PageRequest

log = logging.getLogger(__name__)

# The n-gram guard must not stop long tables from repeating their cell tags.
TABLE_TAGS = ("<td>", "</td>", "<tr>", "</tr>", "<th>", "</th>", "<table>", "</table>")
# A new chat turn means the page is over; the model sometimes starts one instead of stopping.
STOP_STRINGS = ["<|User|>", "<|Assistant|>", "<｜User｜>", "<｜Assistant｜>"]
MODEL_HEADS = 10          # DeepSeek-OCR's language model: tensor parallelism must divide this
MAX_MODEL_LEN = 8192


class EngineDead(RuntimeError):
    """The engine process died or hung; every request in flight is lost and the engine must be rebuilt."""


def dead_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean the engine is gone: ours, and vLLM's own (whichever version is installed)."""
    try:
        from vllm.v1.engine.exceptions import EngineDeadError
    except ImportError:
        return (EngineDead,)
    return (EngineDead, EngineDeadError)


class Engine(Protocol):
    """What the pipeline needs from an engine (vLLM here; scripted doubles in tests)."""

    def submit(self, request: PageRequest) -> None: ...
    def poll(self) -> list[EngineOutput]: ...
    def in_flight(self) -> int: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class Platform:
    kind: str                     # "cuda", "cpu", ...
    fp8_kv: bool
    capability: tuple[int, int] | None = None   # CUDA compute capability


def detect_platform() -> Platform:
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        return Platform("cpu", fp8_kv=False)
    cap = None
    if current_platform.is_cuda():
        c = current_platform.get_device_capability()
        cap = (c.major, c.minor) if c else None
    # FP8 KV cache needs Ada (8.9) or newer on NVIDIA.
    return Platform(current_platform.device_type, fp8_kv=bool(cap and cap >= (8, 9)), capability=cap)


def check_tensor_parallel(size: int, heads: int = MODEL_HEADS, model: str = "DeepSeek-OCR") -> None:
    if heads % size:
        divisors = [d for d in range(1, heads + 1) if heads % d == 0]
        raise UsageError(f"--tensor-parallel-size {size} cannot split {model}'s {heads} attention "
                         f"heads; use one of {divisors}, or one worker per GPU (--num-shards)")


def with_model_defaults(cfg: Any) -> tuple[Any, Checkpoint]:
    """The config with the model family's defaults where the flags left them open (n-gram guard), and the
    checkpoint it names (a local folder by now, or a known Hugging Face id)."""
    checkpoint = inspect_model(cfg.model)
    size, window = checkpoint.ngram(cfg.ngram_size, cfg.ngram_window)
    return dataclasses.replace(cfg, ngram_size=size, ngram_window=window), checkpoint


def engine_kwargs(cfg: Any, platform: Platform) -> tuple[dict[str, Any], list[str]]:
    """vLLM LLM(...) keyword arguments for this config and platform, and the choices worth logging."""
    cfg, checkpoint = with_model_defaults(cfg)
    family = checkpoint.family
    check_tensor_parallel(cfg.tensor_parallel_size, checkpoint.attention_heads, family.name)
    guard = f"n-gram guard {cfg.ngram_size}/{cfg.ngram_window}" if cfg.ngram_size > 0 else "no n-gram guard"
    notes = [f"model: {family.name} ({family.vllm_architecture}), {guard}"]
    kv = cfg.kv_cache_dtype
    if kv.startswith("fp8") and not platform.fp8_kv:
        notes.append(f"kv_cache_dtype {kv} is not supported on {platform.kind}: using auto")
        kv = "auto"
    # The architecture, the config class vLLM reads, and the real head size (transformers sets head_dim =
    # qk_rope_head_dim = 0 for these models; vLLM 0.24 then crashes on GPUs: bench/GPU_RESULTS.md).
    overrides = checkpoint.vllm_hf_overrides()
    head_dim = overrides.get("text_config", {}).get("head_dim")
    kw: dict[str, Any] = dict(
        model=cfg.model,
        hf_overrides=overrides,
        max_model_len=MAX_MODEL_LEN,
        max_num_seqs=cfg.seqs,
        limit_mm_per_prompt={"image": 1},
        enable_prefix_caching=False,   # every page is a different image: nothing to share
        mm_processor_cache_gb=0,       # each image is seen once; caching only costs memory
        kv_cache_dtype=kv,
        tensor_parallel_size=cfg.tensor_parallel_size,
        enforce_eager=cfg.enforce_eager,
        trust_remote_code=False,
        load_format=cfg.load_format,
    )
    if cfg.ngram_size > 0:
        from vllm.model_executor.models.deepseek_ocr import NGramPerReqLogitsProcessor
        kw["logits_processors"] = [NGramPerReqLogitsProcessor]
    for key in ("block_size", "attention_backend", "mm_encoder_tp_mode"):
        if getattr(cfg, key):
            kw[key] = getattr(cfg, key)
    if cfg.enable_fp8_weights:
        kw["quantization"] = "fp8"
    if platform.kind == "cpu":
        # bfloat16 is emulated on AVX2; vision-encoder memory profiling grows past 20 GB on CPU.
        kw.update(dtype="float32", skip_mm_profiling=True, max_num_batched_tokens=4096)
        notes.append("CPU platform: float32, no multimodal profiling, small KV space")
    else:
        kw.update(dtype="bfloat16", gpu_memory_utilization=cfg.gpu_memory_utilization)
    notes.append(f"head_dim={head_dim} kv_cache_dtype={kv} block_size={kw.get('block_size', 'vLLM default')} "
                 f"attention={kw.get('attention_backend', 'vLLM default')} eager={cfg.enforce_eager}")
    return kw, notes


def sampling_params(cfg: Any, whitelist: set[int], max_tokens: int | None = None, retry: Any = None) -> Any:
    """Greedy decoding with the n-gram guard; `retry` (ocr.runaway.RetrySampling) swaps in its
    temperature, seed and guard for a runaway page's second try."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    size, window = (retry.ngram_size, retry.window) if retry else (cfg.ngram_size, cfg.ngram_window)
    extra = None
    if size > 0:
        extra = {"ngram_size": size, "window_size": window, "whitelist_token_ids": sorted(whitelist)}
    sampling = dict(temperature=retry.temperature, top_p=retry.top_p, seed=retry.seed) if retry else \
        dict(temperature=0.0)
    return SamplingParams(**sampling, max_tokens=max_tokens or cfg.max_tokens, skip_special_tokens=False,
                          stop=STOP_STRINGS, extra_args=extra, output_kind=RequestOutputKind.FINAL_ONLY)


def table_tag_ids(tokenizer: Any) -> set[int]:
    unk = getattr(tokenizer, "unk_token_id", None)
    ids = tokenizer.convert_tokens_to_ids(list(TABLE_TAGS))
    return {i for i in ids if i is not None and i != unk}


class VllmEngine:
    """Keeps up to max_num_seqs pages in the engine and hands back each page as soon as it finishes."""

    def __init__(self, cfg: Any, platform: Platform | None = None):
        self._pid_file = cfg.state_dir / f"engine{cfg.shard_suffix}.pids"
        reap_stale_engine(self._pid_file)
        if (platform or detect_platform()).kind == "cpu":
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")   # GiB; the default takes too much here
        from vllm import LLM

        cfg, checkpoint = with_model_defaults(cfg)
        self.cfg = cfg
        self.ngram = (cfg.ngram_size, cfg.ngram_window)
        self.retry_sampling = True
        # Large-mode requests need the vision-modes plugin in every vLLM process: register it before LLM().
        # It patches DeepSeek-OCR's own vLLM classes; DeepSeek-OCR-2's processor is another one.
        large = checkpoint.family is DEEPSEEK_OCR and large_mode.enable(cfg.state_dir)
        self.vision_modes = ("gundam", "large") if large else ("gundam",)
        self.platform = platform or detect_platform()
        kwargs, notes = engine_kwargs(cfg, self.platform)
        for note in notes:
            log.info("engine: %s", note)
        start = time.perf_counter()
        before = _child_pids()
        self.llm = LLM(**kwargs)
        self.load_seconds = time.perf_counter() - start
        # The engine core and its workers: reaped on close even if the core is hung or already dead.
        self._procs = [p for p in _children() if p.pid not in before]
        _write_pid_file(self._pid_file, self._procs)
        self.tokenizer = self.llm.get_tokenizer()
        self.special_tokens = tuple(self.tokenizer.all_special_tokens)
        self._whitelist = table_tag_ids(self.tokenizer)
        self._params = sampling_params(cfg, self._whitelist)
        self._retry_params: dict[Any, Any] = {}
        self._tasks = self.llm.llm_engine.get_supported_tasks()
        self._requests: dict[str, PageRequest] = {}       # submitted: being prepared or in the core
        # vLLM's input processor (~0.15-0.25 s of CPU per page) runs in these threads, not serially in
        # LLMEngine.add_request: serial, it capped the runner at ~6 pages/s on an H100 (GPU_RESULTS.md).
        self._prep = ThreadPoolExecutor(max(1, cfg.preprocess_workers), thread_name_prefix="vllm-input")
        self._preparing: deque[tuple[str, PageRequest, Future]] = deque()
        self._in_core = 0
        self.guard_active = None if cfg.ngram_size <= 0 else self._guard_is_active()
        if self.guard_active is False:
            log.warning("engine: the n-gram repetition guard has no effect on this vLLM version; "
                        "looping pages will run to --max-tokens")
        log.info("engine: ready in %.1f s", self.load_seconds)

    def _guard_is_active(self) -> bool:
        """With ngram_size=2 no token pair may repeat within the window; an unguarded model loops at once.

        (ngram_size=1 cannot be used: the guard's prefix slice ids[-0:] is then the whole output.)"""
        from vllm import SamplingParams

        probe = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True,
                               extra_args={"ngram_size": 2, "window_size": 24})
        ids = list(self.llm.generate(["the of and"], probe, use_tqdm=False)[0].outputs[0].token_ids)
        pairs = list(zip(ids, ids[1:]))
        return len(set(pairs)) == len(pairs)

    def submit(self, request: PageRequest) -> None:
        rid = request.request_id
        self._requests[rid] = request
        self._preparing.append((rid, request, self._prep.submit(self._process_inputs, rid, request)))

    def _params_for(self, request: PageRequest) -> Any:
        if request.sampling is None:
            return self._params
        if request.sampling not in self._retry_params:
            self._retry_params[request.sampling] = sampling_params(self.cfg, self._whitelist, retry=request.sampling)
        return self._retry_params[request.sampling]

    def _process_inputs(self, rid: str, request: PageRequest) -> Any:
        prompt = large_mode.engine_prompt(request.prompt, request.image, large_mode.MODES[request.vision])
        return self.llm.llm_engine.input_processor.process_inputs(rid, prompt, self._params_for(request),
                                                                  supported_tasks=self._tasks)

    def _feed_core(self) -> list[EngineOutput]:
        """Prepared pages go into the engine core in order; with the core idle, wait for the first one.
        A page the input processor rejects fails alone."""
        failed = []
        while self._preparing and (self._preparing[0][2].done() or self._in_core == 0):
            rid, req, future = self._preparing.popleft()
            try:
                prepared = future.result()
            except Exception as exc:
                self._requests.pop(rid, None)
                failed.append(req.answer("", 0, None, error=f"input processing failed: {type(exc).__name__}: {exc}"))
                continue
            self.llm.llm_engine.add_request(rid, prepared, self._params_for(req))
            self._in_core += 1
        return failed

    def poll(self) -> list[EngineOutput]:
        done = self._feed_core()
        if self._in_core == 0:
            return done
        try:
            outputs = self.llm.llm_engine.step()
        except Exception as exc:
            raise EngineDead(f"{type(exc).__name__}: {exc}") from exc
        for out in outputs:
            if not out.finished:
                continue
            req = self._requests.pop(out.request_id, None)
            if req is None:
                continue
            self._in_core -= 1
            comp = out.outputs[0] if out.outputs else None
            done.append(req.answer(comp.text if comp else "", len(comp.token_ids) if comp else 0,
                                   comp.finish_reason if comp else None))
        return done

    def in_flight(self) -> int:
        return len(self._requests)

    def alive(self) -> bool:
        """False once any engine process has exited: vLLM's sync client can then block forever."""
        return all(p.is_running() and p.status() != "zombie" for p in self._procs)

    def lost_requests(self) -> list[PageRequest]:
        """The requests in flight when the engine died, for requeueing."""
        lost = list(self._requests.values())
        for _, _, future in self._preparing:
            future.cancel()
        self._requests.clear()
        self._preparing.clear()
        self._in_core = 0
        return lost

    def close(self) -> None:
        """Shut the engine down and make sure its processes are gone (GPU memory is freed with them)."""
        llm, self.llm = getattr(self, "llm", None), None
        if getattr(self, "_prep", None):
            self._prep.shutdown(wait=False, cancel_futures=True)
        if llm is not None:
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception as exc:  # a dead or hung core often fails its own shutdown
                log.debug("engine shutdown: %s", exc)
        _reap(getattr(self, "_procs", []))
        self._pid_file.unlink(missing_ok=True)

    def process_ids(self) -> list[int]:
        return [p.pid for p in getattr(self, "_procs", [])]


def _children() -> list:
    import psutil
    return psutil.Process().children(recursive=True)


def _child_pids() -> set[int]:
    return {p.pid for p in _children()}


def _reap(procs: list, grace_s: float = 10.0) -> None:
    import psutil
    alive = [p for p in procs if p.is_running()]
    for p in alive:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(alive, timeout=grace_s)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace_s)


def _write_pid_file(path: Any, procs: list) -> None:
    """Who owns which engine processes, so the next run can reap them if this runner is SIGKILLed."""
    import json
    import psutil
    path.parent.mkdir(parents=True, exist_ok=True)
    me = psutil.Process()
    path.write_text(json.dumps({"runner": [me.pid, me.create_time()],
                                "engine": [[p.pid, p.create_time()] for p in procs]}))


def reap_stale_engine(path: Any) -> None:
    """Kill engine processes left behind by a runner that was SIGKILLed (they hold GPU memory)."""
    import json
    import psutil
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if _same_process(*record["runner"]):
        return                                   # its runner is alive: another worker's engine
    stale = [psutil.Process(pid) for pid, created in record["engine"] if _same_process(pid, created)]
    if stale:
        log.warning("engine: killing %d engine processes left by a killed run (pids %s)", len(stale),
                    [p.pid for p in stale])
        _reap(stale, grace_s=5.0)
    path.unlink(missing_ok=True)


def _same_process(pid: int, created: float) -> bool:
    import psutil
    try:
        return abs(psutil.Process(pid).create_time() - created) < 1e-3
    except psutil.Error:
        return False

