"""The vocabulary that gateway, workers and adapters share: the bottom layer.

Jobs and sampling parameters (`protocol.jobs`), the events that answer them (`protocol.events`),
the Redis names both sides spell the same (`protocol.names`), model cards announced by workers
(`protocol.cards`), the models file (`protocol.models_file`) and the settings every process
agrees on (`protocol.settings`).  Depends on pydantic (and PyYAML for the models file) only:
importing it builds no Celery app, opens no connection and loads no model code.
"""

from protocol.cards import EMBEDS, GENERATES, Capability, ModelCard
from protocol.events import (
    FINAL_EVENTS,
    DoneEvent,
    EmbeddingsEvent,
    ErrorCode,
    ErrorEvent,
    Event,
    KeepAliveEvent,
    StartEvent,
    TokenEvent,
    TokenLogprob,
    TopLogprob,
    Usage,
    decode_event,
    encode_event,
)
from protocol.jobs import (
    OPENAI_TEMPERATURE,
    OPENAI_TOP_P,
    SAMPLING_EPS,
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    ChatMessage,
    EmbedJob,
    GenerateJob,
    SamplingParams,
    ToolCall,
    with_system_text,
)
from protocol.models_file import ModelsFile, ModelsFileError, ModelSpec, SamplingDefaults, load_models_file
from protocol.names import (
    KEY_PREFIX,
    MODELS_SEEN_KEY,
    PERMANENT_KEY_PREFIXES,
    TASK_EMBED,
    TASK_GENERATE,
    cancel_key_for,
    cards_key,
    channel_for,
    live_workers_key,
    slots_key,
    stats_key,
)
from protocol.settings import DEFAULT_MODELS_FILE, QueueSettings

__all__ = [
    "Capability",
    "ChatMessage",
    "DEFAULT_MODELS_FILE",
    "DoneEvent",
    "EMBEDS",
    "EmbedJob",
    "EmbeddingsEvent",
    "ErrorCode",
    "ErrorEvent",
    "Event",
    "FINAL_EVENTS",
    "GENERATES",
    "GenerateJob",
    "KEY_PREFIX",
    "KeepAliveEvent",
    "MODELS_SEEN_KEY",
    "ModelCard",
    "ModelSpec",
    "ModelsFile",
    "ModelsFileError",
    "OPENAI_TEMPERATURE",
    "OPENAI_TOP_P",
    "PERMANENT_KEY_PREFIXES",
    "QueueSettings",
    "SAMPLING_EPS",
    "SamplingDefaults",
    "SamplingParams",
    "StartEvent",
    "TASK_EMBED",
    "TASK_GENERATE",
    "TOOL_CALL_CLOSE",
    "TOOL_CALL_OPEN",
    "TokenEvent",
    "TokenLogprob",
    "ToolCall",
    "TopLogprob",
    "Usage",
    "cancel_key_for",
    "cards_key",
    "channel_for",
    "decode_event",
    "encode_event",
    "live_workers_key",
    "load_models_file",
    "slots_key",
    "stats_key",
    "with_system_text",
]
