"""Names both sides must spell the same: Celery task names, Redis keys and pub/sub channels.

Every key starts with `queuechat:`; the worker registry (`live:`, `slots:`, `stats:`, `cards:`,
`models`) is permanent, every other key carries an expiry.
"""

from __future__ import annotations

TASK_GENERATE = "queuechat.generate"
TASK_EMBED = "queuechat.embed"
TASK_SCORE = "queuechat.score"  # classify, score and rerank: a ScoreJob
TASK_TOKENIZE = "queuechat.tokenize"
KEY_PREFIX = "queuechat:"


def channel_for(request_id: str) -> str:
    """The pub/sub channel carrying the events of one request."""
    return f"{KEY_PREFIX}events:{request_id}"


def cancel_key_for(request_id: str) -> str:
    """A key the gateway sets when the client left; the worker stops generating for it."""
    return f"{KEY_PREFIX}cancel:{request_id}"


def event_log_key(request_id: str) -> str:
    """A Redis Stream holding every event of one request (besides its live pub/sub channel), for
    replay: entry id `log_entry_id(seq)`, capped at EVENT_LOG_MAX_EVENTS, expiring after the
    result TTL."""
    return f"{KEY_PREFIX}log:{request_id}"


EVENT_LOG_MAX_EVENTS = 100_000  # a request's log keeps its newest events up to this many


def log_entry_id(seq: int) -> str:
    """The stream entry id of the event numbered `seq` ("<seq>-1": ids must exceed 0-0)."""
    return f"{seq}-1"


def job_record_key(job_id: str) -> str:
    """JSON record of a kept job (a stored or resumable response): what was asked and how to present it,
    written by the gateway that accepted it, read by any gateway; expires with the job's log."""
    return f"{KEY_PREFIX}job:{job_id}"


def attached_key(job_id: str) -> str:
    """How many clients are reading a kept job's events now (a detached job is cancelled after its
    grace period only while this is 0)."""
    return f"{KEY_PREFIX}attached:{job_id}"


def stored_index_key(kind: str) -> str:
    """Sorted set of the ids of stored jobs of one kind (`chat.completion`, `response`), scored by
    creation time: what list endpoints page through.  Expires with its newest member's TTL."""
    return f"{KEY_PREFIX}stored:{kind}"


def file_record_key(file_id: str) -> str:
    """JSON record of an uploaded or produced file (its content is in the file storage); lives
    until the file is deleted, or expires with the file's `expires_at`."""
    return f"{KEY_PREFIX}file:{file_id}"


FILES_INDEX_KEY = f"{KEY_PREFIX}files"


def batch_record_key(batch_id: str) -> str:
    """JSON record of a batch (OpenAI's Batch object): kept like a file, until it is deleted."""
    return f"{KEY_PREFIX}batch:{batch_id}"


BATCHES_INDEX_KEY = f"{KEY_PREFIX}batches"  # sorted set of batch ids by creation time
ACTIVE_BATCHES_KEY = f"{KEY_PREFIX}batches:active"  # batch ids a runner still has work for


def batch_run_key(batch_id: str, part: str) -> str:
    """A running batch's working state (`lease`, `lines`, `sent`, `results`, `errors`): expires
    with the batch's completion window."""
    return f"{KEY_PREFIX}batchrun:{batch_id}:{part}"  # sorted set of file ids by creation time: what GET /v1/files pages

UNFINISHED_KEY = f"{KEY_PREFIX}unfinished"  # sorted set: kept jobs not known to be finished, by creation time


def live_workers_key(model: str) -> str:
    """Sorted set of worker ids serving `model`, scored by their last heartbeat (unix time)."""
    return f"{KEY_PREFIX}live:{model}"


def slots_key(model: str) -> str:
    """Hash worker id -> "free/total" batch slots for `model`, refreshed with every heartbeat."""
    return f"{KEY_PREFIX}slots:{model}"


def stats_key(model: str) -> str:
    """Hash worker id -> JSON engine counters for `model` ({"running", "slots", "tokens"}),
    refreshed with every heartbeat; the gateway's /metrics reads it."""
    return f"{KEY_PREFIX}stats:{model}"


def cards_key(model: str) -> str:
    """Hash worker id -> JSON `ModelCard` (what `model` can do on that worker), with every heartbeat."""
    return f"{KEY_PREFIX}cards:{model}"


def failures_key(model: str) -> str:
    """Hash worker id -> JSON `ModelFailure`: `model` failed to load there (refreshed with every
    heartbeat of that worker, which keeps serving its other models)."""
    return f"{KEY_PREFIX}failed:{model}"


MODELS_SEEN_KEY = f"{KEY_PREFIX}models"  # set of every model name a worker has announced

# Keys that live as long as the deployment: the worker registry, kombu's per-queue bindings (one
# set per queue, bounded by the models file), and files (user data, kept until deleted unless
# uploaded with an expiry).  Every other key must carry an expiry.
PERMANENT_KEY_PREFIXES = (f"{KEY_PREFIX}live:", f"{KEY_PREFIX}slots:", f"{KEY_PREFIX}stats:", f"{KEY_PREFIX}cards:",
                          f"{KEY_PREFIX}failed:", MODELS_SEEN_KEY, f"{KEY_PREFIX}file:", FILES_INDEX_KEY,
                          f"{KEY_PREFIX}batch:", BATCHES_INDEX_KEY, ACTIVE_BATCHES_KEY,
                          "_kombu.binding")  # fmt: skip
