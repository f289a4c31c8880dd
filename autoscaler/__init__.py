"""FleetFL: autoscaler."""
