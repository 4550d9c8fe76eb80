"""The catalog's Alembic migrations (run by CatalogResource on first use; see README "Catalog")."""
