"""One function per command: each takes the `Cli` and returns the exit code."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from pydantic import BaseModel

from squeeze.cli import exit_codes, files, render, specs
from squeeze.cli.absent_worker import AbsentWorkerWarning
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

    def model_ref(self, value: str, flag: str = "MODEL") -> str:
        """A model id: the file uploaded, or the id as given."""
        return self._ref(value, "model", flag)

    def dataset_ref(self, value: str, flag: str = "--eval") -> str:
        return self._ref(value, "dataset", flag)

    def _ref(self, value: str, kind: str, flag: str) -> str:
        path = Path(value)
        if self.check(value, kind, flag):
            known = self.uploaded.get(path.resolve())
            return known if known is not None else str(self.upload(path, kind).id)
        return value

    def uploaded_names(self) -> dict[str, str]:
        """Uploaded id -> the file's name, to show in the service's errors."""
        return {item_id: path.name for path, item_id in self.uploaded.items()}

    def check(self, value: str, kind: str, flag: str) -> bool:
        """Whether `value` is a local file (checked to be a `kind`) rather than an id;
        raises LocalFileError naming `flag` for anything else. Nothing is uploaded."""
        path = Path(value)
        prefix = "mdl_" if kind == "model" else "ds_"
        if not path.exists() and value.startswith(prefix):
            return False
        if not path.exists():
            other = "ds_" if kind == "model" else "mdl_"
            hint = (
                f"; {value} is a {'dataset' if kind == 'model' else 'model'} id"
                if value.startswith(other)
                else ""
            )
            raise files.LocalFileError(
                f"{flag} {value}: no such file (nor a {kind} id, {prefix}...){hint}"
            )
        if kind == "model":
            files.check_model(path, flag)
        else:
            files.check_dataset(path, flag)
        return True

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
    kinds = []
    for value in cli.args.paths:  # every file checked before the first is uploaded
        kind = cli.args.kind
        if kind == "auto":
            path = Path(value)
            if not path.is_file():
                raise files.LocalFileError(f"{value}: no such file")
            found = files.sniff(path)
            if found.kind == "other":
                raise files.LocalFileError(
                    f"{value}: neither an ONNX model nor an .npz dataset: {found.why}"
                )
            kind = "dataset" if found.kind == "npz" else "model"
        cli.check(value, kind, "PATH")
        kinds.append(kind)
    rows = [
        cli.upload(Path(value), kind) for value, kind in zip(cli.args.paths, kinds, strict=True)
    ]
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


def _check_inputs(
    cli: Cli, spec: dict[str, Any] | None, models: list[tuple[str, str]]
) -> None:
    """Before anything is uploaded: the evaluation data is given (by --eval, or by the
    spec file), and every local file is what its flag takes."""
    if cli.args.eval is None and not (spec or {}).get("eval_dataset_id"):
        where = f" or set eval_dataset_id in {cli.args.spec}" if spec is not None else ""
        raise specs.SpecError(
            "--eval is required: the evaluation data every metric is measured on (an .npz "
            f"of the model's inputs and labels, or a dataset id ds_...){where}; "
            "`squeeze inspect MODEL` lists the arrays it needs"
        )
    for value, flag in models:
        cli.check(value, "model", flag)
    for name in specs.DATASET_FLAGS:
        value = getattr(cli.args, name)
        if value is not None:
            cli.check(value, "dataset", f"--{name}")


def _with_data(cli: Cli, spec: dict[str, Any]) -> dict[str, Any]:
    """The spec with the data flags' datasets (uploaded when they are files)."""
    for flag, field_name in specs.DATASET_FLAGS.items():
        value = getattr(cli.args, flag)
        if value is not None:
            spec[field_name] = cli.dataset_ref(value, f"--{flag}")
    return specs.merge(spec, specs.common_fields(cli.args))


def submit(cli: Cli) -> int:
    spec = specs.load_spec(Path(cli.args.spec))
    models = [(cli.args.model, "--model")] if cli.args.model is not None else []
    _check_inputs(cli, spec, models)
    output = _check_output(cli, _output_for(cli, spec.get("model_id"), "squeezed"))
    if cli.args.model is not None:
        spec["model_id"] = cli.model_ref(cli.args.model, "--model")
    flags = specs.flag_fields(cli.args, from_spec=spec)
    return _run_job(cli, _with_data(cli, spec), output=output, flags=flags)


def quantize(cli: Cli) -> int:
    _check_inputs(cli, None, [(cli.args.model, "MODEL")])
    output = _check_output(cli, _output_for(cli, None, "quantized"))
    spec = {"model_id": cli.model_ref(cli.args.model), "steps": [specs.quantize_step(cli.args)]}
    return _run_job(cli, _with_data(cli, spec), output=output, flags=specs.flag_fields(cli.args))


def prune(cli: Cli) -> int:
    _check_inputs(cli, None, [(cli.args.model, "MODEL")])
    output = _check_output(cli, _output_for(cli, None, "pruned"))
    spec = {"model_id": cli.model_ref(cli.args.model), "steps": [specs.prune_step(cli.args)]}
    return _run_job(cli, _with_data(cli, spec), output=output, flags=specs.flag_fields(cli.args))


def compress(cli: Cli) -> int:
    _check_inputs(cli, None, [(cli.args.model, "MODEL")])
    step: dict[str, Any] = {"method": "auto", "goal": cli.args.goal}
    if cli.args.time_budget is not None:
        step["time_budget_s"] = cli.args.time_budget
    output = _check_output(cli, _output_for(cli, None, "compressed"))
    spec = {"model_id": cli.model_ref(cli.args.model), "goal": cli.args.goal, "steps": [step]}
    return _run_job(cli, _with_data(cli, spec), output=output, flags=specs.flag_fields(cli.args))


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


