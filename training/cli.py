"""``train.py``: LightningCLI with the project's defaults.

* subcommands: ``fit`` (train), ``validate``, ``test`` (the KAIST protocol on a checkpoint, the numbers of
  ``eval.py kaist``), ``predict`` (reconstructions to ``--predictions.path``, ``.mat`` or ``.npz``).
* model: ``training.ReconstructionModule`` or ``training.JointModule`` (``model.class_path`` in the YAML);
  data: :class:`data.CassiDataModule` (``--data.source`` / ``--data.root``: the recipe's MST toolbox layout,
  a folder of cubes, or built-in synthetic scenes).
* before any work: options, the accelerator, ``--ckpt_path``, the data (folders, mask, held-out split; then the
  data themselves are loaded), the crop and test sizes against the network's ``size_rule``, its ``prepare_inputs``
  against its forward and the model's mask handling are checked; a mistake ends in one line ``train.py: error: ...``
  and exit code 2 (:mod:`cassi.errors`); errors of the run itself keep their traceback.
* checkpoints (``--checkpoint.*``, :class:`training.callbacks.RunCheckpoint`): best by ``val/psnr`` and ``last.ckpt``
  (the newest state) in ``<default_root_dir>/checkpoints``, so ``fit --ckpt_path last`` resumes the run of the same
  ``default_root_dir`` (and its W&B run); without a
  ``last*.ckpt`` there it is an error, not a new run; a new ``fit`` into a checkpoint folder that holds checkpoints
  is an error too (:func:`check_new_run`).
* ``--ckpt_path``: the model options are never replaced by the checkpoint's hyper-parameters (LightningCLI does
  that); they are compared with them before any work (:func:`check_checkpoint_settings`): the model class and
  its architecture (``model_name``, ``model_kwargs``, ``bands``, ``step``) must match for every subcommand, and for
  ``fit`` (a resumed run) every model setting but the speed switches and every data setting that defines the
  training batches or validation crops; other settings of ``validate`` / ``test`` / ``predict`` (the loss, say)
  are the ones the command asks for. A ``fit`` resumed in mid-epoch from a checkpoint without a training-loader
  position warns that it repeats that epoch's first batches (:func:`warn_missing_loader_position`).
* logger: :class:`training.loggers.CassiWandbLogger` (offline without ``WANDB_API_KEY``) writing under
  ``default_root_dir``; ``--trainer.logger CSVLogger`` / ``TensorBoardLogger`` (their ``save_dir`` defaults to
  ``default_root_dir`` too: it is linked) or ``--trainer.logger false``.
* callbacks: learning-rate monitor (when there is a logger), validation previews (``--previews.*``), the run's
  configuration (:class:`training.callbacks.RunConfig`), the W&B run id in checkpoints, prediction files and a
  summary printed at the end of ``fit``.
"""
from __future__ import annotations

import contextlib
import difflib
import importlib
import inspect
import io
import json
import re
import os
import sys
import typing
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from jsonargparse import ArgumentParser, Namespace
from pytorch_lightning import Trainer
from pytorch_lightning.callbacks import Callback, LearningRateMonitor
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.loops.fit_loop import _FitLoop
from pytorch_lightning.loops.loop import _Loop
from pytorch_lightning.plugins import TorchCheckpointIO
from pytorch_lightning.plugins.environments import SLURMEnvironment
from pytorch_lightning.utilities import rank_zero_warn
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from cassi import CassiOperator
from cassi.devices import strict_float32
from cassi.errors import EXIT_USER_ERROR, UserError, cli_errors, mark_during_run, one_line
from cassi.files import atomic_path, check_output_file
from cassi.progress import fit_progress
from data.datamodule import MOVABLE_PATHS, RESUME_FREE_SETTINGS, CassiDataModule, resume_settings
from models.checkpoints import lightning_training_mask, other_mask_warning
from models.loading import PickledObjectsError, torch_load_weights, unwrap_checkpoint
from models.registry import forward_inputs, probe_measurement
from models.release import mask_identity, same_mask
from training.acceleration import check_accelerator
from training.callbacks import (DEFAULT_ROOT, PredictionWriter, RunCheckpoint, RunConfig, RunSummary,
                                ValidationPreviews, WandbRunId, checkpoint_run_id, kaist_test_text)
from training.modules import CassiModule

DESCRIPTION = ("Train CASSI reconstruction networks (README, 'Training'): fit --config configs/<model>.yaml "
               "[--data.root DIR | --config configs/data/synthetic.yaml] (CPU smoke runs: configs/smoke/); resume "
               "with --ckpt_path last; test --ckpt_path PATH prints the KAIST-protocol table of eval.py kaist; "
               "predict writes the reconstructions (--predictions.path out.mat|.npz).")
SPECIAL_CKPT_PATHS = ("last", "best", "hpc")
EXTRA_STATE_SUFFIX = "_extra_state"                 # where nn.Module.state_dict keeps get_extra_state()'s value
# Model hyper-parameters a checkpoint's weights are only valid with (every subcommand), and those that may change
# when a run is resumed (they change speed and memory, not the run's results).
ARCHITECTURE_HPARAMS = ("model_name", "model_kwargs", "bands", "step")
SPEED_HPARAMS = ("activation_checkpointing", "channels_last", "compile", "compile_kwargs")


JSONARGPARSE_NOISE = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:", "Given value",
                      "Expected a <class 'NoneType'>")
CLASS_PROBLEM = "Problem with given class_path"      # an error in the arguments of a class the user gave


def parser_message(text: str) -> str:
    """jsonargparse's nested explanation of a bad option reduced to what the user can act on, on one line. Each of
    its errors (a ``- `` item and the lines under it) is said once: the union subtypes of an option (``Logger`` and
    ``Iterable[Logger]`` of ``--trainer.logger``) each give the same one. Beside an error in a class's arguments
    (``--trainer.logger.init_args.projct``), the type the option's other alternatives expect (``false``: "Expected
    a <class 'bool'>") is left out: the user gave the class."""
    items: list[tuple[str, ...]] = []
    for line in text.splitlines():
        stripped = line.strip()
        kept = stripped.removeprefix("- ").strip('"')
        if stripped.startswith("- ") or not items:
            items.append(())
        if kept and not kept.startswith(JSONARGPARSE_NOISE):
            items[-1] += (kept,)
    if any(item[:1] and item[0].startswith(CLASS_PROBLEM) for item in items):
        items = [item for item in items if not (item[:1] and item[0].startswith("Expected a "))]
    kept = [line for item in dict.fromkeys(items) for line in item]
    return one_line("\n".join(kept)) if kept else one_line(text)


