"""Settings, their command-line options and their LT4REC_* variables, all from the dataclass fields."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from lt4rec import cli, errors, options
from lt4rec.pipeline import configs

ROOTS = {"data_root": "gs://b/logs", "pipeline_root": "gs://b/root", "serving_dir": "gs://b/serving"}


def _changed(leaf: options.Leaf) -> tuple[object, list[str]]:
    """A value other than the default that the field accepts, and its command-line text per flag."""
    if leaf.option.per_task:
        value = tuple((task, weight + 0.25) for task, weight in leaf.default)
        return value, [str(weight) for _, weight in value]
    if leaf.option.choices:
        value = next(choice for choice in leaf.option.choices if choice != leaf.default)
    elif leaf.kind is bool:
        value = not leaf.default
    elif leaf.kind is tuple:
        value = (64, 32)
    elif leaf.path[-1] in ("first_day", "last_day", "span"):
        value = "20201011"
    elif leaf.kind is str:
        value = f"gs://b/{leaf.path[-1]}"
    elif leaf.kind is int:
        value = leaf.default + 3
    else:
        value = min(leaf.default + 0.125, leaf.option.high - 0.125) if leaf.option.high else leaf.default + 0.125
    text = ",".join(map(str, value)) if leaf.kind is tuple else str(value).lower() if leaf.kind is bool else str(value)
    return value, [text]


def _expected(leaf: options.Leaf, value: object) -> configs.PipelineSettings:
    """The default settings with one field set by hand (nested configs replaced by hand)."""
    base = configs.PipelineSettings(**ROOTS)
    if len(leaf.path) == 1:
        return dataclasses.replace(base, **{leaf.path[0]: value})
    outer, name = leaf.path
    return dataclasses.replace(base, **{outer: dataclasses.replace(getattr(base, outer), **{name: value})})


LEAVES = [leaf for leaf in options.leaves(configs.PipelineSettings) if not leaf.required]


def test_every_setting_is_an_option_of_run_and_compile_and_a_variable():
    names = {leaf.path[-1] for leaf in options.leaves(configs.PipelineSettings)}
    assert {"data_root", "table_scale", "embedding_dim", "batch_size", "rounds", "masks", "min_ctr_auc"} <= names
    for command in (cli.pipeline_run, cli.pipeline_compile):
        flags = {option for param in command.params for option in (*param.opts, *param.secondary_opts)}
        for leaf in options.leaves(configs.PipelineSettings):
            assert {f"--{flag}" for flag in leaf.flags} <= flags, (command.name, leaf.path)
    env = [name for leaf in options.leaves(configs.PipelineSettings) for name in leaf.env_names()]
    assert len(env) == len(set(env)) and "LT4REC_CTR_LOSS_WEIGHT" in env and "LT4REC_PRUNE_SCOPE" in env


@pytest.mark.parametrize("leaf", LEAVES, ids=lambda leaf: ".".join(leaf.path))
def test_each_variable_and_each_option_sets_its_field(leaf, monkeypatch):
    value, texts = _changed(leaf)
    expected = _expected(leaf, value)
    environ = {**{f"LT4REC_{k.upper()}": v for k, v in ROOTS.items()}, **dict(zip(leaf.env_names(), texts))}
    assert configs.PipelineSettings.from_env(environ) == expected

    flags = [f"--{k.replace('_', '-')}={v}" for k, v in ROOTS.items()]
    if leaf.kind is bool:
        flags.append(f"--{leaf.flags[0]}" if value else f"--no-{leaf.flags[0]}")
    else:
        flags += [f"--{flag}={text}" for flag, text in zip(leaf.flags, texts)]
    context = cli.pipeline_run.make_context("run", flags)
    assert cli._pipeline_settings(context, dict(context.params)) == expected


def test_unset_or_empty_variables_give_the_defaults():
    environ = {f"LT4REC_{k.upper()}": v for k, v in ROOTS.items()}
    assert configs.PipelineSettings.from_env({**environ, "LT4REC_EVAL_DAYS": " "}) == configs.PipelineSettings(**ROOTS)
    with pytest.raises(errors.UserFacingError, match="LT4REC_SERVING_DIR is not set"):
        configs.PipelineSettings.from_env({k: v for k, v in environ.items() if k != "LT4REC_SERVING_DIR"})


@pytest.mark.parametrize(
    "name,text,message",
    [
        ("LT4REC_EVAL_DAYS", "0", "LT4REC_EVAL_DAYS must be at least 1, not 0"),
        ("LT4REC_EVAL_DAYS", "two", "LT4REC_EVAL_DAYS='two' is not an integer"),
        ("LT4REC_TABLE_SCALE", "0", "LT4REC_TABLE_SCALE must be above 0.0, not 0.0"),
        ("LT4REC_TABLE_SCALE", "nan", "LT4REC_TABLE_SCALE='nan' is not a number"),
        ("LT4REC_OPTIMIZER", "sgd", "LT4REC_OPTIMIZER must be one of adam, lazy_adam, not 'sgd'"),
        (
            "LT4REC_EMBEDDING_STORAGE",
            "int4",
            "LT4REC_EMBEDDING_STORAGE must be one of float32, float16, int8, not 'int4'",
        ),
        ("LT4REC_CVR_LOSS_WEIGHT", "-1", "LT4REC_CVR_LOSS_WEIGHT must be at least 0.0, not -1.0"),
        ("LT4REC_HIDDEN_UNITS", "64,x", "LT4REC_HIDDEN_UNITS='64,x' is not a comma-separated list of integers"),
        ("LT4REC_HIDDEN_UNITS", "64,0", "layer widths must be positive"),
        ("LT4REC_SHARE_TABLES", "maybe", "LT4REC_SHARE_TABLES='maybe' is not a boolean"),
        ("LT4REC_FIRST_DAY", "2020-10-11", "first_day '2020-10-11' is not a day of the form YYYYMMDD"),
    ],
)
def test_bad_variables_are_refused_by_name(name, text, message):
    environ = {**{f"LT4REC_{k.upper()}": v for k, v in ROOTS.items()}, name: text}
    with pytest.raises(errors.UserFacingError, match=message):
        configs.PipelineSettings.from_env(environ)


def test_the_command_line_refuses_what_the_variables_refuse():
    base = [f"--{k.replace('_', '-')}={v}" for k, v in ROOTS.items()]
    for flags in (["--eval-days=0"], ["--table-scale=0"], ["--optimizer=sgd"], ["--hidden-units=64,x"]):
        with pytest.raises(click.BadParameter):
            cli.pipeline_run.make_context("run", base + flags)


def test_embedding_storage_offers_the_exports_storages_and_keeps_float32_by_default():
    """--embedding-storage / LT4REC_EMBEDDING_STORAGE: what `export.py` stores, the trained tables unless set."""
    from lt4rec.models import export

    (leaf,) = [leaf for leaf in LEAVES if leaf.path == ("embedding_storage",)]
    assert leaf.option.choices == export.EMBEDDING_STORAGES and leaf.env_names() == ("LT4REC_EMBEDDING_STORAGE",)
    assert configs.PipelineSettings(**ROOTS).embedding_storage == export.EMBEDDING_STORAGE == export.FLOAT32
    for command in (cli.pipeline_run, cli.pipeline_compile):
        (option,) = [param for param in command.params if "--embedding-storage" in param.opts]
        assert "int8" in option.help and "bytes" in option.help  # the trade-off, where the user chooses
    base = [f"--{k.replace('_', '-')}={v}" for k, v in ROOTS.items()]
    with pytest.raises(click.BadParameter) as refused:
        cli.pipeline_run.make_context("run", [*base, "--embedding-storage=int4"])
    assert "--embedding-storage" in refused.value.format_message()
    with pytest.raises(errors.UserFacingError, match="embedding_storage must be one of"):
        configs.PipelineSettings(**ROOTS, embedding_storage="int4")


def test_serving_matmul_offers_the_exports_paths_measures_by_default_and_reaches_the_pusher():
    """--serving-matmul / LT4REC_SERVING_MATMUL: measured where TaskPusher runs unless forced for other servers."""
    from lt4rec.models import export
    from lt4rec.pipeline import pipeline as pipeline_lib

    (leaf,) = [leaf for leaf in LEAVES if leaf.path == ("serving_matmul",)]
    assert leaf.option.choices == export.MATMUL_CHOICES and leaf.env_names() == ("LT4REC_SERVING_MATMUL",)
    assert configs.PipelineSettings(**ROOTS).serving_matmul == export.MEASURE
    base = [f"--{k.replace('_', '-')}={v}" for k, v in ROOTS.items()]
    with pytest.raises(click.BadParameter) as refused:
        cli.pipeline_run.make_context("run", [*base, "--serving-matmul=fast"])
    assert "--serving-matmul" in refused.value.format_message()
    with pytest.raises(errors.UserFacingError, match="LT4REC_SERVING_MATMUL must be one of"):
        configs.PipelineSettings.from_env({**ROOT_VARIABLES, "LT4REC_SERVING_MATMUL": "fast"})
    with pytest.raises(errors.UserFacingError, match="serving_matmul must be one of"):
        configs.PipelineSettings(**ROOTS, serving_matmul="fast")
    settings = configs.PipelineSettings(**ROOTS, serving_matmul=export.SPARSE)
    (pusher,) = [c for c in pipeline_lib.create_components(settings) if c.id == "TaskPusher"]
    assert pusher.exec_properties["matmul"] == export.SPARSE


ROOT_VARIABLES = {f"LT4REC_{k.upper()}": v for k, v in ROOTS.items()}
VERTEX_VARIABLES = {
    "LT4REC_TRAINING_WORKERS": "3",
    "LT4REC_PARAMETER_SERVERS": "2",
    "LT4REC_GCP_PROJECT": "p",
    "LT4REC_GCP_REGION": "europe-west4",
    "LT4REC_TRAINING_MACHINE_TYPE": "n2-highmem-8",
}


def test_the_vertex_training_job_is_the_same_from_compiles_options_and_the_variables():
    """--training-workers... and LT4REC_TRAINING_WORKERS... fill the same fields; neither given: no job."""
    expected = configs.VertexTraining(3, "p", "europe-west4", "n2-highmem-8", parameter_servers=2)
    assert configs.PipelineSettings.from_env({**ROOT_VARIABLES, **VERTEX_VARIABLES}).vertex_training == expected
    assert configs.PipelineSettings.from_env(ROOT_VARIABLES).vertex_training is None
    flags = {param.opts[0]: param for param in cli.pipeline_compile.params}
    for name in VERTEX_VARIABLES:
        flag = "--" + name.removeprefix("LT4REC_").lower().replace("_", "-")
        assert flags[flag].help, flag
    context = cli.pipeline_compile.make_context(
        "compile",
        ["--out=spec.json", *(f"--{k.replace('_', '-')}={v}" for k, v in ROOTS.items())]
        + [f"--{name.removeprefix('LT4REC_').lower().replace('_', '-')}={v}" for name, v in VERTEX_VARIABLES.items()],
    )
    assert options.from_options(configs.VertexTraining, context.params).asked() == expected


@pytest.mark.parametrize(
    "variables, message",
    [
        ({"LT4REC_PARAMETER_SERVERS": "2"}, "parameter servers train with --training-workers"),
        ({**VERTEX_VARIABLES, "LT4REC_PARAMETER_SERVERS": "-1"}, "LT4REC_PARAMETER_SERVERS must be at least 0"),
        ({**VERTEX_VARIABLES, "LT4REC_TRAINING_WORKERS": "0"}, "LT4REC_TRAINING_WORKERS must be at least 1"),
        ({**VERTEX_VARIABLES, "LT4REC_TRAINING_WORKERS": "x"}, "LT4REC_TRAINING_WORKERS='x' is not an integer"),
        ({"LT4REC_TRAINING_WORKERS": "2"}, "needs a GCP project and region"),
    ],
)
def test_the_variables_refuse_a_vertex_job_that_compile_refuses(variables, message):
    """The runner files' LT4REC_* path checks what --training-workers... checks (it used to drop the
    parameter servers without workers, and take a negative count into the job's pools)."""
    with pytest.raises(errors.UserFacingError, match=message):
        configs.PipelineSettings.from_env({**ROOT_VARIABLES, **variables})


