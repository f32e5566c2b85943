from flotilla.registry.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReportAliveRequest(_message.Message):
    __slots__ = ("backend", "names")
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    backend: str
    names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, backend: _Optional[str] = ..., names: _Optional[_Iterable[str]] = ...) -> None: ...

class ReportAliveResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchClustersRequest(_message.Message):
    __slots__ = ("backend",)
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    backend: str
    def __init__(self, backend: _Optional[str] = ...) -> None: ...

class WatchClustersResponse(_message.Message):
    __slots__ = ("initial", "clusters")
    INITIAL_FIELD_NUMBER: _ClassVar[int]
    CLUSTERS_FIELD_NUMBER: _ClassVar[int]
    initial: bool
    clusters: _containers.RepeatedCompositeFieldContainer[LaunchCluster]
    def __init__(self, initial: _Optional[bool] = ..., clusters: _Optional[_Iterable[_Union[LaunchCluster, _Mapping]]] = ...) -> None: ...

class LaunchCluster(_message.Message):
    __slots__ = ("name", "owner", "backend", "target", "observed", "config_json", "tls_cert", "tls_key", "token", "api_url", "state_json", "workers", "revision", "scheduler_address", "logs_request")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    TLS_CERT_FIELD_NUMBER: _ClassVar[int]
    TLS_KEY_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    API_URL_FIELD_NUMBER: _ClassVar[int]
    STATE_JSON_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    SCHEDULER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LOGS_REQUEST_FIELD_NUMBER: _ClassVar[int]
    name: str
    owner: str
    backend: str
    target: _types_pb2.Target
    observed: _types_pb2.Observed
    config_json: str
    tls_cert: str
    tls_key: str
    token: str
    api_url: str
    state_json: str
    workers: _containers.RepeatedCompositeFieldContainer[LaunchWorker]
    revision: int
    scheduler_address: str
    logs_request: int
    def __init__(self, name: _Optional[str] = ..., owner: _Optional[str] = ..., backend: _Optional[str] = ..., target: _Optional[_Union[_types_pb2.Target, str]] = ..., observed: _Optional[_Union[_types_pb2.Observed, str]] = ..., config_json: _Optional[str] = ..., tls_cert: _Optional[str] = ..., tls_key: _Optional[str] = ..., token: _Optional[str] = ..., api_url: _Optional[str] = ..., state_json: _Optional[str] = ..., workers: _Optional[_Iterable[_Union[LaunchWorker, _Mapping]]] = ..., revision: _Optional[int] = ..., scheduler_address: _Optional[str] = ..., logs_request: _Optional[int] = ...) -> None: ...

class LaunchWorker(_message.Message):
    __slots__ = ("name", "target", "observed", "state_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_FIELD_NUMBER: _ClassVar[int]
    STATE_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    target: _types_pb2.Target
    observed: _types_pb2.Observed
    state_json: str
    def __init__(self, name: _Optional[str] = ..., target: _Optional[_Union[_types_pb2.Target, str]] = ..., observed: _Optional[_Union[_types_pb2.Observed, str]] = ..., state_json: _Optional[str] = ...) -> None: ...

class ReportClusterRequest(_message.Message):
    __slots__ = ("name", "observed", "state_json", "failure_reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_FIELD_NUMBER: _ClassVar[int]
    STATE_JSON_FIELD_NUMBER: _ClassVar[int]
    FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    observed: _types_pb2.Observed
    state_json: str
    failure_reason: str
    def __init__(self, name: _Optional[str] = ..., observed: _Optional[_Union[_types_pb2.Observed, str]] = ..., state_json: _Optional[str] = ..., failure_reason: _Optional[str] = ...) -> None: ...

class ReportClusterResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReportWorkerRequest(_message.Message):
    __slots__ = ("cluster_name", "worker_name", "observed", "state_json", "failure_reason")
    CLUSTER_NAME_FIELD_NUMBER: _ClassVar[int]
    WORKER_NAME_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_FIELD_NUMBER: _ClassVar[int]
    STATE_JSON_FIELD_NUMBER: _ClassVar[int]
    FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    cluster_name: str
    worker_name: str
    observed: _types_pb2.Observed
    state_json: str
    failure_reason: str
    def __init__(self, cluster_name: _Optional[str] = ..., worker_name: _Optional[str] = ..., observed: _Optional[_Union[_types_pb2.Observed, str]] = ..., state_json: _Optional[str] = ..., failure_reason: _Optional[str] = ...) -> None: ...

class ReportWorkerResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SaveClusterLogsRequest(_message.Message):
    __slots__ = ("cluster_name", "logs", "answers_request")
    CLUSTER_NAME_FIELD_NUMBER: _ClassVar[int]
    LOGS_FIELD_NUMBER: _ClassVar[int]
    ANSWERS_REQUEST_FIELD_NUMBER: _ClassVar[int]
    cluster_name: str
    logs: _containers.RepeatedCompositeFieldContainer[_types_pb2.ProcessLog]
    answers_request: int
    def __init__(self, cluster_name: _Optional[str] = ..., logs: _Optional[_Iterable[_Union[_types_pb2.ProcessLog, _Mapping]]] = ..., answers_request: _Optional[int] = ...) -> None: ...

class SaveClusterLogsResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchRoutesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Route(_message.Message):
    __slots__ = ("cluster_name", "scheduler_address", "dashboard_address")
    CLUSTER_NAME_FIELD_NUMBER: _ClassVar[int]
    SCHEDULER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    DASHBOARD_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    cluster_name: str
    scheduler_address: str
    dashboard_address: str
    def __init__(self, cluster_name: _Optional[str] = ..., scheduler_address: _Optional[str] = ..., dashboard_address: _Optional[str] = ...) -> None: ...

class WatchRoutesResponse(_message.Message):
    __slots__ = ("reset", "upserted", "removed")
    RESET_FIELD_NUMBER: _ClassVar[int]
    UPSERTED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    reset: bool
    upserted: _containers.RepeatedCompositeFieldContainer[Route]
    removed: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, reset: _Optional[bool] = ..., upserted: _Optional[_Iterable[_Union[Route, _Mapping]]] = ..., removed: _Optional[_Iterable[str]] = ...) -> None: ...

class VerifyClusterTokenRequest(_message.Message):
    __slots__ = ("cluster_name", "token")
    CLUSTER_NAME_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    cluster_name: str
    token: str
    def __init__(self, cluster_name: _Optional[str] = ..., token: _Optional[str] = ...) -> None: ...

class VerifyClusterTokenResponse(_message.Message):
    __slots__ = ("valid", "owner")
    VALID_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    valid: bool
    owner: str
    def __init__(self, valid: _Optional[bool] = ..., owner: _Optional[str] = ...) -> None: ...

class StopAllClustersRequest(_message.Message):
    __slots__ = ("reason", "wait_seconds")
    REASON_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    reason: str
    wait_seconds: float
    def __init__(self, reason: _Optional[str] = ..., wait_seconds: _Optional[float] = ...) -> None: ...

class StopAllClustersResponse(_message.Message):
    __slots__ = ("stopped", "remaining")
    STOPPED_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    stopped: int
    remaining: int
    def __init__(self, stopped: _Optional[int] = ..., remaining: _Optional[int] = ...) -> None: ...
