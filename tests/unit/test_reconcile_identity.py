import dataclasses
import os
import subprocess
import sys

import psutil
import pytest

from thunder_env.reconcile import OwnerIdentity


def test_current_process_is_alive_and_roundtrips() -> None:
    me = OwnerIdentity.current()
    assert OwnerIdentity.decode(me.encode()) == me
    assert OwnerIdentity.decode(me.encode()).is_alive()


def test_dead_process_and_reused_pid_are_not_alive() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    me = OwnerIdentity.current()
    assert not dataclasses.replace(me, pid=child.pid).is_alive()
    # same pid as a live process but another start time: a reused pid, so dead
    assert not dataclasses.replace(me, started=me.started - 1000).is_alive()


def test_a_wall_clock_step_does_not_make_a_live_manager_dead(monkeypatch: pytest.MonkeyPatch) -> None:
    """A clock step moves every wall-clock start time (psutil's create_time is boot time from the wall
    clock plus ticks); the identity must not move with it."""
    me = OwnerIdentity.current()
    real = psutil.Process.create_time
    monkeypatch.setattr(psutil.Process, "create_time", lambda self: real(self) + 1.0)
    assert OwnerIdentity.decode(me.encode()).is_alive()


def test_another_boot_is_dead_and_another_pid_namespace_is_never_judged() -> None:
    me = OwnerIdentity.current()
    assert not dataclasses.replace(me, boot_id="an-earlier-boot").is_alive()
    # A manager in a container (same hostname with host networking): its pid 1 is not our pid 1.
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert dataclasses.replace(me, pid_ns="4026599999", pid=child.pid).is_alive()


def test_labels_of_older_versions_still_decode() -> None:
    me = OwnerIdentity.current()
    legacy = OwnerIdentity.decode(f"{me.host}/{os.getpid()}/{psutil.Process().create_time():.2f}")
    assert legacy is not None and legacy.is_alive()
    assert not OwnerIdentity.decode(f"{me.host}/{os.getpid()}/12.00").is_alive()


def test_garbage_label_decodes_to_none() -> None:
    assert OwnerIdentity.decode("nonsense") is None
    assert OwnerIdentity.decode("h/b/n/pid/ticks") is None