def closest_key(key: str, keys: list[str]) -> str | None:
    """The one of ``keys`` the typo ``key`` most likely meant: the closest by :func:`difflib.get_close_matches`
    among the keys of its group (``data.crop_to``: ``data.*``), else the one the typo's initials spell
    (``learning_rate``: ``lr``), else None."""
    group, _, name = key.rpartition(".")
    names = [k.rpartition(".")[2] for k in keys if k.rpartition(".")[0] == group]
    initials = "".join(part[:1] for part in name.split("_")) if "_" in name else None
    found = difflib.get_close_matches(name, names, n=1) or [n for n in names if n == initials]
    if not found:
        return None
    return f"{group}.{found[0]}" if group else found[0]


def class_keys(class_path: str) -> list[str]:
    """The init arguments jsonargparse accepts for the class ``class_path`` (a subclass option's choice)."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(_import(class_path), "init_args", fail_untyped=False)
    return [key.removeprefix("init_args.") for key in parser.get_defaults().keys()]


def did_you_mean(parser: ArgumentParser, message: str, ex: Exception | None) -> str:
    """``'; did you mean --data.crop_top?'`` for a parser error about an unknown option or config key
    (``message``, ``ex``: what jsonargparse hands :meth:`ArgumentParser.error`) close to one the (sub)command
    takes, else ``''``. Unknown init arguments of a class option (``--model.init_args.lerning_rate``) are
    compared with those of the class chosen."""
    if match := re.search(r"Parser key \"([\w.]+)\":.*?Problem with given class_path '([\w.]+)':\s*"
                          r"Option '(\w+)' is not accepted", message, re.DOTALL):
        option, class_path, key = match.groups()
        found = closest_key(key, class_keys(class_path))
        return f"; did you mean --{option}.init_args.{found}?" if found else ""
    if match := re.search(r"unrecognized arguments: --([\w.]+)", message):
        key, keys = match.group(1), parser.get_defaults().keys()
    elif match := re.search(r"Subcommand '\w+' does not accept option '([\w.]+)'", message):
        key, keys = match.group(1), getattr(ex, "subcommand_parser", parser).get_defaults().keys()
    else:
        return ""
    found = closest_key(key, list(keys))
    return f"; did you mean --{found}?" if found else ""


def concrete_subclasses(base: type) -> list[type]:
    """``base`` and its subclasses (of every imported module) that a class option can name, as jsonargparse lists
    them: not abstract, not defined in a function, not in a private module."""
    found, pending = [], [base]
    while pending:
        cls = pending.pop(0)
        pending += cls.__subclasses__()
        path = f"{cls.__module__}.{cls.__qualname__}"
        if not (inspect.isabstract(cls) or "<locals>" in path or "._" in path or cls in found):
            found.append(cls)
    return found


def model_classes() -> dict[str, str]:
    """{class path: first line of its docstring} of the model classes ``train.py`` trains (``--model CLASS``): the
    subclasses of :class:`training.CassiModule` that are not abstract, by the name the ``training`` package exports."""
    import training

    found = {}
    for cls in concrete_subclasses(CassiModule):
        exported = cls.__name__ in training.__all__ and getattr(training, cls.__name__) is cls
        path = f"training.{cls.__name__}" if exported else f"{cls.__module__}.{cls.__qualname__}"
        found[path] = (inspect.getdoc(cls) or "").partition("\n")[0].replace("``", "")
    return found


def hint_classes(hint: Any) -> list[type]:
    """The classes in a type hint, builtins left out: ``Optional[Union[Logger, Iterable[Logger], bool]]``:
    ``[Logger]``."""
    if typing.get_origin(hint) is None:
        return [hint] if inspect.isclass(hint) and hint.__module__ != "builtins" else []
    return list(dict.fromkeys(cls for arg in typing.get_args(hint) for cls in hint_classes(arg)))


def option_type(option: str) -> Any:
    """The type of ``train.py``'s option ``option``: ``model`` takes a :class:`training.CassiModule`,
    ``trainer.NAME`` the type of :class:`Trainer`'s argument ``NAME``; None for the others."""
    if option == "model":
        return CassiModule
    group, _, name = option.partition(".")
    return typing.get_type_hints(Trainer.__init__).get(name) if group == "trainer" else None


# jsonargparse's ways of saying that a class option's value names no class it takes: an unknown name, a dotted path
# that does not import, a class of another type (the value, then the reason)
UNKNOWN_CLASS = (r"Expected a dot import path string: ([^\s;]+)",
                 r"Problem with given class_path '([\w.]+)': (?:module .* has no attribute|No module named)",
                 r"Expected a path but ([^\s;]+) either not accessible or invalid; Import path does not correspond")


def class_choice_message(message: str) -> str | None:
    """jsonargparse's error about a class option given a value that names none of its classes
    (``--trainer.logger foo``, four "Expected ..." items) as one sentence: the option, the value and the classes it
    takes, with the closest of them (:func:`closest_key`); None for any other error."""
    text = parser_message(message)
    option = re.match(r'Parser key "([\w.]+)":', text)
    value = next((found.group(1) for pattern in UNKNOWN_CLASS if (found := re.search(pattern, text))), None)
    hint = option_type(option.group(1)) if option and value else None
    classes = [cls for base in hint_classes(hint) for cls in concrete_subclasses(base)]
    if not classes:
        return None
    names = list(dict.fromkeys(cls.__name__ for cls in classes))
    other = " or true / false" if bool in typing.get_args(hint) else ""
    found = closest_key(value.rpartition(".")[2], names)
    guess = f"; did you mean {found}?" if found else ""
    return (f"--{option.group(1)} {value} names none of the classes it takes: {', '.join(names)} (a class name or "
            f"import path){other}{guess}")


def model_help_at(args: list[str]) -> int | None:
    """Where ``args`` hold ``--model.help`` without a class (its index; jsonargparse would show the arguments of the
    abstract base :class:`training.CassiModule`, which no run can use), else None."""
    if "--model.help" not in args:
        return None
    at = args.index("--model.help")
    return None if at + 1 < len(args) and not args[at + 1].startswith("-") else at


