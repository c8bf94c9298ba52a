"""Every Celery setting, derived from the one settings object (env ``TEXTGEN_*``)."""

from textgen_core.priorities import PRIORITY_STEPS
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
# Lanes and priorities: kombu's BRPOP names one list per priority step, each step across all of a
# worker's queues, so the steps carry both: interactive priorities 0-2 are steps 0-2, bulk priorities
# 0-2 are steps 3-5 (textgen_core/priorities.py). A waiting interactive message is always taken before
# the bulk backlog, and inside a lane the better priority first; "priority" keeps the queues' order.
broker_transport_options = {
    "visibility_timeout": max(3600, int(_settings.generation_time_limit_seconds * 2)),
    "queue_order_strategy": "priority",
    "priority_steps": PRIORITY_STEPS,
}

# Flower and celery-exporter see every task.
worker_send_task_events = True
task_send_sent_event = True

worker_hijack_root_logger = False
worker_redirect_stdouts = False
