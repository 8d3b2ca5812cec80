"""Guided migration of service-principal clusters to managed identity (issue 13): `plan` (pure rules), `collect`
(reading the estate), `arm` (the calls), `execute` (one idempotent step at a time). docs/migration.md."""