def chosen_model_class(parser: ArgumentParser, args: list[str]) -> str | None:
    """The model class ``args`` choose (a recipe's ``model.class_path``, ``--model CLASS``), or None when they
    choose none or do not parse (they are parsed quietly: a help request is answered before they are checked)."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            config = parser.parse_args(args)
    except SystemExit:
        return None
    model = config.get(f"{config.get('subcommand')}.model") if config.get("subcommand") else config.get("model")
    chosen = model.get("class_path") if isinstance(model, Namespace) else None
    return chosen if isinstance(chosen, str) else None


def model_help_without_class(args: list[str]) -> str | None:
    """The answer to ``train.py SUBCOMMAND --model.help`` without a class where no other argument chooses one:
    the model classes to pass and how to see their arguments. None for any other request."""
    at = model_help_at(args)
    if at is None:
        return None
    subcommand = next((arg for arg in args[:at] if not arg.startswith("-")), "fit")
    classes = model_classes()
    width = max(map(len, classes))
    listing = "\n".join(f"  {path:<{width}}  {doc}" for path, doc in classes.items())
    return (f"--model.help shows the arguments of a model class: train.py {subcommand} --model.help CLASS, with CLASS "
            f"one of\n{listing}\n(a recipe, configs/<model>.yaml, chooses one as model.class_path; "
            f"e.g. train.py {subcommand} --model.help {next(iter(classes))})\n")


class OneLineParser(LightningArgumentParser):
    """Parser whose errors are one line (``train.py fit: error: ... (see train.py fit --help)``) and exit 2,
    instead of the usage text and jsonargparse's nested explanation (``JSONARGPARSE_DEBUG=true`` shows it). Options are
    never abbreviated: argparse would read the typo ``--data.crop_to 2`` as ``--data.crop_top 2`` and train."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error or os.environ.get("JSONARGPARSE_DEBUG"):
            return super().error(message, ex)
        prog = self.prog.replace(" [options]", "")
        text = class_choice_message(message) or parser_message(message) + did_you_mean(self, message, ex)
        self.exit(EXIT_USER_ERROR, f"{prog}: error: {text} (see {prog} --help)\n")


class MarkRunErrors(Callback):
    """Marks an exception raised once the trainer runs, so ``train.py`` shows it with its traceback (exit 1)
    instead of as a user error: those are caught before the run starts (one line, exit 2)."""

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        mark_during_run(exception)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written through :func:`cassi.files.atomic_path` (a temp file in the checkpoint folder,
    renamed over the target): an interrupted save never leaves a truncated ``last.ckpt``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if "://" in str(path):                       # remote storage: Lightning's own transaction
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


def checkpoint_label(path: str | os.PathLike, slurm: bool = False) -> str:
    """How errors name the checkpoint a command resumes from: ``--ckpt_path PATH``, or with ``slurm`` the file
    Lightning resumes from by itself in a SLURM job (:func:`slurm_resume_checkpoint`)."""
    if slurm:
        return f"{path} (the checkpoint Lightning resumes from in a SLURM job when no --ckpt_path is given: a requeue)"
    return f"--ckpt_path {path}"


def check_resume_checkpoint(ckpt_path: str | os.PathLike | None, slurm: bool = False,
                            weights_only: bool | None = None) -> Mapping | None:
    """Before any work: ``--ckpt_path`` must name a Lightning checkpoint (or "last" / "best" / "hpc") whose
    ``state_dict`` holds tensors; so must the file Lightning resumes from in a SLURM job (``slurm``). A file that
    holds other objects than tensors and plain values is refused unless ``weights_only`` (``train.py
    --weights_only``) is False: Lightning loads it then. Returns the checkpoint (loaded memory-mapped, weights
    only), or None for the special values and for such a file loaded by Lightning."""
    if ckpt_path is None or str(ckpt_path) in SPECIAL_CKPT_PATHS or "://" in str(ckpt_path) \
            or str(ckpt_path).startswith("registry"):
        return None
    path = Path(ckpt_path)
    label = checkpoint_label(path, slurm)
    if not path.is_file():
        raise UserError(f"{label}: no such checkpoint file")
    try:
        raw = torch_load_weights(path, mmap=True, label=label)
    except ValueError as err:                        # what the file is: empty, no torch file, an .npz, truncated
        if isinstance(err, PickledObjectsError):
            if weights_only is False:                # the user trusts it: Lightning loads it (or says why)
                return None
            refused = re.search(r"GLOBAL (\S+)", str(err.__cause__))     # the object torch would not unpickle
            named = f" ({refused.group(1)})" if refused else ""
            raise UserError(f"{label} holds objects other than tensors and plain values{named}, which train.py loads "
                            "only with --weights_only false: pass it if you trust the file (loading runs its pickled "
                            "code)") from err
        raise UserError(one_line(err)) from err
    if not isinstance(raw, Mapping) or "pytorch-lightning_version" not in raw:
        try:
            unwrap_checkpoint(raw)
        except ValueError:
            raise UserError(f"{label} is not a Lightning checkpoint of train.py (it holds a {type(raw).__name__}, "
                            "not the weights of a model); --ckpt_path resumes a train.py run") from None
        raise UserError(f"{label} is not a Lightning checkpoint of train.py (it holds the weights only, like an MST "
                        f"toolbox .pth); --ckpt_path resumes a train.py run; evaluate these weights with "
                        f"'eval.py kaist --model NAME --ckpt {path}'")
    problem = state_dict_problem(raw.get("state_dict"))
    if problem:
        raise UserError(f"{label}: its state_dict {problem}: not a checkpoint train.py can load")
    return raw


def state_dict_problem(state: Any) -> str | None:
    """What keeps a Lightning checkpoint's ``state_dict`` from being a model's weights (a mapping of names to
    tensors), said of it ("holds a str at 'w', not a tensor"), or None. A module's extra state (``get_extra_state``,
    saved under a key ending in ``_extra_state``) may be any picklable value."""
    if not isinstance(state, Mapping):
        return "is missing" if state is None else f"is a {type(state).__name__}, not a mapping of names to tensors"
    odd = next((key for key, value in state.items()
                if not isinstance(value, torch.Tensor) and not str(key).endswith(EXTRA_STATE_SUFFIX)), None)
    return None if odd is None else f"holds a {type(state[odd]).__name__} at {odd!r}, not a tensor"


def _plain(value: Any) -> Any:
    """A hyper-parameter value in a form that compares as the user means it: Namespaces and mappings as dicts,
    tuples as lists, an empty dict or list as None (``model_kwargs: {}`` is ``model_kwargs: null``)."""
    if isinstance(value, Namespace):
        value = value.as_dict()
    if isinstance(value, Mapping):
        value = {str(k): _plain(v) for k, v in value.items()}
    elif isinstance(value, (list, tuple)):
        value = [_plain(v) for v in value]
    return None if value in ({}, []) else value


