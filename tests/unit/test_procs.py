"""dynalign/procs.py: stopping a child's whole process group, with real processes."""

import signal
import subprocess
import sys
import time

from dynalign.procs import alive, group_alive, signal_group, stop_group

# a leader that starts a grandchild in its group, then waits on stdin forever
LEADER = ("import subprocess, sys\n"
          "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
          "print(child.pid, flush=True)\n"
          "sys.stdin.read()\n")


def start(code: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    return proc, int(proc.stdout.readline())


def test_stop_group_stops_the_leader_and_what_it_started():
    proc, grandchild = start(LEADER)
    assert alive(grandchild) and group_alive(proc.pid)
    assert stop_group(proc, signal.SIGTERM, grace=30) is True
    assert proc.returncode is not None and not group_alive(proc.pid) and not alive(grandchild)


def test_a_group_that_ignores_the_first_signal_is_killed_after_the_grace():
    proc, grandchild = start("import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                             + LEADER)
    assert stop_group(proc, signal.SIGTERM, grace=0.5) is False
    assert proc.returncode == -signal.SIGKILL
    gone(proc.pid)  # the orphaned grandchild, killed too, is reaped by init: poll


def gone(group: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while group_alive(group):
        assert time.monotonic() < deadline, f"process group {group} still alive"
        time.sleep(0.05)


def test_gone_processes_and_groups():
    proc, _ = start(LEADER)
    stop_group(proc)
    assert not alive(proc.pid) and not alive(None) and not alive(0)
    assert signal_group(proc.pid, signal.SIGTERM) is False and signal_group(None, 0) is False
