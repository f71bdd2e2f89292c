"""The entry point: plain interpreter exit, no global state changed by importing the package, the
NVML fix applied by `python -m mnist_lightning` only, where it changes no answer, and the line between
a user's mistake (one line, exit code 2) and a bug (its traceback).

The first three are about the process (its environment, its imports, its exit), so they share one
fresh interpreter; the mistake/bug split is main()'s, tested in this process with `run_cli`."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT, TINY_ARGS, run_cli

# One fresh interpreter serves the three process tests below (a start costs 5-9 s of CPU): in this order it
# snapshots the global state around importing the package, counts the NVML loads of Adam steps before and
# after the fix, then runs a command with an atexit handler registered. Each test reads its own part.
FRESH_INTERPRETER = (
    "import atexit, ctypes, json, os, sys, warnings\n"
    "import pytorch_lightning, torch\n"
    # 1. importing the package changes no global state
    "def snapshot(): return {'env': dict(os.environ), 'filters': [repr(f) for f in warnings.filters],"
    " 'threads': torch.get_num_threads()}\n"
    "before = snapshot()\n"
    "import mnist_lightning, mnist_lightning.models, mnist_lightning.callbacks, mnist_lightning.cli\n"
    "same = before == snapshot()\n"
    # 2. the NVML fix: failed library loads per Adam step, before and after it
    "loads = []\n"
    "real = ctypes.CDLL\n"
    "class Counting(real):\n"
    "    def __init__(self, name, *a, **k):\n"
    "        loads.append(str(name)); super().__init__(name, *a, **k)\n"
    "ctypes.CDLL = Counting\n"
    "def step_loads():\n"
    "    loads.clear()\n"
    "    p = torch.nn.Parameter(torch.ones(3)); opt = torch.optim.Adam([p])\n"
    "    p.sum().backward(); opt.step(); opt.step()\n"
    "    return sum('nvidia-ml' in n for n in loads), torch.cuda.is_available()\n"
    "try:\n"
    "    real('libnvidia-ml.so.1'); loadable = True\n"
    "except OSError:\n"
    "    loadable = False\n"
    "nvml_before = step_loads()\n"
    "from mnist_lightning.__main__ import skip_failing_nvml_check\n"
    "skip_failing_nvml_check()\n"
    "nvml_after = step_loads()\n"
    "ctypes.CDLL = real\n"
    "with open(sys.argv[1], 'w') as f:\n"
    "    json.dump({'same': same, 'nvml': {'loadable': loadable,"
    " 'flag': os.environ.get('PYTORCH_NVML_BASED_CUDA_CHECK'),"
    " 'before': nvml_before, 'after': nvml_after}}, f)\n"
    # 3. a command ends with a plain interpreter exit: the atexit handler runs
    "marker = sys.argv[2]\n"
    "atexit.register(lambda: open(marker, 'w').write('yes'))\n"
    "from mnist_lightning.__main__ import run\n"
    "sys.argv = ['mnist_lightning', *sys.argv[3:]]\n"
    "run()\n"
)


@dataclass(frozen=True)
class FreshInterpreter:
    state: dict
    returncode: int
    stderr: str
    atexit_marker: Path


@pytest.fixture(scope="module")
def fresh_interpreter(shared_tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> FreshInterpreter:
    """FRESH_INTERPRETER run once, with a 1-epoch fit on the tiny data as its command. A real process: the
    interpreter's environment, imports and exit are the subject."""
    folder = tmp_path_factory.mktemp("fresh_interpreter")
    state, marker = folder / "state.json", folder / "atexit-ran"
    fit = ["fit", "--data.data_dir", str(shared_tiny_data), *TINY_ARGS, "--trainer.max_epochs", "1"]
    result = subprocess.run([sys.executable, "-c", FRESH_INTERPRETER, str(state), str(marker), *fit], cwd=folder,
                            capture_output=True, text=True, timeout=300,
                            env={"PYTHONPATH": str(PROJECT_ROOT), "PATH": "/usr/bin:/bin"})
    assert state.is_file(), result.stderr  # the probes ran to the end
    return FreshInterpreter(json.loads(state.read_text()), result.returncode, result.stderr, marker)


def test_importing_the_package_changes_no_global_state_beyond_lightnings_own(fresh_interpreter):
    assert fresh_interpreter.state["same"]


def test_the_nvml_fix_removes_the_failed_library_loads_of_every_adam_step_and_keeps_the_answer(fresh_interpreter):
    state = fresh_interpreter.state["nvml"]
    if state["loadable"]:
        assert state["flag"] == "1" and state["after"] == state["before"]  # a machine with the driver: untouched
        pytest.skip("NVIDIA's management library loads here: the fix rightly does nothing")
    loads_before, cuda_before = state["before"]
    loads_after, cuda_after = state["after"]
    assert loads_before > 0  # what the fix is for: each Adam step tried to load the library
    assert state["flag"] == "0" and loads_after == 0
    assert cuda_after == cuda_before  # the same answer to "is CUDA available?"


def test_a_command_ends_with_a_plain_interpreter_exit(fresh_interpreter):
    """atexit handlers of the interpreter run after a command: nothing ends the process by hand."""
    assert fresh_interpreter.returncode == 0, fresh_interpreter.stderr
    assert fresh_interpreter.atexit_marker.read_text() == "yes"


# What Lightning logs on stderr as a run starts, before any mistake can show: not part of the message.
LIGHTNING_STARTUP = ("Seed set to ", "GPU available: ", "TPU available: ", "HPU available: ")


@pytest.mark.parametrize(("args", "message"), [
    (("--model.optimizer.init_args.lr", "-1"), "model.optimizer (torch.optim.Adam) refused its arguments: "
                                               "Invalid learning rate"),  # found inside Lightning's fit
    (("--torch_threads", "0"), "Parser key \"torch_threads\""),  # refused by its type while parsing
], ids=["lr", "threads"])
def test_a_users_mistake_exits_2_with_one_line(args, message, shared_tiny_data, tmp_path):
    result = run_cli("fit", "--data.data_dir", str(shared_tiny_data), *TINY_ARGS, *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert lines and lines[-1].startswith("error: ") and message in lines[-1], result.stderr
    # The message is that one line; before it only Lightning's start-up lines: no traceback, no second line.
    assert all(line.startswith(LIGHTNING_STARTUP) for line in lines[:-1]), result.stderr


BOOM_NETS = '''
import torch
from torch import nn


class Boom(nn.Module):
    """A net with a bug: its forward raises. (`width` too: a net whose only argument is num_classes
    trips the CLI before training, see tests/test_user_parts.py.)"""

    def __init__(self, width: int = 8, num_classes: int = 10):
        super().__init__()
        self.head = nn.Linear(28 * 28, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")
'''


def test_a_bug_keeps_its_traceback(shared_tiny_data, tmp_path):
    """Not a user's mistake (a user net's forward raises): not turned into an `error:` line, so it can be fixed."""
    user = tmp_path / "user"
    user.mkdir()
    (user / "boom_nets.py").write_text(BOOM_NETS)
    result = run_cli("fit", "--data.data_dir", str(shared_tiny_data), *TINY_ARGS, "--trainer.max_epochs", "1",
                     "--model.net", "boom_nets.Boom", cwd=tmp_path, env={"PYTHONPATH": str(user)})
    assert result.returncode not in (0, 2), result.stderr
    assert "Traceback (most recent call last)" in result.stderr and "RuntimeError: boom" in result.stderr
    assert not any(line.startswith("error: ") for line in result.stderr.splitlines()), result.stderr
