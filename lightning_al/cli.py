"""``lightning-al``: run a whole active-learning experiment from a YAML file.

    lightning-al --config examples/configs/uncertainty.yaml
    lightning-al --config examples/configs/bayesian.yaml --loop.rounds 3 --trainer.max_epochs 10
    lightning-al --config examples/configs/uncertainty.yaml --print_config   # the full, resolved config
    lightning-al --config examples/configs/file_oracle.yaml --resume         # continue from loop.output_dir
    lightning-al sweep --config examples/configs/sweep.yaml                  # strategies x seeds (lightning_al.sweep)

The config has the sections of `pytorch_lightning.cli.LightningCLI`, with a ``loop``
section added:

- ``model``: any LightningModule by ``class_path`` whose ``forward`` returns logits;
- ``data``: the arguments of `lightning_al.ActiveDataModule` (datasets by ``class_path``);
- ``trainer``: the arguments of every round's ``Trainer`` (callbacks and ``logger`` included; the
  experiment is logged to that logger). No Trainer is built from them up front: the loop builds
  one per round;
- ``loop``: the arguments of `lightning_al.ActiveLearningLoop` (strategy, estimator and
  oracle by ``class_path``, query size, rounds, budget, output directory, ...);
- ``seed_everything``: seeds the model's initialisation, as in any LightningCLI.

Any field can be overridden on the command line (``--loop.query_size 20``).

Lightning namespace. The CLI is the ``LightningCLI`` of the model's namespace: ``lightning-al`` reads the
``model.class_path`` of the config (``--config`` files, ``--model``) and runs with ``lightning.pytorch`` for a
``lightning.pytorch`` model, ``pytorch_lightning`` otherwise; ``--lightning lightning.pytorch`` (or
``pytorch_lightning``) chooses explicitly. Callbacks and loggers of the config must come from the same package.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from jsonargparse import ActionYesNo

from lightning_al import distributed, namespace, sweep
from lightning_al.data.datamodule import ActiveDataModule
from lightning_al.loop import ActiveLearningLoop
from lightning_al.run_state import STATE_FILE

# The strategy used when the config names none: typicality while labels are few, then BADGE.
DEFAULT_STRATEGY = "lightning_al.strategies.BudgetAware"
CONFIG_FILE_NAME = "config.yaml"
SECRET_ARGUMENTS = frozenset({"token", "api_key", "password"})  # never written to a saved config

if TYPE_CHECKING:
    from pytorch_lightning.cli import ArgsType, LightningArgumentParser


def _differs(value: Any, default: Any) -> bool:
    """Whether a parsed Trainer argument differs from the Trainer's own default."""
    if value is default:
        return False
    try:
        return type(value) is not type(default) or bool(value != default)
    except (TypeError, ValueError, RuntimeError):  # values without a plain truth value
        return True


class _ActiveLearningCLI:
    """A `pytorch_lightning.cli.LightningCLI` that builds model, datamodule and
    `lightning_al.ActiveLearningLoop` from a config, then runs the loop with `run`.

    The ``trainer`` section is not turned into one Trainer: the Trainer arguments the config
    sets (those that differ from the Trainer's defaults, with callbacks and logger instantiated)
    become the loop's ``trainer_kwargs``, so every round fits a fresh Trainer with them.

    Args:
        args: command-line arguments (default ``sys.argv[1:]``), or a dict / Namespace of config.
        datamodule_class: the datamodule (``ActiveDataModule`` or a subclass).
        kwargs: further arguments of `pytorch_lightning.cli.LightningCLI` (``run`` is always
            False: `run` runs the experiment).

    `cli_class` gives it on the ``LightningCLI`` of either namespace; `ActiveLearningCLI` is the
    default namespace's.
    """

    def __init__(
        self, args: ArgsType = None, datamodule_class: type[ActiveDataModule] = ActiveDataModule, **kwargs: Any
    ) -> None:
        if not (isinstance(datamodule_class, type) and issubclass(datamodule_class, ActiveDataModule)):
            raise TypeError(
                f"Expected `datamodule_class` to be ActiveDataModule or a subclass, but got {datamodule_class!r}."
            )
        if kwargs.pop("run", False):
            raise ValueError("Expected `run` to be False (call `ActiveLearningCLI.run()`), but got True.")
        kwargs.setdefault("save_config_callback", None)  # the config is saved once, to `loop.output_dir`
        parser_kwargs = kwargs.pop("parser_kwargs", None) or {}
        parser_kwargs.setdefault("prog", "lightning-al")
        parser_kwargs.setdefault("description", "Run an active-learning experiment from a config.")
        super().__init__(  # type: ignore[call-arg]
            datamodule_class=datamodule_class, args=args, run=False, parser_kwargs=parser_kwargs, **kwargs
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_class_arguments(ActiveLearningLoop, "loop", skip={"trainer_kwargs"}, instantiate=False)
        parser.set_defaults({"loop.strategy": {"class_path": DEFAULT_STRATEGY}})
        parser.add_argument(
            "--resume",
            action=ActionYesNo,
            default=False,
            help="Continue the run saved in `loop.output_dir` instead of starting a new one.",
        )

    def instantiate_classes(self) -> None:
        """Instantiate the model, the datamodule and the loop; the trainer section becomes ``trainer_kwargs``."""
        # jsonargparse >= 4.49 names it `instantiate`; `instantiate_classes` is its deprecated alias.
        instantiate = getattr(self.parser, "instantiate", None) or self.parser.instantiate_classes
        self.config_init = instantiate(self.config)
        self.model = self.config_init["model"]
        self.datamodule = self.config_init["data"]
        self._add_configure_optimizers_method_to_model(self.subcommand)
        self.trainer = None
        self.trainer_kwargs = self.round_trainer_kwargs()
        self.loop = ActiveLearningLoop(**vars(self.config_init["loop"]), trainer_kwargs=self.trainer_kwargs)

    def round_trainer_kwargs(self) -> dict[str, Any]:
        """Every round's ``Trainer(**kwargs)``: the Trainer arguments the config sets, plus the CLI's fixed callbacks.

        Arguments left at the Trainer's defaults are dropped, so the loop's own defaults for them apply
        (no logger, checkpoints, progress bar or model summary unless the config asks for them).
        """
        defaults = {name: p.default for name, p in inspect.signature(self.trainer_class).parameters.items()}
        trainer_config = self.config_init["trainer"]
        kwargs = {
            name: value
            for name, value in vars(trainer_config).items()
            if name not in defaults or _differs(value, defaults[name])
        }
        callbacks = kwargs.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, list | tuple) else [callbacks]
        callbacks += [self.config_init[key] for key in self.parser.callback_keys]
        fixed = self.trainer_defaults.get("callbacks") or []
        callbacks += list(fixed) if isinstance(fixed, list | tuple) else [fixed]
        if callbacks:
            kwargs["callbacks"] = callbacks
        return kwargs

    def run(self) -> list[dict[str, Any]]:
        """Run the loop (continuing the run saved in ``loop.output_dir`` with ``--resume``); return its history.

        A new run writes its full config to ``<output_dir>/config.yaml``; a resumed or refused one leaves
        the config already there untouched.
        """
        output_dir = self.loop.output_dir
        if output_dir is not None and not (output_dir / STATE_FILE).exists():
            self.save_config(output_dir / CONFIG_FILE_NAME)
        return self.loop.run(self.model, self.datamodule, resume=bool(self.config["resume"]))

    @distributed.rank_zero_only
    def save_config(self, path: Path) -> None:
        """Write the full, resolved config to ``path`` (pass it to ``--config`` to repeat the run)."""
        # Keep the None entries: they may override non-None defaults. jsonargparse >= 4.49 calls it `skip_unset`.
        keep_none = {
            "skip_unset" if "skip_unset" in inspect.signature(self.parser.dump).parameters else "skip_none": False
        }
        config = self.config.clone()
        for key, value in list(config.items()):
            if key.rsplit(".", 1)[-1] in SECRET_ARGUMENTS and value is not None:
                config[key] = None  # secrets stay out of saved configs: give them by environment variable
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.parser.dump(config, format="yaml", **keep_none))