def _shown(value: Any) -> str:
    """A hyper-parameter value as it is written on the command line (YAML flow style)."""
    value = _plain(value)
    return value if isinstance(value, str) else json.dumps(value)


def _same_class(a: str, b: str) -> bool:
    """Whether two class paths name the same class (``training.ReconstructionModule`` is
    ``training.modules.ReconstructionModule``)."""
    if a == b:
        return True
    try:
        return _import(a) is _import(b)
    except (ImportError, AttributeError, ValueError):
        return a.rpartition(".")[2] == b.rpartition(".")[2]


def _import(class_path: str) -> Any:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _differences(prefix: str, asked: Mapping[str, Any], held: Mapping[str, Any], keys: list[str],
                 comparable: Callable[[Mapping[str, Any]], Mapping[str, Any]] = dict) -> list[tuple[str, Any, Any]]:
    """(``prefix.key``, value asked for, value in the checkpoint) of each of ``keys`` that both record and whose
    values differ as given and once ``comparable`` (of all settings: a value the same as given that resolves
    otherwise, ``--data.source auto``, does so through another setting, which is listed) and :func:`_plain`."""
    asked_as, held_as = comparable(asked), comparable(held)
    return [(f"{prefix}.{key}", asked[key], held[key]) for key in keys if key in asked and key in held
            and _plain(asked[key]) != _plain(held[key]) and _plain(asked_as[key]) != _plain(held_as[key])]


def checkpoint_differences(hparams: Mapping[str, Any], model: Namespace | Mapping,
                           subcommand: str | None) -> list[tuple[str, Any, Any]]:
    """(option, value asked for, value in the checkpoint) of every model setting that must match the checkpoint's
    ``hyper_parameters`` and does not: the class and :data:`ARCHITECTURE_HPARAMS` always; for ``fit`` (a resumed
    run) every setting but :data:`SPEED_HPARAMS`. Settings the checkpoint does not record are not compared."""
    model = model.as_dict() if isinstance(model, Namespace) else dict(model or {})
    found = []
    asked_class, ckpt_class = model.get("class_path"), hparams.get("_class_path")
    if isinstance(asked_class, str) and isinstance(ckpt_class, str) and not _same_class(asked_class, ckpt_class):
        found.append(("--model.class_path", asked_class, ckpt_class))
    init = dict(model.get("init_args") or {})
    keys = list(ARCHITECTURE_HPARAMS)
    if subcommand == "fit":
        keys += [k for k in init if k not in keys and k not in SPEED_HPARAMS]
    return found + _differences("--model.init_args", init, hparams, keys)


def data_differences(hparams: Mapping[str, Any], data: Namespace | Mapping) -> list[tuple[str, Any, Any]]:
    """(option, value asked for, value in the checkpoint) of every data setting of a resumed ``fit`` that differs from
    the checkpoint's ``datamodule_hyper_parameters``: all but :data:`data.datamodule.RESUME_FREE_SETTINGS`, as
    :func:`data.datamodule.resume_settings` compares them (they define the training batches the checkpoint's loader
    position counts, and the validation crops of its best score)."""
    data = data.as_dict() if isinstance(data, Namespace) else dict(data or {})
    keys = [key for key in data if key not in RESUME_FREE_SETTINGS]
    return _differences("--data", data, hparams, keys, resume_settings)


def check_checkpoint_settings(path: Path, checkpoint: Mapping, model: Namespace | Mapping, subcommand: str | None,
                              data: Namespace | Mapping | None = None, slurm: bool = False) -> None:
    """Before any work: the model the command asks for (``--config`` and ``--model.*``) is the one ``--ckpt_path``
    holds (:func:`checkpoint_differences`) and, for ``fit`` given ``data``, the data settings are the run's
    (:func:`data_differences`); otherwise one error naming the file, each option, the value asked for and the
    checkpoint's. ``slurm``: no ``--ckpt_path`` was given, Lightning resumes from ``path`` by itself
    (:func:`slurm_resume_checkpoint`)."""
    hparams, data_hparams = checkpoint.get("hyper_parameters"), checkpoint.get("datamodule_hyper_parameters")
    model_found = checkpoint_differences(hparams, model, subcommand) if isinstance(hparams, Mapping) else []
    data_found = (data_differences(data_hparams, data)
                  if subcommand == "fit" and data is not None and isinstance(data_hparams, Mapping) else [])
    if not model_found and not data_found:
        return
    details = "; ".join(f"{option}: asked {_shown(asked)}, the checkpoint has {_shown(held)}"
                        for option, asked, held in model_found + data_found)
    configs = path.parent.parent / "configs"
    origin = f" (its run saved it in {configs})" if path.parent.name == "checkpoints" and configs.is_dir() else ""
    what = " and ".join((["holds another model"] if model_found else [])
                        + (["was trained on other data"] if data_found else []))
    resumed = f"{subcommand} under SLURM" if slurm else f"{subcommand} --ckpt_path"
    if subcommand == "fit":
        kept = ([f"its own model settings (only {', '.join(SPEED_HPARAMS)} may change)"] if model_found else []) + (
            [f"its own data settings, which define the training batch it stopped at (only "
             f"{', '.join(RESUME_FREE_SETTINGS)} may change, and where {' and '.join(MOVABLE_PATHS)} are, not whether "
             "they are set)"]
            if data_found else [])
        new_run = ("start a new run with another --trainer.default_root_dir" if slurm
                   else "drop --ckpt_path to start a new run")
        advice = (f"{resumed} resumes that run with {' and '.join(kept)}: pass the configuration it was trained "
                  f"with{origin}, or {new_run}")
    else:
        advice = (f"{resumed} needs the model the checkpoint was trained with: pass its configuration"
                  f"{origin} or set these options to the checkpoint's values")
    raise UserError(f"{checkpoint_label(path, slurm)} {what} than this command asks for: {details}; {advice}")


