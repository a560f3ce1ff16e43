"""SQLite storage: one database file, numbered migrations, one module per resource."""

from agent_manager.store.database import Database

__all__ = ["Database"]
