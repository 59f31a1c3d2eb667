"""run_pdf_ocr.py: the transformers engine (batches, finish reasons, faults, cancel), its set-up refusals, the
whole pipeline on it with a scripted backend, and (-m real_engine) DeepSeek-OCR-2 on CPU with a tiny checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import ROOT, load_report
from ocr.engines import hf as hf_engine
from ocr.checkpoint import SetupError
from ocr.engines.hf import Generated, HfEngine, HfPlan, split_generated
from ocr.models import DEEPSEEK_OCR, DEEPSEEK_OCR2, Checkpoint
from ocr.records import PageKey, PageRequest
from pdfgen import ENGLISH, GREEK, make_pdf

sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
RUNNER = ROOT / "run_pdf_ocr.py"
V2 = Checkpoint("tiny", DEEPSEEK_OCR2, "original")


def hf_plan(batch_pages: int = 3, max_tokens: int = 16, checkpoint: Checkpoint = V2) -> HfPlan:
    return HfPlan(checkpoint, "cpu", "float32", batch_pages, max_tokens, 20)


def request(page: int, attempt: int = 0, pdf: int = 0) -> PageRequest:
    return PageRequest(PageKey(pdf, page), image=None, prompt="<image>\nFree OCR.", attempt=attempt)


class FakeBackend:
    """Answers each page with its number; a page in `bad` makes any batch holding it raise."""
    special_tokens = ("<｜end▁of▁sentence｜>", "<image>")

    def __init__(self, bad: set[int] = frozenset(), block: threading.Event | None = None):
        self.bad, self.block = bad, block
        self.batches: list[list[int]] = []

    def generate(self, requests, cancelled):
        self.batches.append([r.key.page for r in requests])
        if self.block is not None:
            self.block.set()
            cancelled.wait(10)
            return [Generated("late", 1, "stop") for _ in requests]
        if self.bad & {r.key.page for r in requests}:
            raise RuntimeError("CUDA out of memory")
        return [Generated(f"page {r.key.page}", 3, "length" if r.key.page == 2 else "stop") for r in requests]


def engine(backend: FakeBackend, **kw) -> HfEngine:
    return HfEngine(hf_plan(**kw), backend_factory=lambda p: backend)


# --- turning generated ids into a page ---------------------------------------------------------------------------
@pytest.mark.parametrize("ids, expect", [
    ([5, 6, 1, 2, 2], ([5, 6, 1], "stop")),          # EOS (1), then batch padding (2)
    ([5, 6, 7, 8], ([5, 6, 7, 8], "length")),         # budget of 4 spent, no EOS
    ([5, 6, 2, 2], ([5, 6], "stop")),                 # a stop string ended it; the rest is padding
    ([1], ([1], "stop")),
])
def test_split_generated(ids, expect):
    assert split_generated(ids, eos_id=1, pad_id=2, max_new_tokens=4) == expect


def test_pad_equal_to_eos_reads_as_a_stop():
    assert split_generated([5, 1, 1, 1], eos_id=1, pad_id=1, max_new_tokens=4) == ([5, 1], "stop")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer
    from make_tiny_checkpoint import write_tokenizer

    out = tmp_path_factory.mktemp("tokenizer")
    write_tokenizer(out)
    return AutoTokenizer.from_pretrained(out)


def test_to_page_keeps_tags_drops_eos_and_cuts_a_new_chat_turn(tokenizer):
    ids = tokenizer.convert_tokens_to_ids(["<|ref|>", "text", "<|/ref|>", "the", "law"])
    page = hf_engine.to_page(tokenizer, ids + [tokenizer.eos_token_id, tokenizer.pad_token_id], 16)
    assert page == Generated(tokenizer.decode(ids, skip_special_tokens=False), 6, "stop")
    assert page.text.startswith("<|ref|>text<|/ref|>") and tokenizer.eos_token not in page.text
    long = hf_engine.to_page(tokenizer, ids, 5)
    assert long.finish_reason == "length" and long.tokens == 5
    assert hf_engine.cut_at_stop_string("text <|User|> more") == "text "


# --- the engine -----------------------------------------------------------------------------------------------------
def test_pages_go_through_in_batches_of_batch_pages():
    backend = FakeBackend()
    eng = engine(backend, batch_pages=3)
    for page in range(1, 8):
        eng.submit(request(page, attempt=page % 2))
    assert eng.in_flight() == 7
    outs = []
    while eng.in_flight():
        outs += eng.poll()
    assert backend.batches == [[1, 2, 3], [4, 5, 6], [7]]
    assert [(o.key.page, o.text, o.attempt, o.finish_reason) for o in outs[:3]] == \
        [(1, "page 1", 1, "stop"), (2, "page 2", 0, "length"), (3, "page 3", 1, "stop")]
    assert eng.poll() == [] and eng.caps.guard_active is True and eng.caps.load_seconds >= 0


def test_a_failing_batch_is_rerun_page_by_page_and_only_the_bad_page_errs():
    backend = FakeBackend(bad={2})
    eng = engine(backend, batch_pages=3)
    for page in (1, 2, 3):
        eng.submit(request(page))
    outs = {o.key.page: o for o in eng.poll()}
    assert backend.batches == [[1, 2, 3], [1], [2], [3]]
    assert outs[1].text == "page 1" and outs[3].error is None
    assert outs[2].error == "engine error: RuntimeError: CUDA out of memory" and outs[2].text == ""


def test_close_cancels_the_running_batch_and_hands_back_every_page():
    started = threading.Event()
    eng = engine(FakeBackend(block=started), batch_pages=2)
    for page in (1, 2, 3):
        eng.submit(request(page))
    result: list = []
    worker = threading.Thread(target=lambda: result.append(eng.poll()))
    worker.start()
    assert started.wait(5)
    lost = eng.lost_requests()
    assert sorted(r.key.page for r in lost) == [1, 2, 3] and eng.in_flight() == 0
    eng.close()
    worker.join(5)
    assert result == [[]] and eng.backend is None and eng.poll() == []


# --- planning: what is refused before anything loads ------------------------------------------------------------
def test_deepseek_ocr_v1_needs_trust_remote_code(tmp_path):
    cfg = hf_engine.parse(["--input-dir", str(tmp_path), "--output-dir", str(tmp_path / "out")])
    with pytest.raises(SetupError, match="pass --trust-remote-code to allow it.*DeepSeek-OCR-2"):
        hf_engine.plan(cfg, device=("cuda", "bfloat16"))


def v1_folder(tmp_path: Path, code: bool) -> Path:
    from make_tiny_checkpoint import REFERENCE_CONFIG

    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(REFERENCE_CONFIG.read_text())
    (tmp_path / "model-00001-of-000001.safetensors").write_bytes(b"\0" * 2048)
    if code:
        (tmp_path / "modeling_deepseekocr.py").write_text("# the checkpoint's own code\n")
    return tmp_path


def test_trusted_v1_needs_its_code_and_a_gpu(tmp_path):
    args = ["--input-dir", str(tmp_path), "--output-dir", str(tmp_path / "out"), "--trust-remote-code"]
    cfg = hf_engine.parse([*args, "--model", str(v1_folder(tmp_path / "bare", code=False))])
    with pytest.raises(SetupError, match="names no code of its own"):
        hf_engine.plan(cfg, device=("cuda", "bfloat16"))
    cfg = hf_engine.parse([*args, "--model", str(v1_folder(tmp_path / "full", code=True))])
    with pytest.raises(SetupError, match="runs only on a CUDA GPU"):
        hf_engine.plan(cfg, device=("cpu", "float32"))
    p = hf_engine.plan(cfg, device=("cuda", "bfloat16"))
    assert p.checkpoint.family is DEEPSEEK_OCR and any("own code" in n for n in p.notes)


def test_plan_for_v2_uses_this_runners_defaults_and_names_ignored_flags(tmp_path):
    from make_tiny_checkpoint_ocr2 import original_config

    model = tmp_path / "v2"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(original_config(512)))
    (model / "model-00001-of-000001.safetensors").write_bytes(b"\0" * 2048)
    cfg = hf_engine.parse(["--input-dir", str(tmp_path), "--output-dir", str(tmp_path / "o"), "--model", str(model),
                           "--kv-cache-dtype", "auto", "--tensor-parallel-size", "2"])
    p = hf_engine.plan(cfg, device=("cpu", "float32"))
    assert (p.batch_pages, p.ngram_size, p.max_tokens) == (8, 20, 6144)
    assert p.checkpoint.family is DEEPSEEK_OCR2 and p.checkpoint.layout == "original"
    assert p.notes[-1] == "ignored by the transformers runner (vLLM only): --kv-cache-dtype --tensor-parallel-size"
    assert hf_engine.ignored_flags(hf_engine.parse(["--input-dir", ".", "--output-dir", "o"])) == []


def runner_env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}


def test_cli_refuses_v1_without_trust_remote_code_in_one_line_before_any_work(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    make_pdf(src / "a.pdf", [ENGLISH])
    proc = subprocess.run([sys.executable, str(RUNNER), "--input-dir", str(src), "--output-dir", str(out)],
                          env=runner_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: deepseek-ai/DeepSeek-OCR is DeepSeek-OCR")
    assert "--trust-remote-code" in lines[0] and not out.exists()


def test_help_names_this_runner_and_its_defaults():
    proc = subprocess.run([sys.executable, str(RUNNER), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: run_pdf_ocr.py")
    text = " ".join(proc.stdout.split())
    assert "Hugging Face transformers" in text and "--trust-remote-code" in text
    assert "pages per generate() call (static batches: a batch takes as long as its longest page) (default: 8)" in text
    assert "vLLM only, ignored here (KV cache dtype" in text


# --- the whole pipeline on this engine, scripted backend -----------------------------------------------------------
def test_pipeline_runs_on_the_transformers_engine(tmp_path, inline_render):
    from ocr.cli import main

    src, out = tmp_path / "in", tmp_path / "out"
    make_pdf(src / "mixed.pdf", [ENGLISH, None, GREEK])
    make_pdf(src / "sub" / "two.pdf", [ENGLISH, ENGLISH])
    backend = FakeBackend()
    code = main(["--input-dir", str(src), "--output-dir", str(out), "--render-workers", "1", "--no-progress",
                 "--batch-pages", "2"], engine_factory=lambda: engine(backend, batch_pages=2),
                runner=hf_engine.RUNNER)
    assert code == 0
    assert all(len(b) <= 2 for b in backend.batches) and sum(map(len, backend.batches)) == 4
    mixed = (out / "mixed.md").read_text(encoding="utf-8")
    assert mixed.startswith("page 1") and "----- Page 2 -----\n\n[[Blank page]]" in mixed
    assert "----- Page 3 -----\n\npage 3" in mixed
    report = load_report(out)
    assert report["totals"]["pdfs_complete"] == 2 and report["totals"]["blank_pages"] == 1
    assert report["engine"]["guard_active"] is True


# --- DeepSeek-OCR (v1) through its own code: the wrapper around infer(), with a stand-in model --------------------
class StandInV1Model:
    """Like modeling_deepseekocr's model: infer() reads an image file and calls self.generate with its own
    settings; generate returns prompt + new ids."""

    def __init__(self, tokenizer, new_ids):
        self.tokenizer, self.new_ids, self.seen = tokenizer, new_ids, {}

    def generate(self, input_ids, **kwargs):
        import torch
        self.seen = kwargs
        return torch.cat([input_ids, torch.tensor([self.new_ids])], dim=1)

    def infer(self, tokenizer, prompt="", image_file="", output_path="", base_size=1024, image_size=640,
              crop_mode=True, test_compress=False, save_results=False, eval_mode=False):
        import torch
        assert Path(image_file).is_file() and (base_size, image_size, crop_mode) == (1024, 640, True)
        out = self.generate(torch.tensor([[0, 3, 3]]), images=None, temperature=0.0, max_new_tokens=8192,
                            no_repeat_ngram_size=35, eos_token_id=tokenizer.eos_token_id, use_cache=True)
        return tokenizer.decode(out[0, 3:])


def test_v1_remote_code_runs_with_this_runs_settings_and_reads_the_new_tokens(tokenizer):
    from PIL import Image

    ids = tokenizer.convert_tokens_to_ids(["the", "law"]) + [tokenizer.eos_token_id]
    backend = object.__new__(hf_engine.Ocr1RemoteCode)
    backend.tokenizer, backend.model = tokenizer, StandInV1Model(tokenizer, ids)
    backend.family, backend.max_tokens, backend.ngram_size = DEEPSEEK_OCR, 16, 20
    page = PageRequest(PageKey(0, 1), Image.new("RGB", (64, 64), "white"), "<image>\nFree OCR.")
    [result] = backend.generate([page], threading.Event())
    assert result == Generated(tokenizer.decode(ids[:2]), 3, "stop")
    seen = backend.model.seen
    assert (seen["max_new_tokens"], seen["no_repeat_ngram_size"], seen["do_sample"]) == (16, 20, False)
    assert "temperature" not in seen and "stopping_criteria" in seen
    assert "generate" not in vars(backend.model)          # the model's own generate is back


# --- real model: DeepSeek-OCR-2 through transformers on CPU, tiny checkpoint -------------------------------------
FAST = ["--dpi", "50", "--max-tokens", "16", "--batch-pages", "2", "--render-workers", "1", "--no-progress"]


@pytest.fixture(scope="session")
def tiny_ocr2_transformers(tmp_path_factory) -> Path:
    from make_tiny_checkpoint_ocr2 import cached
    return cached(tmp_path_factory.getbasetemp(), "transformers")


@pytest.fixture(scope="session")
def tiny_ocr2_original(tmp_path_factory) -> Path:
    from make_tiny_checkpoint_ocr2 import cached
    return cached(tmp_path_factory.getbasetemp(), "original")


@pytest.mark.real_engine
def test_baseline_runner_ocrs_a_folder_with_deepseek_ocr2(tmp_path, tiny_ocr2_transformers):
    src, out = tmp_path / "in", tmp_path / "out"
    make_pdf(src / "mixed.pdf", [ENGLISH, None])
    make_pdf(src / "ελληνικά" / "νόμος 'A'.pdf", [GREEK])
    cmd = [sys.executable, str(RUNNER), "--input-dir", str(src), "--output-dir", str(out),
           "--model", str(tiny_ocr2_transformers), *FAST]
    started = time.monotonic()
    proc = subprocess.run(cmd, env=runner_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]

    mixed = (out / "mixed.md").read_text(encoding="utf-8")
    assert "----- Page 2 -----\n\n[[Blank page]]" in mixed and not mixed.startswith("----- Page")
    assert "failed" not in mixed
    assert (out / "ελληνικά" / "νόμος 'A'.md").exists()
    report = load_report(out)
    assert report["totals"]["pdfs_complete"] == 2
    assert report["totals"]["pages"] == 3 and report["totals"]["blank_pages"] == 1
    assert 0 < report["totals"]["tokens"] <= 2 * 16
    assert report["engine"]["load_seconds"] > 0 and report["engine"]["guard_active"] is True
    assert report["settings"]["batch_pages"] == 2 and report["settings"]["ngram_size"] == 20
    assert "DeepSeek-OCR-2 (transformers layout) in transformers on cpu" in proc.stderr
    print(f"baseline run: {time.monotonic() - started:.0f} s")

    again = subprocess.run(cmd, env=runner_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert load_report(out)["totals"]["pdfs_skipped"] == 2


@pytest.mark.real_engine
def test_both_config_layouts_give_the_same_pages(tiny_ocr2_original, tiny_ocr2_transformers):
    """deepseek-ai's layout runs through the converted config and a processor built from defaults; it must
    decode exactly as transformers' own layout of the same weights."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (400, 560), "white")
    ImageDraw.Draw(image).text((40, 40), "Article 5. The law is amended.", fill="black")
    pages = []
    for folder in (tiny_ocr2_original, tiny_ocr2_transformers):
        cfg = hf_engine.parse(["--input-dir", ".", "--output-dir", "o", "--model", str(folder),
                               "--max-tokens", "6"])
        eng = HfEngine(hf_engine.plan(cfg, device=("cpu", "float32")))
        eng.submit(PageRequest(PageKey(0, 1), image, "<image>\n<|grounding|>Convert the document to markdown."))
        [out] = eng.poll()
        eng.close()
        pages.append((out.text, out.tokens, out.finish_reason))
    assert pages[0] == pages[1] and pages[0][1] > 0


