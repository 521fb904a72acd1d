from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ProbsEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROBS_ENCODING_UNSPECIFIED: _ClassVar[ProbsEncoding]
    PROBS_ENCODING_DENSE: _ClassVar[ProbsEncoding]
    PROBS_ENCODING_SPARSE: _ClassVar[ProbsEncoding]
PROBS_ENCODING_UNSPECIFIED: ProbsEncoding
PROBS_ENCODING_DENSE: ProbsEncoding
PROBS_ENCODING_SPARSE: ProbsEncoding

class SamplingParams(_message.Message):
    __slots__ = ("temperature", "top_k", "top_p", "seed")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_k: int
    top_p: float
    seed: int
    def __init__(self, temperature: _Optional[float] = ..., top_k: _Optional[int] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ...) -> None: ...

class PolicyParams(_message.Message):
    __slots__ = ("typical_epsilon", "typical_delta", "agree_top_m", "accept_threshold")
    TYPICAL_EPSILON_FIELD_NUMBER: _ClassVar[int]
    TYPICAL_DELTA_FIELD_NUMBER: _ClassVar[int]
    AGREE_TOP_M_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    typical_epsilon: float
    typical_delta: float
    agree_top_m: int
    accept_threshold: float
    def __init__(self, typical_epsilon: _Optional[float] = ..., typical_delta: _Optional[float] = ..., agree_top_m: _Optional[int] = ..., accept_threshold: _Optional[float] = ...) -> None: ...

class TokenDistribution(_message.Message):
    __slots__ = ("dense_f32", "sparse", "same_as_previous")
    DENSE_F32_FIELD_NUMBER: _ClassVar[int]
    SPARSE_FIELD_NUMBER: _ClassVar[int]
    SAME_AS_PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    dense_f32: bytes
    sparse: SparseDistribution
    same_as_previous: bool
    def __init__(self, dense_f32: _Optional[bytes] = ..., sparse: _Optional[_Union[SparseDistribution, _Mapping]] = ..., same_as_previous: _Optional[bool] = ...) -> None: ...

class SparseDistribution(_message.Message):
    __slots__ = ("token_ids", "probs")
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    PROBS_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    probs: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ..., probs: _Optional[_Iterable[float]] = ...) -> None: ...

class GetUsageRequest(_message.Message):
    __slots__ = ("reset_peaks",)
    RESET_PEAKS_FIELD_NUMBER: _ClassVar[int]
    reset_peaks: bool
    def __init__(self, reset_peaks: _Optional[bool] = ...) -> None: ...

class ServiceUsage(_message.Message):
    __slots__ = ("service", "pid", "rss_bytes", "peak_rss_bytes", "kv_cache_bytes", "peak_kv_cache_bytes", "live_sessions", "device_peak_bytes")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    PEAK_RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PEAK_KV_CACHE_BYTES_FIELD_NUMBER: _ClassVar[int]
    LIVE_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_PEAK_BYTES_FIELD_NUMBER: _ClassVar[int]
    service: str
    pid: int
    rss_bytes: int
    peak_rss_bytes: int
    kv_cache_bytes: int
    peak_kv_cache_bytes: int
    live_sessions: int
    device_peak_bytes: int
    def __init__(self, service: _Optional[str] = ..., pid: _Optional[int] = ..., rss_bytes: _Optional[int] = ..., peak_rss_bytes: _Optional[int] = ..., kv_cache_bytes: _Optional[int] = ..., peak_kv_cache_bytes: _Optional[int] = ..., live_sessions: _Optional[int] = ..., device_peak_bytes: _Optional[int] = ...) -> None: ...

class HiddenStates(_message.Message):
    __slots__ = ("start_position", "hidden_size", "data_f32")
    START_POSITION_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    DATA_F32_FIELD_NUMBER: _ClassVar[int]
    start_position: int
    hidden_size: int
    data_f32: bytes
    def __init__(self, start_position: _Optional[int] = ..., hidden_size: _Optional[int] = ..., data_f32: _Optional[bytes] = ...) -> None: ...
