"""DeepSeek-OCR in Hugging Face transformers, in this process: the engine of run_pdf_ocr.py (no vLLM).

The same Engine protocol as the vLLM engine, so render, blank check, journal, resume and report are shared.
Static batches: submit() queues pages, poll() runs up to --batch-pages of them through one generate() call
and returns them all. Greedy decoding with DeepSeek's HF infer() settings: no_repeat_ngram_size over the
whole sequence (20), at most --max-tokens new tokens, stop at EOS (or a new chat turn).

- DeepSeek-OCR-2: transformers' own deepseek_ocr2 classes; either config layout (see ocr/models.py).
- DeepSeek-OCR (v1): only through the checkpoint's own code (modeling_deepseekocr.py, its infer()), which
  needs --trust-remote-code and a CUDA GPU; one page per call.
"""

from __future__ import annotations

import importlib.util
import logging
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from .. import models
from ..checkpoint import SetupError, resolve_model
from ..cli import Runner, main as cli_main
from ..config import Config, RunnerSpec, foreign_flags, parse_config
from ..models import STOP_STRINGS
from ..records import EngineOutput, PageRequest
from .base import EngineCaps, Failure
from .vision_modes import GUNDAM

log = logging.getLogger(__name__)
STOP_TAIL_TOKENS = 8           # new tokens decoded per step to look for a stop string
# run_pdf_ocr.py: the same fields as the vLLM runner; defaults that differ from its own: static batches must stay
# small (a batch runs as long as its longest page), and DeepSeek's HF infer() uses no_repeat_ngram_size=20.
SPEC = RunnerSpec(
    prog="run_pdf_ocr.py",
    description="OCR every PDF under --input-dir into Markdown with DeepSeek-OCR in Hugging Face transformers, "
                "in one process (no vLLM): the reference for run_pdf_ocr_vllm.py. Same flags and outputs; "
                "--batch-pages is the number of pages per generate() call; vLLM-only flags are accepted and "
                "ignored with a warning.",
    engine="hf",
    defaults={"batch_pages": 8, "ngram_size": 20},
    help={  # where a shared flag means something else here
        "batch_pages": "pages per generate() call (static batches: a batch takes as long as its longest page)",
        "ngram_size": "no_repeat_ngram_size of generate(), over the whole sequence as in DeepSeek's HF infer() "
                      "(0 turns it off)",
        "trust_remote_code": "allow DeepSeek-OCR (v1) to run its own modeling_deepseekocr.py (CUDA only); "
                             "DeepSeek-OCR-2 is built into transformers and needs no code of its own",
    },
    foreign="ignore",
)
PROG = SPEC.prog


@dataclass(frozen=True)
class HfPlan:
    """Everything decided before the model loads: which checkpoint, where, how to decode."""
    checkpoint: models.Checkpoint
    device: str                   # "cuda" | "cpu"
    dtype: str                    # "bfloat16" on GPUs, "float32" on CPUs
    batch_pages: int
    max_tokens: int
    ngram_size: int
    notes: tuple[str, ...] = ()   # logged once logging is set up


@dataclass(frozen=True)
class Generated:
    text: str
    tokens: int                   # generated tokens, EOS included
    finish_reason: str            # "stop" (EOS or a stop string) | "length" (hit --max-tokens)


class Backend(Protocol):
    special_tokens: tuple[str, ...]

    def generate(self, requests: Sequence[PageRequest], cancelled: threading.Event) -> list[Generated]: ...


# --- planning: the checks that end a run before it starts (one error line, exit code 2) ------------------
def default_device() -> tuple[str, str]:
    import torch
    return ("cuda", "bfloat16") if torch.cuda.is_available() else ("cpu", "float32")


def parse(argv: Sequence[str]) -> Config:
    """This runner's command line: the vLLM runner's fields with this runner's defaults and help."""
    return parse_config(list(argv), SPEC)


def ignored_flags(cfg: Config) -> list[str]:
    """vLLM-only flags given away from their defaults: this runner ignores them (with a warning)."""
    return foreign_flags(cfg, SPEC.engine)


