-- Run once by the postgres container on an empty volume (docker-compose.yml):
-- the schema registry keeps its schemas in a database of its own.
create database apicurio_registry;
