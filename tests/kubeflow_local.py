"""Runs a compiled Kubeflow V2 / Vertex AI pipeline spec as the cluster would, without one.

A test tool, not part of the product. For every task of the spec, in dependency order:

- a container task runs its container's own command and arguments (`python -m
  tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor ...`, and first its
  `preCacheCheck` driver where the spec has one, as Vertex AI does, unless told to run as
  Kubeflow Pipelines 2.x, which runs no such hook) in a subprocess of
  this interpreter, with the `ExecutorInput` the orchestrator would give it: the task's
  parameters as compiled, its input artifacts as the producing tasks reported them in
  their `ExecutorOutput`, and local folders as output URIs;
- a resolver task evaluates its compiled filter (`schema_title="tfx.Model" AND ...`) over
  the artifacts in the metadata store: every artifact earlier tasks and earlier runs
  produced, newest first, as Vertex ML Metadata answers such a query;
- an importer task registers its artifact URI (an existing artifact of that URI is
  reused unless the spec asks to reimport).

Only what a spec says is used: nothing is taken from the Python pipeline definition, so
a type the container cannot import or a filter that cannot match fails here as on the
cluster. The store is a JSON file, so a second run (a daily one) sees the first's artifacts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from typing import Any, Iterable

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATE_LIVE = "LIVE"
_PLACEHOLDER = re.compile(r"\{\{\$\.inputs\.artifacts\['([^']+)'\]\.metadata\['([^']+)'\]\}\}")
_CLAUSE = re.compile(r'^\s*([A-Za-z_][\w.]*)\s*(!=|=)\s*("(?:[^"\\]|\\.)*"|[^\s"]+)\s*$')


class SpecError(RuntimeError):
    """The spec asks for something this runner (or the cluster) cannot do."""


def schema_title(artifact_type: dict) -> str:
    if "schemaTitle" in artifact_type:
        return artifact_type["schemaTitle"]
    return yaml.safe_load(artifact_type["instanceSchema"]).get("title", "tfx.Artifact")


@dataclasses.dataclass
class MetadataStore:
    """The artifacts every task of every run produced, in the order they were produced."""

    path: str
    artifacts: list[dict] = dataclasses.field(default_factory=list)

    @classmethod
    def open(cls, path: str) -> "MetadataStore":
        if os.path.exists(path):
            with open(path) as handle:
                return cls(path, json.load(handle))
        return cls(path)

    def add(self, artifact: dict) -> None:
        self.artifacts.append({**artifact, "state": STATE_LIVE})
        with open(self.path, "w") as handle:
            json.dump(self.artifacts, handle, indent=1)

    def query(self, query: str) -> list[dict]:
        """The artifacts matching a conjunction of Vertex ML Metadata filter clauses, newest first."""
        clauses = [_parse_clause(text) for text in query.split(" AND ")]
        return [
            artifact for artifact in reversed(self.artifacts) if all(_matches(artifact, *clause) for clause in clauses)
        ]


def _parse_clause(text: str) -> tuple[str, str, Any]:
    match = _CLAUSE.match(text)
    if not match:
        raise SpecError(f"filter clause not understood: {text!r}")
    field, operator, raw = match.groups()
    value: Any = json.loads(raw) if raw.startswith('"') else raw
    return field, operator, value


def _matches(artifact: dict, field: str, operator: str, value: Any) -> bool:
    if field == "schema_title":
        actual = schema_title(artifact["type"])
    elif field in ("name", "uri", "state"):
        actual = artifact[field]
    elif field.startswith("metadata."):
        key, _, kind = field[len("metadata.") :].rpartition(".")
        if kind not in ("number_value", "string_value", "bool_value"):
            raise SpecError(f"filter field not understood: {field}")
        actual = artifact.get("metadata", {}).get(key)
        if kind == "number_value":
            value = float(value)
            actual = float(actual) if isinstance(actual, (int, float)) else None
    else:
        raise SpecError(f"filter field not understood: {field}")
    return (actual == value) if operator == "=" else (actual != value)


def _parameters(task: dict) -> tuple[dict, dict]:
    """The task's compiled parameters as ExecutorInput's `parameters` (spec 2.0) and `parameterValues` (2.1)."""
    legacy, values = {}, {}
    for name, spec in task.get("inputs", {}).get("parameters", {}).items():
        runtime = spec.get("runtimeValue")
        if runtime is None:
            raise SpecError(f"parameter {name} is not a compile-time constant: {spec}")
        if "constantValue" in runtime:
            legacy[name] = runtime["constantValue"]
        else:
            values[name] = runtime["constant"]
    return legacy, values


class SpecRun:
    """One run of a compiled spec (`pipelineSpec` of a Vertex PipelineJob, or KFP's bare spec)."""

    def __init__(self, spec_file: str, root: str, store: MetadataStore, run_id: str, pre_cache_check: bool = True):
        """`pre_cache_check`: run containers' `preCacheCheck` drivers first, as Vertex AI does
        (Kubeflow Pipelines 2.x does not)."""
        with open(spec_file) as handle:
            document = yaml.safe_load(handle)  # JSON is YAML too
        self.spec = document.get("pipelineSpec", document)
        self.root = root
        self.store = store
        self.run_id = run_id
        self.outputs: dict[str, dict[str, list[dict]]] = {}  # task -> output key -> artifacts
        self.logs: dict[str, str] = {}
        self.pre_cache_check = pre_cache_check

    @property
    def tasks(self) -> dict[str, dict]:
        return self.spec["root"]["dag"]["tasks"]

    def order(self) -> list[str]:
        """Tasks after every task they depend on or take an artifact from."""
        upstream = {
            name: set(task.get("dependentTasks", []))
            | {
                source["taskOutputArtifact"]["producerTask"]
                for source in task.get("inputs", {}).get("artifacts", {}).values()
            }
            for name, task in self.tasks.items()
        }
        ordered: list[str] = []
        while len(ordered) < len(upstream):
            ready = sorted(name for name, needs in upstream.items() if name not in ordered and needs <= set(ordered))
            if not ready:
                raise SpecError(f"cycle among {sorted(set(upstream) - set(ordered))}")
            ordered += ready
        return ordered

    def run(self, only: Iterable[str] | None = None) -> dict[str, dict[str, list[dict]]]:
        """Every task (or those in `only`), in order; their output artifacts by task and key."""
        for name in self.order():
            if only is not None and name not in only:
                continue
            task = self.tasks[name]
            component = self.spec["components"][task["componentRef"]["name"]]
            executor = self.spec["deploymentSpec"]["executors"][component["executorLabel"]]
            inputs = self._input_artifacts(task)
            if "container" in executor:
                produced = self._run_container(name, executor["container"], task, component, inputs)
            elif "resolver" in executor:
                produced = self._resolve(executor["resolver"], inputs)
            elif "importer" in executor:
                produced = self._import(name, executor["importer"], task, component)
            else:
                raise SpecError(f"{name}: executor kind {sorted(executor)} is not runnable")
            self.outputs[name] = produced
        return self.outputs

    def _input_artifacts(self, task: dict) -> dict[str, list[dict]]:
        inputs = {}
        for key, source in task.get("inputs", {}).get("artifacts", {}).items():
            output = source["taskOutputArtifact"]
            artifacts = self.outputs[output["producerTask"]].get(output["outputArtifactKey"], [])
            if artifacts:  # an empty resolver result: the input is absent, as on the cluster
                inputs[key] = artifacts
        return inputs

    def _run_container(
        self, name: str, container: dict, task: dict, component: dict, inputs: dict
    ) -> dict[str, list[dict]]:
        task_root = os.path.join(self.root, self.run_id, name)
        os.makedirs(task_root, exist_ok=True)
        legacy, values = _parameters(task)
        outputs = {
            key: [
                {
                    "name": f"local/{self.run_id}/{name}/{key}",
                    "type": definition["artifactType"],
                    "uri": os.path.join(task_root, key),
                    "metadata": {},
                }
            ]
            for key, definition in component.get("outputDefinitions", {}).get("artifacts", {}).items()
        }
        executor_input = {
            "inputs": {
                "parameters": legacy,
                "parameterValues": values,
                "artifacts": {key: {"artifacts": artifacts} for key, artifacts in inputs.items()},
            },
            "outputs": {
                "artifacts": {key: {"artifacts": artifacts} for key, artifacts in outputs.items()},
                "outputFile": os.path.join(task_root, "executor_output.json"),
            },
        }
        for artifacts in outputs.values():  # as KFP's launcher does (and object stores need no folders)
            os.makedirs(artifacts[0]["uri"], exist_ok=True)
        env = {**os.environ, **{item["name"]: item["value"] for item in container.get("env", [])}}
        steps = (
            [("preCacheCheck", container["lifecycle"]["preCacheCheck"])]
            if self.pre_cache_check and "lifecycle" in container
            else []
        )
        steps.append(("executor", container))
        log_path = os.path.join(task_root, "log.txt")
        self.logs[name] = log_path
        for step, spec in steps:
            command = [sys.executable if part == "python" else part for part in spec["command"]]
            arguments = [json.dumps(executor_input) if part == "{{$}}" else part for part in spec.get("args", [])]
            leftover = [part for part in arguments if "{{$" in part]
            if leftover:
                raise SpecError(f"{name}: placeholders this runner does not fill: {leftover}")
            with open(log_path, "a") as log:
                done = subprocess.run(command + arguments, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
            if done.returncode != 0:
                with open(log_path) as log:
                    tail = log.read()[-4000:]
                raise SpecError(f"{name} ({step}) exited with {done.returncode}:\n{tail}")
            if step == "preCacheCheck":  # Vertex AI updates the outputs as the driver says, then runs the executor
                with open(executor_input["outputs"]["outputFile"]) as handle:
                    driven = json.load(handle).get("artifacts", {})
                for key, update in driven.items():
                    for artifact, changed in zip(outputs[key], update.get("artifacts", [])):
                        artifact["metadata"] = {**artifact["metadata"], **changed.get("metadata", {})}
        with open(executor_input["outputs"]["outputFile"]) as handle:
            reported = json.load(handle).get("artifacts", {})
        produced = {}
        for key, artifacts in outputs.items():
            # The ExecutorOutput carries what the executor set (URI, metadata), not the type.
            reported_artifacts = reported.get(key, {}).get("artifacts") or [{}]
            produced[key] = [{**artifact, **update} for artifact, update in zip(artifacts, reported_artifacts)]
            for artifact in produced[key]:
                self.store.add(artifact)
        return produced

    def _resolve(self, resolver: dict, inputs: dict) -> dict[str, list[dict]]:
        def fill(match: re.Match) -> str:
            key, field = match.groups()
            if key not in inputs:
                raise LookupError(key)
            return str(inputs[key][0].get("metadata", {}).get(field, ""))

        produced = {}
        for key, query in resolver["outputArtifactQueries"].items():
            try:
                text = _PLACEHOLDER.sub(fill, query["filter"])
            except LookupError:  # its input resolved to nothing
                produced[key] = []
                continue
            produced[key] = self.store.query(text)[:1]
        return produced

    def _import(self, name: str, importer: dict, task: dict, component: dict) -> dict[str, list[dict]]:
        (key,) = component["outputDefinitions"]["artifacts"]
        source = importer["artifactUri"]
        if "runtimeParameter" in source:
            legacy, values = _parameters(task)
            parameter = source["runtimeParameter"]
            uri = values[parameter] if parameter in values else legacy[parameter]["stringValue"]
        else:
            uri = source["constant"] if "constant" in source else source["constantValue"]["stringValue"]
        if not importer.get("reimport"):
            for artifact in reversed(self.store.artifacts):
                if artifact["uri"] == uri and schema_title(artifact["type"]) == schema_title(importer["typeSchema"]):
                    return {key: [artifact]}
        artifact = {
            "name": f"local/{self.run_id}/{name}/{key}",
            "type": importer["typeSchema"],
            "uri": uri,
            "metadata": importer.get("metadata", {}),
        }
        self.store.add(artifact)
        return {key: [artifact]}
