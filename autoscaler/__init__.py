"""FleetFL autoscaler: EC2 instances running clearml-agent for FleetFL's ClearML queues.

ClearML's own ``AutoScaler`` and ``AWSDriver`` (``clearml.automation``), configured from one
validated YAML file (:mod:`autoscaler.config`), with clearml 2.1.12's defects fixed in one subclass
each (:mod:`autoscaler.scaler`). Commands: ``fleetfl autoscaler run|enqueue|check``
(:mod:`autoscaler.cli`); docs: ``docs/autoscaler.md``.
"""
