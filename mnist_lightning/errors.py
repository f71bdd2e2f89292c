"""Errors that describe a user's mistake, and the few helpers every layer uses to read or quiet what it raised.

The CLI prints a `UserInputError` as one line, `error: ...`, with exit code 2; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

E = TypeVar("E", bound=BaseException)


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


def found_in_chain(err: BaseException | None, kind: type[E]) -> E | None:
    """The first exception of `kind` in `err`'s chain: e.g. a `UserInputError` that jsonargparse or Lightning
    wrapped in an error of its own."""
    return next((e for e in exception_chain(err) if isinstance(e, kind)), None)


def raised_by(err: BaseException, *modules: str) -> bool:
    """Whether the innermost frame of `err`'s traceback is code of one of `modules` (a name or a package prefix
    ending in '.'): the library's own check, not code it called."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    name = tb.tb_frame.f_globals.get("__name__", "") if tb is not None else ""
    return any(name == m or (m.endswith(".") and name.startswith(m)) for m in modules)


@contextmanager
def quiet_warnings(*messages: str, category: type[Warning] = Warning) -> Iterator[None]:
    """Ignore the warnings whose message matches one of `messages` (regular expressions), inside the block only,
    never process-wide."""
    with warnings.catch_warnings():
        for message in messages:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield
