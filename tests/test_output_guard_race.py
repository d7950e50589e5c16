"""Two writers replacing the same output at once (two ``--force`` / ``--resume`` runs of one
checkpoint, or of one ``edgesnn-device --out``): each checked that the path still held what it
found, then renamed its own over it; both could pass the check before either renamed, and one
write was lost without a word (an audit saw it in 10-22 of 200-300 tries of two processes). The
check and the rename now run under one lock on the output's folder, so the second writer sees the
first one's file and stops with ``OutputChanged``. Made deterministic here: the first writer
pauses between its check and its rename while the second one writes."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from edgesnn import output_guard
from edgesnn.atomic import atomic_write, replace_dir
from edgesnn.errors import OutputChanged
from edgesnn.output_guard import guarded


def _race(place) -> dict:
    """Writers A and B at once: B starts once A has checked (A's pause, installed by the test, sets
    ``CHECKED`` then sleeps 0.3 s before its rename). Returns ``{"A": "ok" | "conflict", "B": ...}``;
    ``place(tag)`` writes tag's output."""
    result = {}

    def run(tag):
        if tag == "B":
            CHECKED.wait(5)
        try:
            place(tag)
            result[tag] = "ok"
        except OutputChanged:
            result[tag] = "conflict"

    threads = [threading.Thread(target=run, args=(tag,), name=tag) for tag in "AB"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return result


CHECKED = threading.Event()


def _pause_in_a():
    if threading.current_thread().name == "A":
        CHECKED.set()
        time.sleep(0.3)  # between the check and the rename


def test_two_writers_of_one_file_cannot_both_replace_it(tmp_path, monkeypatch):
    target = tmp_path / "ck.pt"
    target.write_bytes(b"old")
    real_stamp = output_guard.file_stamp
    CHECKED.clear()

    def slow_stamp(path):
        stamp = real_stamp(path)
        if Path(path) == target:
            _pause_in_a()
        return stamp

    monkeypatch.setattr(output_guard, "file_stamp", slow_stamp)
    guards = {tag: guarded(target, "--checkpoint") for tag in "AB"}
    result = _race(lambda tag: atomic_write(guards[tag], lambda fh: fh.write(tag.encode() * 4)))
    assert sorted(result.values()) == ["conflict", "ok"], result
    winner = next(tag for tag, r in result.items() if r == "ok")
    assert target.read_bytes() == winner.encode() * 4
    kept = sorted(p.name for p in tmp_path.iterdir() if p.name != "ck.pt")
    assert len(kept) == 1 and kept[0].startswith("ck.conflict-")  # the loser's write is kept beside it


def test_two_writers_of_one_folder_cannot_both_swap_it(tmp_path, monkeypatch):
    target = tmp_path / "out"
    target.mkdir()
    (target / "metrics.json").write_text("old")
    real_check = output_guard.GuardedDir.check_swap
    CHECKED.clear()

    def slow_check(self, tmp, real):
        held = real_check(self, tmp, real)
        _pause_in_a()
        return held

    monkeypatch.setattr(output_guard.GuardedDir, "check_swap", slow_check)
    guards = {tag: guarded(target, "--out", directory=True) for tag in "AB"}
    result = _race(lambda tag: replace_dir(guards[tag], lambda d: (d / "metrics.json").write_text(tag)))
    assert sorted(result.values()) == ["conflict", "ok"], result
    winner = next(tag for tag, r in result.items() if r == "ok")
    assert (target / "metrics.json").read_text() == winner


def test_the_lock_does_not_block_writers_of_other_folders(tmp_path):
    from edgesnn.file_locks import placement_lock

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with placement_lock(tmp_path / "a" / "ck.pt"):
        atomic_write(guarded(tmp_path / "b" / "ck.pt", "--checkpoint"), lambda fh: fh.write(b"x"))
    assert (tmp_path / "b" / "ck.pt").read_bytes() == b"x"


def test_a_guarded_write_waits_for_the_folder_lock(tmp_path):
    """While another process (here: another open of the folder) holds the lock, a guarded write waits."""
    from edgesnn.file_locks import placement_lock

    target = tmp_path / "ck.pt"
    done = threading.Event()
    with placement_lock(target):
        t = threading.Thread(target=lambda: (atomic_write(guarded(target, "--checkpoint"), lambda fh: fh.write(b"y")),
                                             done.set()))
        t.start()
        assert not done.wait(0.3)  # blocked on the lock
    t.join(5)
    assert done.is_set() and target.read_bytes() == b"y"
