"""Celery worker: thin tasks that load a job by id, run the engine, record the outcome."""
