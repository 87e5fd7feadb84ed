"""One function per command: each takes the `Cli` and returns the exit code."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from pydantic import BaseModel

from squeeze.cli import exit_codes, render, specs
from squeeze.cli.progress import BatchWatcher, Display, JobWatcher, TransferBar
from squeeze.client import Client
from squeeze.client.client import MODEL_ARTIFACTS
from squeeze.client.errors import SqueezeError
from squeeze.client.models import Batch, Job

MODEL_SUFFIXES = (".onnx", ".zip", ".tar", ".tgz", ".gz")


@dataclass
class Cli:
    """The parsed arguments, the client, and where output goes."""

    args: argparse.Namespace
    client: Client
    out: TextIO
    err: TextIO
    # local path -> uploaded id, so a file given twice is uploaded once
    uploaded: dict[Path, str] = field(default_factory=dict)

    @property
    def json(self) -> bool:
        return bool(self.args.json)

    def print(self, text: str = "") -> None:
        self.out.write(text + "\n")

    def note(self, text: str) -> None:
        """Human commentary: on stdout, or on stderr when stdout is JSON."""
        (self.err if self.json else self.out).write(text + "\n")

    def print_json(self, value: BaseModel | list[BaseModel] | dict[str, Any]) -> None:
        if isinstance(value, list):
            data: Any = [item.model_dump(mode="json") for item in value]
        elif isinstance(value, BaseModel):
            data = value.model_dump(mode="json")
        else:
            data = value
        self.out.write(json.dumps(data, indent=2) + "\n")

    def display(self) -> Display:
        stream = self.err if self.json else self.out
        return Display(stream, live=stream.isatty())

    # --- uploads -----------------------------------------------------------------------

    def model_ref(self, value: str) -> str:
        """A model id: the file uploaded, or the id as given."""
        return self._ref(value, "model")

    def dataset_ref(self, value: str) -> str:
        return self._ref(value, "dataset")

    def _ref(self, value: str, kind: str) -> str:
        path = Path(value)
        if path.is_file():
            known = self.uploaded.get(path.resolve())
            return known if known is not None else str(self.upload(path, kind).id)
        prefix = "mdl_" if kind == "model" else "ds_"
        if value.startswith(prefix):
            return value
        raise specs.SpecError(f"{value}: no such file (nor a {kind} id, {prefix}...)")

    def upload(self, path: Path, kind: str) -> Any:
        bar = TransferBar(self.display(), f"uploading {path.name}")
        if kind == "model":
            row: Any = self.client.upload_model(path, progress=bar)
        else:
            row = self.client.upload_dataset(path, progress=bar)
        self.uploaded[path.resolve()] = row.id
        if row.reused:
            self.note(f"{path.name} is already uploaded as {row.id} (same sha256): reused")
        else:
            self.note(f"uploaded {path.name} ({render.size(row.size_bytes)}) as {row.id}")
        return row


# --- uploads and submissions -----------------------------------------------------------


def upload(cli: Cli) -> int:
    rows = []
    for value in cli.args.paths:
        path = Path(value)
        if not path.is_file():
            raise specs.SpecError(f"{value}: no such file")
        kind = cli.args.kind
        if kind == "auto":
            kind = "dataset" if path.suffix.lower() == ".npz" else "model"
        rows.append(cli.upload(path, kind))
    if cli.json:
        cli.print_json(rows)
    else:
        cli.print(
            render.table(
                ["id", "file", "size", "sha256"],
                [[r.id, r.filename, render.size(r.size_bytes), r.sha256[:16]] for r in rows],
            )
        )
    return exit_codes.OK


def _with_data(cli: Cli, spec: dict[str, Any]) -> dict[str, Any]:
    """The spec with the data flags' datasets (uploaded when they are files)."""
    for flag, field_name in specs.DATASET_FLAGS.items():
        value = getattr(cli.args, flag)
        if value is not None:
            spec[field_name] = cli.dataset_ref(value)
    return specs.merge(spec, specs.common_fields(cli.args))


def submit(cli: Cli) -> int:
    spec = specs.load_spec(Path(cli.args.spec))
    output = _check_output(cli, _output_for(cli, spec.get("model_id"), "squeezed"))
    if cli.args.model is not None:
        spec["model_id"] = cli.model_ref(cli.args.model)
    return _run_job(cli, _with_data(cli, spec), output=output)


def quantize(cli: Cli) -> int:
    output = _check_output(cli, _output_for(cli, None, "quantized"))
    spec = {"model_id": cli.model_ref(cli.args.model), "steps": [specs.quantize_step(cli.args)]}
    return _run_job(cli, _with_data(cli, spec), output=output)


def prune(cli: Cli) -> int:
    output = _check_output(cli, _output_for(cli, None, "pruned"))
    spec = {"model_id": cli.model_ref(cli.args.model), "steps": [specs.prune_step(cli.args)]}
    return _run_job(cli, _with_data(cli, spec), output=output)


