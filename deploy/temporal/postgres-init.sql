-- Runs once, when the PostgreSQL volume is first initialised. The image creates the database
-- named by POSTGRES_DB (temporal); Temporal's visibility store needs a second one.
CREATE DATABASE temporal_visibility;
