"""The PostgreSQL store (asyncpg)."""

from .store import PostgresStore

__all__ = ["PostgresStore"]
