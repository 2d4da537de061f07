"""Storage: one ``Store`` protocol, a SQLite and a PostgreSQL implementation."""
