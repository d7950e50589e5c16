"""README.md's commands against the code, without training anything.

* every ``--flag`` of an ``edgesnn <sub> ...`` / ``edgesnn-device ...`` command the README shows (its
  ``bash`` blocks and inline code) is an option of that command's parser;
* every ``python`` block runs as it stands, in a fresh interpreter;
* the micro-batch example (*Micro-batches*, "With a plan") quotes the figures ``edgesnn plan`` prints
  for the command it names, and its ``edgesnn train --micro-batch`` is within them.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
from pathlib import Path
from typing import Dict, List, Set, Tuple

from edgesnn import cli

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
SUBCOMMANDS = ("train", "export", "warmup", "plan")
_FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*|-T)(?![\w-])")


def _snippets() -> List[str]:
    """Every ``bash`` block line (continuations joined, comments dropped) and every inline code span."""
    out: List[str] = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            out.append(line.split("  #", 1)[0])
    prose = re.sub(r"```.*?```", "", README, flags=re.S)
    out += [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose)]
    return out


def _commands() -> List[Tuple[str, str, str]]:
    """(command, its text from the command name on, the snippet) for each edgesnn command shown."""
    found = []
    for snip in _snippets():
        for part in re.split(r"&&|;", snip):
            m = re.search(r"(?:^|\s)(edgesnn-device|edgesnn)\s+(.*)$", part.strip())
            if not m:
                continue
            name, rest = m.groups()
            if name == "edgesnn":
                sub = rest.split()[0] if rest.split() else ""
                if sub not in SUBCOMMANDS:
                    continue
                name = f"edgesnn {sub}"
            found.append((name, rest, snip))
    return found


def _options(command: str) -> Set[str]:
    if command == "edgesnn-device":
        from edgesnn.export.runner import build_parser

        parser = build_parser()
    else:
        top = cli.build_parser(command.split()[1])
        sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[command.split()[1]]
    return {s for a in parser._actions for s in a.option_strings}


def test_readme_shows_the_main_commands():
    shown = {name for name, _, _ in _commands()}
    assert {"edgesnn train", "edgesnn export", "edgesnn plan", "edgesnn warmup", "edgesnn-device"} <= shown


def test_every_flag_of_a_readme_command_is_accepted():
    options: Dict[str, Set[str]] = {}
    unknown = []
    for name, rest, snip in _commands():
        known = options.setdefault(name, _options(name))
        unknown += [f"{name} {flag}  (in: {snip})" for flag in _FLAG.findall(rest) if flag not in known]
    assert not unknown, "README flags no parser takes:\n" + "\n".join(unknown)


def test_readme_micro_batch_example_matches_the_plan(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "SUBCOMMANDS", ["edgesnn.planner.cli"])
    text = " ".join(README[README.index("With a plan: `edgesnn plan`"):].split())
    m = re.search(r"\(VGG-11, T = (\d+), `([^`]+)`: batch (\d+), parts of at most (\d+)\)", text)
    assert m, "the micro-batch example's wording changed: update this test"
    timesteps, flags, batch, parts = m.group(1), shlex.split(m.group(2)), int(m.group(3)), int(m.group(4))
    out = tmp_path / "plan.json"
    argv = ["plan", "--model", "vgg11", "--input", "3,32,32", "-T", timesteps, *flags, "--json", str(out)]
    assert cli.main(argv) == 0
    capsys.readouterr()
    doc = json.loads(out.read_text())
    assert (doc["batch"], doc["predicted"]["micro_batch"]) == (batch, parts)
    train = re.search(r"`edgesnn train --plan plan\.json --batch-size (\d+) --micro-batch (\d+)`", text)
    assert train and int(train.group(2)) <= parts < int(train.group(1))


def test_every_python_snippet_of_the_readme_runs(tmp_path):
    # a newcomer copies them as they stand: no name left for the reader to fill in
    import os
    import subprocess
    import sys

    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert len(blocks) >= 2
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for i, block in enumerate(blocks):
        p = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=600)
        assert p.returncode == 0, f"README python block {i}:\n{block}\n{p.stderr[-2000:]}"
