"""Why ONNX cannot take a net, in one line that names the problem and the fix (for `export --format onnx`).

The exporter (`torch.onnx.export`, built on `torch.export`) refuses some nets that train and predict well:
control flow that depends on the input's values, ops without an ONNX function; it silently fixes the batch
size when the net takes it as a Python number; and onnxruntime may lack a kernel for what was exported.
Each of these is the user's net, not a bug here, so each ends as a `UserInputError` (exit code 2); the
exporter's own diagnostics (pages of graph dumps on stderr) are kept off the console.
"""

from __future__ import annotations

import contextlib
import io
import re
import sysconfig
import traceback
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

from mnist_lightning.errors import UserInputError, exception_chain, first_line

TORCHSCRIPT = "use --format torchscript (it compiles the net's Python as written)"
NOTHING_WRITTEN = "nothing was written"
_NOT_USER_CODE = (str(Path(torch.__file__).parent), sysconfig.get_paths()["stdlib"])


@contextlib.contextmanager
def exporter_diagnostics_kept_quiet() -> Iterator[None]:
    """The exporter prints graph dumps and warnings on stderr (and stdout) for each strategy it tries before it
    gives up; the one line that `export_failure` makes of the error says what the user needs."""
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        yield


def _plain(text: str) -> str:
    """`text` without terminal colour codes (the exporter colours its messages)."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _user_line(err: BaseException) -> str:
    """' (FILE:LINE `code`)': the last line of the traceback of `err` outside torch and Python's own library,
    i.e. the net's line that raised it; '' when there is none."""
    frames = [f for f in traceback.extract_tb(err.__traceback__) if not f.filename.startswith(_NOT_USER_CODE)]
    if not frames:
        return ""
    frame = frames[-1]
    return f" ({Path(frame.filename).name}:{frame.lineno} `{(frame.line or '').strip()}`)"


def export_failure(err: torch.onnx.OnnxExporterError) -> UserInputError:
    """The one line for an exporter's refusal of the net."""
    chain = list(exception_chain(err))
    for cause in chain:
        if isinstance(cause, GuardOnDataDependentSymNode):
            return UserInputError(
                "ONNX export cannot trace the net: its forward branches on the values of its "
                f"input{_user_line(cause)}, "
                f"which a traced graph cannot hold: {NOTHING_WRITTEN}; {TORCHSCRIPT}, or write the branch with "
                "torch.where.")
        missing = re.search(r"No ONNX function found for <OpOverload\(op='([^']+)'", str(cause))
        if missing:
            return UserInputError(f"ONNX export cannot convert the net: it uses {missing.group(1)}, which has no ONNX "
                                  f"equivalent: {NOTHING_WRITTEN}; {TORCHSCRIPT}.")
    return UserInputError(f"ONNX export cannot convert the net ({_plain(first_line(chain[-1]))}): {NOTHING_WRITTEN}; "
                          f"{TORCHSCRIPT}.")


def fixed_batch_size(model: bytes) -> int | None:
    """The batch size an exported model is fixed to (its input's first dimension is a number, not a name), or None."""
    import onnx

    dim = onnx.load_model_from_string(model).graph.input[0].type.tensor_type.shape.dim[0]
    return dim.dim_value if dim.HasField("dim_value") else None


def refuse_fixed_batch(model: bytes) -> None:
    """An export that takes only the example's batch size would fail on every other batch: refused, naming the cause."""
    size = fixed_batch_size(model)
    if size is not None:
        raise UserInputError(
            f"the ONNX export takes only batches of {size}: the net reshapes with a fixed batch size (the batch size "
            f"as a Python number, e.g. x.reshape(int(x.shape[0]), -1) or len(x)): {NOTHING_WRITTEN}; use x.flatten(1) "
            f"(or x.view(x.size(0), -1)), or {TORCHSCRIPT}.")


def onnxruntime_errors() -> tuple[type[Exception], ...]:
    """The exceptions onnxruntime raises for a model it cannot load or run (its pybind11 error classes)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return tuple(v for v in vars(state).values() if isinstance(v, type) and issubclass(v, Exception))


def runtime_failure(err: Exception) -> UserInputError:
    """The one line for onnxruntime refusing the exported model (an op or a type without a CPU kernel)."""
    reason = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", first_line(err))
    return UserInputError(f"onnxruntime cannot run the exported model ({reason}): {NOTHING_WRITTEN}; {TORCHSCRIPT}.")
