"""One function per command: each takes the `Cli` and returns the exit code."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from pydantic import BaseModel

from squeeze.cli import exit_codes, render, specs
from squeeze.cli.absent_worker import AbsentWorkerWarning
from squeeze.cli.progress import BatchWatcher, Display, JobWatcher, TransferBar
from squeeze.client import Client
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
    if cli.args.model is not None:
        spec["model_id"] = cli.model_ref(cli.args.model)
    return _run_job(cli, _with_data(cli, spec), default_output=None)


def quantize(cli: Cli) -> int:
    spec = {"model_id": cli.model_ref(cli.args.model), "steps": [specs.quantize_step(cli.args)]}
    return _run_job(cli, _with_data(cli, spec), default_output=_output_for(cli, "quantized"))


def prune(cli: Cli) -> int:
    spec = {"model_id": cli.model_ref(cli.args.model), "steps": [specs.prune_step(cli.args)]}
    return _run_job(cli, _with_data(cli, spec), default_output=_output_for(cli, "pruned"))


def compress(cli: Cli) -> int:
    step: dict[str, Any] = {"method": "auto", "goal": cli.args.goal}
    if cli.args.time_budget is not None:
        step["time_budget_s"] = cli.args.time_budget
    spec = {"model_id": cli.model_ref(cli.args.model), "goal": cli.args.goal, "steps": [step]}
    return _run_job(cli, _with_data(cli, spec), default_output=_output_for(cli, "compressed"))


def _output_for(cli: Cli, label: str) -> Path | None:
    """`model.onnx` -> `model.quantized.onnx` in the current folder (for a local model)."""
    source = Path(cli.args.model)
    return Path(f"{source.stem}.{label}.onnx") if source.is_file() else None


def _run_job(cli: Cli, spec: dict[str, Any], *, default_output: Path | None) -> int:
    job = cli.client.submit_job(
        spec, webhook_url=cli.args.webhook_url, idempotency_key=cli.args.idempotency_key
    )
    cli.note(f"submitted {job.id}")
    if cli.args.detach:
        if cli.json:
            cli.print_json(job)
        return exit_codes.OK
    job = _watch_job(cli, job)
    output = Path(cli.args.output) if cli.args.output else default_output
    if job.state == "succeeded" and output is not None:
        bar = TransferBar(cli.display(), "downloading")
        saved = cli.client.download_model(job, output, progress=bar)
        cli.note(f"saved {saved}")
    _print_outcome(cli, job)
    return exit_codes.for_job(job)


def _watch_job(cli: Cli, job: Job) -> Job:
    display = cli.display()
    watcher = JobWatcher(cli.client, display)
    absent = AbsentWorkerWarning(cli.client, cli.err, before_warning=display.done)

    def update(current: Job) -> None:
        watcher(current)
        absent(current)

    return cli.client.wait(job, max_poll_s=2.0, on_update=update)


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
    spec = _with_data(cli, spec)
    model_ids = [cli.model_ref(str(path)) for path in models]
    names = dict(zip(model_ids, models, strict=True))
    submitted = cli.client.submit_batch(
        model_ids,
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


def _download_batch(cli: Cli, done: Batch, folder: Path, names: dict[str, Path]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for job in done.jobs:
        if job.state == "succeeded":
            target = folder / f"{names[job.model_id].stem}.squeezed.onnx"
            cli.client.download_model(job.id, target)
            cli.note(f"saved {target}")


def _print_batch(cli: Cli, value: Batch, names: dict[str, Path] | None = None) -> None:
    if cli.json:
        cli.print_json(value)
    else:
        shown = {model_id: path.name for model_id, path in (names or {}).items()}
        cli.print(render.batch_status(value, shown))


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
    bar = TransferBar(cli.display(), "downloading")
    if cli.args.name:
        path = cli.client.download_artifact(
            cli.args.job, cli.args.name, cli.args.output, progress=bar
        )
    else:
        path = cli.client.download_model(cli.args.job, cli.args.output, progress=bar)
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
        state=cli.args.state, outcome=cli.args.outcome, limit=cli.args.limit
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
        cli.note(f"job {cli.args.job} had already ended")
        job = cli.client.get_job(cli.args.job)
    if cli.json:
        cli.print_json(job)
    else:
        state = job.state if job.state == "cancelled" else f"{job.state}, cancel requested"
        cli.print(f"{job.id}: {state}")
    return exit_codes.OK
