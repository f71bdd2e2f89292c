"""The CLI's own arguments, and the checks of parsed values that no type can express."""

from __future__ import annotations

import importlib
import inspect
import sys
from typing import Any, NoReturn

from jsonargparse import Namespace
from jsonargparse.typing import PositiveInt
from pytorch_lightning.cli import LightningArgumentParser

from mnist_lightning.errors import UserInputError


class OneLineErrorParser(LightningArgumentParser):
    """LightningCLI's parser, whose refusals are one line on stderr (exit code 2) instead of the whole usage and a
    multi-line message: a value outside its type (`--data.batch_size 0`), an unknown key, a bad class path."""

    def error(self, message: str, *args: Any, **kwargs: Any) -> NoReturn:
        if not self.exit_on_error:  # jsonargparse's own trial parses expect the exception it raises then
            super().error(message, *args, **kwargs)
        print(f"error: {' '.join(str(message).split())} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def add_project_arguments(parser: Any) -> None:
    """`--torch_threads`, `--predictions_csv`, `--allow_untrained`, and the number of classes linked from the data."""
    parser.add_argument(
        "--torch_threads",
        type=PositiveInt | None,
        default=None,
        help="CPU threads for torch ops (torch.set_num_threads); None keeps torch's default. "
        "1 is fastest for small nets on a small CPU, where thread hand-offs cost more than the math.",
    )
    parser.add_argument(
        "--predictions_csv",
        type=str | None,
        default=None,
        help="predict only: also write the predictions table to this CSV file (file,prediction,probability).",
    )
    parser.add_argument(
        "--allow_untrained",
        type=bool,
        default=False,
        help="validate/test/predict only: run without --ckpt_path, i.e. on an untrained net (for debugging).",
    )
    # The number of classes is the data's: the net's outputs and the metrics follow it, never retyped.
    parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
    parser.link_arguments("data.num_classes", "model.init_args.net.init_args.num_classes", apply_on="instantiate")


def check_parsed(config: Namespace) -> None:
    """A seed torch can take (LightningCLI types it `bool | int`), and a net that takes the data's classes."""
    seed = config.get("seed_everything")
    if isinstance(seed, int) and not isinstance(seed, bool) and not 0 <= seed < 2**32:
        raise UserInputError(f"seed_everything must be in [0, 2**32 - 1] (or true for a random seed); got {seed}.")
    check_net_takes_num_classes(config)


def check_net_takes_num_classes(config: Namespace) -> None:
    """The CLI sets the net's `num_classes` from the data: refuse, naming the fix, a net class without it."""
    net = config.get("model", Namespace()).get("init_args", Namespace()).get("net")
    class_path = net.get("class_path") if isinstance(net, Namespace) else None
    if not class_path:
        return
    module_name, _, name = str(class_path).rpartition(".")
    try:
        target = getattr(importlib.import_module(module_name), name)
        parameters = inspect.signature(target).parameters
    except (ImportError, AttributeError, TypeError, ValueError):
        return  # jsonargparse has accepted the class path, so this cannot happen short of a race: nothing to add
    takes = "num_classes" in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    if not takes:
        raise UserInputError(
            f"model.net {class_path} takes no num_classes argument: the CLI gives every net the data's number of "
            f"classes. Add `num_classes: int = 10` to {name}.__init__ and size its last layer with it.")
    if list(parameters) == ["num_classes"]:
        # LightningCLI 2.6 records a linked argument only inside the net's other init args, and asserts
        # (pytorch_lightning.cli._set_dict_nested) when there are none; say so instead of its AssertionError.
        raise UserInputError(
            f"model.net {class_path} takes num_classes and nothing else, a case LightningCLI 2.6 cannot save the "
            f"config of: give {name}.__init__ one more argument (e.g. `width: int = 8`), even an unused one.")
