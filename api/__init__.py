"""The REST API: `create_app()` builds the FastAPI application (see `api.app`)."""