def warn_missing_loader_position(path: Path, checkpoint: Mapping, slurm: bool = False) -> None:
    """A ``fit`` resumed from a checkpoint written in mid-epoch before the training loader recorded its position
    (:class:`data.datamodule.ResumableLoader`) takes that epoch's batches again from the first: say so (rank 0),
    naming the file as :func:`checkpoint_label` does."""
    loop = (checkpoint.get("loops") or {}).get("fit_loop") or {}
    batches = fit_progress(loop, checkpoint.get("global_step"))["batches_into_epoch"]
    if not batches or "combined_loader" in (loop.get("state_dict") or {}):
        return
    rank_zero_warn(f"{checkpoint_label(path, slurm)} was written after {batches} training batch(es) of an epoch by a "
                   "train.py whose checkpoints record no training-loader position: the resumed run takes that epoch's "
                   f"batches again from its first, so it trains on its first {batches} batch(es) twice and leaves out "
                   f"its last {batches}; resume from a checkpoint written at an epoch's end for an exact continuation",
                   category=UserWarning)


def last_checkpoint(dirpath: str | None, subcommand: str | None) -> Path | None:
    """The file ``--ckpt_path last`` stands for: the newest ``last*.ckpt`` in the checkpoint folder. None for a
    remote folder (Lightning looks there itself); a local folder without one is an error (Lightning would start
    from scratch, or test untrained weights)."""
    if dirpath is None or "://" in str(dirpath):
        return None
    path = resolve_checkpoint("last", dirpath)
    if path is not None:
        return path
    missing = "" if Path(dirpath).is_dir() else " (no such folder)"
    where = f"no last checkpoint (last.ckpt) in {dirpath}{missing}"
    if subcommand == "fit":
        raise UserError(f"--ckpt_path last: {where}, so there is no run to resume; drop --ckpt_path last to "
                        "start a new run, or pass the folder of the run to resume with --trainer.default_root_dir "
                        "RUN_FOLDER (its checkpoints are in RUN_FOLDER/checkpoints)")
    raise UserError(f"--ckpt_path last: {where}; pass the folder of the run with --trainer.default_root_dir "
                    "RUN_FOLDER, or a checkpoint file with --ckpt_path FILE")


def best_checkpoint(dirpath: str | None, weights_only: bool | None = None) -> Path | None:
    """The file ``--ckpt_path best`` stands for: the best checkpoint of the run in the checkpoint folder, as its
    newest ``last*.ckpt`` records it (``ModelCheckpoint``'s ``best_model_path``; looked up in that folder when the
    run folder has moved). None for a remote folder (Lightning looks itself). Lightning knows the best checkpoint only
    in the process that trained it: a new ``train.py`` stopped with its traceback once the data were loaded.
    ``weights_only``: ``--weights_only``, as :func:`check_resume_checkpoint` takes it."""
    if dirpath is None or "://" in str(dirpath):
        return None
    last = resolve_checkpoint("last", dirpath)
    if last is None:
        raise UserError(f"--ckpt_path best: no last checkpoint (last.ckpt) in {dirpath} to tell which checkpoint of "
                        "the run is the best; pass the folder of the run with --trainer.default_root_dir RUN_FOLDER, "
                        "or a checkpoint file with --ckpt_path FILE")
    checkpoint = check_resume_checkpoint(last, weights_only=weights_only) or {}
    recorded = [state.get("best_model_path") for key, state in (checkpoint.get("callbacks") or {}).items()
                if str(key).startswith("ModelCheckpoint") and isinstance(state, Mapping)]
    for best in filter(None, recorded):
        for path in (Path(best), Path(dirpath) / Path(best).name):
            if path.is_file():
                return path
    held = f"names {', '.join(filter(None, recorded))}, which is not there" if any(recorded) else "names none"
    raise UserError(f"--ckpt_path best: the run's last checkpoint {last} {held} as its best (a run with "
                    "--checkpoint.monitor null keeps none); pass a checkpoint file with --ckpt_path FILE")


def hpc_checkpoint(default_root_dir: str, required: bool = True) -> Path | None:
    """The file ``--ckpt_path hpc`` stands for, as Lightning finds it: the ``hpc_ckpt_<N>.ckpt`` of the largest N in
    the run folder (written when SLURM stops a job). None for a remote folder (Lightning looks itself); without
    such a file an error, or None when not ``required``."""
    if "://" in str(default_root_dir):
        return None
    found = {int(path.stem.removeprefix("hpc_ckpt_")): path for path in Path(default_root_dir).glob("hpc_ckpt_*.ckpt")
             if path.stem.removeprefix("hpc_ckpt_").isdigit()}
    if not found and not required:
        return None
    if not found:
        raise UserError(f"--ckpt_path hpc: no hpc_ckpt_<N>.ckpt in {default_root_dir} (Lightning writes them into the "
                        "run folder when SLURM stops a job); pass the run folder with --trainer.default_root_dir "
                        "RUN_FOLDER, or a checkpoint file with --ckpt_path FILE")
    return found[max(found)]


def slurm_resume_checkpoint(default_root_dir: str) -> Path | None:
    """The checkpoint Lightning resumes from by itself when no ``--ckpt_path`` is given: in a SLURM job
    (:meth:`SLURMEnvironment.detect`), the run folder's ``hpc_ckpt_<N>.ckpt`` of the largest N, which Lightning wrote
    when SLURM stopped the job before requeueing it (:func:`hpc_checkpoint`). None elsewhere or without one."""
    return hpc_checkpoint(default_root_dir, required=False) if SLURMEnvironment.detect() else None


def check_new_run(dirpath: str, default_root_dir: str) -> None:
    """Before ``fit`` without ``--ckpt_path``: the checkpoint folder holds no checkpoint of an earlier run (Lightning
    would write ``last-v1.ckpt`` beside its ``last.ckpt``), unless Lightning resumes that run itself (a SLURM
    requeue, with an ``hpc_ckpt_*.ckpt`` in the run folder). Otherwise one error naming the folder and both ways on."""
    if "://" in str(dirpath) or not Path(dirpath).is_dir():
        return
    found = sorted(path.name for path in Path(dirpath).glob("*.ckpt"))
    if not found or slurm_resume_checkpoint(default_root_dir) is not None:
        return
    in_run_folder = os.path.normpath(dirpath) == os.path.normpath(os.path.join(default_root_dir, "checkpoints"))
    option = "--trainer.default_root_dir" if in_run_folder else "--checkpoint.dirpath"
    shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
    raise UserError(f"{dirpath} already holds the checkpoints of an earlier run ({shown}); a new fit would write "
                    f"beside them: resume that run with --ckpt_path last, or start a new run with another {option}")


