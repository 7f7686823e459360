"""Settings fields that carry their own command-line option and `LT4REC_*` variable.

A field declared with `setting(...)` in a settings dataclass (`PipelineSettings` and the
network, training and search configs nested in it) is, with its default, range and help,
the one place an option is defined: `click_options` turns the fields into `lt4rec`'s
options, `from_options` builds the dataclass from what the command line gave, and
`from_env` builds it from `LT4REC_*` variables, for the runner files that the tfx CLI and
Kubeflow run. A nested settings dataclass (a field whose default is one) is walked too,
and its fields' options sit beside the outer ones. Neither TensorFlow nor click is
imported here (click only when options are made), so settings load fast.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from lt4rec import errors

ENV_PREFIX = "LT4REC_"
_OPTION = "lt4rec_option"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclasses.dataclass(frozen=True)
class Option:
    """How one settings field appears on the command line and in the environment.

    `flag`: the option's name (default: the field's, dashed). `choices`, or a numeric range
    from `low` to `high` (`open` ends exclude the bound), are checked on both paths.
    `per_task`: a tuple of (task, value) pairs, given as one option per task,
    `--<task>-<per_task>`.
    """

    help: str = ""
    flag: str | None = None
    choices: tuple[str, ...] | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    per_task: str | None = None


def setting(default: Any = dataclasses.MISSING, help: str = "", **option: Any) -> Any:
    """A dataclass field with its `Option` (a required option when there is no default)."""
    return dataclasses.field(default=default, metadata={_OPTION: Option(help, **option)})


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One option of a (possibly nested) settings class: where its field is, and its names."""

    path: tuple[str, ...]  # the field names from the outer class down
    option: Option
    kind: type  # int, float, str, bool or tuple (of ints, or of (task, float) pairs)
    optional: bool  # None is a value (the default)
    required: bool
    default: Any
    tasks: tuple[str, ...] = ()

    @property
    def int_list(self) -> bool:
        """A tuple of ints, given as one comma-separated option (`--hidden-units 512,256`)."""
        return self.kind is tuple and not self.option.per_task

    @property
    def flags(self) -> tuple[str, ...]:
        name = self.option.flag or self.path[-1].replace("_", "-")
        return tuple(f"{task}-{self.option.per_task}" for task in self.tasks) if self.option.per_task else (name,)

    @property
    def dests(self) -> tuple[str, ...]:
        """The keyword names click gives these options' values under."""
        return tuple(flag.replace("-", "_") for flag in self.flags)

    def env_names(self) -> tuple[str, ...]:
        return tuple(ENV_PREFIX + dest.upper() for dest in self.dests)

    def check(self, value: Any, name: str) -> Any:
        """`value` if the option allows it, else a UserFacingError naming `name`."""
        option = self.option
        values = [weight for _, weight in value] if self.option.per_task else [value]
        for item in values:
            if item is None or self.int_list:
                continue
            if option.choices is not None and item not in option.choices:
                raise errors.UserFacingError(f"{name} must be one of {', '.join(option.choices)}, not {item!r}")
            if option.low is not None and (item < option.low or option.low_open and item == option.low):
                raise errors.UserFacingError(
                    f"{name} must be {'above' if option.low_open else 'at least'} " f"{option.low}, not {item}"
                )
            if option.high is not None and (item > option.high or option.high_open and item == option.high):
                raise errors.UserFacingError(
                    f"{name} must be {'below' if option.high_open else 'at most'} " f"{option.high}, not {item}"
                )
        return value


def leaves(cls: type, path: tuple[str, ...] = ()) -> Iterator[Leaf]:
    """Every field of `cls` declared with `setting`, and those of its nested settings, in order."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        option = field.metadata.get(_OPTION)
        if option is None:
            if dataclasses.is_dataclass(field.default):
                yield from leaves(type(field.default), (*path, field.name))
            continue
        kind, optional = _kind(hints[field.name])
        default = field.default
        yield Leaf(
            (*path, field.name),
            option,
            kind,
            optional,
            required=default is dataclasses.MISSING,
            default=default,
            tasks=tuple(task for task, _ in default) if option.per_task else (),
        )


def _kind(hint: Any) -> tuple[type, bool]:
    """(the base type, whether None is allowed) of a field's annotation."""
    arguments = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        (base,) = [argument for argument in arguments if argument is not type(None)]
        return _kind(base)[0], True
    origin = typing.get_origin(hint) or hint
    if origin not in (int, float, str, bool, tuple):
        raise TypeError(f"a settings field of type {hint} has no option form")
    return origin, False


def _int_tuple(text: str) -> tuple[int, ...]:
    """ "512,256,128" as (512, 256, 128); a ValueError for anything else."""
    return tuple(int(part) for part in text.split(","))


_WHAT = {bool: "a boolean (true/false, 1/0)", int: "an integer", float: "a number", str: "text"}


