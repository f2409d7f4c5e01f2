"""Small defects of issue 17 (point 9 and its "Also" line), one test each: `byzctl list`
shows docs as written, `byzctl --help` names every list kind, a refused run records when
it started before when it ended, SIGTERM never leaves a traceback in a node's log, and a
failure reason quotes the node's own last line, not the launcher's note.

(The report's warning for rounds < eval_every is in test_report.py; the stray
outputs/<date>/<time>/ of a resume in test_resume_safety.py.)
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SMALL, byzctl, read

from byzctl.catalog import KINDS
from byzctl.cli import USAGE, main
from byzctl.launch.local import _last_line

slow = pytest.mark.slow


def test_list_shows_square_brackets_in_docs_as_written(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # one line per row: nothing wrapped
    assert main(["list", "attacks"]) == 0
    out = capsys.readouterr().out
    assert "argmax_{z in [low, high]} ||" in out
    assert "argmax_{eps in [low, high]} ||" in out


def test_help_lists_every_list_kind(capsys):
    assert main(["--help"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.strip().startswith("list KIND"))
    kinds = line.split()[-1].split("|")
    assert sorted(kinds) == sorted(KINDS), line
    assert "|".join(kinds) in USAGE


def test_a_refused_run_records_when_it_started_before_when_it_ended(tmp_path):
    before = time.time()
    proc = byzctl("run", "lr=0", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, timeout=240)
    assert proc.returncode == 2, proc.stderr
    text = (tmp_path / "run" / "run.json").read_text()
    info = json.loads(text)
    assert info["state"] == "FAILED" and "lr=0" in info["reason"]
    assert before <= info["started"] <= info["ended"] <= time.time()
    assert list(info).index("started") < list(info).index("ended")


# -- SIGTERM ------------------------------------------------------------------------------------
FINALIZER = """
import sys, time
from byzctl.node.main import handle_sigterm

handle_sigterm()

class Slow:
    def __del__(self):
        print("in finalizer", flush=True)
        time.sleep(3)  # SIGTERM lands here, where a raised exception can only be printed

x = Slow()
del x
print("after finalizer", flush=True)
time.sleep(60)
"""


def test_sigterm_inside_a_finalizer_exits_143_without_a_traceback(tmp_path):
    script = tmp_path / "finalizer.py"
    script.write_text(FINALIZER)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "in finalizer"
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=60)
    out = proc.stdout.read()
    assert code == 143, out
    assert "Traceback" not in out and "SystemExit" not in out and "Exception ignored" not in out, out


def test_a_second_sigterm_while_stopping_is_quiet(tmp_path):
    script = tmp_path / "twice.py"
    script.write_text(
        "import os, signal, time\nfrom byzctl.node.main import handle_sigterm\nhandle_sigterm()\nprint('ready', flush=True)\n"
        "try:\n    time.sleep(60)\nfinally:\n    print('stopping', flush=True)\n    time.sleep(2)\n    print('stopped', flush=True)\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    assert proc.stdout.readline().strip() == "stopping"
    proc.send_signal(signal.SIGTERM)  # the launcher's reap of the process group
    assert proc.wait(timeout=60) == 143
    out = proc.stdout.read()
    assert "stopped" in out and "Traceback" not in out, out


# -- failure reasons ----------------------------------------------------------------------------
def test_a_failure_reason_skips_the_launchers_own_notes(tmp_path):
    log = tmp_path / "0.log"
    log.write_text(
        "2026-12-03 07:24:50,001 ERROR node0: failed: out of memory\n"
        "2026-12-03 07:24:51 launcher: node 0 lost: exited with code -9\n\n")
    assert _last_line(log) == "2026-12-03 07:24:50,001 ERROR node0: failed: out of memory"
    log.write_text("2026-12-03 07:24:51 launcher: node 0 lost: exited with code -9\n")
    assert _last_line(log) == f"nothing in its log ({log})"


@slow
def test_a_sigtermed_relay_fails_the_run_with_its_own_words_and_no_traceback(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "byzctl", "run", *SMALL, "topology=hub", "rounds=100000",
                             f"hydra.run.dir={out}"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while not ((out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text().strip()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.stdout else ""
        time.sleep(0.2)
    relay = read(out / "run.json")["pids"]["5"]
    subprocess.run(["kill", "-TERM", str(relay)], check=True)
    assert proc.wait(timeout=120) == 1
    info = read(out / "run.json")
    assert info["state"] == "FAILED" and info["reason"].startswith("node 5 (relay/relay) exited with code 143: ")
    assert "stopped by SIGTERM" in info["reason"] and "launcher:" not in info["reason"], info["reason"]
    text = (out / "nodes" / "5.log").read_text()
    assert "Traceback" not in text and "SystemExit" not in text, text
    assert Path(out / "nodes" / "5.log").read_text().rstrip().splitlines()[-1].split(" ", 2)[2].startswith("launcher: node 5 lost")
