"""Which existing files an output may replace: never a checkpoint, nor a file a run keeps its record in.

`predict --predictions_csv FILE` and `export --output FILE` write a whole file over whatever FILE is (atomically,
mnist_lightning/atomic.py), so a previous predictions CSV or a previous export is simply replaced. What they
refuse, before anything runs, is an existing FILE (or the file a link at FILE points to) that is

- the checkpoint the command reads (`--ckpt_path`), by name, link or hard link;
- any checkpoint: a `*.ckpt` file, or a file `torch.save` wrote under any name (a zip archive holding
  `data.pkl` and no TorchScript code);
- a run's record, by its name: `config.yaml`, `hparams.yaml`, `metrics.csv`, `events.out.tfevents.*`.

The names are refused anywhere, not only inside `lightning_logs/`: a run's folder can be anywhere
(`--trainer.logger.init_args.save_dir`, `--trainer.default_root_dir`), and no predictions file or model
is sensibly called `config.yaml`.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from mnist_lightning.errors import UserInputError

RUN_RECORDS = ("config.yaml", "hparams.yaml", "metrics.csv")
EVENT_FILE_PREFIX = "events.out.tfevents."


def written_by_torch_save(path: Path) -> bool:
    """Whether `path` is a `torch.save` archive (a checkpoint or weights), not a TorchScript one: both are zip
    files with a `data.pkl`; only TorchScript's holds `code/` and `constants.pkl`. Reads the zip's index only."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    folders = {name.split("/", 1)[0] for name in names if name.endswith("/data.pkl") and name.count("/") == 1}
    return any(f"{folder}/constants.pkl" not in names and not any(n.startswith(f"{folder}/code/") for n in names)
               for folder in folders)


def what_a_run_owns(path: Path, ckpt_path: str | os.PathLike[str] | None = None) -> str | None:
    """What the existing file at `path` is, when an output must not replace it; None when it may."""
    if not path.is_file():
        return None
    if ckpt_path is not None and Path(ckpt_path).is_file() and os.path.samefile(path, ckpt_path):
        return "the checkpoint this command reads"
    names = {path.name, path.resolve().name}  # a link is judged by what it points to as well
    if any(name.endswith(".ckpt") for name in names) or written_by_torch_save(path):
        return "a checkpoint"
    if any(name.startswith(EVENT_FILE_PREFIX) for name in names):
        return "a run's TensorBoard event file"
    record = next((name for name in sorted(names) if name in RUN_RECORDS), None)
    return f"a run's {record}" if record else None


def refuse_run_file(path: Path, option: str, suggestion: Path, ckpt_path: str | os.PathLike[str] | None = None,
                    given: bool = True) -> None:
    """Refuse to write `option path` (`given` False: `path` is the option's default) when the file there is the
    input checkpoint, a checkpoint or a run's record (see the module docstring)."""
    what = what_a_run_owns(path, ckpt_path)
    if what is not None:
        which = f"{option} {path}" if given else f"the default {option.removeprefix('--')} {path}"
        raise UserInputError(f"{which} is {what}, which must not be overwritten: nothing was written; "
                             f"pass another {option}, e.g. {option} {suggestion}.")
