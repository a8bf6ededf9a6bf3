from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Reason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REASON_UNSPECIFIED: _ClassVar[Reason]
    REASON_BAD_TOKEN: _ClassVar[Reason]
    REASON_UNKNOWN_HARDWARE: _ClassVar[Reason]
    REASON_STRICT_HARDWARE: _ClassVar[Reason]
    REASON_BAD_REQUEST: _ClassVar[Reason]
    REASON_DUPLICATE_CELL: _ClassVar[Reason]
    REASON_CELL_GONE: _ClassVar[Reason]
    REASON_NOT_OWNER: _ClassVar[Reason]
    REASON_NO_JOB: _ClassVar[Reason]
    REASON_JOB_NOT_READY: _ClassVar[Reason]
    REASON_PROTOCOL_MISMATCH: _ClassVar[Reason]
REASON_UNSPECIFIED: Reason
REASON_BAD_TOKEN: Reason
REASON_UNKNOWN_HARDWARE: Reason
REASON_STRICT_HARDWARE: Reason
REASON_BAD_REQUEST: Reason
REASON_DUPLICATE_CELL: Reason
REASON_CELL_GONE: Reason
REASON_NOT_OWNER: Reason
REASON_NO_JOB: Reason
REASON_JOB_NOT_READY: Reason
REASON_PROTOCOL_MISMATCH: Reason

class Blob(_message.Message):
    __slots__ = ("hash", "data", "buffers")
    HASH_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    BUFFERS_FIELD_NUMBER: _ClassVar[int]
    hash: str
    data: bytes
    buffers: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, hash: _Optional[str] = ..., data: _Optional[bytes] = ..., buffers: _Optional[_Iterable[bytes]] = ...) -> None: ...

class NamedValue(_message.Message):
    __slots__ = ("name", "hash", "type_name", "size", "fetch", "in_place")
    NAME_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    TYPE_NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    FETCH_FIELD_NUMBER: _ClassVar[int]
    IN_PLACE_FIELD_NUMBER: _ClassVar[int]
    name: str
    hash: str
    type_name: str
    size: int
    fetch: bool
    in_place: bool
    def __init__(self, name: _Optional[str] = ..., hash: _Optional[str] = ..., type_name: _Optional[str] = ..., size: _Optional[int] = ..., fetch: _Optional[bool] = ..., in_place: _Optional[bool] = ...) -> None: ...

class RemoteRefInfo(_message.Message):
    __slots__ = ("name", "type_name", "size", "reason", "hardware", "worker_id", "summary")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    name: str
    type_name: str
    size: int
    reason: str
    hardware: str
    worker_id: str
    summary: str
    def __init__(self, name: _Optional[str] = ..., type_name: _Optional[str] = ..., size: _Optional[int] = ..., reason: _Optional[str] = ..., hardware: _Optional[str] = ..., worker_id: _Optional[str] = ..., summary: _Optional[str] = ...) -> None: ...

class CellOptions(_message.Message):
    __slots__ = ("timeout_s", "idle_s", "fresh", "env", "pull", "keep", "retries", "strict", "return_limit")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    IDLE_S_FIELD_NUMBER: _ClassVar[int]
    FRESH_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    PULL_FIELD_NUMBER: _ClassVar[int]
    KEEP_FIELD_NUMBER: _ClassVar[int]
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    STRICT_FIELD_NUMBER: _ClassVar[int]
    RETURN_LIMIT_FIELD_NUMBER: _ClassVar[int]
    timeout_s: float
    idle_s: float
    fresh: bool
    env: _containers.ScalarMap[str, str]
    pull: _containers.RepeatedScalarFieldContainer[str]
    keep: _containers.RepeatedScalarFieldContainer[str]
    retries: int
    strict: bool
    return_limit: int
    def __init__(self, timeout_s: _Optional[float] = ..., idle_s: _Optional[float] = ..., fresh: _Optional[bool] = ..., env: _Optional[_Mapping[str, str]] = ..., pull: _Optional[_Iterable[str]] = ..., keep: _Optional[_Iterable[str]] = ..., retries: _Optional[int] = ..., strict: _Optional[bool] = ..., return_limit: _Optional[int] = ...) -> None: ...

class CellExecuteRequest(_message.Message):
    __slots__ = ("session_id", "cell_id", "hardware", "source", "imports", "inputs", "blobs", "refs", "assigns", "options", "execution_count", "deletes", "session_name", "owner", "client_boot_id", "cell_filename", "process_state", "modules")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CELL_ID_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    IMPORTS_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    BLOBS_FIELD_NUMBER: _ClassVar[int]
    REFS_FIELD_NUMBER: _ClassVar[int]
    ASSIGNS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_COUNT_FIELD_NUMBER: _ClassVar[int]
    DELETES_FIELD_NUMBER: _ClassVar[int]
    SESSION_NAME_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    CLIENT_BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    CELL_FILENAME_FIELD_NUMBER: _ClassVar[int]
    PROCESS_STATE_FIELD_NUMBER: _ClassVar[int]
    MODULES_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    cell_id: str
    hardware: str
    source: str
    imports: _containers.RepeatedScalarFieldContainer[str]
    inputs: _containers.RepeatedCompositeFieldContainer[NamedValue]
    blobs: _containers.RepeatedCompositeFieldContainer[Blob]
    refs: _containers.RepeatedScalarFieldContainer[str]
    assigns: _containers.RepeatedScalarFieldContainer[str]
    options: CellOptions
    execution_count: int
    deletes: _containers.RepeatedScalarFieldContainer[str]
    session_name: str
    owner: str
    client_boot_id: str
    cell_filename: str
    process_state: bytes
    modules: _containers.RepeatedCompositeFieldContainer[ModuleSource]
    def __init__(self, session_id: _Optional[str] = ..., cell_id: _Optional[str] = ..., hardware: _Optional[str] = ..., source: _Optional[str] = ..., imports: _Optional[_Iterable[str]] = ..., inputs: _Optional[_Iterable[_Union[NamedValue, _Mapping]]] = ..., blobs: _Optional[_Iterable[_Union[Blob, _Mapping]]] = ..., refs: _Optional[_Iterable[str]] = ..., assigns: _Optional[_Iterable[str]] = ..., options: _Optional[_Union[CellOptions, _Mapping]] = ..., execution_count: _Optional[int] = ..., deletes: _Optional[_Iterable[str]] = ..., session_name: _Optional[str] = ..., owner: _Optional[str] = ..., client_boot_id: _Optional[str] = ..., cell_filename: _Optional[str] = ..., process_state: _Optional[bytes] = ..., modules: _Optional[_Iterable[_Union[ModuleSource, _Mapping]]] = ...) -> None: ...

class ModuleSource(_message.Message):
    __slots__ = ("name", "path", "hash")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    name: str
    path: str
    hash: str
    def __init__(self, name: _Optional[str] = ..., path: _Optional[str] = ..., hash: _Optional[str] = ...) -> None: ...

