"""An output path that names a FIFO, socket or device is refused, even with ``--force``: the atomic
write renames a finished temporary file over it, which replaced ``/dev/null`` (given as
``--checkpoint``, run as root) with a regular file."""

from __future__ import annotations

import os
import stat

import pytest

from edgesnn.atomic import check_output
from edgesnn.cli import main


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("force", [False, True])
def test_check_output_refuses_a_fifo(fifo, force):
    with pytest.raises(FileExistsError, match=r"^--json: .*fifo is not a regular file \(a device, FIFO or socket\)"):
        check_output(fifo, "--json", force=force)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_plan_json_on_a_fifo_with_force_exits_2_and_leaves_it(fifo, capsys):
    assert main(["plan", "--model", "mlp", "--input", "64", "-T", "2", "--batch", "8", "--json", str(fifo), "--force"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgesnn plan: error: --json:") and "not a regular file" in err and "\n" not in err
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
