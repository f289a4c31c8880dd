"""FleetFL pipeline components: each a plain function and a ClearML task (``python -m components.<name>``).

* :mod:`components.version_data` - source, client shards and evaluation split as ClearML Dataset versions
* :mod:`components.tune` - Optuna HPO over a federated run (``HyperParameterOptimizer``)
* :mod:`components.federate` - the federated run as a server task and one client task per shard
* :mod:`components.evaluate_register` - held-out evaluation and model-registry candidate
* :mod:`components.monitor` - promotion / rollback of candidates (long-running service task)
* :mod:`components.common` - task, parameter and output helpers every component shares
"""
