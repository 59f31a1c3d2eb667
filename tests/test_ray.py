"""ocr-ray on a local Ray cluster with fake GPUs and the scripted engine double: leases, a worker killed
mid-run, object storage through s3fs, resume; one real-engine run on the tiny checkpoint."""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from conftest import ROOT, load_report, run_cli  # noqa: E402
from doubles import ScriptedEngine, page_text  # noqa: E402
from ocr import ray_run  # noqa: E402
from pdfgen import make_pdf, numbered_pages  # noqa: E402
from test_storage import BUCKET, s3_server, s3fs, upload  # noqa: E402

SMALL = ["--dpi", "72"]                     # small renders of small pages: the test is about scheduling
FAST = ["--render-workers", "1", "--no-progress", "--cpus-per-worker", "0.25", "--lease-pdfs", "2",
        "--progress-every", "1", "--address", "auto", *SMALL]


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """One local cluster for the module: 2 CPUs, 2 fake GPUs; actors find `ocr` and the test doubles."""
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]), "VLLM_CPU_KVCACHE_SPACE": "1"}
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, runtime_env={"env_vars": env},
             log_to_driver=True)
    yield
    ray.shutdown()


def answered(log_path: Path, request) -> str:
    """The double's text, with each answered page logged (pid, PDF index, page) to count who did what."""
    with open(log_path, "a") as f:
        f.write(f"{os.getpid()} {request.key.pdf} {request.key.page}\n")
    return page_text(request)


def dying(log_path: Path, marker: Path, after: int, request, count=[0]) -> str:
    """Kills its whole actor process (os._exit) at its `after`-th page: the first worker to get there, once."""
    count[0] += 1
    if count[0] == after and not marker.exists():
        marker.write_text(str(os.getpid()))
        os._exit(1)
    return answered(log_path, request)


def double_maker(cfg, script=None, step_s=0.2):
    """An engine maker for ocr-ray: each worker gets the scripted double (this runs inside the actor)."""
    return lambda: ScriptedEngine(script=script or page_text, per_poll=2, step_s=step_s)


def corpus(src: Path, n: int = 21) -> list[str]:
    names = []
    for i in range(n):
        name = f"{'sub/' if i % 3 == 0 else ''}doc{i:02d}.pdf"
        make_pdf(src / name, numbered_pages(1 + i % 3, f"Doc {i}"), size=(300, 400))
        names.append(name)
    return names


@pytest.fixture(scope="module")
def pdfs(tmp_path_factory):
    """21 small PDFs (1-3 pages, some in a subfolder) and the plain runner's Markdown of them, in one
    process: what every Ray run must reproduce byte for byte."""
    root = tmp_path_factory.mktemp("corpus")
    names = corpus(root / "in")
    assert run_cli(["--input-dir", str(root / "in"), "--output-dir", str(root / "plain"), *SMALL],
                   engine_factory=lambda: ScriptedEngine(per_poll=2)) == 0
    return root / "in", names, markdown(root / "plain")


