"""FleetFL: queues."""