def _run_job(
    cli: Cli, spec: dict[str, Any], *, output: Path | None, flags: dict[str, str]
) -> int:
    """Submit, watch, download; a refused spec's errors name the flags that set the
    fields (`flags`: spec path -> flag), not the JSON the CLI wrote for them."""
    try:
        job = cli.client.submit_job(
            spec, webhook_url=cli.args.webhook_url, idempotency_key=cli.args.idempotency_key
        )
    except SqueezeError as error:
        raise specs.in_flag_words(error, flags, cli.uploaded_names()) from error
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
    _check_inputs(cli, spec, [(str(path), "FOLDER") for path in models])
    flags = {f"spec.{path}": flag for path, flag in specs.flag_fields(cli.args, spec).items()}
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
    try:
        submitted = cli.client.submit_batch(
            list(names),
            spec,
            webhook_url=cli.args.webhook_url,
            idempotency_key=cli.args.idempotency_key,
        )
    except SqueezeError as error:
        raise specs.in_flag_words(error, flags, cli.uploaded_names()) from error
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


# --- data preparation ----------------------------------------------------------------------


def inspect(cli: Cli) -> int:
    """What a dataset for the model needs (or what a dataset holds)."""
    from squeeze.cli import data_prep

    value = cli.args.target
    path = Path(value)
    if not path.exists() and value.startswith("mdl_"):
        model = cli.client.get_model(value)
        signature = data_prep.stored_signature(value, dict(model.info), model.filename)
    elif not path.exists() and value.startswith("ds_"):
        dataset = cli.client.get_dataset(value)
        cli.print_json(dataset) if cli.json else cli.print(json.dumps(dataset.info, indent=2))
        return exit_codes.OK
    else:
        found = files.sniff(path) if path.is_file() else None
        if found is None:
            raise files.LocalFileError(f"{value}: no such file (nor a model id, mdl_...)")
        if found.kind == "npz":
            arrays = data_prep.npz_arrays(path)
            if cli.json:
                cli.print_json({"arrays": [vars(array) for array in arrays]})
            else:
                cli.print(data_prep.dataset_text(path))
            return exit_codes.OK
        signature = data_prep.local_signature(path)
    if cli.json:
        cli.print_json(
            {
                "inputs": [vars(t) for t in signature.inputs],
                "outputs": [vars(t) for t in signature.outputs],
                "labels": data_prep.LABELS_BY_TASK,
            }
        )
    else:
        cli.print(data_prep.needs(signature))
    return exit_codes.OK


def dataset(cli: Cli) -> int:
    """An .npz from images, a CSV or .npy files."""
    from squeeze.cli import data_prep

    args = cli.args
    sources = [name for name in ("images", "csv", "input") if getattr(args, name)]
    if len(sources) != 1:
        raise specs.SpecError(
            "give one source: --images FOLDER, --csv FILE, or --input NAME=FILE.npy (repeat "
            "for each input)"
        )
    output = Path(args.output)
    if output.suffix.lower() != ".npz":
        raise specs.SpecError(f"-o {output}: the dataset file must end in .npz")
    if output.exists() and not args.force:
        raise specs.SpecError(f"-o {output}: exists; pass --force to overwrite it")
    arrays: dict[str, Any] = {}
    classes: list[str] = []
    if args.images:
        folder = Path(args.images)
        if not folder.is_dir():
            raise files.LocalFileError(f"--images {folder}: not a folder")
        recipe = data_prep.ImageRecipe(
            size=args.size,
            layout=args.layout,
            scale=args.scale,
            mean=tuple(args.mean),
            std=tuple(args.std),
            grayscale=args.grayscale,
        )
        images, labels, classes = data_prep.image_folder(folder, recipe)
        arrays[args.input_name] = images
        if labels is not None:
            arrays[args.labels_name] = labels
    elif args.csv:
        table_path = Path(args.csv)
        if not table_path.is_file():
            raise files.LocalFileError(f"--csv {table_path}: no such file")
        features = args.features.split(",") if args.features else None
        table, labels, _ = data_prep.csv_table(
            table_path, args.label_column, features, args.dtype
        )
        arrays[args.input_name] = table
        if labels is not None:
            arrays[args.labels_name] = labels
    else:
        for item in args.input:
            name, sep, file_name = item.partition("=")
            if not sep or not name or not file_name:
                raise specs.SpecError(
                    f"--input {item}: write NAME=FILE.npy (NAME: the model input's name)"
                )
            if name in arrays:
                raise specs.SpecError(f"--input {name} is given twice")
            arrays[name] = data_prep.load_npy(file_name, f"--input {name}=")
    if args.labels:
        if args.labels_name in arrays:
            raise specs.SpecError(f"--labels: the array {args.labels_name} is already built")
        arrays[args.labels_name] = data_prep.load_npy(args.labels, "--labels")
    data_prep.write_npz(output, arrays)
    for name, array in arrays.items():
        cli.note(f"  {name:<20} {array.dtype!s:<8} {tuple(array.shape)}")
    if classes:
        mapping = data_prep.write_classes(output, classes)
        cli.note(f"classes: {', '.join(f'{i}={c}' for i, c in enumerate(classes))} ({mapping})")
    cli.print(str(output))
    return exit_codes.OK