def markdown(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*.md")}


def test_a_killed_worker_loses_only_its_leases_and_the_output_is_that_of_one_process(pdfs, tmp_path, capsys):
    src, names, expected = pdfs
    out = tmp_path / "out"
    log, marker = tmp_path / "answers.log", tmp_path / "killed"
    maker = functools.partial(double_maker, script=functools.partial(dying, log, marker, 4))

    rc = ray_run.main(["--input-dir", str(src), "--output-dir", str(out), *FAST], engine_maker=maker)

    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert marker.exists(), "no worker was killed"
    assert markdown(out) == expected
    done = sorted(p.relative_to(out / ".ocr-state" / "done").as_posix() for p in (out / ".ocr-state" / "done")
                  .rglob("*.json"))
    assert done == sorted(f"{n}.json" for n in names)                # one manifest entry per PDF
    report = load_report(out)
    assert sorted(p["pdf"] for p in report["pdfs"]) == sorted(names)   # each PDF once
    assert {p["status"] for p in report["pdfs"]} == {"complete"}
    assert report["totals"]["pdfs_complete"] == 21 and report["totals"]["pages"] == 7 * (1 + 2 + 3)
    lost = [e for e in report["events"] if e["event"] == "worker_lost"]
    assert len(lost) == 1 and lost[0]["pdfs_back_in_queue"], report["events"]
    assert not [e for e in report["events"] if e["event"] == "duplicate"]
    # no page answered twice by the workers that lived; with the killed one's, every page was answered
    dead = marker.read_text()
    lines = [line.split() for line in log.read_text().splitlines()]
    live = Counter((pdf, page) for pid, pdf, page in lines if pid != dead)
    assert set(live.values()) == {1}
    assert len(set(live) | {(pdf, page) for pid, pdf, page in lines if pid == dead}) == 42
    assert f"worker {lost[0]['worker']} lost" in printed and "in its place" in printed
    assert "progress:" in printed and "pages/s in total" in printed
    assert re.search(r"^  worker \d+ \(GPU [01] on [\d.]+\): \d+ PDFs, \d+ pages, [\d.]+ pages/s", printed, re.M)

    before = log.read_text()
    assert ray_run.main(["--input-dir", str(src), "--output-dir", str(out), *FAST], engine_maker=maker) == 0
    again = load_report(out)
    assert again["totals"]["pdfs_skipped"] == 21 and log.read_text() == before   # nothing leased


def test_object_storage_in_and_out_through_s3fs(pdfs, tmp_path, capsys):
    """The same run with --input-dir and --output-dir on an S3-compatible server (moto, on localhost)."""
    src, names, expected = pdfs
    with s3_server() as options:
        fs = s3fs.S3FileSystem(skip_instance_cache=True, **options)
        in_url = upload(src, options, "in")
        fs.pipe_file(f"{BUCKET}/in/broken.pdf", b"not a PDF at all")       # bad input: exit 1, the rest done
        args = ["--input-dir", in_url, "--output-dir", f"s3://{BUCKET}/out", "--storage-options",
                json.dumps(options), "--num-workers", "1", *FAST]
        fast = functools.partial(double_maker, step_s=0.02)
        assert ray_run.main(args, engine_maker=fast) == 1, capsys.readouterr().out
        got = {p[len(f"{BUCKET}/out/"):]: fs.cat_file(p) for p in fs.find(f"{BUCKET}/out") if p.endswith(".md")}
        assert got == expected
        done = sorted(p for p in fs.find(f"{BUCKET}/out/.ocr-state/done"))
        assert done == sorted(f"{BUCKET}/out/.ocr-state/done/{n}.json" for n in names)
        assert not [p for p in fs.find(f"{BUCKET}") if ".tmp-" in p]
        report = json.loads(fs.cat_file(f"{BUCKET}/out/run_report.json"))
        assert report["totals"]["pdfs_complete"] == 21 and report["settings"]["input_dir"] == in_url
        broken = [p for p in report["pdfs"] if p["pdf"] == "broken.pdf"]
        assert len(broken) == 1 and broken[0]["status"] == "failed" and "not a PDF" in broken[0]["error"]

        fs.rm_file(f"{BUCKET}/in/broken.pdf")
        assert ray_run.main(args, engine_maker=fast) == 0
        again = json.loads(fs.cat_file(f"{BUCKET}/out/run_report.json"))
        assert again["totals"]["pdfs_skipped"] == 21 and again["workers"] == []


def test_sigint_stops_the_workers_exits_130_and_keeps_what_is_finished(pdfs, tmp_path, capsys):
    src, names, expected = pdfs
    out, log = tmp_path / "out", tmp_path / "answers.log"

    def interrupt_once_pages_come_out():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= 6):
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGINT)
    threading.Thread(target=interrupt_once_pages_come_out, daemon=True).start()
    maker = functools.partial(double_maker, script=functools.partial(answered, log))

    assert ray_run.main(["--input-dir", str(src), "--output-dir", str(out), *FAST], engine_maker=maker) == 130

    report = load_report(out)
    assert "stopped by SIGINT" in report["interrupted"]
    by_status = Counter(p["status"] for p in report["pdfs"])
    assert by_status["unfinished"] > 0 and sum(by_status.values()) == 21
    complete = sorted(p["pdf"] for p in report["pdfs"] if p["status"] == "complete")
    done = sorted(p.relative_to(out / ".ocr-state" / "done").as_posix()[:-5]
                  for p in (out / ".ocr-state" / "done").rglob("*.json"))
    assert done == complete                                 # each entry stands for a whole, published PDF
    assert {k: v for k, v in markdown(out).items()} == {k: expected[k] for k in markdown(out)}
    assert "the workers stop after their current pages" in capsys.readouterr().err


def test_usage_errors_exit_2_before_anything_starts(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    base = ["--input-dir", str(src), "--output-dir", str(tmp_path / "out")]
    assert ray_run.main([*base, "--num-shards", "2"]) == 2
    assert "leases instead of shards" in capsys.readouterr().err
    assert ray_run.main(["--input-dir", str(tmp_path / "nope"), "--output-dir", str(tmp_path / "o")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert ray_run.main([*base, "--lease-pdfs", "0"]) == 2
    assert ray_run.main([*base, "--storage-options", "[1]"]) == 2
    assert "JSON object" in capsys.readouterr().err
    assert ray_run.main([*base, "--gpus-per-worker", "0.5", "--gpu-memory-utilization", "0.8"]) == 2
    assert "--gpu-memory-utilization 0.8 does not fit --gpus-per-worker 0.5: use at most 0.47" in \
        capsys.readouterr().err


@pytest.mark.parametrize("extra, share", [([], 0.9), (["--gpus-per-worker", "0.5"], 0.45),
                                          (["--gpus-per-worker", "0.5", "--gpu-memory-utilization", "0.4"], 0.4),
                                          (["--gpus-per-worker", "2"], 0.9)])
def test_workers_sharing_a_gpu_ask_for_their_share_of_its_memory(tmp_path, extra, share):
    """Two actors on one GPU (--gpus-per-worker 0.5) each ask vLLM for half of the default share (the
    second would not start otherwise); a share that fits is kept."""
    src = tmp_path / "in"
    src.mkdir()
    _, cfg = ray_run.parse_args(["--input-dir", str(src), "--output-dir", str(tmp_path / "out"), *extra])
    assert cfg.gpu_memory_utilization == share


@pytest.mark.real_engine
def test_real_engine_through_ray(tmp_path):
    sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
    from make_tiny_checkpoint import build
    ckpt = build(tmp_path / "tiny")
    src, out = tmp_path / "in", tmp_path / "out"
    make_pdf(src / "one.pdf", numbered_pages(1))
    # one reading of one small page (random weights make every page a runaway: no retry here)
    rc = ray_run.main(["--input-dir", str(src), "--output-dir", str(out), "--model", str(ckpt), "--dpi", "50",
                       "--max-tokens", "24", "--batch-pages", "2", "--runaway-retry", "off", "--num-workers", "1",
                       *FAST])
    assert rc == 0
    report = load_report(out)
    assert report["totals"]["pdfs_complete"] == 1 and report["totals"]["pages"] == 1
    assert report["totals"]["tokens"] > 0 and report["engine"]["0"]["load_seconds"] > 0
    assert (out / "one.md").read_text(encoding="utf-8").strip()
    assert json.loads((out / ".ocr-state" / "done" / "one.pdf.json").read_text())["pages"] == 1
