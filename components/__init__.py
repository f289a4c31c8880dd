"""FleetFL: components."""
