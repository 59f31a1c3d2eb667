"""The engine contract and the option metadata: every engine implements the whole Protocol, every Config field
is classified, the resume fingerprint follows the classification, and the Pipeline's job-source hooks."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from conftest import ROOT
from doubles import ScriptedEngine
from ocr.config import ENGINES, Config, build_parser, foreign_flags, parse_config
from ocr.engines.base import Engine, EngineCaps, EngineDead, Failure
from pdfgen import make_pdf, numbered_pages

PROTOCOL = sorted(n for n in vars(Engine) if not n.startswith("_")) + ["caps"]


def base(*extra: str, **over) -> Config:
    cfg = parse_config(["--input-dir", ".", "--output-dir", "/tmp/x", *extra])
    return dataclasses.replace(cfg, **over)


# --- the Engine Protocol ------------------------------------------------------------------------------------

def test_every_engine_implements_the_whole_protocol():
    from ocr.engines.hf import HfEngine
    from ocr.engines.vllm import VllmEngine
    sys.path.insert(0, str(ROOT / "bench"))
    from bench import FastEngine

    assert set(PROTOCOL) == {"submit", "poll", "in_flight", "alive", "lost_requests", "close", "caps"}
    for cls in (HfEngine, VllmEngine):
        missing = [n for n in PROTOCOL if n != "caps" and not callable(getattr(cls, n, None))]
        assert not missing, (cls, missing)
    for engine in (ScriptedEngine(), FastEngine()):
        assert not [n for n in PROTOCOL if not hasattr(engine, n)], engine
        assert isinstance(engine.caps, EngineCaps)


def test_failures_that_kill_the_engine_are_not_retried():
    assert Failure.ENGINE_ERROR.retryable and Failure.INPUT_REJECTED.retryable
    assert not Failure.KILLS_ENGINE.retryable and not Failure.NO_TEXT.retryable


DOUBLE_WITHOUT_VLLM = """
import sys
sys.modules["vllm"] = None                       # any import of vllm now fails, as where it is not installed
sys.path[:0] = [{root!r}, {tests!r}]
from doubles import ScriptedEngine
from ocr.cli import main
sys.exit(main(sys.argv[1:], engine_factory=lambda: ScriptedEngine(kills={{(0, 2)}})))
"""


def test_the_pipeline_and_its_supervisor_need_no_vllm(tmp_path):
    """The double kills the engine on page 2: death, restart, isolation and the stub, all without vLLM."""
    src, out = tmp_path / "in", tmp_path / "out"
    make_pdf(src / "a.pdf", numbered_pages(3))
    driver = DOUBLE_WITHOUT_VLLM.format(root=str(ROOT), tests=str(ROOT / "tests"))
    proc = subprocess.run([sys.executable, "-c", driver, "--input-dir", str(src), "--output-dir", str(out),
                           "--render-workers", "1", "--no-progress"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]          # partial: page 2 kills the engine
    md = (out / "a.md").read_text(encoding="utf-8")
    assert "[[Page 2 failed: engine crashed on this page]]" in md and "# Page 3" in md


def test_the_vllm_check_names_the_version_and_the_missing_piece(monkeypatch):
    from ocr.checkpoint import SetupError
    from ocr.engines import vllm as ev

    monkeypatch.setattr(ev, "VLLM_INTERNALS", ev.VLLM_INTERNALS[:1] + (
        ("vllm.v1.engine.llm_engine", "LLMEngine.add_request_renamed", "pages joining the running batch"),))
    monkeypatch.setattr(ev, "_lookup", lambda module, path: not path.endswith("_renamed"))
    with pytest.raises(SetupError) as err:
        ev.check_vllm(guard=False)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"vLLM {ev.vllm_version()} lacks ")
    assert "LLMEngine.add_request_renamed (pages joining the running batch)" in message


def test_engine_kwargs_overrides_win_and_merge_dicts():
    from ocr.engines.vllm import merge_kwargs
    kw = {"hf_overrides": {"architectures": ["X"], "text_config": {"head_dim": 128}}, "enforce_eager": False}
    out = merge_kwargs(kw, {"hf_overrides": {"text_config": {"head_dim": 64}}, "enforce_eager": True, "new": 1})
    assert out == {"hf_overrides": {"architectures": ["X"], "text_config": {"head_dim": 64}}, "enforce_eager": True,
                   "new": 1}
    assert kw["enforce_eager"] is False                        # the runner's own dict is not changed


# --- option metadata ----------------------------------------------------------------------------------------

def test_every_config_field_is_classified():
    for f in dataclasses.fields(Config):
        meta = f.metadata
        assert {"help", "engine", "output", "argparse"} <= set(meta), f"{f.name}: declare it with opt(...)"
        assert meta["engine"] and set(meta["engine"]) <= set(ENGINES), f.name
        assert meta["output"] in (True, False, "grounded"), f.name


def test_the_default_fingerprint_is_the_one_outputs_on_disk_carry():
    """Outputs made before fields were classified stay complete: same keys at the defaults."""
    assert set(base().fingerprint()) == {"model", "mode", "prompt", "max_pages", "dpi", "max_tokens",
                                         "greek_repair"}
    assert set(base("--mode", "grounded").fingerprint()) == {"model", "mode", "prompt", "max_pages", "dpi",
                                                             "max_tokens", "greek_repair", "roi_pass",
                                                             "required_labels"}


@pytest.mark.parametrize("flags", [["--max-render-pixels", "4000000"], ["--kv-cache-dtype", "auto"],
                                   ["--load-format", "dummy"], ["--ngram-size", "0"], ["--runaway-retry", "off"]])
def test_an_output_setting_away_from_its_default_redoes_finished_pdfs(flags):
    assert base(*flags).fingerprint() != base().fingerprint()


def test_grounded_only_settings_count_in_grounded_mode_only():
    grounded = base("--mode", "grounded")
    assert base("--mode", "grounded", "--roi-max-crops", "8").fingerprint() != grounded.fingerprint()
    assert base("--mode", "grounded", "--save-crops").fingerprint() != grounded.fingerprint()
    assert base("--roi-max-crops", "8").fingerprint() == base().fingerprint()      # clean mode: no ROI pass


@pytest.mark.parametrize("flags", [["--batch-pages", "4"], ["--render-workers", "3"], ["--page-timeout", "5"],
                                   ["--block-size", "256"], ["--mm-encoder-cudagraph"], ["--log-level", "DEBUG"]])
def test_settings_that_do_not_change_the_output_leave_finished_pdfs_alone(flags):
    assert base(*flags).fingerprint() == base().fingerprint()


def test_the_vllm_runner_refuses_trust_remote_code(capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_config(["--input-dir", ".", "--output-dir", "o", "--trust-remote-code"])
    assert exit_.value.code == 2 and "--trust-remote-code" in capsys.readouterr().err
    assert "--trust-remote-code" not in build_parser().format_help()


def test_the_transformers_runner_is_a_spec_over_the_same_fields():
    from ocr.engines import hf
    cfg = hf.parse(["--input-dir", ".", "--output-dir", "o", "--trust-remote-code", "--block-size", "16"])
    assert cfg.trust_remote_code and (cfg.batch_pages, cfg.ngram_size) == (8, 20)
    assert foreign_flags(cfg, "hf") == ["--block-size"] and hf.ignored_flags(cfg) == ["--block-size"]
    vllm_flags = {a.dest for a in build_parser()._actions}
    hf_flags = {a.dest for a in build_parser(hf.SPEC)._actions}
    assert hf_flags - vllm_flags == {"trust_remote_code"} and vllm_flags <= hf_flags


# --- the Pipeline's job source and outcome hooks ------------------------------------------------------------

def test_jobs_are_pulled_lazily_and_each_outcome_is_reported(tmp_path, inline_render):
    from ocr.discover import plan_jobs
    from ocr.pipeline import Pipeline
    from ocr.report import PdfStatus, RunReport

    src, out = tmp_path / "in", tmp_path / "out"
    for name in "abcdefgh":
        make_pdf(src / f"{name}.pdf", numbered_pages(2, name.upper()))
    (src / "e.pdf").write_bytes(b"not a pdf")
    cfg = base(input_dir=src, output_dir=out, batch_pages=2, render_workers=1, no_progress=True)
    events: list = []

    def jobs():
        for job in plan_jobs(src, out):
            events.append(("pull", job.name))
            yield job

    def run() -> RunReport:
        report = RunReport(cfg.report_path, {})
        Pipeline(cfg, ScriptedEngine, report, jobs=jobs(),
                 on_pdf_done=lambda job, status: events.append(("done", job.name, status))).run()
        return report

    report = run()
    done = {e[1]: e[2] for e in events if e[0] == "done"}
    assert done == {**{f"{n}.pdf": PdfStatus.COMPLETE for n in "abcdfgh"}, "e.pdf": PdfStatus.FAILED}
    # look-ahead is bounded by the render window (2 pages), the pages in flight (4) and those in the post
    # workers (4 at most): a.pdf is done before the seventh PDF is pulled
    assert events.index(("done", "a.pdf", PdfStatus.COMPLETE)) < events.index(("pull", "g.pdf"))
    assert (out / "c.md").read_text(encoding="utf-8").startswith("# Page 1")
    assert report.pdfs["a.pdf"].status is PdfStatus.COMPLETE and report.pdfs["e.pdf"].error

    events.clear()
    run()
    assert {e[1]: e[2] for e in events if e[0] == "done"}["a.pdf"] is PdfStatus.SKIPPED


def test_a_stop_by_signal_exits_130_whatever_its_message(tmp_path):
    from ocr import cli
    from ocr.pipeline import Pipeline, StopReason

    src = tmp_path / "in"
    make_pdf(src / "a.pdf", numbered_pages(1))
    real_run = Pipeline.run

    def stopped_run(self):
        self.request_stop(StopReason.SIGNAL, "told to go")
        real_run(self)

    import unittest.mock
    with unittest.mock.patch.object(Pipeline, "run", stopped_run):
        code = cli.main(["--input-dir", str(src), "--output-dir", str(tmp_path / "o"), "--no-progress",
                         "--render-workers", "1"], engine_factory=ScriptedEngine)
    assert code == cli.ExitCode.INTERRUPTED


def test_engine_dead_is_the_one_death_the_supervisor_knows():
    from ocr.engines.supervisor import Supervisor
    from ocr.records import PageKey, PageRequest

    built: list = []

    def factory():
        built.append(ScriptedEngine(kills={(0, 1)} if not built else frozenset()))
        return built[-1]

    sup = Supervisor(factory, max_restarts=3, page_timeout=30)
    sup.submit(PageRequest(PageKey(0, 1), None, "x"))
    assert sup.poll() == [] and sup.restarts == 1 and len(built) == 2 and built[0].closed
    dying = ScriptedEngine(kills={(0, 1)})
    dying.submit(PageRequest(PageKey(0, 1), None, "x"))
    with pytest.raises(EngineDead):             # the contract's exception, not vLLM's
        dying.poll()


def test_a_missing_fixture_fails_and_says_where_shared_is_expected():
    from conftest import SHARED, shared
    with pytest.raises(pytest.fail.Exception, match=f"expected at {SHARED}, i.e. ../shared next to this checkout"):
        shared(SHARED / "fixtures" / "no-such-file.pdf")
    assert shared(SHARED / "fixtures" / "pdfs").is_dir()
