-- First start of the devcontainer's PostgreSQL (docker-entrypoint-initdb.d): one role
-- for the platform and a database each for the manifest store, Dagster and MLflow.
-- The tests connect as "postgres" and create their own databases (IMAGEML_TEST_PG_URL).
CREATE ROLE imageml LOGIN PASSWORD 'imageml';
CREATE DATABASE manifest OWNER imageml;
CREATE DATABASE dagster OWNER imageml;
CREATE DATABASE mlflow OWNER imageml;