def compress(cli: Cli) -> int:
    step: dict[str, Any] = {"method": "auto", "goal": cli.args.goal}
    if cli.args.time_budget is not None:
        step["time_budget_s"] = cli.args.time_budget
    output = _check_output(cli, _output_for(cli, None, "compressed"))
    spec = {"model_id": cli.model_ref(cli.args.model), "goal": cli.args.goal, "steps": [step]}
    return _run_job(cli, _with_data(cli, spec), output=output)


def _output_for(cli: Cli, spec_model: object, label: str) -> Path | None:
    """Where the result goes: -o, else `model.onnx` -> `model.quantized.onnx` in the
    current folder, named after the local file or, for a model id, the file it was
    uploaded as. None when there is no model to name it after (nothing is downloaded)."""
    if cli.args.detach:
        return None
    if cli.args.output:
        return Path(cli.args.output)
    given = cli.args.model if cli.args.model is not None else spec_model
    if not isinstance(given, str):
        return None
    source = Path(given)
    if source.is_file():
        return Path(f"{source.stem}.{label}.onnx")
    if given.startswith("mdl_"):
        try:
            filename = cli.client.get_model(given).filename
        except SqueezeError:
            return None  # the submission says what is wrong with the id
        return Path(f"{Path(filename).stem}.{label}.onnx")
    return None


def _check_output(cli: Cli, output: Path | None) -> Path | None:
    """Refuses, before anything is uploaded or submitted, an output file that exists."""
    if output is not None and not output.is_dir():
        _refuse_overwrite(cli, output)
    return output


def _refuse_overwrite(cli: Cli, target: Path) -> None:
    if target.exists() and not cli.args.force:
        raise specs.SpecError(
            f"{target} already exists and was left as it is: pass --force to overwrite "
            f"it, or -o PATH to save elsewhere"
        )


def _run_job(cli: Cli, spec: dict[str, Any], *, output: Path | None) -> int:
    job = cli.client.submit_job(
        spec, webhook_url=cli.args.webhook_url, idempotency_key=cli.args.idempotency_key
    )
    cli.note(f"submitted {job.id}")
    if cli.args.detach:
        if cli.json:
            cli.print_json(job)
        return exit_codes.OK
    job = _watch_job(cli, job)
    if job.state == "succeeded" and output is not None:
        saved = _download(cli, job.id, output, None)
        cli.note(f"saved {saved}")
    elif job.state == "succeeded":
        cli.note(f"download the result with: squeeze download {job.id}")
    _print_outcome(cli, job)
    return exit_codes.for_job(job)


def _download(cli: Cli, job_id: str, destination: Path, name: str | None) -> Path:
    """One artifact of the job (the model when `name` is None) to `destination` (a file,
    or a folder to put it in), never over an existing file without --force."""
    names = [artifact.name for artifact in cli.client.list_artifacts(job_id)]
    if name is None:
        name = next((n for n in MODEL_ARTIFACTS if n in names), None)
        if name is None:
            raise specs.SpecError(
                f"job {job_id} has no model to download; its artifacts: "
                f"{', '.join(names) or 'none'} (choose one with --name)"
            )
    elif name not in names:
        raise specs.SpecError(
            f"job {job_id} has no artifact {name!r}; its artifacts: {', '.join(names) or 'none'}"
        )
    target = destination / name if destination.is_dir() else destination
    _refuse_overwrite(cli, target)
    bar = TransferBar(cli.display(), "downloading")
    return cli.client.download_artifact(job_id, name, target, progress=bar)


def _watch_job(cli: Cli, job: Job) -> Job:
    watcher = JobWatcher(cli.client, cli.display())
    return cli.client.wait(job, max_poll_s=2.0, on_update=watcher)


def _print_outcome(cli: Cli, job: Job) -> None:
    if cli.json:
        cli.print_json(job)
    elif job.result is not None:
        cli.print()
        cli.print(render.report(job, job.result))
    else:
        cli.print()
        cli.print(render.job_status(job))


def batch(cli: Cli) -> int:
    spec = specs.load_spec(Path(cli.args.spec))
    spec.pop("model_id", None)
    folder = Path(cli.args.folder)
    if not folder.is_dir():
        raise specs.SpecError(f"{folder}: not a folder")
    models = sorted(path for path in folder.glob(cli.args.pattern) if path.is_file())
    if not models:
        raise specs.SpecError(f"no file in {folder} matches {cli.args.pattern!r}")
    if cli.args.output and Path(cli.args.output).is_dir():
        for path in models:
            _refuse_overwrite(cli, Path(cli.args.output) / _batch_output_name(path))
    spec = _with_data(cli, spec)
    # two identical files are one uploaded model (the service reuses it): one job, under
    # the first file's name
    names: dict[str, Path] = {}
    for path in models:
        model_id = cli.model_ref(str(path))
        if model_id in names:
            cli.note(f"{path.name} holds the same bytes as {names[model_id].name}: one job")
        names.setdefault(model_id, path)
    submitted = cli.client.submit_batch(
        list(names),
        spec,
        webhook_url=cli.args.webhook_url,
        idempotency_key=cli.args.idempotency_key,
    )
    cli.note(f"submitted batch {submitted.id}: {submitted.total} jobs")
    if cli.args.detach:
        _print_batch(cli, submitted, names)
        return exit_codes.OK
    finished = cli.client.wait_batch(submitted, on_update=BatchWatcher(cli.display()))
    if cli.args.output:
        _download_batch(cli, finished, Path(cli.args.output), names)
    _print_batch(cli, finished, names)
    return exit_codes.for_batch(finished)