def plan(cfg: Config, device: tuple[str, str] | None = None) -> HfPlan:
    """Which model and how: refuses what cannot run here before anything is loaded or rendered."""
    checkpoint = models.inspect(cfg.model)
    family = checkpoint.family
    if not family.transformers_native and not cfg.trust_remote_code:
        raise SetupError(
            f"{cfg.model} is {family.name}, which transformers runs only with the checkpoint's own Python code "
            f"(modeling_deepseekocr.py): pass --trust-remote-code to allow it, or use run_pdf_ocr_vllm.py, "
            f"or --model {models.DEEPSEEK_OCR2.hub_id} (built into transformers)")
    if family.transformers_native and importlib.util.find_spec("transformers.models.deepseek_ocr2") is None:
        import transformers
        raise SetupError(f"transformers {transformers.__version__} has no DeepSeek-OCR-2 (deepseek_ocr2): "
                         f"upgrade it (pip install -U transformers)")
    checkpoint = models.with_local(checkpoint, resolve_model(cfg.model))
    device_name, dtype = device or default_device()
    notes = [f"{family.name} ({checkpoint.layout} layout) in transformers on {device_name}, {dtype}, "
             f"{cfg.batch_pages} pages per generate(), no_repeat_ngram_size={cfg.ngram_size}"]
    if not family.transformers_native:
        if not checkpoint.has_remote_code:
            raise SetupError(f"{cfg.model}: config.json names no code of its own (auto_map) or the folder has "
                             f"no .py files, so --trust-remote-code has nothing to run; use the full "
                             f"{family.hub_id} checkpoint")
        if device_name != "cuda":
            raise SetupError(f"{family.name}'s own code (infer()) runs only on a CUDA GPU; none is visible here")
        notes.append(f"running {family.name}'s own code from {checkpoint.path} (--trust-remote-code)")
    if ignored := ignored_flags(cfg):
        notes.append(f"ignored by the transformers runner (vLLM only): {' '.join(ignored)}")
    return HfPlan(checkpoint, device_name, dtype, cfg.batch_pages, cfg.max_tokens, cfg.ngram_size, tuple(notes))


# --- turning generated ids into a page ---------------------------------------------------------------------
def split_generated(ids: Sequence[int], eos_id: int | None, pad_id: int | None,
                    max_new_tokens: int) -> tuple[list[int], str]:
    """A row of generate()'s new tokens: the page's own tokens (EOS included) and why it ended. Rows of a
    batch that finish early are filled with the pad id (which may be the EOS id)."""
    ids = list(ids)
    if eos_id is not None and eos_id in ids:
        return ids[:ids.index(eos_id) + 1], "stop"
    end = len(ids)
    while end and pad_id is not None and ids[end - 1] == pad_id:
        end -= 1
    return ids[:end], "length" if end >= max_new_tokens else "stop"


