"""Every Celery setting, derived from the one settings object (env ``TEXTGEN_*``)."""

from textgen_core.settings import get_settings

_settings = get_settings()

broker_url = _settings.redis_url
broker_connection_retry_on_startup = True
# Results live in the job record in Redis, not in Celery's result backend.
task_ignore_result = True
result_backend = None

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]

# Nothing lost: ack after the task ran, give the message back if the worker dies, take one at a time.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
# An unacked message comes back after this; it must exceed the longest job.
# Lanes: "priority" polls a worker's queues in the order it added them (interactive before bulk),
# so a waiting interactive message is always taken before the bulk backlog.
broker_transport_options = {
    "visibility_timeout": max(3600, int(_settings.generation_time_limit_seconds * 2)),
    "queue_order_strategy": "priority",
}

# Flower and celery-exporter see every task.
worker_send_task_events = True
task_send_sent_event = True

worker_hijack_root_logger = False
worker_redirect_stdouts = False
