"""The training progress bar is drawn only on a terminal: a run whose stderr is a file or a pipe
(``nohup``, a service on a board, CI) logged every redraw of the bar before (about 20 lines of
``it/s`` per epoch on digits), beside the per-epoch lines it keeps."""

from __future__ import annotations

import io

from edgesnn.cli import main
from edgesnn.training import loop


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_no_progress_bar_when_stderr_is_not_a_terminal(capsys):
    assert main(["train", "--epochs", "1", "--max-steps", "3", "--batch-size", "32"]) == 0
    out, err = capsys.readouterr()
    assert "it/s" not in err and "%|" not in err, err[-500:]
    assert "epoch 1/1" in out + err  # the epoch line is still logged


def test_progress_bar_on_a_terminal(monkeypatch):
    term = _Terminal()
    monkeypatch.setattr("sys.stderr", term)
    bar = loop._progress_bar(3, "epoch 1/1")
    for _ in range(3):
        bar.update(1)
    bar.close()
    assert "epoch 1/1" in term.getvalue() and "it/s" in term.getvalue()  # drawn (redraws are throttled)
