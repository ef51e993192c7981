"""A run directory belongs to one live process; a failed state write leaves the previous state intact."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import FAST_TRAINER, TinyClassifier, blobs

import lightning_al as al
from lightning_al import run_state
from lightning_al.run_lock import RunDirectoryLock, RunDirectoryLocked
from lightning_al.run_state import STATE_FILE, load_state, save_atomic
from lightning_al.strategies import Entropy


def make_run(output_dir, rounds: int = 1) -> tuple[al.ActiveLearningLoop, al.ActiveDataModule]:
    dm = al.ActiveDataModule(blobs(60, seed=0), test_set=blobs(30, seed=1), initial_labelled=10, batch_size=8, seed=0)
    loop = al.ActiveLearningLoop(
        strategy=Entropy(),
        query_size=5,
        rounds=rounds,
        trainer_kwargs=FAST_TRAINER,
        output_dir=str(output_dir),
        progress=False,
    )
    return loop, dm


HOLDER = textwrap.dedent(
    """
    import sys, time
    from lightning_al.run_lock import RunDirectoryLock
    RunDirectoryLock(sys.argv[1]).acquire()
    print("held", flush=True)
    time.sleep(120)
    """
)


@pytest.fixture
def holder(tmp_path):
    """A second process holding ``tmp_path / 'run'``, killed with SIGKILL at the end (or by the test)."""
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    yield process
    process.kill()
    process.wait(timeout=30)


def test_a_second_process_is_refused_with_the_holder_named(tmp_path, holder):
    loop, dm = make_run(tmp_path / "run")
    with pytest.raises(RunDirectoryLocked, match=rf"pid {holder.pid} on {socket.gethostname()} since 20\d\d-"):
        loop.run(TinyClassifier(), dm)
    assert not (tmp_path / "run" / STATE_FILE).exists()  # refused before anything was written


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path, holder, capsys):
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    assert (tmp_path / "run" / ".lock").read_text()  # the dead holder's record is still there
    loop, dm = make_run(tmp_path / "run")
    history = loop.run(TinyClassifier(), dm)
    assert [row["num_labelled"] for row in history] == [10, 15]
    assert f"left by pid {holder.pid}" in capsys.readouterr().out
    assert (tmp_path / "run" / ".lock").read_text() == ""  # released cleanly at the end
    with RunDirectoryLock(tmp_path / "run") as lock:  # and free for the next run
        assert lock.held


def test_the_lock_is_held_during_the_run_and_released_on_pending_labels(tmp_path):
    seen = []

    class Peeking:
        def answer(self, query):
            with pytest.raises(RunDirectoryLocked, match=f"pid {os.getpid()}"):
                RunDirectoryLock(tmp_path / "run").acquire()  # another open of the file: refused while running
            seen.append(query.round)
            raise al.oracles.LabelsPending("later")

    loop, dm = make_run(tmp_path / "run")
    loop.oracle = Peeking()
    loop.run(TinyClassifier(), dm)
    assert seen == [0]
    with RunDirectoryLock(tmp_path / "run") as lock:
        assert lock.held


def test_a_failed_write_keeps_the_previous_state_and_names_the_cause(tmp_path, monkeypatch):
    path = tmp_path / STATE_FILE
    save_atomic({"format": run_state.FORMAT, "round": 1}, path)
    before = path.read_bytes()

    def disk_full(obj, handle):
        handle.write(b"half a state")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(run_state.torch, "save", disk_full)
    with pytest.raises(OSError, match=r"Could not save the run state to .*No space left on device.*previous state"):
        save_atomic({"format": run_state.FORMAT, "round": 2}, path)
    assert path.read_bytes() == before
    assert load_state(path)["round"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_FILE]  # no temporary file left behind


def test_a_real_failed_write_past_the_file_size_limit_keeps_the_previous_state(tmp_path):
    script = textwrap.dedent(
        """
        import resource, signal, sys, torch
        from lightning_al.run_state import FORMAT, load_state, save_atomic
        path = sys.argv[1]
        save_atomic({"format": FORMAT, "round": 1}, path)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))
        try:
            save_atomic({"format": FORMAT, "round": 2, "big": torch.zeros(1 << 16)}, path)
        except OSError as error:
            print(error)
        print(load_state(path)["round"])
        """
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / STATE_FILE)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    message, round = done.stdout.strip().splitlines()
    assert "Could not save the run state" in message and "previous state there is intact" in message
    assert round == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_FILE]


def test_the_pool_state_is_unchanged_by_a_failed_save_during_a_run(tmp_path, monkeypatch):
    loop, dm = make_run(tmp_path / "run", rounds=2)
    calls = {"n": 0}
    real_save = torch.save

    def fail_second(obj, handle):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, handle)

    monkeypatch.setattr(run_state.torch, "save", fail_second)
    with pytest.raises(OSError, match="No space left on device"):
        loop.run(TinyClassifier(), dm)
    saved = load_state(tmp_path / "run" / STATE_FILE)
    assert saved["loop"]["round"] == 1 and len(saved["loop"]["history"]) == 1
    monkeypatch.setattr(run_state.torch, "save", real_save)
    loop2, dm2 = make_run(tmp_path / "run", rounds=2)
    history = loop2.run(TinyClassifier(), dm2, resume=True)  # the lock was released by the failed run
    assert [row["num_labelled"] for row in history] == [10, 15, 20]
