"""bench/profile_split.py: py-spy samples of the engine core split into the engine's stages."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import profile_split  # noqa: E402

V = "/venv/lib/python3.12/site-packages/vllm"
RAW = f"""\
thread (11): MainThread;run_busy_loop ({V}/v1/engine/core.py:900);step ({V}/v1/engine/core.py:400);execute_model ({V}/v1/worker/gpu/model_runner.py:1719);_execute_mm_encoder ({V}/v1/worker/gpu/mm/encoder_runner.py:80);forward ({V}/model_executor/models/deepencoder.py:300) 49
thread (11): MainThread;run_busy_loop ({V}/v1/engine/core.py:900);step ({V}/v1/engine/core.py:400);sample_tokens ({V}/v1/worker/gpu/model_runner.py:2088);apply ({V}/v1/worker/gpu/sample/logits_processor/state.py:10);apply (/repo/ocr/engines/ngram.py:120) 16
thread (11): MainThread;run_busy_loop ({V}/v1/engine/core.py:900);step ({V}/v1/engine/core.py:400);sample_tokens ({V}/v1/worker/gpu/model_runner.py:2088);sample ({V}/v1/worker/gpu/sample/sampler.py:50) 5
thread (11): MainThread;run_busy_loop ({V}/v1/engine/core.py:900);step ({V}/v1/engine/core.py:400);schedule ({V}/v1/core/sched/scheduler.py:300) 2
thread (11): MainThread;run_busy_loop ({V}/v1/engine/core.py:900);_process_input_queue ({V}/v1/engine/core.py:950);get (/usr/lib/python3.12/queue.py:180) 8
thread (11): MainThread;something_new (x.py:1) 20
thread (12): Thread-1 (process_input_sockets);poll (/zmq/sugar/poll.py:100) 100
"""


def test_each_sample_goes_to_the_first_matching_stage_of_the_main_thread(tmp_path, capsys):
    raw = tmp_path / "core.txt"
    raw.write_text(RAW)
    out = tmp_path / "split.json"
    assert profile_split.main([str(raw), "--json", str(out)]) == 0
    split = json.loads(out.read_text())
    assert split["samples"] == 100                      # the socket thread's 100 samples are left out
    shares = split["split"]
    assert shares == {"vision encoder": 0.49, "other": 0.20, "logits processors (n-gram guard)": 0.16,
                      "waiting for work (input queue, sockets)": 0.08, "sampler": 0.05, "scheduler": 0.02}
    assert list(shares)[0] == "vision encoder"           # largest first
    assert "49.0%  vision encoder" in capsys.readouterr().out


def test_all_threads_counts_every_thread(tmp_path):
    raw = tmp_path / "core.txt"
    raw.write_text(RAW)
    stacks = profile_split.parse(raw.read_text())
    assert sum(n for _, n in stacks) == 200
    assert profile_split.split(stacks)["waiting for work (input queue, sockets)"] == 108 / 200


def test_no_samples_is_an_error(tmp_path, capsys):
    raw = tmp_path / "empty.txt"
    raw.write_text("")
    assert profile_split.main([str(raw)]) == 1
    assert "no samples" in capsys.readouterr().err