def cut_at_stop_string(text: str) -> str:
    """vLLM leaves a matched stop string out of the text; so does this engine."""
    cut = min((i for s in STOP_STRINGS if (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]


def to_page(tokenizer: Any, ids: Sequence[int], max_new_tokens: int) -> Generated:
    own, finish = split_generated(ids, tokenizer.eos_token_id, tokenizer.pad_token_id, max_new_tokens)
    body = own[:-1] if own and own[-1] == tokenizer.eos_token_id else own
    return Generated(cut_at_stop_string(tokenizer.decode(body, skip_special_tokens=False)), len(own), finish)


def _stopping(cancelled: threading.Event, tokenizer: Any = None, prompt_len: int = 0) -> Any:
    """generate() stops at once when the engine is closed (a hung engine is replaced; its thread ends), and a
    row stops when its text starts a new chat turn (STOP_STRINGS, as the vLLM engine does). transformers' own
    stop_strings needs a tokenizer it can take apart (byte-level BPE); this reads the decoded tail instead."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Stop(StoppingCriteria):
        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
            if cancelled.is_set() or tokenizer is None:
                done = [cancelled.is_set()] * input_ids.shape[0]
            else:
                tails = input_ids[:, prompt_len:][:, -STOP_TAIL_TOKENS:].tolist()
                done = [any(s in tokenizer.decode(t, skip_special_tokens=False) for s in STOP_STRINGS)
                        for t in tails]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([Stop()])


# --- backends ------------------------------------------------------------------------------------------------
class Ocr2Transformers:
    """DeepSeek-OCR-2 through transformers' deepseek_ocr2 classes, pages batched with left padding."""

    def __init__(self, p: HfPlan):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer
        from transformers import DeepseekOcr2ImageProcessorPil, DeepseekOcr2Processor

        ckpt, fam = p.checkpoint, p.checkpoint.family
        path = str(ckpt.path)
        if ckpt.layout == "transformers":
            processor, config = AutoProcessor.from_pretrained(path), None
        else:   # deepseek-ai's layout: transformers' processor and config, built from what the folder holds
            config = models.ocr2_transformers_config(ckpt)
            tokenizer = AutoTokenizer.from_pretrained(path, config=config)   # not config.json's deepseek_vl_v2
            processor = DeepseekOcr2Processor(image_processor=DeepseekOcr2ImageProcessorPil(), tokenizer=tokenizer)
            config.image_token_id = processor.image_token_id
        self.tokenizer = tok = processor.tokenizer
        tok.padding_side = "left"
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        # DeepSeek's own runners put BOS before the prompt; add it where the tokenizer does not.
        probe = tok("x")["input_ids"]
        self.bos = "" if probe and probe[0] == tok.bos_token_id else (tok.bos_token or "")
        self.processor = processor
        # The official settings, whatever the checkpoint's processor file says: 1024 global view, 768 tiles.
        self.image_kwargs = dict(size={"height": fam.base_size, "width": fam.base_size}, tile_size=fam.tile_size,
                                 crop_to_patches=True, min_patches=fam.crops[0], max_patches=fam.crops[1])
        self.dtype = getattr(torch, p.dtype)
        self.device = p.device
        kwargs = {"dtype": self.dtype} if config is None else {"dtype": self.dtype, "config": config}
        self.model = AutoModelForImageTextToText.from_pretrained(path, **kwargs).to(p.device).eval()
        self.max_tokens, self.ngram_size = p.max_tokens, p.ngram_size
        self.special_tokens = tuple(tok.all_special_tokens)

    def generate(self, requests: Sequence[PageRequest], cancelled: threading.Event) -> list[Generated]:
        import torch

        inputs = self.processor(images=[r.image for r in requests], text=[self.bos + r.prompt for r in requests],
                                padding=True, return_tensors="pt", **self.image_kwargs)
        inputs = inputs.to(self.device)
        for key in ("pixel_values", "pixel_values_local"):
            if key in inputs:
                inputs[key] = inputs[key].to(self.dtype)
        with torch.inference_mode():
            out = self.model.generate(
                **inputs, do_sample=False, max_new_tokens=self.max_tokens, no_repeat_ngram_size=self.ngram_size,
                eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.tokenizer.pad_token_id,
                stopping_criteria=_stopping(cancelled, self.tokenizer, inputs["input_ids"].shape[1]))
        new = out[:, inputs["input_ids"].shape[1]:].tolist()
        return [to_page(self.tokenizer, row, self.max_tokens) for row in new]


class Ocr1RemoteCode:
    """DeepSeek-OCR (v1) through its own infer() from modeling_deepseekocr.py (trust_remote_code), one page
    per call. infer() fixes its own decoding settings (8192 new tokens, no_repeat_ngram_size 35 in eval
    mode); they are replaced by this run's on the way to generate(), where the new tokens are read too."""

    def __init__(self, p: HfPlan):
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = str(p.checkpoint.path)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
            model = AutoModel.from_pretrained(path, trust_remote_code=True, use_safetensors=True)
        except Exception as exc:   # remote code written for transformers 4.46 may not import on newer ones
            import transformers
            raise SetupError(f"{p.checkpoint.family.name}'s own code did not load with transformers "
                             f"{transformers.__version__} ({type(exc).__name__}: {exc}); it was written for "
                             f"transformers 4.46") from exc
        self.model = model.eval().to(p.device, dtype=getattr(torch, p.dtype))
        self.family = p.checkpoint.family
        self.max_tokens, self.ngram_size = p.max_tokens, p.ngram_size
        self.special_tokens = tuple(self.tokenizer.all_special_tokens)

    def generate(self, requests: Sequence[PageRequest], cancelled: threading.Event) -> list[Generated]:
        return [self._one(r, cancelled) for r in requests]

    def _one(self, request: PageRequest, cancelled: threading.Event) -> Generated:
        new_ids: list[int] = []
        original = self.model.generate

        def generate(*args: Any, **kwargs: Any) -> Any:
            prompt = args[0] if args else kwargs["input_ids"]
            kwargs.update(do_sample=False, max_new_tokens=self.max_tokens, no_repeat_ngram_size=self.ngram_size,
                          eos_token_id=self.tokenizer.eos_token_id,
                          stopping_criteria=_stopping(cancelled, self.tokenizer, prompt.shape[-1]))
            kwargs.pop("temperature", None)
            out = original(*args, **kwargs)
            new_ids.extend(out[0, prompt.shape[-1]:].tolist())
            return out

        with tempfile.TemporaryDirectory(prefix="ocr-page-") as tmp:
            image = Path(tmp) / "page.png"
            request.image.save(image)
            self.model.generate = generate
            try:
                self.model.infer(self.tokenizer, prompt=request.prompt, image_file=str(image), output_path=tmp,
                                 base_size=self.family.base_size, image_size=self.family.tile_size,
                                 crop_mode=True, test_compress=False, save_results=False, eval_mode=True)
            finally:
                del self.model.generate          # the class's own method again
        return to_page(self.tokenizer, new_ids, self.max_tokens)


def load_backend(p: HfPlan) -> Backend:
    return Ocr2Transformers(p) if p.checkpoint.family.transformers_native else Ocr1RemoteCode(p)


# --- the engine ----------------------------------------------------------------------------------------------
class HfEngine:
    """Pages queue on submit(); each poll() generates one batch of up to batch_pages and returns all of it.

    A batch that raises (out of memory, a page the processor rejects) is run again page by page, so only the
    page at fault comes back with an error (the pipeline retries it once, then writes a failure stub)."""

    def __init__(self, p: HfPlan, backend_factory: Callable[[HfPlan], Backend] = load_backend):
        for note in p.notes:
            log.log(logging.WARNING if note.startswith("ignored") else logging.INFO, "engine: %s", note)
        start = time.perf_counter()
        self.backend: Backend | None = backend_factory(p)
        self.batch_pages = p.batch_pages
        # transformers' own n-gram processor (no window); one vision mode; greedy only (no RetrySampling)
        self.caps = EngineCaps(special_tokens=tuple(self.backend.special_tokens), vision_modes=(GUNDAM.name,),
                               ngram=(p.ngram_size, 0), retry_sampling=False,
                               load_seconds=time.perf_counter() - start,
                               guard_active=True if p.ngram_size > 0 else None)
        self._device = p.device
        self._queue: deque[PageRequest] = deque()
        self._running: list[PageRequest] = []
        self._cancelled = threading.Event()
        log.info("engine: ready in %.1f s", self.caps.load_seconds)

    def submit(self, request: PageRequest) -> None:
        self._queue.append(request)

    def poll(self) -> list[EngineOutput]:
        backend = self.backend
        if not self._queue or backend is None:
            return []
        batch = [self._queue.popleft() for _ in range(min(self.batch_pages, len(self._queue)))]
        self._running = batch
        try:
            results = self._generate(backend, batch)
        finally:
            self._running = []
        if self._cancelled.is_set():           # closed meanwhile: these pages were handed back as lost
            return []
        return [r.answer(g.text, g.tokens, g.finish_reason) if isinstance(g, Generated)
                else r.answer("", 0, None, *g) for r, g in zip(batch, results)]

    def _generate(self, backend: Backend, batch: list[PageRequest]) -> list[Generated | tuple[Failure, str | None]]:
        """Each page's Generated, or (failure, detail) for a page that could not be generated."""
        try:
            return list(backend.generate(batch, self._cancelled))
        except Exception as exc:
            if self._cancelled.is_set():
                return [(Failure.ENGINE_CLOSED, None)] * len(batch)
            self._free_memory()
            if len(batch) == 1:
                log.warning("page %d: generate failed: %s: %s", batch[0].key.page, type(exc).__name__, exc)
                return [(Failure.ENGINE_ERROR, f"{type(exc).__name__}: {exc}")]
            log.warning("a batch of %d pages failed (%s: %s); running them one by one", len(batch),
                        type(exc).__name__, exc)
            return [g for request in batch for g in self._generate(backend, [request])]

    def _free_memory(self) -> None:
        if self._device == "cuda":
            import torch
            torch.cuda.empty_cache()

    def in_flight(self) -> int:
        return len(self._queue) + len(self._running)

    def alive(self) -> bool:
        """In this process: alive until closed (a hung generate() is caught by the supervisor's timeout)."""
        return True

    def lost_requests(self) -> list[PageRequest]:
        """The pages not returned yet (queued or in the batch that was running), for requeueing."""
        lost = self._running + list(self._queue)
        self._running, self._queue = [], deque()
        return lost

    def close(self) -> None:
        """Stop a running generate() at its next step and drop the model (freed once that step returns)."""
        self._cancelled.set()
        self.backend = None
        self._free_memory()


# --- the runner -------------------------------------------------------------------------------------------------
def engine_factory(cfg: Config) -> Callable[[], HfEngine]:
    """Plans before any work (one error line for what cannot run here), then builds the engine on demand."""
    p = plan(cfg)
    return lambda: HfEngine(p)


RUNNER = Runner(SPEC, engine_factory)


def main(argv: Sequence[str] | None = None) -> int:
    """run_pdf_ocr.py: the shared command line (ocr.cli) over this runner's spec and engine."""
    return cli_main(argv, runner=RUNNER)
