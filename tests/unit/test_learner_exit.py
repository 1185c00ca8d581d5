"""Why a round failed when its learner exited badly (learner/manager.py _exit_error): a signal
(kill -9, the OOM killer) is named even when the learner left no message; otherwise its own message,
else its log's end. The live kill -9: tests/integration/test_faults.py."""

import signal
import subprocess
import sys

from learner.manager import _exit_error


def killed_rc() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    proc.send_signal(signal.SIGKILL)
    return proc.wait()


def test_a_killed_learner_is_named_with_its_signal(tmp_path):
    log = tmp_path / "learner.log"
    log.write_text("loading the model\n 50%|#####     | 1/2 [00:10<00:10, 0.1it/s]\n")
    error = _exit_error(killed_rc(), {"pid": 123, "error": None}, log)
    assert error.startswith("the learner (pid 123) was killed by SIGKILL")
    assert "nothing was published" in error and "loading the model" in error
    assert "it/s]" not in error


def test_a_learner_killed_before_writing_its_log(tmp_path):
    error = _exit_error(-signal.SIGTERM, {"pid": 7, "error": None}, tmp_path / "learner.log")
    assert "killed by SIGTERM" in error and "out-of-memory" not in error


def test_a_learner_that_failed_by_itself_keeps_its_message(tmp_path):
    (tmp_path / "learner.log").write_text("Traceback ...\nValueError: bad\n")
    assert _exit_error(1, {"pid": 7, "error": "judge unreachable"}, tmp_path / "learner.log") \
        == "judge unreachable"
    assert "ValueError: bad" in _exit_error(1, {"pid": 7, "error": None}, tmp_path / "learner.log")
