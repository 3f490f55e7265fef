"""The CRM store: `schema` (SQLAlchemy Core) and `store` (connections, SQLite or
PostgreSQL), and `entities` (what an import may write). The package itself imports
nothing, so client code can check payloads against `entities` without SQLAlchemy."""
