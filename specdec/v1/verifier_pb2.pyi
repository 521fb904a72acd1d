from specdec.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DraftOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DRAFT_OUTCOME_UNSPECIFIED: _ClassVar[DraftOutcome]
    DRAFT_OUTCOME_ACCEPTED: _ClassVar[DraftOutcome]
    DRAFT_OUTCOME_REJECTED: _ClassVar[DraftOutcome]
    DRAFT_OUTCOME_SKIPPED: _ClassVar[DraftOutcome]
DRAFT_OUTCOME_UNSPECIFIED: DraftOutcome
DRAFT_OUTCOME_ACCEPTED: DraftOutcome
DRAFT_OUTCOME_REJECTED: DraftOutcome
DRAFT_OUTCOME_SKIPPED: DraftOutcome

class VerifierRequest(_message.Message):
    __slots__ = ("open", "verify")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    VERIFY_FIELD_NUMBER: _ClassVar[int]
    open: OpenVerifierSession
    verify: VerifyBlock
    def __init__(self, open: _Optional[_Union[OpenVerifierSession, _Mapping]] = ..., verify: _Optional[_Union[VerifyBlock, _Mapping]] = ...) -> None: ...

class OpenVerifierSession(_message.Message):
    __slots__ = ("prompt_token_ids", "sampling", "policy", "policy_params", "return_logprobs", "return_hidden_states", "session_id")
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    POLICY_PARAMS_FIELD_NUMBER: _ClassVar[int]
    RETURN_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    RETURN_HIDDEN_STATES_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    sampling: _common_pb2.SamplingParams
    policy: str
    policy_params: _common_pb2.PolicyParams
    return_logprobs: bool
    return_hidden_states: bool
    session_id: str
    def __init__(self, prompt_token_ids: _Optional[_Iterable[int]] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., policy: _Optional[str] = ..., policy_params: _Optional[_Union[_common_pb2.PolicyParams, _Mapping]] = ..., return_logprobs: _Optional[bool] = ..., return_hidden_states: _Optional[bool] = ..., session_id: _Optional[str] = ...) -> None: ...

class VerifyBlock(_message.Message):
    __slots__ = ("position", "step", "draft_token_ids", "draft_probs", "draft_parents")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    DRAFT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    DRAFT_PROBS_FIELD_NUMBER: _ClassVar[int]
    DRAFT_PARENTS_FIELD_NUMBER: _ClassVar[int]
    position: int
    step: int
    draft_token_ids: _containers.RepeatedScalarFieldContainer[int]
    draft_probs: _containers.RepeatedCompositeFieldContainer[_common_pb2.TokenDistribution]
    draft_parents: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, position: _Optional[int] = ..., step: _Optional[int] = ..., draft_token_ids: _Optional[_Iterable[int]] = ..., draft_probs: _Optional[_Iterable[_Union[_common_pb2.TokenDistribution, _Mapping]]] = ..., draft_parents: _Optional[_Iterable[int]] = ...) -> None: ...

class VerifierResponse(_message.Message):
    __slots__ = ("opened", "verdict")
    OPENED_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    opened: VerifierSessionOpened
    verdict: Verdict
    def __init__(self, opened: _Optional[_Union[VerifierSessionOpened, _Mapping]] = ..., verdict: _Optional[_Union[Verdict, _Mapping]] = ...) -> None: ...

class VerifierSessionOpened(_message.Message):
    __slots__ = ("committed_length", "prefill_ms", "policy")
    COMMITTED_LENGTH_FIELD_NUMBER: _ClassVar[int]
    PREFILL_MS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    committed_length: int
    prefill_ms: float
    policy: str
    def __init__(self, committed_length: _Optional[int] = ..., prefill_ms: _Optional[float] = ..., policy: _Optional[str] = ...) -> None: ...

class Verdict(_message.Message):
    __slots__ = ("step", "position", "num_accepted", "token_ids", "outcomes", "bonus", "committed_length", "forward_ms", "accept_ms", "logprobs", "hidden_states", "accepted_nodes")
    STEP_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    NUM_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    BONUS_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_LENGTH_FIELD_NUMBER: _ClassVar[int]
    FORWARD_MS_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_MS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_STATES_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_NODES_FIELD_NUMBER: _ClassVar[int]
    step: int
    position: int
    num_accepted: int
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    outcomes: _containers.RepeatedScalarFieldContainer[DraftOutcome]
    bonus: bool
    committed_length: int
    forward_ms: float
    accept_ms: float
    logprobs: _containers.RepeatedScalarFieldContainer[float]
    hidden_states: _common_pb2.HiddenStates
    accepted_nodes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, step: _Optional[int] = ..., position: _Optional[int] = ..., num_accepted: _Optional[int] = ..., token_ids: _Optional[_Iterable[int]] = ..., outcomes: _Optional[_Iterable[_Union[DraftOutcome, str]]] = ..., bonus: _Optional[bool] = ..., committed_length: _Optional[int] = ..., forward_ms: _Optional[float] = ..., accept_ms: _Optional[float] = ..., logprobs: _Optional[_Iterable[float]] = ..., hidden_states: _Optional[_Union[_common_pb2.HiddenStates, _Mapping]] = ..., accepted_nodes: _Optional[_Iterable[int]] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ("include_tokenizer",)
    INCLUDE_TOKENIZER_FIELD_NUMBER: _ClassVar[int]
    include_tokenizer: bool
    def __init__(self, include_tokenizer: _Optional[bool] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "vocab_size", "vocab_fingerprint", "eos_token_ids", "max_context", "device", "dtype", "tokenizer_files", "hidden_size", "weights_fingerprint")
    class TokenizerFilesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    VOCAB_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    EOS_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    MAX_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FILES_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    name: str
    vocab_size: int
    vocab_fingerprint: str
    eos_token_ids: _containers.RepeatedScalarFieldContainer[int]
    max_context: int
    device: str
    dtype: str
    tokenizer_files: _containers.ScalarMap[str, bytes]
    hidden_size: int
    weights_fingerprint: str
    def __init__(self, name: _Optional[str] = ..., vocab_size: _Optional[int] = ..., vocab_fingerprint: _Optional[str] = ..., eos_token_ids: _Optional[_Iterable[int]] = ..., max_context: _Optional[int] = ..., device: _Optional[str] = ..., dtype: _Optional[str] = ..., tokenizer_files: _Optional[_Mapping[str, bytes]] = ..., hidden_size: _Optional[int] = ..., weights_fingerprint: _Optional[str] = ...) -> None: ...
