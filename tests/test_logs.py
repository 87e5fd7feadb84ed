"""Log lines about a job carry its id, including Celery's own and a job's threads'."""

from __future__ import annotations

import json
import logging
import threading

from service.logs import JobIdFilter, JsonFormatter, log_context


def formatted(record: logging.LogRecord) -> dict[str, object]:
    JobIdFilter().filter(record)
    line: dict[str, object] = json.loads(JsonFormatter().format(record))
    return line


def test_celerys_task_received_line_carries_the_job_id_from_the_task_arguments() -> None:
    record = logging.LogRecord(
        "celery.worker.strategy",
        logging.INFO,
        __file__,
        1,
        "Task %(name)s[%(id)s] received",
        None,
        None,
    )
    record.args = {
        "name": "squeeze.run_job",
        "id": "c0ffee",
        "args": "['job_01a2270f26d58f556c640722']",
    }
    assert formatted(record)["job_id"] == "job_01a2270f26d58f556c640722"


def test_a_line_about_no_job_has_no_job_id() -> None:
    record = logging.LogRecord(
        "celery.apps.worker", logging.INFO, __file__, 1, "ready.", None, None
    )
    assert "job_id" not in formatted(record)


def test_a_thread_started_in_a_job_context_logs_with_the_id_it_is_given() -> None:
    seen: list[dict[str, object]] = []

    def work() -> None:
        with log_context(job_id="job_0000000000001"):
            record = logging.LogRecord(
                "worker.lease", logging.INFO, __file__, 1, "beat", None, None
            )
            seen.append(formatted(record))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert seen[0]["job_id"] == "job_0000000000001"
