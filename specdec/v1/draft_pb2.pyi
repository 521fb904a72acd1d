from specdec.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DraftRequest(_message.Message):
    __slots__ = ("open", "propose", "commit")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    PROPOSE_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    open: OpenDraftSession
    propose: Propose
    commit: Commit
    def __init__(self, open: _Optional[_Union[OpenDraftSession, _Mapping]] = ..., propose: _Optional[_Union[Propose, _Mapping]] = ..., commit: _Optional[_Union[Commit, _Mapping]] = ...) -> None: ...

class OpenDraftSession(_message.Message):
    __slots__ = ("prompt_token_ids", "draft", "sampling", "target_name", "target_vocab_fingerprint", "target_vocab_size", "probs_encoding", "session_id", "target_weights_fingerprint", "target_hidden_size")
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    DRAFT_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    TARGET_NAME_FIELD_NUMBER: _ClassVar[int]
    TARGET_VOCAB_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    TARGET_VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    PROBS_ENCODING_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_WEIGHTS_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    TARGET_HIDDEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    draft: str
    sampling: _common_pb2.SamplingParams
    target_name: str
    target_vocab_fingerprint: str
    target_vocab_size: int
    probs_encoding: _common_pb2.ProbsEncoding
    session_id: str
    target_weights_fingerprint: str
    target_hidden_size: int
    def __init__(self, prompt_token_ids: _Optional[_Iterable[int]] = ..., draft: _Optional[str] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., target_name: _Optional[str] = ..., target_vocab_fingerprint: _Optional[str] = ..., target_vocab_size: _Optional[int] = ..., probs_encoding: _Optional[_Union[_common_pb2.ProbsEncoding, str]] = ..., session_id: _Optional[str] = ..., target_weights_fingerprint: _Optional[str] = ..., target_hidden_size: _Optional[int] = ...) -> None: ...

class Propose(_message.Message):
    __slots__ = ("position", "step", "max_tokens", "min_confidence", "assumed_token_ids", "tree_nodes")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MIN_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    ASSUMED_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TREE_NODES_FIELD_NUMBER: _ClassVar[int]
    position: int
    step: int
    max_tokens: int
    min_confidence: float
    assumed_token_ids: _containers.RepeatedScalarFieldContainer[int]
    tree_nodes: int
    def __init__(self, position: _Optional[int] = ..., step: _Optional[int] = ..., max_tokens: _Optional[int] = ..., min_confidence: _Optional[float] = ..., assumed_token_ids: _Optional[_Iterable[int]] = ..., tree_nodes: _Optional[int] = ...) -> None: ...

class Commit(_message.Message):
    __slots__ = ("position", "token_ids", "hidden_states")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_STATES_FIELD_NUMBER: _ClassVar[int]
    position: int
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    hidden_states: _common_pb2.HiddenStates
    def __init__(self, position: _Optional[int] = ..., token_ids: _Optional[_Iterable[int]] = ..., hidden_states: _Optional[_Union[_common_pb2.HiddenStates, _Mapping]] = ...) -> None: ...

class DraftResponse(_message.Message):
    __slots__ = ("opened", "chunk")
    OPENED_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    opened: DraftSessionOpened
    chunk: DraftChunk
    def __init__(self, opened: _Optional[_Union[DraftSessionOpened, _Mapping]] = ..., chunk: _Optional[_Union[DraftChunk, _Mapping]] = ...) -> None: ...

class DraftSessionOpened(_message.Message):
    __slots__ = ("draft", "sends_probs")
    DRAFT_FIELD_NUMBER: _ClassVar[int]
    SENDS_PROBS_FIELD_NUMBER: _ClassVar[int]
    draft: str
    sends_probs: bool
    def __init__(self, draft: _Optional[str] = ..., sends_probs: _Optional[bool] = ...) -> None: ...

class DraftChunk(_message.Message):
    __slots__ = ("step", "position", "token_ids", "probs", "last", "draft_ms", "match_length", "parents", "path_logprobs")
    STEP_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    PROBS_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    DRAFT_MS_FIELD_NUMBER: _ClassVar[int]
    MATCH_LENGTH_FIELD_NUMBER: _ClassVar[int]
    PARENTS_FIELD_NUMBER: _ClassVar[int]
    PATH_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    step: int
    position: int
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    probs: _containers.RepeatedCompositeFieldContainer[_common_pb2.TokenDistribution]
    last: bool
    draft_ms: float
    match_length: int
    parents: _containers.RepeatedScalarFieldContainer[int]
    path_logprobs: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, step: _Optional[int] = ..., position: _Optional[int] = ..., token_ids: _Optional[_Iterable[int]] = ..., probs: _Optional[_Iterable[_Union[_common_pb2.TokenDistribution, _Mapping]]] = ..., last: _Optional[bool] = ..., draft_ms: _Optional[float] = ..., match_length: _Optional[int] = ..., parents: _Optional[_Iterable[int]] = ..., path_logprobs: _Optional[_Iterable[float]] = ...) -> None: ...
