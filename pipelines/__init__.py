"""FleetFL: pipelines."""
