"""Export a checkpoint's net for serving, without Lightning: TorchScript or ONNX.

    python -m mnist_lightning export --ckpt_path CKPT --format torchscript --output mnist.pt
    python -m mnist_lightning export --ckpt_path CKPT --format onnx --output mnist.onnx   # pip install -e ".[onnx]"

The exported model is the checkpoint's net (any `nn.Module`) in eval mode (dropout off, batch-norm statistics
frozen): it takes what `MNISTClassifier.forward` takes, a float batch (N, 1, 28, 28) of any N, scaled like the
run's training data (`x / 255`, then `(x - mean) / std` if the run normalised; the export prints
which), and returns logits (N, classes). A run trained on deskewed digits (`--data.deskew true`)
exports with `mnist_lightning.data.deskew.Deskew` as its first layer, so the file still takes the
scaled pixels and needs no preprocessing code beside it. After writing, the export is loaded back
and its logits are compared with the checkpoint's on a random batch, before the file is written.
The ONNX check needs onnxruntime; without it the file is written and the check is skipped, saying so.

The export is serialised in memory, then written with `resume.write_atomically` (temporary file,
fsync, rename): a full disk or a crash never leaves a truncated file over a good one, and an
output that is the checkpoint itself (by name, link or default name), another checkpoint or a run's
record (`config.yaml`, ...: mnist_lightning/outputs.py) is refused before anything is written. A
previous export is replaced. Nothing else is written: no log folder.

TorchScript is deprecated upstream in recent PyTorch releases (its FutureWarnings are silenced
here); it still loads with `torch.jit.load` and needs no Python class. ONNX is the portable choice.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mnist_lightning import onnx_refusals
from mnist_lightning.atomic import write_atomically
from mnist_lightning.checkpoints.files import load_checkpoint_file
from mnist_lightning.checkpoints.trust import resolve_class_path
from mnist_lightning.data.deskew import Deskew
from mnist_lightning.data.idx import DATASETS
from mnist_lightning.errors import CheckpointError, UserInputError, exception_chain, first_line
from mnist_lightning.models.classifier import MNISTClassifier
from mnist_lightning.models.fast import FastMNISTClassifier  # noqa: F401 - imported, so checkpoint_class finds it
from mnist_lightning.outputs import refuse_run_file, what_a_run_owns

FORMATS = ("torchscript", "onnx")
SUFFIXES = {"torchscript": ".pt", "onnx": ".onnx"}
# The self-check after writing: max abs difference of logits on a random batch. A broken export is
# off by whole units; float32 reordering (ONNX Runtime fuses ops) by ~1e-6 per 10 of logit size.
# On test images the two agree within 1e-5 (tests/test_export.py).
CHECK_TOLERANCE = 1e-4

Runner = Callable[[torch.Tensor], torch.Tensor]


def checkpoint_class(hparams: dict[str, Any]) -> type[MNISTClassifier]:
    """The imported MNISTClassifier (sub)class that wrote the checkpoint, by LightningCLI's `_class_path`.

    `MNISTClassifier.load_from_checkpoint` keeps only the arguments its own `__init__` takes, so a
    subclass's checkpoint must be loaded through the subclass to come back as one.
    """
    classes, todo = [], [MNISTClassifier]
    while todo:
        classes.append(todo.pop())
        todo += classes[-1].__subclasses__()
    wanted = resolve_class_path(str(hparams.get("_class_path", "")))  # any path that names it, old or public
    return wanted if wanted in classes else MNISTClassifier


def load_model(ckpt_path: str | Path) -> tuple[MNISTClassifier, dict[str, Any]]:
    """The checkpoint's LightningModule, its injected net rebuilt, and the datamodule hyperparameters.

    The file is first read with `weights_only=True` (`load_checkpoint_file`: no pickled code runs,
    and empty or foreign files are refused); `load_from_checkpoint` then rebuilds the module from
    the config LightningCLI saved in it (the class, and the net's class path and init args), so a
    net of the user's own comes back as long as its module is importable.
    """
    checkpoint = load_checkpoint_file(ckpt_path)  # which class to rebuild, and the file's own one-line errors
    cls = checkpoint_class(checkpoint.get("hyper_parameters") or {})
    try:
        model = cls.load_from_checkpoint(ckpt_path, map_location="cpu", weights_only=True)
    except (ImportError, RuntimeError, TypeError, KeyError, ValueError, argparse.ArgumentError) as err:
        if isinstance(err, CheckpointError):
            raise
        raise _cannot_rebuild(ckpt_path, checkpoint.get("hyper_parameters") or {}, err) from None
    return model, dict(checkpoint.get("datamodule_hyper_parameters") or {})


def _cannot_rebuild(ckpt_path: str | Path, saved: dict[str, Any], err: BaseException) -> CheckpointError:
    """Why the checkpoint's model did not come back (jsonargparse wraps the reason, often a missing module)."""
    chain = list(exception_chain(err))
    missing = next((e for e in chain if isinstance(e, ModuleNotFoundError) and e.name), None)
    net = saved.get("net") if isinstance(saved.get("net"), dict) else {}
    if missing is not None and net.get("class_path"):
        top = missing.name.split(".")[0]
        holding = f"{top}.py" if str(net["class_path"]).count(".") == 1 else f"the package {top}"
        return CheckpointError(f"{ckpt_path}: its net {net['class_path']} cannot be imported ({first_line(missing)}): "
                               f"put the folder holding {holding} on PYTHONPATH, as when the net was trained.")
    return CheckpointError(f"{ckpt_path}: cannot rebuild its model {saved.get('_class_path', 'MNISTClassifier')} "
                           f"({first_line(chain[-1])}). A net of your own must be importable (on PYTHONPATH).")


def load_net(ckpt_path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The checkpoint's net in eval mode (behind `Deskew` if the run deskewed), and the datamodule
    hyperparameters it was trained with."""
    model, data_hparams = load_model(ckpt_path)
    return with_input_preprocessing(model.net.eval(), data_hparams), data_hparams


def input_normalisation(data_hparams: dict[str, Any]) -> tuple[float, float] | None:
    """(mean, std) applied after `pixels / 255` when the run normalised its input, else None."""
    spec = DATASETS.get(data_hparams.get("dataset", "mnist"))
    return (spec.mean, spec.std) if data_hparams.get("normalize") and spec is not None else None


def with_input_preprocessing(net: nn.Module, data_hparams: dict[str, Any]) -> nn.Module:
    """The net, behind the run's deskewing when it trained on deskewed digits (`--data.deskew true`)."""
    if not data_hparams.get("deskew"):
        return net
    return nn.Sequential(Deskew(*(input_normalisation(data_hparams) or (0.0, 1.0))), net).eval()


def input_description(data_hparams: dict[str, Any]) -> str:
    """How to scale uint8 pixels for the exported model, from the run's datamodule settings."""
    deskewed = " (deskewed inside the model)" if data_hparams.get("deskew") else ""
    normalisation = input_normalisation(data_hparams)
    if normalisation is not None:
        mean, std = normalisation
        return f"float (N, 1, 28, 28): (pixels / 255 - {mean}) / {std}{deskewed}"
    return f"float (N, 1, 28, 28): pixels / 255{deskewed}"


def output_path(ckpt_path: str | Path, fmt: str, output: str | Path | None) -> Path:
    """Where to write: `output`, or the checkpoint's path with the format's suffix; never the checkpoint itself,
    another checkpoint or a run's record (mnist_lightning/outputs.py)."""
    ckpt = Path(ckpt_path)
    default = output is None or str(output) == ""
    target = ckpt.with_suffix(SUFFIXES[fmt]) if default else Path(output)
    if target.is_dir():
        suggestion = target / ("model" + SUFFIXES[fmt])
        raise UserInputError(f"--output {target} is a folder: give a file name, e.g. {suggestion}.")
    same = target.exists() and os.path.samefile(target, ckpt) or target.resolve() == ckpt.resolve()
    if same:
        which = (f"the default output {target} (the checkpoint's name with {SUFFIXES[fmt]})" if default
                 else f"--output {target}")
        suggestion = ckpt.with_name(f"{ckpt.stem}-{fmt}{SUFFIXES[fmt]}")
        raise UserInputError(f"{which} is the checkpoint {ckpt} itself, which the export would overwrite: "
                             f"pass another --output, e.g. {suggestion}.")
    beside = ckpt.with_suffix(SUFFIXES[fmt])
    suggestion = beside if beside != target and what_a_run_owns(beside) is None else ckpt.with_name(
        f"{ckpt.stem}-{fmt}{SUFFIXES[fmt]}")
    refuse_run_file(target, "--output", suggestion, ckpt, given=not default)
    return target


def export_torchscript(net: nn.Module, example: torch.Tensor) -> tuple[bytes, Runner]:
    """The scripted net as the bytes of a .pt file, and the model loaded back from those bytes."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
        try:
            scripted = torch.jit.script(net)
        except (torch.jit.frontend.FrontendError, RuntimeError, OSError) as err:  # OSError: no source to compile
            raise torchscript_failure(net, err) from None
        buffer = io.BytesIO()
        torch.jit.save(scripted, buffer)  # in memory: no C++ file write to fail half-way
        data = buffer.getvalue()
        return data, torch.jit.load(io.BytesIO(data))


def torchscript_failure(net: nn.Module, err: BaseException) -> UserInputError:
    """TorchScript's compile error (the reason, then the source with a `<--- HERE` marker) as one line: the
    reason, the file and line, the code, and the fix."""
    lines = [line for line in str(err).splitlines() if line.strip()]
    reason = lines[0].strip().rstrip(":") if lines else type(err).__name__
    if isinstance(err, OSError):
        reason = f"{reason} (a class defined in a notebook or an interactive session has no source file)"
    where = ""
    for i, line in enumerate(lines):
        found = re.match(r'\s*File "(.+)", line (\d+)', line)
        marker = next((j for j in range(i + 1, len(lines)) if "<--- HERE" in lines[j]), None)
        if found and marker is not None:
            where = f" at {Path(found[1]).name}:{found[2]} `{lines[marker - 1].strip()}`"
            break
    net_class = f"{type(net).__module__}.{type(net).__qualname__}"
    return UserInputError(f"TorchScript cannot compile the net {net_class}: {reason}{where}. Make its forward "
                          "scriptable (https://pytorch.org/docs/stable/jit_language_reference.html), or export it with "
                          "--format onnx; nothing was written.")


def export_onnx(net: nn.Module, example: torch.Tensor) -> tuple[bytes, Runner | None]:
    """One self-contained .onnx file (dynamic batch dimension) as bytes, and a runner or None without onnxruntime.

    A net the exporter or onnxruntime cannot take (mnist_lightning/onnx_refusals.py) is one UserInputError.
    """
    try:
        import onnx  # noqa: F401  (the exporter needs both)
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise UserInputError(
            f"ONNX export needs the onnx and onnxscript packages ({err}): pip install -e \".[onnx]\""
        ) from None
    with tempfile.TemporaryDirectory(prefix="mnist-export-") as scratch:  # the exporter writes a path
        path = Path(scratch) / "model.onnx"
        try:
            with onnx_refusals.exporter_diagnostics_kept_quiet():
                torch.onnx.export(
                    net, (example,), str(path), input_names=["images"], output_names=["logits"],
                    dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False, verbose=False,
                )
        except torch.onnx.OnnxExporterError as err:  # the user's net: what ONNX cannot hold, and the fix
            raise onnx_refusals.export_failure(err) from None
        data = path.read_bytes()
    onnx_refusals.refuse_fixed_batch(data)
    try:
        import onnxruntime
    except ImportError:
        return data, None
    runtime_errors = onnx_refusals.onnxruntime_errors()
    try:
        session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    except runtime_errors as err:
        raise onnx_refusals.runtime_failure(err) from None

    def run(x: torch.Tensor) -> torch.Tensor:
        try:
            return torch.from_numpy(session.run(["logits"], {"images": x.numpy()})[0])
        except runtime_errors as err:
            raise onnx_refusals.runtime_failure(err) from None

    return data, run


def export(ckpt_path: str | Path, fmt: str, output: str | Path | None = None) -> Path:
    """Write the checkpoint's net as `fmt` to `output` (default: beside the checkpoint); returns the path."""
    if fmt not in FORMATS:
        raise UserInputError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}.")
    net, data_hparams = load_net(ckpt_path)
    target = output_path(ckpt_path, fmt, output)
    example = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    try:
        data, runner = export_torchscript(net, example) if fmt == "torchscript" else export_onnx(net, example)
    except OSError as err:
        raise UserInputError(f"cannot export to {target}: {err.strerror or first_line(err)}") from None
    difference = None
    if runner is not None:  # checked before writing: an export that does not reproduce the checkpoint is not written
        with torch.no_grad():
            x = torch.rand(7, 1, 28, 28, generator=torch.Generator().manual_seed(1))  # a batch size not exported with
            difference = float((runner(x) - net(x)).abs().max())
        if difference > CHECK_TOLERANCE:
            raise UserInputError(f"the {fmt} export does not reproduce the checkpoint (logits differ by "
                                 f"{difference:.2e}): nothing was written to {target}.")
    try:  # only now: a refused export leaves no folder either
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserInputError(f"cannot create the folder of --output {target}: {err.strerror or err}") from None
    write_atomically(target, lambda f: f.write(data), what=f"{fmt} export")

    print(f"Wrote {fmt} model {target} ({len(data) / 1024:.0f} KiB)")
    print(f"  input:  {input_description(data_hparams)}")
    with torch.no_grad():
        classes = net(example).shape[-1]  # whatever the net: its logits say how many classes
    print(f"  output: logits (N, {classes}); the predicted class is their argmax")
    if difference is None:
        print("  check:  skipped (install onnxruntime to compare the export with the checkpoint)")
    else:
        print(f"  check:  logits match the checkpoint's (max difference {difference:.1e})")
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mnist_lightning export",
        description="Export a checkpoint's net (logits from a float batch N x 1 x 28 x 28) as TorchScript or ONNX.",
    )
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint written by `fit`")
    parser.add_argument("--format", required=True, choices=FORMATS, help="torchscript (.pt) or onnx (.onnx)")
    parser.add_argument("--output", default=None,
                        help="file to write (default: the checkpoint's path with .pt / .onnx); never the checkpoint")
    args = parser.parse_args(argv)
    export(args.ckpt_path, args.format, args.output)  # a UserInputError is one line, exit 2, in __main__.main
