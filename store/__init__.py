"""Persistence shared by `api/` and `worker/`: SQLAlchemy tables, sessions, blob files."""
