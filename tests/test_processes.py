"""Child programs end with the stage that started them, including when it dies before they are set up."""

import os
import signal
import subprocess
import sys

from conftest import gone

from ecommerce_slm.processes import ends_with_this_process


def test_a_child_whose_starter_is_already_gone_ends_before_it_runs(tmp_path):
    """The window between fork and prctl: the starter died, the kernel will never signal; the child checks."""
    marker = tmp_path / "ran"
    gone_starter = os.getppid()  # any pid but the child's real parent (this process) stands for a dead one
    done = subprocess.run(
        [sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"],
        preexec_fn=ends_with_this_process(parent=gone_starter),
    )
    assert done.returncode == -signal.SIGKILL
    assert not marker.exists()


def test_a_child_of_a_living_starter_runs():
    done = subprocess.run(
        [sys.executable, "-c", "print('ran')"], capture_output=True, text=True, preexec_fn=ends_with_this_process()
    )
    assert (done.returncode, done.stdout) == (0, "ran\n")


def test_a_child_gets_its_signal_when_the_starter_is_killed():
    code = (
        "import subprocess, sys, time\n"
        "from ecommerce_slm.processes import ends_with_this_process\n"
        "child = subprocess.Popen(['sleep', '600'], preexec_fn=ends_with_this_process())\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    starter = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        child = int(starter.stdout.readline())
    finally:
        starter.send_signal(signal.SIGKILL)
        starter.wait()
    assert gone(child), f"pid {child} outlived the process that started it"
