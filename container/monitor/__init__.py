"""``lucent monitor``: SageMaker Model Monitor's bias and feature-attribution executions on this machine.

``definition`` reads the ``CreateModelBiasJobDefinition`` / ``CreateModelExplainabilityJobDefinition``
and ``CreateMonitoringSchedule`` bodies the SageMaker SDK sends; ``run`` is one execution; ``cli`` its
command line. Schedules (cron entries, catch-up) live with the other schedules in ``container.schedule``.
"""