def check_mask_handling(module: CassiModule, datamodule: CassiDataModule) -> None:
    """Per-sample mask windows (``mask_crop: sample``) with a network that reads only the first sample's mask
    (MST's mask attention) would fail at the first step: ask for ``mask_crop: batch`` before any work.

    The network is asked through its own ``prepare_inputs`` on a zero measurement of two samples with
    different random masks, at the crop size."""
    if datamodule.mask_crop != "sample" or datamodule.hparams.batch_size < 2:
        return
    crop, bands, step = datamodule.hparams.crop, module.hparams.bands, module.hparams.step
    masks = (torch.rand(2, crop, crop, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    op = CassiOperator(masks, bands, step)
    try:
        module.model.prepare_inputs(torch.zeros(2, crop, op.measurement_width), op)
    except ValueError as err:
        raise ValueError(f"--data.mask_crop sample gives every sample its own mask window, but "
                         f"{module.hparams.model_name} cannot take per-sample masks ({err}); use --data.mask_crop "
                         "batch (one window per batch) or --data.batch_size 1") from None


def check_operator_mask(module: CassiModule, datamodule: CassiDataModule) -> None:
    """Training through an operator file (``--model.operator``) on data with another mask (the default random one,
    another file) would simulate the calibrated instrument with a code it does not have: refuse it before any work,
    naming both masks (source, shape, sha256) and ``--data.mask OPERATOR`` (an operator file holds its mask under
    the key ``mask``). For ``fit`` and ``validate`` only: ``test`` / ``predict`` measure through the nominal
    operator of the test mask (``eval.py kaist``'s scenario I), not through the instrument."""
    expected = module.instrument.mask
    if expected is None:
        return
    mask = torch.from_numpy(datamodule.training_mask())
    if same_mask(mask, expected):
        return
    operator = module.hparams.operator
    source, seed = datamodule.data().mask, datamodule.hparams.seed
    given = f"the file {source}" if source is not None else f"the random one of --data.seed {seed} (no --data.mask)"
    raise UserError(f"--model.operator {operator} records the instrument's mask ({mask_identity(expected)}), but the "
                    f"data's mask is {given} ({mask_identity(mask)}): the calibrated instrument would be simulated "
                    f"with a code it does not have; pass --data.mask {operator} (its mask)")


def unused_operator_note(stage: str, operator: str) -> str:
    """What ``train.py test`` / ``predict`` say of a ``--model.operator`` given to them, which they do not use: they
    measure every scene through the nominal operator of the test mask."""
    return (f"train.py {stage}: note: --model.operator {operator} is not used here: {stage} measures every scene "
            "through the nominal operator of the test mask (scenario I of eval.py kaist); eval.py kaist --operator "
            f"{operator} reconstructs through that instrument")


def checkpoint_mask_note(stage: str, path: Path, checkpoint: Mapping[str, Any], mask: torch.Tensor) -> str | None:
    """``train.py test`` / ``predict``'s warning when the test mask ``mask`` (H, W) is not the mask the checkpoint
    ``path`` (loaded: ``checkpoint``, memory-mapped by the checks) was trained with, in the words of ``eval.py kaist``
    (:func:`models.checkpoints.other_mask_warning`); None when it is, or when the checkpoint's training mask cannot be
    rebuilt (its mask file has moved). Neither the file is read again nor the network built
    (:func:`models.checkpoints.lightning_training_mask`)."""
    note = other_mask_warning(lightning_training_mask(checkpoint, path), mask, "the test mask")
    return f"train.py {stage}: warning: {note}" if note else None


def crop_sizes(datamodule: CassiDataModule, stage: str) -> list[tuple[str, int, int]]:
    """(option and value, H, W) of the square crops a ``fit`` / ``validate`` run gives the network: the training
    crop (``fit``) and the validation crop (``--data.val_crop``, else the training crop)."""
    hp = datamodule.hparams
    sizes = [("--data.crop", hp.crop)] if stage == "fit" or hp.val_crop is None else []
    sizes += [("--data.val_crop", hp.val_crop)] if hp.val_crop is not None else []
    return [(f"{option} {size}", size, size) for option, size in sizes]


def protocol_folder(datamodule: CassiDataModule) -> str | None:
    """The ``TSA_simu_data`` folder of ``test`` / ``predict`` (``--data.test_root``, else the recipe's), or None
    (the built-in synthetic test scenes)."""
    return datamodule.hparams.test_root or datamodule.data().test_root


def protocol_sizes(datamodule: CassiDataModule) -> list[tuple[str, int, int]]:
    """(where the scenes come from, H, W) of the test scenes, whole; after ``datamodule.setup("test")``."""
    height, width = datamodule.test_mask.shape
    folder = protocol_folder(datamodule)
    if folder is None:
        where = "the built-in synthetic test scenes (the training mask's size: --data.mask / --data.crop)"
    else:
        where = f"--data.test_root {folder}" if datamodule.hparams.test_root else f"the test scenes of {folder}"
    return [(where, height, width)]


def check_input_sizes(module: CassiModule, sizes: list[tuple[str, int, int]]) -> None:
    """Before any work: the network takes every input size of the run (``sizes``: (option or source, H, W));
    otherwise one error naming the option, the model and the sizes it takes (its ``size_rule``)."""
    for option, height, width in sizes:
        module.model.size_rule.check(height, width, f"{option}: the input of {module.hparams.model_name}")


def check_forward_inputs(module: CassiModule, sizes: list[tuple[str, int, int]]) -> None:
    """Before any work: the keyword arguments the network's ``prepare_inputs`` gives (on
    :func:`models.registry.probe_measurement` at the first of the run's input ``sizes``) fit its forward
    (:func:`models.registry.forward_inputs`); otherwise one error naming the model and the mismatch, not a
    TypeError at the first step."""
    if not sizes:
        return
    _, height, width = sizes[0]
    op = CassiOperator(torch.ones(height, width), module.hparams.bands, module.hparams.step)
    try:
        forward_inputs(module.model, probe_measurement(op), op)
    except ValueError as err:
        raise UserError(f"--model.init_args.model_name {module.hparams.model_name}: {err}") from None


def prediction_inputs(datamodule: CassiDataModule) -> list[Path]:
    """The files ``train.py predict`` reads: the mask and, with a ``TSA_simu_data`` test folder, its mask and
    ``Truth/*.mat`` scenes."""
    test_root = protocol_folder(datamodule)
    inputs = [datamodule.data().mask]
    if test_root is not None:
        inputs += [Path(test_root) / "mask.mat", *sorted((Path(test_root) / "Truth").glob("*.mat"))]
    return [path for path in inputs if path is not None]


def check_predictions_path(writer: PredictionWriter, default_root_dir: str, datamodule: CassiDataModule) -> None:
    """Before ``predict`` runs: its file (``--predictions.path``, else ``<default_root_dir>/predictions.mat``)
    can be written and is none of the run's inputs (``--predictions.path mask.mat`` would replace the mask).
    An earlier predictions file is replaced, as before."""
    path = writer.path or os.path.join(default_root_dir, "predictions.mat")
    check_output_file(path, force=True, inputs=prediction_inputs(datamodule))


def resolve_checkpoint(ckpt_path: str, dirpath: str | None) -> Path | None:
    """The file ``--ckpt_path`` names: ``last`` / ``best`` are looked up in the checkpoint folder."""
    if ckpt_path in SPECIAL_CKPT_PATHS or ckpt_path.startswith("registry"):
        if ckpt_path != "last" or dirpath is None or not Path(dirpath).is_dir():
            return None
        candidates = sorted(Path(dirpath).glob("last*.ckpt"), key=lambda p: p.stat().st_mtime)
        return candidates[-1] if candidates else None
    return Path(ckpt_path)


class ResumableFitLoop(_FitLoop):
    """Lightning's fit loop, except that a run resumed from a checkpoint written at an epoch's end (its last batch
    processed, the epoch not yet counted complete: ``last.ckpt`` after an epoch or its validation) goes on with the
    next epoch also under ``--trainer.max_steps``. Lightning 2.6 then "restarts" that finished epoch: it counted it
    twice and ran an epoch of no batches (no training, no validation) in place of the next one."""

    @_FitLoop.restarting.setter
    def restarting(self, restarting: bool) -> None:
        progress = self.epoch_progress.current
        unfinished = any(value != progress.processed for value in (progress.ready, progress.started))
        _Loop.restarting.fset(self, restarting and unfinished)   # Lightning adds: or self._iteration_based_training()


def use_resumable_fit_loop(trainer: Trainer) -> None:
    """Give ``trainer`` a :class:`ResumableFitLoop` with its fit loop's settings and epoch loop."""
    loop = ResumableFitLoop(trainer, min_epochs=trainer.fit_loop.min_epochs, max_epochs=trainer.fit_loop.max_epochs)
    loop.epoch_loop = trainer.fit_loop.epoch_loop
    trainer.fit_loop = loop


def _logger_config(trainer: Namespace) -> Namespace | None:
    """The W&B logger's config Namespace (class_path + init_args) of the trainer config, or None."""
    logger = trainer.get("logger")
    if not isinstance(logger, Namespace) or not isinstance(logger.get("class_path"), str):
        return None
    module, _, name = logger.class_path.rpartition(".")
    try:
        cls = getattr(__import__(module, fromlist=[name]), name)
    except (ImportError, AttributeError):
        return None
    return logger if isinstance(cls, type) and issubclass(cls, WandbLogger) else None


class CassiCLI(LightningCLI):
    """LightningCLI that fills run-folder defaults, checks inputs before any work and adds the project's
    callbacks."""

    checked_checkpoint: tuple[Path, Mapping[str, Any]] | None = None   # --ckpt_path's file as checked, memory-mapped

    def setup_parser(self, add_subcommands: bool, main_kwargs: dict[str, Any],
                     subparser_kwargs: dict[str, Any]) -> None:
        """Also: ``test`` prints the project's KAIST table alone; ``--verbose true`` adds Lightning's list of every
        logged value before it (``validate`` keeps Lightning's list: it has no other)."""
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        if add_subcommands:
            self.parser.set_defaults({"test.verbose": False})

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val/psnr", "checkpoint.mode": "max", "checkpoint.save_last": True,
            "checkpoint.auto_insert_metric_name": False,
        })
        parser.add_lightning_class_args(ValidationPreviews, "previews")
        parser.add_lightning_class_args(PredictionWriter, "predictions")
        parser.link_arguments("trainer.default_root_dir", "trainer.logger.init_args.save_dir")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Also keeps the arguments (for the resume command that ``fit`` prints at its end); ``--model.help`` without
        a class shows the arguments of the class the other arguments chose (a recipe, ``--model CLASS``:
        :func:`chosen_model_class`), else lists the classes to pass (:func:`model_help_without_class`)."""
        self.args = list(args) if isinstance(args, (list, tuple)) else sys.argv[1:] if args is None else None
        at = model_help_at(self.args) if self.args is not None else None
        if at is not None:
            others = self.args[:at] + self.args[at + 1:]
            chosen = chosen_model_class(parser, others)
            if chosen is not None:                   # jsonargparse prints its arguments and exits
                parser.parse_args([*others, "--model.help", chosen])
            sys.stdout.write(model_help_without_class(self.args))
            raise SystemExit(0)
        super().parse_arguments(parser, args)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as err:                    # a constructor refused its arguments
            raise UserError(parser_message(str(err))) from err

    def _parse_ckpt_path(self) -> None:
        """LightningCLI replaces the model options with the ``--ckpt_path`` checkpoint's hyper-parameters here, so
        that a command silently runs another model than it asks for. Not here: the model options stay as given,
        and :meth:`before_instantiate_classes` compares them with the checkpoint's
        (:func:`check_checkpoint_settings`)."""

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.checkpoint.dirpath is None:
            config.checkpoint.dirpath = os.path.join(config.trainer.default_root_dir, "checkpoints")
        check_accelerator(config.trainer.accelerator, config.trainer.devices)
        self._check_checkpoint(config)
        if self.subcommand == "fit" and config.get("ckpt_path"):
            self._continue_wandb_run(config)
        elif self.subcommand == "fit":
            check_new_run(config.checkpoint.dirpath, config.trainer.default_root_dir)

    def _check_checkpoint(self, config: Namespace) -> None:
        """Before anything is built: ``--ckpt_path`` names a Lightning checkpoint (``last``: one exists in the
        checkpoint folder, checked as any other file) of the model this command asks for. ``best`` and ``hpc`` are
        replaced by the file they stand for (:func:`best_checkpoint`, :func:`hpc_checkpoint`), which is checked as
        any other; without ``--ckpt_path``, so is the checkpoint Lightning resumes from by itself in a SLURM job
        (:func:`slurm_resume_checkpoint`), which becomes ``--ckpt_path``: Lightning's own lookup reads the digits of
        every file name that holds ``hpc_ckpt_``, so the temp file an interrupted save left
        (``.hpc_ckpt_2.ckpt.k3x9q2ab.tmp``) sent it to a ``hpc_ckpt_2392.ckpt`` that does not exist."""
        ckpt_path = config.get("ckpt_path")
        slurm = not ckpt_path
        if slurm:
            ckpt_path = slurm_resume_checkpoint(config.trainer.default_root_dir)
            if ckpt_path is None:
                return
            config.ckpt_path = str(ckpt_path)        # as with --ckpt_path hpc: Lightning loads the file checked here
        resolved = None
        if str(ckpt_path) == "best":
            resolved = best_checkpoint(config.checkpoint.dirpath, config.get("weights_only"))
        elif str(ckpt_path) == "hpc":
            resolved = hpc_checkpoint(config.trainer.default_root_dir)
        if resolved is not None:                     # Lightning loads the very file checked here
            ckpt_path = config.ckpt_path = str(resolved)
        if str(ckpt_path) == "last":                 # checked as the file it stands for (None: a remote folder)
            ckpt_path = last_checkpoint(config.checkpoint.dirpath, self.subcommand)
        checkpoint = check_resume_checkpoint(ckpt_path, slurm, config.get("weights_only"))
        if checkpoint is None:                       # registry, remote, objects with --weights_only false: Lightning's
            return
        path = Path(ckpt_path)
        check_checkpoint_settings(path, checkpoint, config.model, self.subcommand, config.get("data"), slurm)
        self.checked_checkpoint = (path, checkpoint)
        if self.subcommand == "fit":
            warn_missing_loader_position(path, checkpoint, slurm)

    def _continue_wandb_run(self, config: Namespace) -> None:
        """Resuming from a checkpoint continues the W&B run that wrote it (unless an id is given): the id it records
        is taken from the checkpoint the checks read (:attr:`checked_checkpoint`), not read again."""
        logger = _logger_config(config.trainer)
        if logger is None or self.checked_checkpoint is None:   # registry, remote, --weights_only false: Lightning's
            return
        run_id = checkpoint_run_id(self.checked_checkpoint[1])
        init_args = logger.get("init_args") or Namespace()
        if run_id and not init_args.get("id"):
            init_args.id = run_id                     # WandbLogger resumes an existing id ("allow")
            logger.init_args = init_args

    def check_before_run(self, stage: str) -> None:
        """User errors surface here, before any file is written: every data problem (first from folder listings
        and the mask, ``datamodule.check``, then ``datamodule.setup(stage)`` loads the data now; Lightning's own
        call is then a no-op), a cosine schedule without an epoch count (:meth:`CassiModule.schedule_kwargs`), crops
        or test scenes of a size the network does not take, per-sample masks for a network that reads only the first,
        a test run on several devices; ``test`` / ``predict`` warn when the test mask is not the one ``--ckpt_path``
        was trained with (:func:`checkpoint_mask_note`). Errors raised later, by the run itself,
        keep their traceback (:class:`MarkRunErrors`). ``--ckpt_path`` was checked before the classes were built
        (:meth:`_check_checkpoint`)."""
        if stage == "fit":
            self.model.schedule_kwargs(self.trainer.max_epochs)     # a cosine schedule needs an epoch count
        if self.datamodule is not None:
            self.datamodule.check(stage)
            if stage in ("fit", "validate"):
                check_input_sizes(self.model, crop_sizes(self.datamodule, stage))
                check_forward_inputs(self.model, crop_sizes(self.datamodule, stage))
                check_operator_mask(self.model, self.datamodule)
            if stage == "fit":
                check_mask_handling(self.model, self.datamodule)
            self.datamodule.setup(stage)
            if stage in ("test", "predict"):
                check_input_sizes(self.model, protocol_sizes(self.datamodule))
                check_forward_inputs(self.model, protocol_sizes(self.datamodule))
                checked = self.checked_checkpoint            # the --ckpt_path file Lightning loads
                note = checkpoint_mask_note(stage, *checked, self.datamodule.test_mask) if checked else None
                if note:
                    print(note, file=sys.stderr)
        if stage in ("test", "predict") and self.model.hparams.get("operator"):
            print(unused_operator_note(stage, self.model.hparams.operator), file=sys.stderr)
        if stage in ("test", "predict") and self.trainer.world_size > 1:
            raise UserError(f"train.py {stage} runs the KAIST protocol scene by scene on one device: pass "
                            "--trainer.devices 1")
        self.trainer.callbacks.append(MarkRunErrors())
        if type(self.trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            self.trainer.strategy.checkpoint_io = AtomicCheckpointIO()

    def before_fit(self) -> None:
        self.check_before_run("fit")
        use_resumable_fit_loop(self.trainer)
        self.trainer.callbacks.append(WandbRunId())
        if self.trainer.loggers:
            self.trainer.callbacks.append(LearningRateMonitor(logging_interval="epoch"))
        self.trainer.callbacks.append(RunSummary(self.args))

    def before_validate(self) -> None:
        self.check_before_run("validate")

    def before_test(self) -> None:
        self.check_before_run("test")
        strict_float32(self.trainer.strategy.root_device)     # the KAIST table of eval.py --device cuda

    def after_test(self) -> None:
        """The KAIST table (after Lightning's list of logged values with ``--verbose true``)."""
        if self.trainer.is_global_zero and self.model.test_results:
            print(kaist_test_text(self.model.test_results, self.trainer.ckpt_path))

    def before_predict(self) -> None:
        self.check_before_run("predict")
        strict_float32(self.trainer.strategy.root_device)     # float32 as eval.py --device cuda
        for writer in self.trainer.callbacks:
            if isinstance(writer, PredictionWriter) and self.datamodule is not None:
                check_predictions_path(writer, self.trainer.default_root_dir, self.datamodule)


def main(args: list[str] | None = None) -> CassiCLI:
    """Run ``train.py``; bad input (options, data, ``--ckpt_path``, a missing accelerator) ends with one line
    ``train.py: error: ...`` and exit code 2 before any work (``cassi.errors``)."""
    with cli_errors("train.py", extra=(MisconfigurationException,)):
        return CassiCLI(
            CassiModule, CassiDataModule, subclass_mode_model=True, parser_class=OneLineParser,
            trainer_defaults={"default_root_dir": DEFAULT_ROOT,
                              "logger": {"class_path": "training.loggers.CassiWandbLogger"}},
            save_config_callback=RunConfig, auto_configure_optimizers=False, args=args,
            parser_kwargs={"description": DESCRIPTION},
        )