def cli_class(ns: namespace.Namespace | str | None = None) -> type:
    """The active-learning CLI on the ``LightningCLI`` of ``ns`` (a namespace or its name; default: the default)."""
    ns = namespace.get(ns) if isinstance(ns, str) else ns or namespace.default()
    return namespace.subclass(_ActiveLearningCLI, ns, "cli.LightningCLI")


ActiveLearningCLI = cli_class()


def _option_values(args: list[str], *names: str) -> list[str]:
    """The values given to the options ``names`` in ``args`` (``--name value`` and ``--name=value``)."""
    values = []
    for position, arg in enumerate(args):
        for name in names:
            if arg == name and position + 1 < len(args):
                values.append(args[position + 1])
            elif arg.startswith(name + "="):
                values.append(arg[len(name) + 1 :])
    return values


def _model_class_path(args: list[str]) -> str | None:
    """The model's ``class_path`` as the command line and its config files give it (the last one wins)."""
    found = None
    for value in _option_values(args, "--config", "-c") + _option_values(args, "--model"):
        path = Path(value)
        try:
            config = yaml.safe_load(path.read_text()) if path.is_file() else yaml.safe_load(value)
        except (OSError, yaml.YAMLError):
            continue
        model = config.get("model", config) if isinstance(config, dict) else config
        if isinstance(model, dict) and isinstance(model.get("class_path"), str):
            found = model["class_path"]
        elif isinstance(model, str) and "." in model and path.suffix not in (".yaml", ".yml"):
            found = model
    explicit = _option_values(args, "--model.class_path")
    return explicit[-1] if explicit else found


def namespace_for(args: list[str]) -> tuple[namespace.Namespace, list[str]]:
    """The namespace a command line runs in, and the command line without ``--lightning``.

    ``--lightning NAME`` decides; else the namespace of the config's model class; else the default.
    """
    chosen = _option_values(args, "--lightning")
    rest, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--lightning":
            skip = True
        elif not arg.startswith("--lightning="):
            rest.append(arg)
    if chosen:
        return namespace.get(chosen[-1]), rest
    class_path = _model_class_path(args)
    if class_path is not None and "." in class_path:
        module, _, name = class_path.rpartition(".")
        try:
            model_class = getattr(importlib.import_module(module), name)
            return namespace.namespace_of(model_class, "model.class_path"), rest
        except (ImportError, AttributeError, TypeError):
            pass  # the CLI's own parsing reports what is wrong with the model
    return namespace.default(), rest


def main(args: ArgsType = None) -> None:
    """The ``lightning-al`` console entry point: parse the config, build everything, run the loop.

    ``lightning-al sweep ...`` runs `lightning_al.sweep.main` instead (exiting with its code when not 0).
    """
    argv = sys.argv[1:] if args is None else args
    if isinstance(argv, list) and argv[:1] == ["sweep"]:
        code = sweep.main(argv[1:])
        if code:
            raise SystemExit(code)
        return
    # Lightning 2.6 trips a torch pytree deprecation on every fit; it says nothing about the run.
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    if args is None or isinstance(args, list):
        ns, args = namespace_for(list(sys.argv[1:] if args is None else args))
    else:
        ns = namespace.default()
    cli_class(ns)(args=args).run()
    distributed.shutdown()


if __name__ == "__main__":
    main()
