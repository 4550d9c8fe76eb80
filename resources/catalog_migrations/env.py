"""Alembic environment for the catalog: always given a connection by resources.catalog_schema.upgrade_schema."""

from alembic import context

from resources.catalog_schema import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite cannot ALTER most things in place: batch mode copies the table (render_as_batch).
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