class CellEvent(_message.Message):
    __slots__ = ("cell_id", "time", "seq", "queued", "started", "stream", "display", "result", "error", "finished", "notice", "transfer", "process_state", "input_request")
    CELL_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    NOTICE_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_FIELD_NUMBER: _ClassVar[int]
    PROCESS_STATE_FIELD_NUMBER: _ClassVar[int]
    INPUT_REQUEST_FIELD_NUMBER: _ClassVar[int]
    cell_id: str
    time: float
    seq: int
    queued: Queued
    started: Started
    stream: Stream
    display: Display
    result: Result
    error: Error
    finished: Finished
    notice: Notice
    transfer: Transfer
    process_state: ProcessState
    input_request: InputRequest
    def __init__(self, cell_id: _Optional[str] = ..., time: _Optional[float] = ..., seq: _Optional[int] = ..., queued: _Optional[_Union[Queued, _Mapping]] = ..., started: _Optional[_Union[Started, _Mapping]] = ..., stream: _Optional[_Union[Stream, _Mapping]] = ..., display: _Optional[_Union[Display, _Mapping]] = ..., result: _Optional[_Union[Result, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., finished: _Optional[_Union[Finished, _Mapping]] = ..., notice: _Optional[_Union[Notice, _Mapping]] = ..., transfer: _Optional[_Union[Transfer, _Mapping]] = ..., process_state: _Optional[_Union[ProcessState, _Mapping]] = ..., input_request: _Optional[_Union[InputRequest, _Mapping]] = ...) -> None: ...

class InputRequest(_message.Message):
    __slots__ = ("prompt", "password")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    password: bool
    def __init__(self, prompt: _Optional[str] = ..., password: _Optional[bool] = ...) -> None: ...

class Transfer(_message.Message):
    __slots__ = ("address", "ticket", "hashes")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TICKET_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    address: str
    ticket: str
    hashes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, address: _Optional[str] = ..., ticket: _Optional[str] = ..., hashes: _Optional[_Iterable[str]] = ...) -> None: ...

class Queued(_message.Message):
    __slots__ = ("position", "hardware")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_FIELD_NUMBER: _ClassVar[int]
    position: int
    hardware: str
    def __init__(self, position: _Optional[int] = ..., hardware: _Optional[str] = ...) -> None: ...

class Started(_message.Message):
    __slots__ = ("worker_id", "hardware", "cold", "node", "versions", "lane_address", "lane_ticket", "idle_timeout_s")
    class VersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_FIELD_NUMBER: _ClassVar[int]
    COLD_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    LANE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LANE_TICKET_FIELD_NUMBER: _ClassVar[int]
    IDLE_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    hardware: str
    cold: bool
    node: str
    versions: _containers.ScalarMap[str, str]
    lane_address: str
    lane_ticket: str
    idle_timeout_s: float
    def __init__(self, worker_id: _Optional[str] = ..., hardware: _Optional[str] = ..., cold: _Optional[bool] = ..., node: _Optional[str] = ..., versions: _Optional[_Mapping[str, str]] = ..., lane_address: _Optional[str] = ..., lane_ticket: _Optional[str] = ..., idle_timeout_s: _Optional[float] = ...) -> None: ...

class Stream(_message.Message):
    __slots__ = ("name", "text")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    name: str
    text: str
    def __init__(self, name: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class Display(_message.Message):
    __slots__ = ("data_json", "metadata_json", "execute_result", "display_id", "update", "clear", "clear_wait", "page", "local_magic")
    DATA_JSON_FIELD_NUMBER: _ClassVar[int]
    METADATA_JSON_FIELD_NUMBER: _ClassVar[int]
    EXECUTE_RESULT_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_ID_FIELD_NUMBER: _ClassVar[int]
    UPDATE_FIELD_NUMBER: _ClassVar[int]
    CLEAR_FIELD_NUMBER: _ClassVar[int]
    CLEAR_WAIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    LOCAL_MAGIC_FIELD_NUMBER: _ClassVar[int]
    data_json: str
    metadata_json: str
    execute_result: bool
    display_id: str
    update: bool
    clear: bool
    clear_wait: bool
    page: bool
    local_magic: str
    def __init__(self, data_json: _Optional[str] = ..., metadata_json: _Optional[str] = ..., execute_result: _Optional[bool] = ..., display_id: _Optional[str] = ..., update: _Optional[bool] = ..., clear: _Optional[bool] = ..., clear_wait: _Optional[bool] = ..., page: _Optional[bool] = ..., local_magic: _Optional[str] = ...) -> None: ...

class Result(_message.Message):
    __slots__ = ("outputs", "blobs", "refs", "deleted", "data_address", "ticket")
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    BLOBS_FIELD_NUMBER: _ClassVar[int]
    REFS_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    DATA_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TICKET_FIELD_NUMBER: _ClassVar[int]
    outputs: _containers.RepeatedCompositeFieldContainer[NamedValue]
    blobs: _containers.RepeatedCompositeFieldContainer[Blob]
    refs: _containers.RepeatedCompositeFieldContainer[RemoteRefInfo]
    deleted: _containers.RepeatedScalarFieldContainer[str]
    data_address: str
    ticket: str
    def __init__(self, outputs: _Optional[_Iterable[_Union[NamedValue, _Mapping]]] = ..., blobs: _Optional[_Iterable[_Union[Blob, _Mapping]]] = ..., refs: _Optional[_Iterable[_Union[RemoteRefInfo, _Mapping]]] = ..., deleted: _Optional[_Iterable[str]] = ..., data_address: _Optional[str] = ..., ticket: _Optional[str] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("ename", "evalue", "traceback", "kind", "etype", "frames")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[Error.Kind]
        USER: _ClassVar[Error.Kind]
        CANCELLED: _ClassVar[Error.Kind]
        TIMEOUT: _ClassVar[Error.Kind]
        WORKER_LOST: _ClassVar[Error.Kind]
        REJECTED: _ClassVar[Error.Kind]
    KIND_UNSPECIFIED: Error.Kind
    USER: Error.Kind
    CANCELLED: Error.Kind
    TIMEOUT: Error.Kind
    WORKER_LOST: Error.Kind
    REJECTED: Error.Kind
    ENAME_FIELD_NUMBER: _ClassVar[int]
    EVALUE_FIELD_NUMBER: _ClassVar[int]
    TRACEBACK_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ETYPE_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    ename: str
    evalue: str
    traceback: _containers.RepeatedScalarFieldContainer[str]
    kind: Error.Kind
    etype: str
    frames: _containers.RepeatedCompositeFieldContainer[Frame]
    def __init__(self, ename: _Optional[str] = ..., evalue: _Optional[str] = ..., traceback: _Optional[_Iterable[str]] = ..., kind: _Optional[_Union[Error.Kind, str]] = ..., etype: _Optional[str] = ..., frames: _Optional[_Iterable[_Union[Frame, _Mapping]]] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("filename", "lineno", "name")
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    LINENO_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    filename: str
    lineno: int
    name: str
    def __init__(self, filename: _Optional[str] = ..., lineno: _Optional[int] = ..., name: _Optional[str] = ...) -> None: ...

class Finished(_message.Message):
    __slots__ = ("queue_s", "cold_start_s", "run_s", "transfer_s", "bytes_in", "bytes_out", "ok")
    QUEUE_S_FIELD_NUMBER: _ClassVar[int]
    COLD_START_S_FIELD_NUMBER: _ClassVar[int]
    RUN_S_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_S_FIELD_NUMBER: _ClassVar[int]
    BYTES_IN_FIELD_NUMBER: _ClassVar[int]
    BYTES_OUT_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    queue_s: float
    cold_start_s: float
    run_s: float
    transfer_s: float
    bytes_in: int
    bytes_out: int
    ok: bool
    def __init__(self, queue_s: _Optional[float] = ..., cold_start_s: _Optional[float] = ..., run_s: _Optional[float] = ..., transfer_s: _Optional[float] = ..., bytes_in: _Optional[int] = ..., bytes_out: _Optional[int] = ..., ok: _Optional[bool] = ...) -> None: ...

class ProcessState(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class Notice(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class CellAttachRequest(_message.Message):
    __slots__ = ("session_id", "cell_id", "after_seq", "lane_worker_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CELL_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    LANE_WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    cell_id: str
    after_seq: int
    lane_worker_id: str
    def __init__(self, session_id: _Optional[str] = ..., cell_id: _Optional[str] = ..., after_seq: _Optional[int] = ..., lane_worker_id: _Optional[str] = ...) -> None: ...

class CellCancelRequest(_message.Message):
    __slots__ = ("session_id", "cell_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CELL_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    cell_id: str
    def __init__(self, session_id: _Optional[str] = ..., cell_id: _Optional[str] = ...) -> None: ...

class CellCancelResponse(_message.Message):
    __slots__ = ("found",)
    FOUND_FIELD_NUMBER: _ClassVar[int]
    found: bool
    def __init__(self, found: _Optional[bool] = ...) -> None: ...

class CellInputRequest(_message.Message):
    __slots__ = ("session_id", "cell_id", "value", "ename", "evalue", "etype")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CELL_ID_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    ENAME_FIELD_NUMBER: _ClassVar[int]
    EVALUE_FIELD_NUMBER: _ClassVar[int]
    ETYPE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    cell_id: str
    value: str
    ename: str
    evalue: str
    etype: str
    def __init__(self, session_id: _Optional[str] = ..., cell_id: _Optional[str] = ..., value: _Optional[str] = ..., ename: _Optional[str] = ..., evalue: _Optional[str] = ..., etype: _Optional[str] = ...) -> None: ...

class CellInputResponse(_message.Message):
    __slots__ = ("found",)
    FOUND_FIELD_NUMBER: _ClassVar[int]
    found: bool
    def __init__(self, found: _Optional[bool] = ...) -> None: ...

class StatusGetRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class WorkerStatus(_message.Message):
    __slots__ = ("id", "state", "session", "idle_s", "hardware", "release_in_s", "session_name", "pid", "node", "gpus")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[WorkerStatus.State]
        STARTING: _ClassVar[WorkerStatus.State]
        IDLE: _ClassVar[WorkerStatus.State]
        BUSY: _ClassVar[WorkerStatus.State]
        RELEASING: _ClassVar[WorkerStatus.State]
    STATE_UNSPECIFIED: WorkerStatus.State
    STARTING: WorkerStatus.State
    IDLE: WorkerStatus.State
    BUSY: WorkerStatus.State
    RELEASING: WorkerStatus.State
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    IDLE_S_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_FIELD_NUMBER: _ClassVar[int]
    RELEASE_IN_S_FIELD_NUMBER: _ClassVar[int]
    SESSION_NAME_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    id: str
    state: WorkerStatus.State
    session: str
    idle_s: float
    hardware: str
    release_in_s: float
    session_name: str
    pid: int
    node: str
    gpus: _containers.RepeatedCompositeFieldContainer[GpuInfo]
    def __init__(self, id: _Optional[str] = ..., state: _Optional[_Union[WorkerStatus.State, str]] = ..., session: _Optional[str] = ..., idle_s: _Optional[float] = ..., hardware: _Optional[str] = ..., release_in_s: _Optional[float] = ..., session_name: _Optional[str] = ..., pid: _Optional[int] = ..., node: _Optional[str] = ..., gpus: _Optional[_Iterable[_Union[GpuInfo, _Mapping]]] = ...) -> None: ...

class PoolStatus(_message.Message):
    __slots__ = ("label", "workers", "queued", "max_workers", "min_warm", "idle_timeout", "price_per_hour", "simulate")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    MAX_WORKERS_FIELD_NUMBER: _ClassVar[int]
    MIN_WARM_FIELD_NUMBER: _ClassVar[int]
    IDLE_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    PRICE_PER_HOUR_FIELD_NUMBER: _ClassVar[int]
    SIMULATE_FIELD_NUMBER: _ClassVar[int]
    label: str
    workers: _containers.RepeatedCompositeFieldContainer[WorkerStatus]
    queued: int
    max_workers: int
    min_warm: int
    idle_timeout: float
    price_per_hour: float
    simulate: bool
    def __init__(self, label: _Optional[str] = ..., workers: _Optional[_Iterable[_Union[WorkerStatus, _Mapping]]] = ..., queued: _Optional[int] = ..., max_workers: _Optional[int] = ..., min_warm: _Optional[int] = ..., idle_timeout: _Optional[float] = ..., price_per_hour: _Optional[float] = ..., simulate: _Optional[bool] = ...) -> None: ...

class UsageRecord(_message.Message):
    __slots__ = ("session", "hardware", "worker_seconds", "cost", "session_name", "user")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_FIELD_NUMBER: _ClassVar[int]
    WORKER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    SESSION_NAME_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    session: str
    hardware: str
    worker_seconds: float
    cost: float
    session_name: str
    user: str
    def __init__(self, session: _Optional[str] = ..., hardware: _Optional[str] = ..., worker_seconds: _Optional[float] = ..., cost: _Optional[float] = ..., session_name: _Optional[str] = ..., user: _Optional[str] = ...) -> None: ...

class StatusGetResponse(_message.Message):
    __slots__ = ("pools", "usage", "broker_address", "metrics_address", "other_sessions")
    POOLS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    BROKER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    METRICS_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    OTHER_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    pools: _containers.RepeatedCompositeFieldContainer[PoolStatus]
    usage: _containers.RepeatedCompositeFieldContainer[UsageRecord]
    broker_address: str
    metrics_address: str
    other_sessions: int
    def __init__(self, pools: _Optional[_Iterable[_Union[PoolStatus, _Mapping]]] = ..., usage: _Optional[_Iterable[_Union[UsageRecord, _Mapping]]] = ..., broker_address: _Optional[str] = ..., metrics_address: _Optional[str] = ..., other_sessions: _Optional[int] = ...) -> None: ...

class CatalogGetRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CatalogEntry(_message.Message):
    __slots__ = ("label", "price_per_hour", "max_workers", "simulate", "served_by", "max_workers_per_session")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PRICE_PER_HOUR_FIELD_NUMBER: _ClassVar[int]
    MAX_WORKERS_FIELD_NUMBER: _ClassVar[int]
    SIMULATE_FIELD_NUMBER: _ClassVar[int]
    SERVED_BY_FIELD_NUMBER: _ClassVar[int]
    MAX_WORKERS_PER_SESSION_FIELD_NUMBER: _ClassVar[int]
    label: str
    price_per_hour: float
    max_workers: int
    simulate: bool
    served_by: str
    max_workers_per_session: int
    def __init__(self, label: _Optional[str] = ..., price_per_hour: _Optional[float] = ..., max_workers: _Optional[int] = ..., simulate: _Optional[bool] = ..., served_by: _Optional[str] = ..., max_workers_per_session: _Optional[int] = ...) -> None: ...

class CatalogGetResponse(_message.Message):
    __slots__ = ("entries", "default_hardware", "known_labels", "max_blob_bytes")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_HARDWARE_FIELD_NUMBER: _ClassVar[int]
    KNOWN_LABELS_FIELD_NUMBER: _ClassVar[int]
    MAX_BLOB_BYTES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[CatalogEntry]
    default_hardware: str
    known_labels: _containers.RepeatedScalarFieldContainer[str]
    max_blob_bytes: int
    def __init__(self, entries: _Optional[_Iterable[_Union[CatalogEntry, _Mapping]]] = ..., default_hardware: _Optional[str] = ..., known_labels: _Optional[_Iterable[str]] = ..., max_blob_bytes: _Optional[int] = ...) -> None: ...

class WorkerReleaseRequest(_message.Message):
    __slots__ = ("session_id", "hardware", "worker_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    hardware: str
    worker_id: str
    def __init__(self, session_id: _Optional[str] = ..., hardware: _Optional[str] = ..., worker_id: _Optional[str] = ...) -> None: ...

class WorkerReleaseResponse(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, released: _Optional[_Iterable[str]] = ...) -> None: ...

class SessionCloseRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class SessionCloseResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GpuInfo(_message.Message):
    __slots__ = ("name", "uuid", "memory_total", "memory_used", "utilization", "label")
    NAME_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_FIELD_NUMBER: _ClassVar[int]
    UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    name: str
    uuid: str
    memory_total: int
    memory_used: int
    utilization: int
    label: str
    def __init__(self, name: _Optional[str] = ..., uuid: _Optional[str] = ..., memory_total: _Optional[int] = ..., memory_used: _Optional[int] = ..., utilization: _Optional[int] = ..., label: _Optional[str] = ...) -> None: ...

class WorkerRegister(_message.Message):
    __slots__ = ("worker_id", "hardware", "pid", "node", "versions", "gpus", "lane_address", "lane_ticket", "protocol_version")
    class VersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    LANE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LANE_TICKET_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    hardware: str
    pid: int
    node: str
    versions: _containers.ScalarMap[str, str]
    gpus: _containers.RepeatedCompositeFieldContainer[GpuInfo]
    lane_address: str
    lane_ticket: str
    protocol_version: int
    def __init__(self, worker_id: _Optional[str] = ..., hardware: _Optional[str] = ..., pid: _Optional[int] = ..., node: _Optional[str] = ..., versions: _Optional[_Mapping[str, str]] = ..., gpus: _Optional[_Iterable[_Union[GpuInfo, _Mapping]]] = ..., lane_address: _Optional[str] = ..., lane_ticket: _Optional[str] = ..., protocol_version: _Optional[int] = ...) -> None: ...

class WorkerHeartbeat(_message.Message):
    __slots__ = ("gpus", "rss")
    GPUS_FIELD_NUMBER: _ClassVar[int]
    RSS_FIELD_NUMBER: _ClassVar[int]
    gpus: _containers.RepeatedCompositeFieldContainer[GpuInfo]
    rss: int
    def __init__(self, gpus: _Optional[_Iterable[_Union[GpuInfo, _Mapping]]] = ..., rss: _Optional[int] = ...) -> None: ...

class WorkerMessage(_message.Message):
    __slots__ = ("register", "heartbeat", "event", "lane")
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    LANE_FIELD_NUMBER: _ClassVar[int]
    register: WorkerRegister
    heartbeat: WorkerHeartbeat
    event: CellEvent
    lane: LaneActivity
    def __init__(self, register: _Optional[_Union[WorkerRegister, _Mapping]] = ..., heartbeat: _Optional[_Union[WorkerHeartbeat, _Mapping]] = ..., event: _Optional[_Union[CellEvent, _Mapping]] = ..., lane: _Optional[_Union[LaneActivity, _Mapping]] = ...) -> None: ...

class LaneActivity(_message.Message):
    __slots__ = ("session_id", "cell_id", "finished", "ok")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CELL_ID_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    cell_id: str
    finished: bool
    ok: bool
    def __init__(self, session_id: _Optional[str] = ..., cell_id: _Optional[str] = ..., finished: _Optional[bool] = ..., ok: _Optional[bool] = ...) -> None: ...

class LaneRequest(_message.Message):
    __slots__ = ("execute", "cancel", "input")
    EXECUTE_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    execute: CellExecuteRequest
    cancel: CellCancelRequest
    input: CellInputRequest
    def __init__(self, execute: _Optional[_Union[CellExecuteRequest, _Mapping]] = ..., cancel: _Optional[_Union[CellCancelRequest, _Mapping]] = ..., input: _Optional[_Union[CellInputRequest, _Mapping]] = ...) -> None: ...

class WorkerShutdown(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class WorkerInstruction(_message.Message):
    __slots__ = ("execute", "cancel", "shutdown", "input")
    EXECUTE_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    SHUTDOWN_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    execute: CellExecuteRequest
    cancel: CellCancelRequest
    shutdown: WorkerShutdown
    input: CellInputRequest
    def __init__(self, execute: _Optional[_Union[CellExecuteRequest, _Mapping]] = ..., cancel: _Optional[_Union[CellCancelRequest, _Mapping]] = ..., shutdown: _Optional[_Union[WorkerShutdown, _Mapping]] = ..., input: _Optional[_Union[CellInputRequest, _Mapping]] = ...) -> None: ...

class JobSubmitRequest(_message.Message):
    __slots__ = ("notebook_name", "notebook", "parameters", "hardware", "timeout_s", "workdir")
    NOTEBOOK_NAME_FIELD_NUMBER: _ClassVar[int]
    NOTEBOOK_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    WORKDIR_FIELD_NUMBER: _ClassVar[int]
    notebook_name: str
    notebook: bytes
    parameters: _containers.RepeatedScalarFieldContainer[str]
    hardware: str
    timeout_s: float
    workdir: str
    def __init__(self, notebook_name: _Optional[str] = ..., notebook: _Optional[bytes] = ..., parameters: _Optional[_Iterable[str]] = ..., hardware: _Optional[str] = ..., timeout_s: _Optional[float] = ..., workdir: _Optional[str] = ...) -> None: ...

class JobInfo(_message.Message):
    __slots__ = ("id", "notebook", "state", "hardware", "submitted", "started", "finished", "cost", "error")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[JobInfo.State]
        RUNNING: _ClassVar[JobInfo.State]
        SUCCEEDED: _ClassVar[JobInfo.State]
        FAILED: _ClassVar[JobInfo.State]
        CANCELLED: _ClassVar[JobInfo.State]
        INTERRUPTED: _ClassVar[JobInfo.State]
    STATE_UNSPECIFIED: JobInfo.State
    RUNNING: JobInfo.State
    SUCCEEDED: JobInfo.State
    FAILED: JobInfo.State
    CANCELLED: JobInfo.State
    INTERRUPTED: JobInfo.State
    ID_FIELD_NUMBER: _ClassVar[int]
    NOTEBOOK_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: str
    notebook: str
    state: JobInfo.State
    hardware: str
    submitted: float
    started: float
    finished: float
    cost: float
    error: str
    def __init__(self, id: _Optional[str] = ..., notebook: _Optional[str] = ..., state: _Optional[_Union[JobInfo.State, str]] = ..., hardware: _Optional[str] = ..., submitted: _Optional[float] = ..., started: _Optional[float] = ..., finished: _Optional[float] = ..., cost: _Optional[float] = ..., error: _Optional[str] = ...) -> None: ...

class JobSubmitResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: JobInfo
    def __init__(self, job: _Optional[_Union[JobInfo, _Mapping]] = ...) -> None: ...

class JobListRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class JobListResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[JobInfo]
    def __init__(self, jobs: _Optional[_Iterable[_Union[JobInfo, _Mapping]]] = ...) -> None: ...

class JobLogsRequest(_message.Message):
    __slots__ = ("job_id", "follow", "offset")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    follow: bool
    offset: int
    def __init__(self, job_id: _Optional[str] = ..., follow: _Optional[bool] = ..., offset: _Optional[int] = ...) -> None: ...

class JobLogChunk(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class JobFetchRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class JobFetchResponse(_message.Message):
    __slots__ = ("notebook", "job")
    NOTEBOOK_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    notebook: bytes
    job: JobInfo
    def __init__(self, notebook: _Optional[bytes] = ..., job: _Optional[_Union[JobInfo, _Mapping]] = ...) -> None: ...

class JobCancelRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class JobCancelResponse(_message.Message):
    __slots__ = ("cancelled", "job")
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    cancelled: bool
    job: JobInfo
    def __init__(self, cancelled: _Optional[bool] = ..., job: _Optional[_Union[JobInfo, _Mapping]] = ...) -> None: ...
