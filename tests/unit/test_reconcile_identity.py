import os
import subprocess
import sys

from thunder_env.reconcile import OwnerIdentity


def test_current_process_is_alive_and_roundtrips() -> None:
    me = OwnerIdentity.current()
    assert OwnerIdentity.decode(me.encode()) == OwnerIdentity(me.host, me.pid, round(me.started, 2))
    assert OwnerIdentity.decode(me.encode()).is_alive()


def test_dead_process_and_reused_pid_are_not_alive() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    me = OwnerIdentity.current()
    assert not OwnerIdentity(me.host, child.pid, me.started).is_alive()
    # same pid as a live process but another start time: a reused pid, so dead
    assert not OwnerIdentity(me.host, os.getpid(), me.started - 1000).is_alive()


def test_garbage_label_decodes_to_none() -> None:
    assert OwnerIdentity.decode("nonsense") is None