def test_compile_refuses_parameter_servers_without_training_workers(tmp_path):
    base = [f"--{k.replace('_', '-')}={v}" for k, v in ROOTS.items()]
    result = CliRunner().invoke(
        cli.cli, ["pipeline", "compile", f"--out={tmp_path / 'spec.json'}", *base, "--parameter-servers=2"]
    )
    assert isinstance(result.exception, errors.UserFacingError)  # `main` prints it and exits 1
    assert "parameter servers train with --training-workers" in str(result.exception)
    assert not (tmp_path / "spec.json").exists()


@dataclasses.dataclass(frozen=True)
class Inner:
    depth: int = options.setting(2, "How deep.", low=1)


@dataclasses.dataclass(frozen=True)
class Outer:
    name: str = options.setting(help="A name.")
    ratio: float = options.setting(0.5, "A ratio.", low=0.0, high=1.0, high_open=True)
    inner: Inner = Inner()
    fixed: int = 7  # not an option


def test_a_new_setting_reaches_the_command_line_and_the_environment():
    """The point of the generator: a field is all it takes."""

    assert options.from_env(Outer, {"LT4REC_NAME": "a", "LT4REC_DEPTH": "5"}) == Outer("a", 0.5, Inner(5))

    @click.command()
    @options.click_options(Outer)
    def command(**values):
        click.echo(repr(options.from_options(Outer, values, fixed=8)))

    done = CliRunner().invoke(command, ["--name", "b", "--ratio", "0.25", "--depth", "3"])
    assert done.exit_code == 0, done.output
    assert done.output.strip() == repr(Outer("b", 0.25, Inner(3), 8))
    assert CliRunner().invoke(command, ["--name", "b", "--ratio", "1"]).exit_code == 2  # high is open
    assert "--fixed" not in CliRunner().invoke(command, ["--help"]).output


def test_the_settings_load_without_tensorflow():
    """`lt4rec --help` and the pipeline's settings do not wait for TensorFlow to import."""
    code = "import sys; from lt4rec import cli; from lt4rec.pipeline import configs; print(sorted(m for m in "
    code += "('tensorflow', 'tfx', 'apache_beam') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_container_resources_are_compile_options_and_variables():
    flags = {option for param in cli.pipeline_compile.params for option in param.opts}
    assert {"--cpus", "--memory-gb", "--training-cpus", "--training-memory-gb"} <= flags
    context = cli.pipeline_compile.make_context("compile", ["--out=x.json", "--cpus=2", "--training-memory-gb=32"])
    assert options.from_options(configs.Resources, context.params) == configs.Resources(2, 16, 8, 32)
    environ = {"LT4REC_MEMORY_GB": "8", "LT4REC_TRAINING_CPUS": "16"}
    assert options.from_env(configs.Resources, environ) == configs.Resources(4, 8, 16, 64)
    with pytest.raises(errors.UserFacingError, match="LT4REC_CPUS must be above 0"):
        options.from_env(configs.Resources, {"LT4REC_CPUS": "0"})