class CharTokenizer:
    """decode() maps ids to letters; 9 spells a new chat turn."""
    def decode(self, ids, skip_special_tokens=False):
        return "".join("<|User|>" if i == 9 else chr(ord("a") + i) for i in ids)


def test_rows_stop_at_a_new_chat_turn_and_all_stop_when_cancelled():
    import torch

    cancelled = threading.Event()
    [stop] = hf_engine._stopping(cancelled, CharTokenizer(), prompt_len=2)
    ids = torch.tensor([[9, 9, 1, 2, 3], [0, 0, 1, 9, 2]])     # the prompt's own 9s do not count
    assert stop(ids, None).tolist() == [False, True]
    cancelled.set()
    assert stop(ids, None).tolist() == [True, True]


NO_VLLM_DRIVER = """
import sys
sys.modules["vllm"] = None                       # any import of vllm now fails, as where it is not installed
sys.path[:0] = [{root!r}, {tests!r}]
from ocr.engines import hf as hf_engine
from ocr.cli import main
from ocr.models import DEEPSEEK_OCR2, Checkpoint
from test_hf_engine import FakeBackend
p = hf_engine.HfPlan(Checkpoint("tiny", DEEPSEEK_OCR2, "original"), "cpu", "float32", 2, 16, 20)
sys.exit(main(sys.argv[1:], engine_factory=lambda: hf_engine.HfEngine(p, lambda _: FakeBackend()),
              runner=hf_engine.RUNNER))
"""


def test_the_baseline_runs_where_vllm_is_not_installed(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    make_pdf(src / "a.pdf", [ENGLISH, None])
    driver = NO_VLLM_DRIVER.format(root=str(ROOT), tests=str(ROOT / "tests"))
    proc = subprocess.run([sys.executable, "-c", driver, "--input-dir", str(src), "--output-dir", str(out),
                           "--render-workers", "1", "--no-progress"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "a.md").read_text(encoding="utf-8") == "page 1\n\n----- Page 2 -----\n\n[[Blank page]]\n"
