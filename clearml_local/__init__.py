"""The embedded ClearML-API-compatible server (REST API + file server, one SQLite file)."""
