"""Discovery and sharding, render sizing, config flags, and the engine-settings choice logic."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from ocr.config import Config, build_parser, parse_config
from ocr.discover import assign_shards, find_pdfs, plan_jobs
from ocr.engines.vllm import Platform, check_tensor_parallel, engine_kwargs
from ocr.render import page_zoom


def touch(path: Path, size: int = 10) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"%PDF" + b"x" * size)
    return path


def test_discovery_is_recursive_case_insensitive_and_ordered(tmp_path):
    for rel in ["b.pdf", "a/Z.PDF", "a/c.Pdf", "notes.txt", "a/deeper/d.pdf"]:
        touch(tmp_path / rel)
    found = [p.relative_to(tmp_path).as_posix() for p in find_pdfs(tmp_path)]
    assert found == ["a/Z.PDF", "a/c.Pdf", "a/deeper/d.pdf", "b.pdf"]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7])
def test_shards_are_disjoint_cover_everything_and_balance_bytes(tmp_path, n):
    for i in range(23):
        touch(tmp_path / f"f{i:02}.pdf", size=1000 * (i % 5 + 1))
    shards = [plan_jobs(tmp_path, tmp_path / "out", n, i) for i in range(n)]
    names = [j.name for j in itertools.chain.from_iterable(shards)]
    assert sorted(names) == sorted(p.name for p in tmp_path.glob("*.pdf")) and len(set(names)) == 23
    loads = [sum(j.path.stat().st_size for j in s) for s in shards]
    assert max(loads) - min(loads) <= 5004       # at most one file's size apart


def test_same_stem_in_different_folders_maps_to_different_outputs(tmp_path):
    touch(tmp_path / "in" / "x" / "doc.pdf")
    touch(tmp_path / "in" / "y" / "doc.pdf")
    jobs = plan_jobs(tmp_path / "in", tmp_path / "out")
    assert {j.md_path.relative_to(tmp_path / "out").as_posix() for j in jobs} == {"x/doc.md", "y/doc.md"}


def test_same_stem_with_another_suffix_case_keeps_both_outputs(tmp_path):
    """x.pdf and x.PDF in one folder would both write x.md: each keeps its suffix instead, in every shard."""
    for rel in ["x.pdf", "x.PDF", "X.pdf", "y.pdf", "sub/x.pdf"]:
        touch(tmp_path / "in" / rel)
    for shards in (1, 3):
        jobs = [j for i in range(shards) for j in plan_jobs(tmp_path / "in", tmp_path / "out", shards, i)]
        outputs = {j.name: j.md_path.relative_to(tmp_path / "out").as_posix() for j in jobs}
        assert outputs == {"x.pdf": "x.pdf.md", "x.PDF": "x.PDF.md", "X.pdf": "X.pdf.md", "y.pdf": "y.md",
                           "sub/x.pdf": "sub/x.md"}


def test_shard_assignment_is_the_same_for_every_worker(tmp_path):
    paths = [touch(tmp_path / f"{i}.pdf", i * 7 % 13) for i in range(20)]
    assert assign_shards(paths, 4) == assign_shards(list(paths), 4)


@pytest.mark.parametrize("w, h, expect_scaled", [(595, 842, False), (18000, 36000, True), (234, 14295, True)])
def test_render_zoom_respects_the_pixel_cap(w, h, expect_scaled):
    zoom = page_zoom(w, h, 144, 12_000_000)
    pixels = (w * zoom + 1) * (h * zoom + 1)
    assert pixels <= 12_000_000
    assert (zoom < 2.0) == expect_scaled


def test_help_lists_every_flag_the_issues_name():
    text = build_parser().format_help()
    for flag in ["--input-dir", "--output-dir", "--mode", "--max-pages", "--num-shards", "--shard-index",
                 "--dpi", "--model", "--kv-cache-dtype", "--enable-fp8-weights", "--gpu-memory-utilization",
                 "--max-num-seqs", "--max-tokens", "--tensor-parallel-size", "--mm-encoder-tp-mode",
                 "--batch-pages", "--block-size", "--attention-backend", "--overwrite", "--page-timeout",
                 "--max-engine-restarts", "--greek-repair", "--save-page-images", "--save-crops"]:
        assert flag in text, flag


def cfg(**over) -> Config:
    base = parse_config(["--input-dir", ".", "--output-dir", "/tmp/x"])
    return Config(**{**base.__dict__, **over})


def test_tensor_parallel_must_divide_ten_heads():
    for ok in (1, 2, 5, 10):
        check_tensor_parallel(ok)
    with pytest.raises(ValueError, match="cannot split DeepSeek-OCR's 10 attention heads"):
        check_tensor_parallel(4)


def test_cpu_settings():
    kw, notes = engine_kwargs(cfg(), Platform("cpu", fp8_kv=False))
    assert kw["dtype"] == "float32" and kw["skip_mm_profiling"] is True
    assert kw["kv_cache_dtype"] == "auto" and any("not supported on cpu" in n for n in notes)
    assert "block_size" not in kw and "attention_backend" not in kw
    assert kw["enable_prefix_caching"] is False and kw["mm_processor_cache_gb"] == 0


def test_gpu_keeps_vllm_defaults_and_fp8_kv():
    kw, notes = engine_kwargs(cfg(), Platform("cuda", fp8_kv=True, capability=(9, 0)))
    assert "attention_backend" not in kw and "block_size" not in kw and kw["enforce_eager"] is False
    assert kw["kv_cache_dtype"] == "fp8" and kw["dtype"] == "bfloat16"
    assert any("attention=vLLM default" in n for n in notes)


def test_head_dim_override_comes_from_the_checkpoint(tmp_path):
    """transformers reports head_dim 0 for DeepSeek-OCR (qk_rope_head_dim); vLLM 0.24 crashed on it."""
    import shutil
    from conftest import ROOT
    shutil.copy(ROOT / "tests" / "fixtures" / "deepseek_ocr_config.json", tmp_path / "config.json")
    kw, notes = engine_kwargs(cfg(model=str(tmp_path)), Platform("cuda", fp8_kv=True, capability=(8, 9)))
    assert kw["hf_overrides"] == {"architectures": ["DeepseekOCRForCausalLM"], "text_config": {"head_dim": 128}}
    assert any("head_dim=128" in n for n in notes)


def test_overrides_win():
    l4 = Platform("cuda", fp8_kv=True, capability=(8, 9))
    kw, notes = engine_kwargs(cfg(block_size=256, attention_backend="TRITON_ATTN", enable_fp8_weights=True,
                                  mm_encoder_attn_backend="TORCH_SDPA"), l4)
    assert kw["block_size"] == 256 and kw["attention_backend"] == "TRITON_ATTN" and kw["quantization"] == "fp8"
    assert kw["mm_encoder_attn_backend"] == "TORCH_SDPA"
    assert any("block_size=256" in n and "attention=TRITON_ATTN" in n for n in notes)


def test_pre_ada_gpu_falls_back_from_fp8_kv():
    kw, notes = engine_kwargs(cfg(), Platform("cuda", fp8_kv=False, capability=(8, 0)))
    assert kw["kv_cache_dtype"] == "auto" and any("not supported" in n for n in notes)


# --- resume state ---------------------------------------------------------------------------------------

def _job(tmp_path: Path, name: str = "a.pdf"):
    from ocr.records import PdfJob
    path = touch(tmp_path / "in" / name, 100)
    return PdfJob(0, path, Path(name), tmp_path / "out" / (Path(name).stem + ".md"))


def test_journal_survives_a_touch_but_not_a_changed_pdf(tmp_path):
    """rsync without -t moves only the mtime: a half-done PDF keeps its finished pages."""
    from ocr.records import PageResult, PageStatus
    from ocr.store import Store, source_id
    job, state = _job(tmp_path), tmp_path / "out" / ".ocr-state"
    store = Store(state, {"dpi": 144})
    assert store.open_journal(job, source_id(job.path)) == {}
    store.journal_page(job, PageResult(1, PageStatus.OK, "page one"))
    os.utime(job.path, ns=(1, 1))
    assert store.open_journal(job, source_id(job.path))[1].text == "page one"
    job.path.write_bytes(b"%PDF" + b"y" * 100)                  # same size, other content
    assert store.open_journal(job, source_id(job.path)) == {}
    assert Store(state, {"dpi": 200}).open_journal(job, source_id(job.path)) == {}


def test_the_newest_manifest_entry_wins_across_worker_files(tmp_path):
    """Run with shards at DPI 200, then with one worker at DPI 144: the single worker's newer entry
    counts, though manifest.shard-* sorts after manifest.jsonl."""
    from ocr.store import Store, source_id
    job, state = _job(tmp_path), tmp_path / "out" / ".ocr-state"
    job.md_path.parent.mkdir(parents=True)
    job.md_path.write_text("done")
    Store(state, {"dpi": 200}, "manifest.shard-0-of-2.jsonl").mark_complete(job, source_id(job.path), 1)
    Store(state, {"dpi": 144}).mark_complete(job, source_id(job.path), 1)
    assert Store(state, {"dpi": 144}).is_complete(job)
    assert not Store(state, {"dpi": 200}).is_complete(job)


def test_mm_encoder_cudagraph_where_this_vllm_has_it(monkeypatch):
    import ocr.engines.vllm as ev
    h100 = Platform("cuda", fp8_kv=True, capability=(9, 0))
    assert ev.has_mm_encoder_cudagraph()                      # vLLM 0.32's CompilationConfig has the field
    kw, _ = engine_kwargs(cfg(mm_encoder_cudagraph=True, cudagraph_max_tokens=0), h100)
    assert kw["compilation_config"] == {"cudagraph_mm_encoder": True}
    assert "cudagraph_mm_encoder" not in engine_kwargs(cfg(), h100)[0]["compilation_config"]
    monkeypatch.setattr(ev, "has_mm_encoder_cudagraph", lambda: False)
    kw, notes = engine_kwargs(cfg(mm_encoder_cudagraph=True), h100)
    assert "cudagraph_mm_encoder" not in kw["compilation_config"]
    assert [n for n in notes if "cudagraph_mm_encoder" in n] == [
        f"vLLM {ev.vllm_version()} has no compilation_config.cudagraph_mm_encoder: --mm-encoder-cudagraph has "
        f"no effect"]


def test_cudagraph_max_tokens_captures_the_decoder_past_vllms_512():
    """A step that prefills a new page beside 256 decoding ones (~1,150 tokens) gets a graph: the sizes vLLM
    0.32 validates (CompilationConfig's own field), merged with the encoder graphs, and none where graphs
    are off."""
    import dataclasses
    from vllm.config.compilation import CompilationConfig
    from ocr.engines.vllm import capture_sizes
    h100 = Platform("cuda", fp8_kv=True, capability=(9, 0))
    kw, _ = engine_kwargs(cfg(cudagraph_max_tokens=2048, mm_encoder_cudagraph=True), h100)
    sizes = kw["compilation_config"]["cudagraph_capture_sizes"]
    assert kw["compilation_config"]["cudagraph_mm_encoder"] is True
    assert sizes[-1] == 2048 and sizes == sorted(set(sizes))
    assert {1, 256, 512, 1152, 1280} <= set(sizes)             # vLLM's grid kept, then every 128
    assert all(b - a <= 128 for a, b in zip(sizes, sizes[1:]))
    assert "cudagraph_capture_sizes" in {f.name for f in dataclasses.fields(CompilationConfig)}
    assert CompilationConfig(cudagraph_capture_sizes=sizes).cudagraph_capture_sizes == sizes
    assert "compilation_config" not in engine_kwargs(cfg(cudagraph_max_tokens=2048, enforce_eager=True), h100)[0]
    assert "compilation_config" not in engine_kwargs(cfg(cudagraph_max_tokens=2048), Platform("cpu", fp8_kv=False))[0]
    assert engine_kwargs(cfg(), h100)[0]["compilation_config"] == {"cudagraph_capture_sizes": capture_sizes(2048)}
    assert "compilation_config" not in engine_kwargs(cfg(cudagraph_max_tokens=0), h100)[0]   # vLLM's own sizes
    assert engine_kwargs(cfg(cudagraph_max_tokens=300), h100)[0]["compilation_config"][
        "cudagraph_capture_sizes"][-3:] == [272, 288, 300]


def test_engine_kwargs_override_comes_last():
    kw, notes = engine_kwargs(cfg(), Platform("cpu", fp8_kv=False),
                              {"max_num_batched_tokens": 8192, "hf_overrides": {"model_type": "deepseek_vl_v2"}})
    assert kw["max_num_batched_tokens"] == 8192 and kw["hf_overrides"]["model_type"] == "deepseek_vl_v2"
    assert kw["hf_overrides"]["architectures"] == ["DeepseekOCRForCausalLM"]
    assert any(n.startswith("engine kwargs overrides:") for n in notes)
