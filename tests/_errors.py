"""Shared by tests that check a one-line error."""

from __future__ import annotations

import pytest


def one_line_error(exc_type, fn, *needles: str) -> str:
    """Call ``fn``; it must raise ``exc_type`` with a one-line message containing every needle.
    Returns the message."""
    with pytest.raises(exc_type) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, msg
    return msg
