from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WorkerMessage(_message.Message):
    __slots__ = ("join", "chunk", "heartbeat", "leave", "eval_report", "round_report")
    JOIN_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    LEAVE_FIELD_NUMBER: _ClassVar[int]
    EVAL_REPORT_FIELD_NUMBER: _ClassVar[int]
    ROUND_REPORT_FIELD_NUMBER: _ClassVar[int]
    join: Join
    chunk: GradientChunk
    heartbeat: Heartbeat
    leave: Leave
    eval_report: EvalReport
    round_report: RoundReport
    def __init__(self, join: _Optional[_Union[Join, _Mapping]] = ..., chunk: _Optional[_Union[GradientChunk, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., leave: _Optional[_Union[Leave, _Mapping]] = ..., eval_report: _Optional[_Union[EvalReport, _Mapping]] = ..., round_report: _Optional[_Union[RoundReport, _Mapping]] = ...) -> None: ...

class Join(_message.Message):
    __slots__ = ("protocol_version", "name", "profile", "rate", "batch_size", "wants_shard", "byzantine", "local_data")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    WANTS_SHARD_FIELD_NUMBER: _ClassVar[int]
    BYZANTINE_FIELD_NUMBER: _ClassVar[int]
    LOCAL_DATA_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    name: str
    profile: str
    rate: float
    batch_size: int
    wants_shard: bool
    byzantine: bool
    local_data: LocalData
    def __init__(self, protocol_version: _Optional[int] = ..., name: _Optional[str] = ..., profile: _Optional[str] = ..., rate: _Optional[float] = ..., batch_size: _Optional[int] = ..., wants_shard: bool = ..., byzantine: bool = ..., local_data: _Optional[_Union[LocalData, _Mapping]] = ...) -> None: ...

class LocalData(_message.Message):
    __slots__ = ("examples", "n_features", "task", "label_min", "label_max", "distinct_labels", "sparse")
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    N_FEATURES_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    LABEL_MIN_FIELD_NUMBER: _ClassVar[int]
    LABEL_MAX_FIELD_NUMBER: _ClassVar[int]
    DISTINCT_LABELS_FIELD_NUMBER: _ClassVar[int]
    SPARSE_FIELD_NUMBER: _ClassVar[int]
    examples: int
    n_features: int
    task: str
    label_min: float
    label_max: float
    distinct_labels: int
    sparse: bool
    def __init__(self, examples: _Optional[int] = ..., n_features: _Optional[int] = ..., task: _Optional[str] = ..., label_min: _Optional[float] = ..., label_max: _Optional[float] = ..., distinct_labels: _Optional[int] = ..., sparse: bool = ...) -> None: ...

class GradientChunk(_message.Message):
    __slots__ = ("round", "offset", "values", "session_id")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    round: int
    offset: int
    values: bytes
    session_id: str
    def __init__(self, round: _Optional[int] = ..., offset: _Optional[int] = ..., values: _Optional[bytes] = ..., session_id: _Optional[str] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("unix_ns",)
    UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    unix_ns: int
    def __init__(self, unix_ns: _Optional[int] = ...) -> None: ...

class EvalReport(_message.Message):
    __slots__ = ("round", "session_id", "examples", "loss", "accuracy")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    round: int
    session_id: str
    examples: int
    loss: float
    accuracy: float
    def __init__(self, round: _Optional[int] = ..., session_id: _Optional[str] = ..., examples: _Optional[int] = ..., loss: _Optional[float] = ..., accuracy: _Optional[float] = ...) -> None: ...

class RoundReport(_message.Message):
    __slots__ = ("round", "session_id", "computed", "released", "compute_ms", "release_ms", "batch_size")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    COMPUTED_FIELD_NUMBER: _ClassVar[int]
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_FIELD_NUMBER: _ClassVar[int]
    RELEASE_MS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    round: int
    session_id: str
    computed: int
    released: int
    compute_ms: float
    release_ms: float
    batch_size: int
    def __init__(self, round: _Optional[int] = ..., session_id: _Optional[str] = ..., computed: _Optional[int] = ..., released: _Optional[int] = ..., compute_ms: _Optional[float] = ..., release_ms: _Optional[float] = ..., batch_size: _Optional[int] = ...) -> None: ...

class Leave(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class ServerMessage(_message.Message):
    __slots__ = ("welcome", "shard", "task", "closed", "heartbeat", "stop")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    shard: ShardPart
    task: RoundTask
    closed: RoundClosed
    heartbeat: Heartbeat
    stop: Stop
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., shard: _Optional[_Union[ShardPart, _Mapping]] = ..., task: _Optional[_Union[RoundTask, _Mapping]] = ..., closed: _Optional[_Union[RoundClosed, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., stop: _Optional[_Union[Stop, _Mapping]] = ...) -> None: ...

class TrainingSpec(_message.Message):
    __slots__ = ("model", "layer_sizes", "dim", "order", "groups", "dataset", "n_features", "n_classes", "algorithm", "max_chunk_values", "seed", "partition", "num_shards", "l2", "model_plugin", "model_plugin_version", "dataset_plugin", "dataset_plugin_version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LAYER_SIZES_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    N_FEATURES_FIELD_NUMBER: _ClassVar[int]
    N_CLASSES_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    MAX_CHUNK_VALUES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    NUM_SHARDS_FIELD_NUMBER: _ClassVar[int]
    L2_FIELD_NUMBER: _ClassVar[int]
    MODEL_PLUGIN_FIELD_NUMBER: _ClassVar[int]
    MODEL_PLUGIN_VERSION_FIELD_NUMBER: _ClassVar[int]
    DATASET_PLUGIN_FIELD_NUMBER: _ClassVar[int]
    DATASET_PLUGIN_VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    layer_sizes: _containers.RepeatedScalarFieldContainer[int]
    dim: int
    order: str
    groups: _containers.RepeatedScalarFieldContainer[int]
    dataset: str
    n_features: int
    n_classes: int
    algorithm: str
    max_chunk_values: int
    seed: int
    partition: str
    num_shards: int
    l2: float
    model_plugin: str
    model_plugin_version: str
    dataset_plugin: str
    dataset_plugin_version: str
    def __init__(self, model: _Optional[str] = ..., layer_sizes: _Optional[_Iterable[int]] = ..., dim: _Optional[int] = ..., order: _Optional[str] = ..., groups: _Optional[_Iterable[int]] = ..., dataset: _Optional[str] = ..., n_features: _Optional[int] = ..., n_classes: _Optional[int] = ..., algorithm: _Optional[str] = ..., max_chunk_values: _Optional[int] = ..., seed: _Optional[int] = ..., partition: _Optional[str] = ..., num_shards: _Optional[int] = ..., l2: _Optional[float] = ..., model_plugin: _Optional[str] = ..., model_plugin_version: _Optional[str] = ..., dataset_plugin: _Optional[str] = ..., dataset_plugin_version: _Optional[str] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("session_id", "worker_id", "spec", "shard_index", "heartbeat_ms", "eval_fraction")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    SHARD_INDEX_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_MS_FIELD_NUMBER: _ClassVar[int]
    EVAL_FRACTION_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    worker_id: int
    spec: TrainingSpec
    shard_index: int
    heartbeat_ms: int
    eval_fraction: float
    def __init__(self, session_id: _Optional[str] = ..., worker_id: _Optional[int] = ..., spec: _Optional[_Union[TrainingSpec, _Mapping]] = ..., shard_index: _Optional[int] = ..., heartbeat_ms: _Optional[int] = ..., eval_fraction: _Optional[float] = ...) -> None: ...

class ShardPart(_message.Message):
    __slots__ = ("row_offset", "rows", "cols", "features", "labels", "last", "total_rows")
    ROW_OFFSET_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    TOTAL_ROWS_FIELD_NUMBER: _ClassVar[int]
    row_offset: int
    rows: int
    cols: int
    features: bytes
    labels: bytes
    last: bool
    total_rows: int
    def __init__(self, row_offset: _Optional[int] = ..., rows: _Optional[int] = ..., cols: _Optional[int] = ..., features: _Optional[bytes] = ..., labels: _Optional[bytes] = ..., last: bool = ..., total_rows: _Optional[int] = ...) -> None: ...

class RoundTask(_message.Message):
    __slots__ = ("round", "order_seed", "weights", "tau_ms", "evaluate")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ORDER_SEED_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    TAU_MS_FIELD_NUMBER: _ClassVar[int]
    EVALUATE_FIELD_NUMBER: _ClassVar[int]
    round: int
    order_seed: int
    weights: bytes
    tau_ms: float
    evaluate: bool
    def __init__(self, round: _Optional[int] = ..., order_seed: _Optional[int] = ..., weights: _Optional[bytes] = ..., tau_ms: _Optional[float] = ..., evaluate: bool = ...) -> None: ...

class RoundClosed(_message.Message):
    __slots__ = ("round",)
    ROUND_FIELD_NUMBER: _ClassVar[int]
    round: int
    def __init__(self, round: _Optional[int] = ...) -> None: ...

class Stop(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("state", "round", "active_sessions", "dim", "rule", "algorithm", "last_metric", "metric_name", "last_block", "rounds_without_quorum")
    STATE_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    LAST_METRIC_FIELD_NUMBER: _ClassVar[int]
    METRIC_NAME_FIELD_NUMBER: _ClassVar[int]
    LAST_BLOCK_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_WITHOUT_QUORUM_FIELD_NUMBER: _ClassVar[int]
    state: str
    round: int
    active_sessions: int
    dim: int
    rule: str
    algorithm: str
    last_metric: float
    metric_name: str
    last_block: int
    rounds_without_quorum: int
    def __init__(self, state: _Optional[str] = ..., round: _Optional[int] = ..., active_sessions: _Optional[int] = ..., dim: _Optional[int] = ..., rule: _Optional[str] = ..., algorithm: _Optional[str] = ..., last_metric: _Optional[float] = ..., metric_name: _Optional[str] = ..., last_block: _Optional[int] = ..., rounds_without_quorum: _Optional[int] = ...) -> None: ...