def _batch_output_name(model: Path) -> str:
    return f"{model.stem}.squeezed.onnx"


def _download_batch(cli: Cli, done: Batch, folder: Path, names: dict[str, Path]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for job in done.jobs:
        if job.state == "succeeded":
            target = folder / _batch_output_name(names[job.model_id])
            cli.note(f"saved {_download(cli, job.id, target, None)}")


def _print_batch(cli: Cli, value: Batch, names: dict[str, Path] | None = None) -> None:
    if cli.json:
        cli.print_json(value)
        return
    if names is not None:
        shown = {model_id: path.name for model_id, path in names.items()}
    else:
        shown = _model_filenames(cli, value)
    cli.print(render.batch_status(value, shown))


def _model_filenames(cli: Cli, value: Batch) -> dict[str, str]:
    """Each job's model by the file name it was uploaded as (its id if it is gone)."""
    shown: dict[str, str] = {}
    for model_id in dict.fromkeys(job.model_id for job in value.jobs):
        try:
            shown[model_id] = cli.client.get_model(model_id).filename
        except SqueezeError as error:
            if error.status != 404:
                raise
    return shown


# --- reading jobs ----------------------------------------------------------------------


def status(cli: Cli) -> int:
    if cli.args.id.startswith("bat_"):
        found = cli.client.get_batch(cli.args.id)
        _print_batch(cli, found)
        return exit_codes.for_batch(found) if found.is_final else exit_codes.OK
    job = cli.client.get_job(cli.args.id)
    if cli.json:
        cli.print_json(job)
    else:
        cli.print(render.job_status(job))
    return exit_codes.for_job(job)


def watch(cli: Cli) -> int:
    if cli.args.id.startswith("bat_"):
        finished = cli.client.wait_batch(cli.args.id, on_update=BatchWatcher(cli.display()))
        _print_batch(cli, finished)
        return exit_codes.for_batch(finished)
    job = _watch_job(cli, cli.client.get_job(cli.args.id))
    _print_outcome(cli, job)
    return exit_codes.for_job(job)


def report(cli: Cli) -> int:
    job = cli.client.get_job(cli.args.job)
    if cli.json:
        cli.print_json(job.result.model_dump(mode="json") if job.result else {"state": job.state})
    elif job.result is not None:
        cli.print(render.report(job, job.result))
    elif job.is_final:
        cli.print(render.job_status(job))
    else:
        cli.print(f"job {job.id} is {job.state} ({job.progress:.0%}): no report yet")
    return exit_codes.for_job(job)


def download(cli: Cli) -> int:
    path = _download(cli, cli.args.job, Path(cli.args.output), cli.args.name)
    if cli.json:
        cli.print_json({"path": str(path)})
    else:
        cli.print(str(path))
    return exit_codes.OK


def list_(cli: Cli) -> int:
    if cli.args.batches:
        page = cli.client.list_batches(limit=cli.args.limit)
        if cli.json:
            cli.print_json(page)
        else:
            rows = [
                [b.id, b.state, str(b.total), f"{b.progress:.0%}", render.when(b.created_at)]
                for b in page.items
            ]
            cli.print(render.table(["batch", "state", "jobs", "progress", "created"], rows))
        return exit_codes.OK
    jobs = cli.client.list_jobs(
        state=cli.args.state,
        outcome=cli.args.outcome,
        method=cli.args.method,
        limit=cli.args.limit,
    )
    if cli.json:
        cli.print_json(jobs)
    else:
        cli.print(render.job_rows(jobs.items))
    return exit_codes.OK


def cancel(cli: Cli) -> int:
    try:
        job = cli.client.cancel_job(cli.args.job)
    except SqueezeError as error:
        if error.code != "job_already_final":
            raise
        job = cli.client.get_job(cli.args.job)
        if cli.json:
            cli.print_json(job)
        else:
            words = render.state_words(job.state, job.outcome, job.targets_met, job.error)
            cli.print(f"{job.id} was already final ({words}): nothing to cancel")
        return exit_codes.OK
    if cli.json:
        cli.print_json(job)
    else:
        state = job.state if job.state == "cancelled" else f"{job.state}, cancel requested"
        cli.print(f"{job.id}: {state}")
    return exit_codes.OK
