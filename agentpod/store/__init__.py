"""The database layer: engine, tables, migrations and one query module per feature.

SQLite (the embedded default) and PostgreSQL run the same code. Tables live in
``store.tables``; importing ``store.tables`` registers all of them on ``Base.metadata``.
"""
