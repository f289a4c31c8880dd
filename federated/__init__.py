"""FleetFL federated learning: the Flower app (ServerApp, ClientApp, strategies) and the YOLO task."""
