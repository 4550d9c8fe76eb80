"""Alembic environment for the catalog: always given a connection by resources.catalog_schema.upgrade_schema."""

from alembic import context

from resources.catalog_schema import VERSION_TABLE, Base

connection = context.config.attributes["connection"]


def _catalog_tables_only(obj, name, type_, reflected, compare_to) -> bool:
    """The catalog may share its database with Dagster's own storage: leave other tables alone."""
    return type_ != "table" or name in Base.metadata.tables


context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # Not "alembic_version": dagster-postgres keeps its own migrations there in a shared database.
    version_table=VERSION_TABLE,
    include_object=_catalog_tables_only,
    # SQLite cannot ALTER most things in place: batch mode copies the table (render_as_batch).
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
