"""Export a checkpoint's net for serving, without Lightning: TorchScript or ONNX.

    python -m mnist_lightning export --ckpt_path CKPT --format torchscript --output mnist.pt
    python -m mnist_lightning export --ckpt_path CKPT --format onnx --output mnist.onnx   # pip install -e ".[onnx]"

The exported model is the plain `MLP` in eval mode (dropout off, batch-norm statistics frozen): it
takes what `MNISTClassifier.forward` takes, a float batch (N, 1, 28, 28) of any N, scaled like the
run's training data (`x / 255`, then `(x - mean) / std` if the run normalised; the export prints
which), and returns logits (N, classes). After writing, the file is loaded back and its logits are
compared with the checkpoint's on a random batch. The ONNX check needs onnxruntime; without it the
file is written and the check is skipped, saying so.

TorchScript is deprecated upstream in recent PyTorch releases (its FutureWarnings are silenced
here); it still loads with `torch.jit.load` and needs no Python class. ONNX is the portable choice.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mnist_lightning.checkpointing import load_checkpoint_file
from mnist_lightning.datasets import DATASETS
from mnist_lightning.errors import CheckpointError, UserInputError
from mnist_lightning.model import MNISTClassifier

FORMATS = ("torchscript", "onnx")
SUFFIXES = {"torchscript": ".pt", "onnx": ".onnx"}
# The self-check after writing: max abs difference of logits on a random batch. A broken export is
# off by whole units; float32 reordering (ONNX Runtime fuses ops) by ~1e-6 per 10 of logit size.
# On test images the two agree within 1e-5 (tests/test_export.py).
CHECK_TOLERANCE = 1e-4


def load_net(ckpt_path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The checkpoint's `MLP` in eval mode, and the datamodule hyperparameters it was trained with."""
    checkpoint = load_checkpoint_file(ckpt_path)
    init = inspect.signature(MNISTClassifier.__init__).parameters
    hparams = {k: v for k, v in checkpoint.get("hyper_parameters", {}).items() if k in init}
    try:
        model = MNISTClassifier(**hparams)
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(f"{ckpt_path} does not fit MNISTClassifier({hparams}): {str(err).splitlines()[0]}") from None
    return model.net.eval(), dict(checkpoint.get("datamodule_hyper_parameters", {}))


def input_description(data_hparams: dict[str, Any]) -> str:
    """How to scale uint8 pixels for the exported model, from the run's datamodule settings."""
    spec = DATASETS.get(data_hparams.get("dataset", "mnist"))
    if data_hparams.get("normalize") and spec is not None:
        return f"float (N, 1, 28, 28): (pixels / 255 - {spec.mean}) / {spec.std}"
    return "float (N, 1, 28, 28): pixels / 255"


def export_torchscript(net: nn.Module, example: torch.Tensor, output: Path) -> nn.Module:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
        scripted = torch.jit.script(net)
        torch.jit.save(scripted, str(output))
        return torch.jit.load(str(output))


def export_onnx(net: nn.Module, example: torch.Tensor, output: Path) -> Any:
    """Writes one self-contained .onnx file with a dynamic batch dimension; returns a runner or None."""
    try:
        import onnx  # noqa: F401  (the exporter needs both)
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise UserInputError(
            f"ONNX export needs the onnx and onnxscript packages ({err}): pip install -e \".[onnx]\""
        ) from None
    torch.onnx.export(
        net, (example,), str(output), input_names=["images"], output_names=["logits"],
        dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, external_data=False, verbose=False,
    )
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(["logits"], {"images": x.numpy()})[0])


def export(ckpt_path: str | Path, fmt: str, output: str | Path | None = None) -> Path:
    """Write the checkpoint's net as `fmt` to `output` (default: beside the checkpoint); returns the path."""
    if fmt not in FORMATS:
        raise UserInputError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}.")
    net, data_hparams = load_net(ckpt_path)
    output = Path(output) if output else Path(ckpt_path).with_suffix(SUFFIXES[fmt])
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserInputError(f"cannot create the folder of --output {output}: {err.strerror or err}") from None
    example = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    try:
        runner = export_torchscript(net, example, output) if fmt == "torchscript" else export_onnx(net, example, output)
    except OSError as err:
        raise UserInputError(f"cannot write --output {output}: {err.strerror or err}") from None

    print(f"Wrote {fmt} model {output} ({output.stat().st_size / 1024:.0f} KiB)")
    print(f"  input:  {input_description(data_hparams)}")
    print(f"  output: logits (N, {net.layers[-1].out_features}); the predicted class is their argmax")
    if runner is None:
        print("  check:  skipped (install onnxruntime to compare the export with the checkpoint)")
        return output
    with torch.no_grad():
        x = torch.rand(7, 1, 28, 28, generator=torch.Generator().manual_seed(1))  # a batch size not exported with
        difference = float((runner(x) - net(x)).abs().max())
    if difference > CHECK_TOLERANCE:
        raise UserInputError(f"the export {output} does not reproduce the checkpoint: logits differ by {difference:.2e}.")
    print(f"  check:  logits match the checkpoint's (max difference {difference:.1e})")
    return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mnist_lightning export",
        description="Export a checkpoint's net (logits from a float batch N x 1 x 28 x 28) as TorchScript or ONNX.",
    )
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint written by `fit`")
    parser.add_argument("--format", required=True, choices=FORMATS, help="torchscript (.pt) or onnx (.onnx)")
    parser.add_argument("--output", default=None, help="file to write (default: the checkpoint's path with .pt / .onnx)")
    args = parser.parse_args(argv)
    try:
        export(args.ckpt_path, args.format, args.output)
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
