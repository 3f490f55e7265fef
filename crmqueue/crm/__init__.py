"""The CRM store: schema (SQLAlchemy Core) and connections, SQLite or PostgreSQL."""

from crmqueue.crm.schema import ENTITY_TABLES, SCHEMA_VERSION
from crmqueue.crm.store import create_engine, get_engine, init_db, seed, sqlalchemy_url

__all__ = [
    "ENTITY_TABLES",
    "SCHEMA_VERSION",
    "create_engine",
    "get_engine",
    "init_db",
    "seed",
    "sqlalchemy_url",
]
