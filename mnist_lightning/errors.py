"""Errors that describe a user's mistake; the CLI prints them as one message, without a traceback."""


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


def causes(err: BaseException) -> list[BaseException]:
    """`err` and the exceptions behind it (each one's cause, else its context), outermost first, each once."""
    chain: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain
