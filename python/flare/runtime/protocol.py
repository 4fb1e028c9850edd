"""Channels, topics and header keys of the job runtime's messages between server, clients and training processes.

Control messages are small FOBS maps. Task data and results are FOBS-dumped ``FLModel``s: their tensors travel by
download (``docs/fobs.md``), so the messages themselves stay small whatever the model's size.
"""

from __future__ import annotations

SERVER_FQCN = "server"

# server <-> client process
CHANNEL_SITE = "flare_site"
TOPIC_REGISTER = "register"
TOPIC_HEARTBEAT = "heartbeat"
TOPIC_DEPLOY = "deploy_job"  # server -> client: the client's app of a job, zipped
TOPIC_ABORT = "abort_job"  # server -> client
TOPIC_END = "end_job"  # server -> client: the job is over, stop its executor

# server <-> client job executor
CHANNEL_TASK = "flare_task"
TOPIC_GET_TASK = "get_task"
TOPIC_SUBMIT = "submit_result"
TOPIC_TASK_READY = "task_ready"  # server -> client: ask now, a task is waiting (saves a poll interval)

# env (admin) <-> server
CHANNEL_ADMIN = "flare_admin"
TOPIC_SUBMIT_JOB = "submit_job"
TOPIC_JOB_STATUS = "job_status"
TOPIC_ABORT_JOB = "abort_job"
TOPIC_SHUTDOWN = "shutdown"

# client job executor <-> external training process
CHANNEL_TRAINER = "flare_trainer"
TOPIC_FETCH = "fetch_task"
TOPIC_RESULT = "task_result"
TOPIC_LOG = "log"

# header keys
JOB_ID = "job_id"
APP = "app"  # a deployment: the app folder it carries
SITE = "site"
TASK_ID = "task_id"
TASK_NAME = "task_name"
TASK_STATUS = "task_status"  # a get_task answer: one of the TaskStatus values
RETRY_AFTER = "retry_after"
REASON = "reason"
ACCEPTED = "accepted"  # a submit answer: False when the result came too late to count
HEARTBEAT_INTERVAL = "heartbeat_interval"  # a client tells the server how often it will say it is alive


class TaskStatus:
    """What the server answers to a task request."""

    READY = "ready"  # a task is in the payload
    WAIT = "wait"  # nothing now: ask again after ``retry_after`` seconds
    END = "end"  # the job is over for this client


__all__ = [name for name in dir() if name.isupper()] + ["TaskStatus"]
