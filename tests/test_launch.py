"""launch_workers.py on CPU with a scripted fake runner: GPUs, shard flags, logs, exit codes, merged report."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, run_cli
from ocr import launch, merge_reports
from pdfgen import make_pdf, numbered_pages

# The fake runner reads what to do from <input-dir>/plan.json, keyed by shard index: exit code, PDF
# statuses, "kill" (SIGKILL itself), "no_report", "wait_signal" (block until SIGINT/SIGTERM, then exit 130).
FAKE_RUNNER = r'''
import argparse, json, os, signal, sys, time
from pathlib import Path

p = argparse.ArgumentParser()
for flag in ("--input-dir", "--output-dir"):
    p.add_argument(flag)
p.add_argument("--num-shards", type=int, default=1)
p.add_argument("--shard-index", type=int, default=0)
args, _ = p.parse_known_args()
i, n, out = args.shard_index, args.num_shards, Path(args.output_dir)
plan = json.loads((Path(args.input_dir) / "plan.json").read_text()).get(str(i), {})
signals = []
signal.signal(signal.SIGINT, lambda s, f: signals.append(s))
signal.signal(signal.SIGTERM, lambda s, f: signals.append(s))
seen = {"argv": sys.argv[1:], "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "ppid": os.getppid(),
        "telemetry": os.environ.get("HF_HUB_DISABLE_TELEMETRY"), "mark": os.environ.get("OCR_TEST_MARK")}
out.mkdir(parents=True, exist_ok=True)
(out / f"seen-{i}.json").write_text(json.dumps(seen))
print(f"fake worker {i} of {n} on GPU {seen['cuda']}", flush=True)
if plan.get("kill"):
    os.kill(os.getpid(), signal.SIGKILL)
code = plan.get("exit", 0)
if plan.get("wait_signal"):
    while not signals:
        time.sleep(0.05)
    time.sleep(1.0)                      # a second signal, if the launcher sent one, arrives meanwhile
    code = 130
    (out / f"signals-{i}.json").write_text(json.dumps(signals))
statuses = plan.get("statuses", ["complete"])
pdfs = [{"pdf": f"s{i}/doc{j}.pdf", "status": s, "pages": 3, "blank_pages": 1,
         "failed_pages": [2] if s == "partial" else [], "tokens": 100, "seconds": 1.0,
         "error": "bad file" if s == "failed" else None, "output": None, "counters": {"fixed": 1}}
        for j, s in enumerate(statuses)]
done = [e for e in pdfs if e["status"] not in ("skipped", "unfinished")]
pages = sum(e["pages"] - len(e["failed_pages"]) for e in done)
totals = {"pdfs": len(pdfs), "pages": pages, "blank_pages": sum(e["blank_pages"] for e in done),
          "failed_pages": sum(len(e["failed_pages"]) for e in done), "tokens": 100 * len(done),
          "seconds": 2.0, "pages_per_s": pages / 2.0, "tokens_per_s": 50.0 * len(done),
          "pages_per_s_after_load": 1.5, "counters": {"fixed": len(pdfs), "runaway_retried": 1}, "greek": {"greek_letters": 30 * i, "latin_letters": 10,
                                                      "other_letters": 0, "greek_share": 0.0}}
for s in statuses:
    totals[f"pdfs_{s}"] = totals.get(f"pdfs_{s}", 0) + 1
report = {"settings": {"num_shards": n, "shard_index": i}, "engine": {"fake": True},
          "interrupted": "stopped by SIGINT" if code == 130 else None, "totals": totals,
          "events": [{"event": "start", "time": 0.0}], "pdfs": pdfs}
if not plan.get("no_report"):
    name = "run_report.json" if n == 1 else f"run_report.shard-{i}-of-{n}.json"
    (out / name).write_text(json.dumps(report))
sys.exit(code)
'''


@pytest.fixture
def fake(tmp_path):
    """A fake runner script and an input folder; returns (runner, input_dir, output_dir)."""
    runner = tmp_path / "fake_runner.py"
    runner.write_text(FAKE_RUNNER)
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    return runner, src, out


def set_plan(src: Path, plan: dict) -> None:
    (src / "plan.json").write_text(json.dumps({str(k): v for k, v in plan.items()}))


def launch_args(runner: Path, src: Path, out: Path, gpus: str, *extra: str, runner_extra=()) -> list[str]:
    return ["--gpus", gpus, "--runner", str(runner), "--python", sys.executable, *extra, "--",
            "--input-dir", str(src), "--output-dir", str(out), *runner_extra]


def seen(out: Path, i: int) -> dict:
    return json.loads((out / f"seen-{i}.json").read_text())


def test_one_worker_per_gpu_with_shard_flags_logs_and_merged_report(fake, capsys):
    runner, src, out = fake
    set_plan(src, {0: {"statuses": ["complete", "complete"]}, 1: {"statuses": ["partial"], "exit": 1},
                   2: {"statuses": ["failed", "skipped"], "exit": 1}, 3: {}})

    rc = launch.main(launch_args(runner, src, out, "0,1,2,3"))

    assert rc == 1
    for i in range(4):
        s = seen(out, i)
        assert s["cuda"] == str(i)
        assert s["argv"][-4:] == ["--num-shards", "4", "--shard-index", str(i)]
        assert s["argv"].count("--shard-index") == 1 and "--no-progress" in s["argv"]
        assert s["telemetry"] == "1"                      # aws/ocr_env.sh was sourced for the workers
        log = (out / "logs" / f"worker-{i}.log").read_text()
        assert f"fake worker {i} of 4 on GPU {i}" in log and f"CUDA_VISIBLE_DEVICES={i}" in log
        assert (out / f"run_report.shard-{i}-of-4.json").is_file()
    merged = json.loads((out / "run_report.json").read_text())
    t = merged["totals"]
    assert (t["pdfs"], t["pdfs_complete"], t["pdfs_partial"], t["pdfs_failed"], t["pdfs_skipped"]) == \
        (6, 3, 1, 1, 1)
    assert t["pages"] == 3 * 3 + 2 + 3 and t["counters"] == {"fixed": 6, "runaway_retried": 4}
    assert t["passes"] == {"runaway": {"retried": 4}}
    assert t["pages_per_s_after_load"] == 6.0           # four workers side by side at 1.5 each
    assert t["greek"] == {"greek_letters": 180, "latin_letters": 40, "other_letters": 0, "greek_share": 0.818,
                          "latin_share": 0.182, "other_share": 0.0}
    assert t["pages"] / (t["seconds"] + 0.05) <= t["pages_per_s"] <= t["pages"] / (t["seconds"] - 0.05)  # rounding
    assert [(w["worker"], w["gpus"], w["exit_code"]) for w in merged["workers"]] == \
        [(0, "0", 0), (1, "1", 1), (2, "2", 1), (3, "3", 0)]
    assert {p["pdf"]: p["worker"] for p in merged["pdfs"]}["s1/doc0.pdf"] == 1
    assert "shard_index" not in merged["settings"] and len(merged["events"]) == 4
    printed = capsys.readouterr().out
    assert "4 workers, 6 PDFs: 3 complete, 1 failed, 1 partial, 1 skipped" in printed
    assert "worker 1 (GPU 1): 1 PDFs, 2 pages in 2.0 s, 1.0 pages/s, exit 1" in printed
    assert "partial: s1/doc0.pdf: pages [2] failed (worker 1)" in printed
    assert "clean-up: fixed=6" in printed and "runaway pass: retried=4" in printed
    assert "pages/s in total" in printed


@pytest.mark.parametrize("plan, expected", [
    ({0: {}, 1: {}}, 0),
    ({0: {}, 1: {"exit": 1}}, 1),
    ({0: {"exit": 1}, 1: {"exit": 2, "no_report": True}}, 2),
    ({0: {}, 1: {"kill": True}}, 1),                       # killed by a signal: incomplete
    ({0: {"exit": 1}, 1: {"exit": 130}}, 130),
    ({0: {"exit": 130}, 1: {"exit": 2, "no_report": True}}, 2),
    ({0: {}, 1: {"no_report": True}}, 1),                  # exit 0 but no report: incomplete
    ({0: {}, 1: {"exit": 7}}, 1),                          # unknown codes count as incomplete
])
def test_worst_exit_code_wins(fake, plan, expected, capsys):
    runner, src, out = fake
    set_plan(src, plan)
    assert launch.main(launch_args(runner, src, out, "0,1", "--no-env-file")) == expected
    printed = capsys.readouterr().out
    if plan[1].get("kill"):
        assert "worker 1 (GPU 1) finished: killed by SIGKILL" in printed
    if plan[1].get("no_report"):
        assert "worker 1 (GPU 1): no report run_report.shard-1-of-2.json" in printed


def test_stale_report_from_an_earlier_run_does_not_count(fake, capsys):
    runner, src, out = fake
    out.mkdir()
    old = out / "run_report.shard-1-of-2.json"
    old.write_text(json.dumps({"totals": {"pdfs": 9, "pages": 99}, "pdfs": []}))
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    set_plan(src, {0: {}, 1: {"no_report": True}})
    assert launch.main(launch_args(runner, src, out, "0,1", "--no-env-file")) == 1
    merged = json.loads((out / "run_report.json").read_text())
    assert merged["totals"]["pdfs"] == 1 and "earlier run" in merged["workers"][1]["problem"]


def test_tensor_parallel_groups_gpus(fake):
    runner, src, out = fake
    set_plan(src, {})
    assert launch.main(launch_args(runner, src, out, "4,5,6,7", "--no-env-file",
                                   runner_extra=["--tensor-parallel-size", "2"])) == 0
    assert [seen(out, i)["cuda"] for i in range(2)] == ["4,5", "6,7"]
    assert seen(out, 1)["argv"][-4:] == ["--num-shards", "2", "--shard-index", "1"]


def test_single_worker_keeps_its_own_report(fake, capsys):
    runner, src, out = fake
    set_plan(src, {0: {"statuses": ["complete"]}})
    assert launch.main(launch_args(runner, src, out, "3", "--no-env-file")) == 0
    report = json.loads((out / "run_report.json").read_text())
    assert "workers" not in report and report["engine"] == {"fake": True}
    assert "1 workers, 1 PDFs: 1 complete" in capsys.readouterr().out


def test_env_file_is_sourced_for_every_worker(fake, tmp_path):
    runner, src, out = fake
    set_plan(src, {})
    env_file = tmp_path / "env.sh"
    env_file.write_text('export OCR_TEST_MARK="from env file"\n')
    assert launch.main(launch_args(runner, src, out, "0,1", "--env-file", str(env_file))) == 0
    assert [seen(out, i)["mark"] for i in range(2)] == ["from env file"] * 2


@pytest.mark.parametrize("gpus, runner_extra, message", [
    ("0,1,2,3", ["--tensor-parallel-size", "4"], "cannot split DeepSeek-OCR's 10 attention heads"),
    ("0,1,2,3", ["--tensor-parallel-size", "3"], "use one of [1, 2, 5, 10]"),
    ("0,1,2", ["--tensor-parallel-size", "2"], "3 GPUs (0,1,2) do not split into groups of"),
    ("0,1", ["--num-shards", "2"], "--num-shards is set by the launcher"),
    ("0,1", ["--shard-index=1"], "--shard-index is set by the launcher"),
    ("0,x", [], "give GPU indices separated by commas"),
    ("0,0", [], "lists a GPU twice"),
    ("0,1", ["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
])
def test_bad_launches_are_refused_before_anything_starts(fake, gpus, runner_extra, message, capsys):
    runner, src, out = fake
    assert launch.main(launch_args(runner, src, out, gpus, "--no-env-file", runner_extra=runner_extra)) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_missing_separator_and_missing_runner(fake, capsys):
    runner, src, out = fake
    assert launch.main(["--gpus", "0", "--input-dir", str(src)]) == 2
    assert "put the runner's arguments after --" in capsys.readouterr().err
    assert launch.main(launch_args(runner.with_name("nope.py"), src, out, "0")) == 2
    assert f"--runner {runner.with_name('nope.py')} does not exist" in capsys.readouterr().err
    assert launch.main(["--gpus", "0", "--python", "/no/python", "--runner", str(runner), "--", "--input-dir",
                        str(src), "--output-dir", str(out)]) == 2
    assert "--python /no/python is not an executable" in capsys.readouterr().err


def test_dry_run_prints_commands_and_starts_nothing(fake, capsys):
    runner, src, out = fake
    assert launch.main(launch_args(runner, src, out, "0,1", "--dry-run", "--no-env-file")) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[1].startswith("CUDA_VISIBLE_DEVICES=1 ") and lines[1].endswith(
        f"--num-shards 2 --shard-index 1  > {out}/logs/worker-1.log")
    assert not out.exists()


def test_exit_code_ranking():
    assert launch.worst_exit([]) == 0
    assert launch.worst_exit([0, 1, 0]) == 1
    assert launch.worst_exit([1, 130, 0]) == 130
    assert launch.worst_exit([130, 2]) == 2
    assert launch.worst_exit([0, -9]) == 1 and launch.worst_exit([0, None]) == 1 and launch.worst_exit([137]) == 1


def test_one_ctrl_c_reaches_each_worker_once(fake):
    runner, src, out = fake
    set_plan(src, {0: {"wait_signal": True}, 1: {"wait_signal": True}})
    proc = subprocess.Popen([sys.executable, str(ROOT / "launch_workers.py"),
                             *launch_args(runner, src, out, "0,1", "--no-env-file")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while not all((out / f"seen-{i}.json").exists() for i in range(2)):
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert [json.loads((out / f"signals-{i}.json").read_text()) for i in range(2)] == [[signal.SIGINT]] * 2
    assert "passing it on to the workers" in stderr and "stopped: worker 0: stopped by SIGINT" in stdout


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed")
def test_tmux_one_window_one_pane_per_worker(fake, tmp_path, monkeypatch, capsys):
    runner, src, out = fake
    sock_dir = tmp_path / "tmux"
    sock_dir.mkdir()
    monkeypatch.setenv("TMUX_TMPDIR", str(sock_dir))      # a private tmux server for this test
    monkeypatch.delenv("TMUX", raising=False)
    set_plan(src, {0: {}, 1: {"exit": 1, "statuses": ["partial"]}, 2: {}})
    try:
        rc = launch.main(launch_args(runner, src, out, "0,1,2", "--tmux", "ocrtest"))
        panes = subprocess.run(["tmux", "list-panes", "-t", "ocrtest:ocr", "-F", "#{pane_dead}"],
                               capture_output=True, text=True).stdout.split()
    finally:
        subprocess.run(["tmux", "kill-session", "-t", "ocrtest"], capture_output=True)
    assert rc == 1
    assert panes == ["1", "1", "1"]                       # three panes, kept open after the workers ended
    for i in range(3):
        assert seen(out, i)["cuda"] == str(i) and seen(out, i)["telemetry"] == "1"
        assert "--no-progress" not in seen(out, i)["argv"]
        assert f"fake worker {i} of 3 on GPU {i}" in (out / "logs" / f"worker-{i}.log").read_text()
        assert (out / "logs" / f"worker-{i}.exit").read_text().strip() == ("1" if i == 1 else "0")
    assert json.loads((out / "run_report.json").read_text())["totals"]["pdfs_partial"] == 1
    assert "tmux attach -t ocrtest" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed")
def test_tmux_pane_closed_under_a_running_worker_counts_as_incomplete(fake, tmp_path):
    runner, src, out = fake
    env = {**os.environ, "TMUX_TMPDIR": str(tmp_path)}
    env.pop("TMUX", None)
    set_plan(src, {0: {}, 1: {"wait_signal": True}})
    proc = subprocess.Popen([sys.executable, str(ROOT / "launch_workers.py"),
                             *launch_args(runner, src, out, "0,1", "--tmux", "ocrgone", "--no-env-file")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 30
        while not (out / "seen-1.json").exists():
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.05)
        panes = subprocess.run(["tmux", "list-panes", "-t", "ocrgone:ocr", "-F", "#{pane_id} #{pane_pid}"],
                               capture_output=True, text=True, env=env).stdout.split("\n")
        pane = next(p.split()[0] for p in panes if p.endswith(f" {seen(out, 1)['ppid']}"))
        subprocess.run(["tmux", "kill-pane", "-t", pane], check=True, env=env)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", "ocrgone"], capture_output=True, env=env)
    assert proc.returncode == 1, stderr
    assert "worker 1 (GPU 1) finished: no exit status (its pane or process vanished)" in stdout
    assert "worker 1 (GPU 1): no report run_report.shard-1-of-2.json" in stdout


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed")
def test_tmux_session_that_exists_is_refused(fake, tmp_path, monkeypatch, capsys):
    runner, src, out = fake
    monkeypatch.setenv("TMUX_TMPDIR", str(tmp_path))
    subprocess.run(["tmux", "new-session", "-d", "-s", "busy", "sleep 60"], check=True)
    try:
        assert launch.main(launch_args(runner, src, out, "0", "--tmux", "busy", "--no-env-file")) == 2
    finally:
        subprocess.run(["tmux", "kill-session", "-t", "busy"], capture_output=True)
    assert "tmux session busy already exists" in capsys.readouterr().err


def test_real_runner_shards_share_one_output_dir_without_clashing(tmp_path):
    """The runner names reports, manifests and logs per shard; two shards into one folder merge cleanly."""
    src, out = tmp_path / "in", tmp_path / "out"
    for k in range(5):
        make_pdf(src / f"d{k}" / "doc.pdf", numbered_pages(k % 2 + 1))
    for i in range(2):
        assert run_cli(["--input-dir", str(src), "--output-dir", str(out), "--num-shards", "2",
                        "--shard-index", str(i)]) == 0
    state = out / ".ocr-state"
    assert sorted(p.name for p in state.glob("manifest*.jsonl")) == \
        ["manifest.shard-0-of-2.jsonl", "manifest.shard-1-of-2.jsonl"]
    assert sorted(p.name.split(".", 1)[1] for p in (out / "logs").glob("run-*.log")) == \
        ["shard-0-of-2.log", "shard-1-of-2.log"]
    assert not (out / "run_report.json").exists()
    shards = merge_reports.load_shards(out, 2)
    names = [{p["pdf"] for p in s.report["pdfs"]} for s in shards]
    assert names[0] and names[1] and not names[0] & names[1]
    assert names[0] | names[1] == {f"d{k}/doc.pdf" for k in range(5)}
    assert merge_reports.main([str(out), "--num-shards", "2"]) == 0
    merged = json.loads((out / "run_report.json").read_text())
    assert merged["totals"]["pdfs_complete"] == 5 and merged["totals"]["pages"] == 7
    assert len(list(out.rglob("doc.md"))) == 5


def test_two_workers_per_gpu_share_its_memory(fake):
    """--workers-per-gpu 2: two shards on each GPU, each asking vLLM for half the memory share; a share
    the user set is kept if both fit on the GPU, refused before anything starts if not."""
    runner, src, out = fake
    set_plan(src, {})
    assert launch.main(launch_args(runner, src, out, "0,1", "--no-env-file", "--workers-per-gpu", "2")) == 0
    assert [seen(out, i)["cuda"] for i in range(4)] == ["0", "0", "1", "1"]
    for i in range(4):
        argv = seen(out, i)["argv"]
        assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.45"
        assert argv[-4:] == ["--num-shards", "4", "--shard-index", str(i)]
    out2 = out.with_name("out2")
    assert launch.main(launch_args(runner, src, out2, "3", "--no-env-file", "--workers-per-gpu", "2",
                                   runner_extra=["--gpu-memory-utilization", "0.4"])) == 0
    argv = seen(out2, 1)["argv"]
    assert argv.count("--gpu-memory-utilization") == 1 and argv[argv.index("--gpu-memory-utilization") + 1] == "0.4"


@pytest.mark.parametrize("extra, runner_extra, message", [
    (["--workers-per-gpu", "2"], ["--gpu-memory-utilization", "0.9"],
     "--gpu-memory-utilization 0.9 does not fit --workers-per-gpu 2: use at most 0.47"),
    (["--workers-per-gpu", "0"], [], "--workers-per-gpu 0: give 1 or more"),
])
def test_workers_per_gpu_that_cannot_fit_are_refused(fake, capsys, extra, runner_extra, message):
    runner, src, out = fake
    assert launch.main(launch_args(runner, src, out, "0", "--no-env-file", *extra, runner_extra=runner_extra)) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_engines_on_one_gpu_load_one_at_a_time(tmp_path, monkeypatch, caplog):
    """A runner whose GPU is busy loading another engine waits for that load (vLLM sizes its KV cache from
    the free memory it finds); on another GPU it does not wait."""
    import logging
    import subprocess

    from ocr.engines.load_lock import engine_gpus, one_load_per_gpu

    held, released = tmp_path / "held", tmp_path / "released"
    other = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; sys.path.insert(0, sys.argv[1])\n"
        "from ocr.engines.load_lock import one_load_per_gpu\n"
        "with one_load_per_gpu(['0'], Path(sys.argv[2])):\n"
        "    Path(sys.argv[3]).touch(); time.sleep(1.5); Path(sys.argv[4]).write_text(str(time.time()))\n"),
        str(Path(launch.__file__).parents[1]), str(tmp_path), str(held), str(released)])
    deadline = time.monotonic() + 30
    while not held.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    with caplog.at_level(logging.WARNING, logger="ocr.engines.load_lock"):
        start = time.monotonic()
        with one_load_per_gpu(["1"], tmp_path):
            assert time.monotonic() - start < 1.0                  # another GPU: no wait
        assert not caplog.records
        with one_load_per_gpu(["0"], tmp_path):
            entered = time.time()
    other.wait(10)
    assert entered >= float(released.read_text())                  # only once the other load was done
    assert "another runner is loading an engine on GPU 0" in caplog.text
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert engine_gpus(1) == ["3"] and engine_gpus(2) == ["3", "5"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert engine_gpus(2) == ["0", "1"]


def test_an_engine_process_forked_in_the_load_does_not_keep_the_gpu_locked(tmp_path):
    """vLLM forks its engine core inside the load and that process lives as long as the engine: the next
    runner on the GPU must get the lock once the load is over, not once the first runner's whole run is (with
    an flock it waited so: the two workers of session 14's H200 launch never ran at the same time)."""
    import multiprocessing

    from ocr.engines.load_lock import one_load_per_gpu

    with one_load_per_gpu(["0"], tmp_path):
        engine_core = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,), daemon=True)
        engine_core.start()
    try:
        probe = subprocess.run([sys.executable, "-c", (
            "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1])\n"
            "from ocr.engines.load_lock import one_load_per_gpu\n"
            "with one_load_per_gpu(['0'], Path(sys.argv[2])):\n"
            "    print('loading')\n"),
            str(Path(launch.__file__).parents[1]), str(tmp_path)], capture_output=True, text=True, timeout=30)
        assert probe.stdout.strip() == "loading" and engine_core.is_alive()
        assert "another runner is loading" not in probe.stderr
    finally:
        engine_core.kill()
        engine_core.join(5)
