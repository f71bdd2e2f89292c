"""Errors that describe a user's mistake; the CLI prints them as one message, without a traceback."""

from __future__ import annotations

from collections.abc import Iterator


class UserInputError(ValueError):
    """A bad path, file, value or checkpoint: the message names the problem and the fix."""


class DataFileError(UserInputError):
    """A dataset file is missing, truncated, corrupt or not the official one."""


class CheckpointError(UserInputError):
    """A checkpoint is missing, truncated, unsafe to load, or from another architecture."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message, or its type where the message is empty."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def exception_chain(err: BaseException | None) -> Iterator[BaseException]:
    """`err` and the exceptions behind it (its causes and contexts), each once."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        yield err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