def parse(leaf: Leaf, text: str, name: str) -> Any:
    """A field's value from the text of environment variable `name` (one task's, for `per_task`)."""
    text = text.strip()
    if leaf.optional and not text:
        return None
    kind = float if leaf.option.per_task else leaf.kind
    try:
        if kind is bool:
            if text.lower() in _TRUE + _FALSE:
                return text.lower() in _TRUE
            raise ValueError
        if kind is tuple:
            return _int_tuple(text)
        value = kind(text)
        if kind is float and not math.isfinite(value):
            raise ValueError
        return value
    except ValueError:
        what = "a comma-separated list of integers" if kind is tuple else _WHAT[kind]
        raise errors.UserFacingError(f"environment variable {name}={text!r} is not {what}") from None


def _build(cls: type, values: Mapping[tuple[str, ...], Any], path: tuple[str, ...] = ()) -> Any:
    """`cls` with the given leaf values, the defaults elsewhere; nested settings built alike."""
    kwargs = {}
    for field in dataclasses.fields(cls):
        key = (*path, field.name)
        if key in values:
            kwargs[field.name] = values[key]
        elif _OPTION not in field.metadata and dataclasses.is_dataclass(field.default):
            kwargs[field.name] = _build(type(field.default), values, key)
    try:
        return cls(**kwargs)
    except ValueError as error:  # a dataclass's own checks across fields
        raise errors.UserFacingError(str(error)) from None


def from_options(cls: type, options: Mapping[str, Any], **fields: Any) -> Any:
    """`cls` from the values of `click_options(cls)` (keyword names as click gives them);
    `fields`: further top-level fields that are not options."""
    values: dict[tuple[str, ...], Any] = {}
    for leaf in leaves(cls):
        if leaf.option.per_task:
            values[leaf.path] = tuple((task, float(options[dest])) for task, dest in zip(leaf.tasks, leaf.dests))
        else:
            values[leaf.path] = options[leaf.dests[0]]
    values.update({(name,): value for name, value in fields.items()})
    return _build(cls, values)


def from_env(cls: type, environ: Mapping[str, str], **fields: Any) -> Any:
    """`cls` from `LT4REC_*` variables (unset or empty: the default); `fields` as in `from_options`."""
    values: dict[tuple[str, ...], Any] = {}
    for leaf in leaves(cls):
        given = {name: environ[name] for name in leaf.env_names() if environ.get(name, "").strip()}
        if leaf.required and not given:
            raise errors.UserFacingError(f"environment variable {leaf.env_names()[0]} is not set")
        if not given:
            continue
        if leaf.option.per_task:
            weights = dict(leaf.default)
            for task, name in zip(leaf.tasks, leaf.env_names()):
                if name in given:
                    weights[task] = leaf.check(((task, parse(leaf, given[name], name)),), name)[0][1]
            values[leaf.path] = tuple(weights.items())
        else:
            ((name, text),) = given.items()
            values[leaf.path] = leaf.check(parse(leaf, text, name), name)
    values.update({(name,): value for name, value in fields.items()})
    return _build(cls, values)


def click_options(cls: type, exclude: tuple[str, ...] = ()) -> Callable[[Callable], Callable]:
    """A decorator adding one click option per `setting` field of `cls` (but the top-level
    fields in `exclude`), each with its field's default, range, choices and help."""
    import click

    def param_type(leaf: Leaf) -> Any:
        option = leaf.option
        if option.choices is not None:
            return click.Choice(option.choices)
        if leaf.int_list:
            return click.STRING
        number = float if option.per_task else leaf.kind
        if number in (int, float) and (option.low is not None or option.high is not None):
            ranges = {int: click.IntRange, float: click.FloatRange}[number]
            return ranges(option.low, option.high, min_open=option.low_open, max_open=option.high_open)
        return {int: click.INT, float: click.FLOAT}.get(number, click.STRING)

    def int_tuple(ctx: click.Context, param: click.Parameter, value: str) -> tuple:
        if not isinstance(value, str):
            return value
        try:
            return _int_tuple(value)
        except ValueError:
            raise click.BadParameter(f"{value!r} is not a comma-separated list of integers") from None

    decorators = []
    for leaf in leaves(cls):
        if leaf.path[0] in exclude:
            continue
        for index, (flag, dest) in enumerate(zip(leaf.flags, leaf.dests)):
            help_text = leaf.option.help.format(task=leaf.tasks[index] if leaf.tasks else "")
            if leaf.kind is bool:
                decorators.append(
                    click.option(f"--{flag}/--no-{flag}", dest, default=leaf.default, show_default=True, help=help_text)
                )
                continue
            default = leaf.default
            if leaf.option.per_task:
                default = dict(leaf.default)[leaf.tasks[index]]
            elif leaf.int_list and not leaf.required:
                default = ",".join(str(part) for part in leaf.default)
            decorators.append(
                click.option(
                    f"--{flag}",
                    dest,
                    required=leaf.required,
                    default=None if leaf.required else default,
                    show_default=not leaf.required and default is not None,
                    type=param_type(leaf),
                    callback=int_tuple if leaf.int_list else None,
                    help=help_text,
                )
            )

    def decorate(command: Callable) -> Callable:
        for decorator in reversed(decorators):
            command = decorator(command)
        return command

    return decorate
